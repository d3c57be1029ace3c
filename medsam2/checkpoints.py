"""Which weights and which architecture: the manifest, downloading with verification, building.

`--conf checkpoint` names a manifest entry (model/manifest.json) or a file; an entry without a `url`
is shipped in the repository (the small demo model under model/demo/, its sha256 in the manifest); `--conf model_config`
names a SAM2 config shipped with the `sam2` package (e.g. "sam2.1_hiera_t"), one of this project's
configs (medsam2/configs/*.yaml, e.g. "sam2.1_hiera_micro") or a .yaml path; without one, a file's
config is found from its own tensors (architecture.py), and a config that contradicts the file is
refused before anything is built, with what the file holds. A manifest entry also declares how its
checkpoint's pipeline prepared inputs (`preprocess`, frames.Preprocess) and post-processed masks
(`postprocess`, postprocess.Postprocess). Checkpoints are only ever read with
`torch.load(weights_only=True)`: a checkpoint is data, never code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from omegaconf import OmegaConf

from . import architecture
from .frames import Preprocess
from .postprocess import Postprocess

logger = logging.getLogger(__name__)

PROJECT_CONFIGS = Path(__file__).parent / "configs"
PREDICTOR_TARGET = "medsam2.predictor.VolumePredictor"
# A SAM 2 file that declares nothing was made, as far as anyone can tell, the way Meta's SAM 2 reads
# frames (sam2/utils/misc.py, _load_img_as_tensor: a uint8 image, PIL's default resize, /255,
# ImageNet mean/std) and post-processes masks (build_sam2_video_predictor: fill_hole_area 8).
SAM2_PREPROCESS = Preprocess(uint8=True, resize="pil_bicubic",
                             reference="facebookresearch/sam2 sam2/utils/misc.py (_load_img_as_tensor)")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be had or used; the message says what to do."""


class CheckpointMismatch(CheckpointError):
    """A readable file that the configured architecture cannot hold: a setting to fix, not a file to
    wait for (the server refuses to start with it)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one model: architecture, resolution, weights (None = random init)."""

    model_config: str
    image_size: int | None = None
    checkpoint: Path | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)  # how the checkpoint's pipeline made inputs
    postprocess: Postprocess = field(default_factory=Postprocess)  # what it did to masks afterwards


def load_manifest(model_dir: Path) -> dict:
    path = Path(model_dir) / "manifest.json"
    if not path.exists():
        return {}
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, expected: str | None) -> None:
    """Check the digest against the manifest, or against the digest recorded at first download."""
    record = path.with_name(path.name + ".sha256")
    if not expected and record.exists():
        expected = record.read_text().split()[0]
    if not expected:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path} has sha256 {actual}, expected {expected}: the file is corrupt or not the "
            f"one named in the manifest. Delete it and let the server download it again, or place the right file."
        )


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True,
             reported: str | None = None) -> Path:
    """Download `url` to `dest` with a progress bar; the file appears only once complete and verified.
    `reported`: a digest others published for the file, unverified here: a difference is logged only."""
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name, suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with urllib.request.urlopen(url, timeout=30) as r, os.fdopen(fd, "wb") as out:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", disable=not progress) as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        digest = sha256_of(tmp)
        if sha256 and digest != sha256:
            raise CheckpointError(f"downloaded {url} but its sha256 is {digest}, expected {sha256}; nothing was kept")
        os.replace(tmp, dest)
        if not sha256 and reported and digest != reported:
            logger.warning("%s has sha256 %s, not the %s others report for it: it may be another release",
                           dest.name, digest, reported)
        if not sha256:
            dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")
            logger.warning("%s has no sha256 in the manifest; recorded %s for later checks", dest.name, digest)
        return dest
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise CheckpointError(
            f"could not download the checkpoint from {url} ({e}). Download it on a machine with internet access "
            f"and place it at {dest}, or start the server with --conf checkpoint /path/to/checkpoint.pt "
            f"(or --conf checkpoint demo: the small model shipped in model/demo/, for phantoms only)"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)


def resolve_spec(
    checkpoint: str | None, model_config: str | None, image_size: int | None, model_dir: Path, fetch: bool = True
) -> ModelSpec:
    """Turn the user's settings into a ModelSpec, downloading a manifest checkpoint on first use (with
    `fetch` False, a manifest checkpoint not downloaded yet raises CheckpointError). A file with no
    config named gets the config its tensors match; a file that contradicts its config is refused."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    ckpt_path, preprocess, postprocess, meta = None, Preprocess(), Postprocess(), {}
    if checkpoint and checkpoint.lower() not in ("none", "random"):
        entry = manifest.get(checkpoint)
        if entry is not None:
            model_config = model_config or entry["model_config"]
            image_size = image_size or entry.get("image_size")
            preprocess, postprocess = _declared(entry, f"manifest entry {checkpoint!r}")
            ckpt_path = model_dir / entry["file"]
            if not ckpt_path.exists() and not entry.get("url"):
                raise CheckpointError(
                    f"checkpoint {checkpoint!r} is shipped in the repository as {ckpt_path}, which is missing: restore it "
                    f"(git checkout -- {Path('model') / entry['file']}) or rebuild it with `{entry.get('reproduce', '?')}`")
            if not ckpt_path.exists():
                if not fetch:
                    raise CheckpointError(f"checkpoint {checkpoint!r} is not downloaded yet ({ckpt_path})")
                download(entry["url"], ckpt_path, entry.get("sha256"), reported=entry.get("sha256_reported"))
            _verify(ckpt_path, entry.get("sha256"))
        else:
            p = Path(checkpoint).expanduser()
            ckpt_path = p if p.is_absolute() or p.exists() else model_dir / p
            if not ckpt_path.exists():
                known = ", ".join(sorted(manifest)) or "(none)"
                raise CheckpointError(f"checkpoint {checkpoint!r} is neither a file nor a manifest name ({known})")
            meta = read_checkpoint(ckpt_path)[1]
            known = _entry_of_file(manifest, model_dir, ckpt_path)
            if known is not None:  # a manifest entry's own file, named by its path: the entry's declarations
                preprocess, postprocess = _declared(known, f"manifest entry for {ckpt_path}")
                model_config = model_config or known["model_config"]
                image_size = image_size or known.get("image_size")
            else:  # this project's trainer records what the file needs; any other SAM 2 file gets SAM 2's pipeline
                preprocess, postprocess = _declared(
                    {"preprocess": meta.get("preprocess", SAM2_PREPROCESS), "postprocess": meta.get("postprocess")},
                    f"checkpoint {ckpt_path}")
            image_size = image_size or meta.get("image_size")
        if model_config is None:
            model_config = config_of_file(ckpt_path)
            logger.info("checkpoint %s: config %s found from its tensors", ckpt_path, model_config)
    if not model_config:
        raise CheckpointError("no model_config given: pass --conf model_config <sam2 config name or .yaml path>")
    spec = ModelSpec(model_config=model_config, image_size=int(image_size) if image_size else None,
                     checkpoint=ckpt_path, preprocess=preprocess, postprocess=postprocess)
    if ckpt_path is not None:
        check_fits(spec)
    return spec


def _entry_of_file(manifest: dict, model_dir: Path, path: Path) -> dict | None:
    """The manifest entry whose file `path` is (the shipped demo model given by its path, say)."""
    real = Path(path).resolve()
    return next((e for e in manifest.values() if (Path(model_dir) / e["file"]).resolve() == real), None)


def _declared(entry: dict, where: str) -> tuple[Preprocess, Postprocess]:
    try:
        return Preprocess.parse(entry.get("preprocess")), Postprocess.parse(entry.get("postprocess"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from e


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state dict, meta) of a checkpoint file, memory-mapped, weights only (CheckpointError if unreadable)."""
    try:
        return architecture.read_state_dict(Path(path))
    except Exception as e:  # pickle errors, truncated zip, non-tensor objects
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}. "
                              "It is corrupt, truncated, or not a weights-only PyTorch checkpoint.") from e


def config_of_file(path: Path) -> str:
    """The config that builds the architecture `path`'s tensors hold (CheckpointError if none does)."""
    try:
        arch = architecture.of_state_dict(read_checkpoint(path)[0])
    except ValueError as e:
        raise CheckpointMismatch(f"checkpoint {path} is not a SAM 2 checkpoint: {e}") from e
    names = architecture.configs_for(arch)
    if not names:
        raise CheckpointMismatch(f"checkpoint {path} holds a {arch.describe()}, which none of the known configs "
                              f"builds ({', '.join(architecture.known_configs())}): pass --conf model_config "
                              "with a .yaml that does")
    return names[0]


def check_fits(spec: ModelSpec) -> None:
    """Refuse a config that builds another architecture than the checkpoint holds, naming both (at
    start-up, before a model is built; the strict load in load_weights checks every tensor later)."""
    state = read_checkpoint(spec.checkpoint)[0]
    try:
        held = architecture.of_state_dict(state)
    except ValueError as e:
        raise CheckpointMismatch(f"checkpoint {spec.checkpoint} is not a SAM 2 checkpoint: {e}") from e
    built = architecture.of_config(load_model_config(spec.model_config).model)
    if held != built:
        fits = architecture.configs_for(held)
        hint = f"use --conf model_config {fits[0]}" if fits else "pass --conf model_config with a .yaml that builds it"
        raise CheckpointMismatch(f"checkpoint {spec.checkpoint} holds a {held.describe()}, but model_config "
                              f"{spec.model_config} builds a {built.describe()}: {hint}")


def _sam2_config_path(name: str) -> Path | None:
    root = resources.files("sam2")
    stem = name[:-5] if name.endswith(".yaml") else name
    candidates = [stem, f"configs/sam2.1/{stem}", f"configs/sam2/{stem}"]
    for c in candidates:
        p = Path(str(root.joinpath(c + ".yaml")))
        if p.exists():
            return p
    return None


def load_model_config(name: str):
    """OmegaConf config of the `model:` node for a config name or path (project configs may extend a base)."""
    path = Path(name)
    if not (name.endswith(".yaml") and path.exists()):
        own = PROJECT_CONFIGS / f"{path.stem if name.endswith('.yaml') else name}.yaml"
        path = own if own.exists() else _sam2_config_path(name)
    if path is None or not path.exists():
        raise CheckpointError(f"unknown model_config {name!r}: use a sam2 config name such as sam2.1_hiera_t, "
                              f"one of {sorted(p.stem for p in PROJECT_CONFIGS.glob('*.yaml'))}, or a .yaml path")
    cfg = OmegaConf.load(path)
    if "base" in cfg:
        base = load_model_config(cfg.base)
        for item in cfg.get("overrides", []):
            key, value = item.split("=", 1)
            OmegaConf.update(base, key, OmegaConf.create({"v": _yaml_value(value)}).v, force_add=True)
        return base
    return cfg


def _yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


def build_model(spec: ModelSpec, device: str | torch.device = "cpu", for_training: bool = False):
    """Instantiate the predictor for `spec` on `device` and load its weights (strictly)."""
    from hydra.utils import instantiate

    cfg = load_model_config(spec.model_config)
    model_cfg = cfg.model
    model_cfg._target_ = PREDICTOR_TARGET
    if spec.image_size:
        model_cfg.image_size = spec.image_size
    size = int(model_cfg.image_size)
    attn = model_cfg.memory_attention.layer
    for part in ("self_attention", "cross_attention"):
        if "feat_sizes" in attn[part]:
            attn[part].feat_sizes = [size // 16, size // 16]
    # The same settings as sam2's build_sam2_video_predictor; its hole filling (fill_hole_area) needs
    # sam2's optional CUDA extension, so the engine fills holes itself (postprocess.py, spec.postprocess).
    OmegaConf.update(model_cfg, "sam_mask_decoder_extra_args", {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }, force_add=True)
    model_cfg.binarize_mask_from_pts_for_mem_enc = True
    model_cfg.fill_hole_area = 0
    model = instantiate(model_cfg, _recursive_=True)
    if spec.checkpoint is not None:
        load_weights(model, spec.checkpoint)
    model.preprocess, model.postprocess = spec.preprocess, spec.postprocess  # the pipeline its weights expect
    model = model.to(device)
    model.train(for_training)
    return model


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a `{"model": state_dict}` or bare state-dict checkpoint, weights only, strictly."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, non-tensor objects
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}. "
                              "It is corrupt, truncated, or not a weights-only PyTorch checkpoint.") from e
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        try:
            held = f"it holds a {architecture.of_state_dict(state).describe()}"
        except ValueError as e:
            held = f"it is not a SAM 2 checkpoint ({e})"
        raise CheckpointError(
            f"checkpoint {path} does not fit the model config ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} mis-shaped tensors, e.g. {(missing + unexpected + mismatched)[:3]}); {held}: "
            "check --conf model_config, or leave it out to use the config the file's tensors match"
        )
    model.load_state_dict(state)


def atomic_torch_save(obj, path: Path) -> Path:
    """torch.save to a temporary file beside `path`, fsync, then rename over it: a reader (or a crash
    half-way) sees the old file or the new one, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict | None = None) -> Path:
    """Write `{"model": state_dict, "meta": ...}` atomically (see atomic_torch_save). The meta records
    the image size and the pipeline the weights expect, so the file alone serves right."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"image_size": int(model.image_size),
            "preprocess": getattr(model, "preprocess", Preprocess()).as_dict(),
            "postprocess": getattr(model, "postprocess", Postprocess()).as_dict(), **(meta or {})}
    return atomic_torch_save({"model": state, "meta": meta}, path)
