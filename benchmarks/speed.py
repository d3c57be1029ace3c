"""Speed benchmark: stock SAM2 (JPEG folder), MONAI Label's Sam2InferTask and this project's engine.

    python -m benchmarks.speed                                   # sam2.1_hiera_t at 512 px, 64 slices of 256x256
    python -m benchmarks.speed --config sam2.1_hiera_micro --shape 64 64 16 --out bench-results/small.json

All paths run on the same weights (random weights of `--config`, built once with a fixed
`torch.manual_seed` and saved as a checkpoint, or `--checkpoint`), the same synthetic volume
(`medsam2.phantoms.make_phantom(--shape, --seed)`) and the same click: a foreground click on the
middle slice at the organ's most interior point (`medsam2.clicks.interior_point`); the corrective
click adds a background click on the same slice (inside the vessel when the slice shows it).

Each path runs in its own subprocess, one after the other, so peak memory (CPU RSS from
`getrusage`, and `torch.cuda.max_memory_allocated` on CUDA) belongs to that path alone and MONAI
Label's task (which resets hydra and starts a cache thread at import) cannot disturb the others.
Model building is not timed (a server does it once); a small warm-up forward pass runs before the
timers in the stock and engine workers. On CUDA both SAM2 paths run under bf16 autocast, as
SAM2's examples do; MONAI Label's task enters bf16 autocast itself.

(a) stock: window the volume (the same intensity rule as the engine), write every slice as an
    8-bit RGB JPEG with PIL (default quality 75), `build_sam2_video_predictor` with the sam2 config
    and hydra overrides for the image size, `init_state(video_path=folder)` (decodes every JPEG and
    encodes frame 0), `add_new_points_or_box` on the clicked slice, `propagate_in_video` forward,
    then reverse, on the same state. Stock SAM2 encodes each frame again as it reaches it (it caches
    only the most recent frame's features). Its clicked-slice latency is JPEG writing + init_state +
    the click (the click's mask is what `add_new_points_or_box` returns). Its corrective click is
    `reset_state` + both clicks + propagation both ways on the already loaded frames.
(b) monailabel: `monailabel.sam2.infer.Sam2InferTask` with `dimension=3`. Its `__init__` downloads
    SAM 2.1 hiera-large from Hugging Face unless the files named by `MONAI_SAM_MODEL_PT` /
    `MONAI_SAM_MODEL_CFG` already exist in its model_dir, so the worker places the benchmark's
    checkpoint and a config yaml there and names them through those settings: the task then runs
    offline on the same weights. It writes raw voxel values as JPEGs (no window), propagates
    forward only and returns only the whole volume. Its first request builds the predictor, so an
    untimed request on a tiny volume runs first. If it cannot run, the table says why.
(c) engine: `Segmenter.open` (scale + batched encoding of all slices) then `segment` (click +
    propagation both ways); the corrective click is a second `segment` on the open session with
    one more background click (features cached). Clicked-slice latency: a fresh
    `open(encode=False)` + `init_volume_state` + `add_new_points_or_box` on the clicked slice, which
    scales the volume, encodes that slice alone and decodes its mask; also reported with features
    already cached. `--breakdown` adds one more untimed-for-the-table `segment` with timers on the
    model's parts to show where propagation time goes.

Dice is computed between the 3D masks of the paths (engine vs stock, engine vs monailabel) and
against the phantom's organ (meaningless with random weights, reported for real checkpoints).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PATHS = ("stock", "monailabel", "engine")


# --------------------------------------------------------------------------------------------- helpers


def stock_config(model_config: str, image_size: int | None) -> tuple[str, list[str], int]:
    """(sam2 config name for hydra, hydra overrides, image size) giving the same model as
    `medsam2.checkpoints.build_model(ModelSpec(model_config, image_size))`."""
    from importlib import resources

    from omegaconf import OmegaConf

    from medsam2.checkpoints import PROJECT_CONFIGS, load_model_config

    overrides: list[str] = []
    name = model_config[:-5] if model_config.endswith(".yaml") else model_config
    own = PROJECT_CONFIGS / f"{name}.yaml"
    if own.exists():  # a project config: a sam2 base config plus dotlist overrides
        cfg = OmegaConf.load(own)
        name = str(cfg.base)
        overrides += [f"++{o}" for o in cfg.get("overrides", [])]
    root = Path(str(resources.files("sam2")))
    for rel in (f"configs/sam2.1/{name}.yaml", f"configs/sam2/{name}.yaml", f"{name}.yaml"):
        if (root / rel).exists():
            break
    else:
        raise ValueError(f"{model_config!r} is not a sam2 config nor a project config built on one")
    size = int(image_size or load_model_config(model_config).model.image_size)
    overrides.append(f"++model.image_size={size}")
    attn = load_model_config(model_config).model.memory_attention.layer
    for part in ("self_attention", "cross_attention"):
        if "feat_sizes" in attn[part]:  # RoPE tables follow the image size, as build_model does
            overrides.append(f"++model.memory_attention.layer.{part}.feat_sizes=[{size // 16},{size // 16}]")
    return rel, overrides, size


def build_stock_predictor(model_config: str, image_size: int | None, checkpoint, device="cpu"):
    """sam2's own `build_sam2_video_predictor` (plain SAM2VideoPredictor) on our config and weights."""
    from sam2.build_sam import build_sam2_video_predictor

    name, overrides, _ = stock_config(model_config, image_size)
    return build_sam2_video_predictor(name, str(checkpoint), device=str(device), hydra_overrides_extra=overrides)


def write_jpegs(scaled, folder: Path) -> int:
    """(I, J, K) intensities in [0, 1] -> folder/00000.jpg ... as 8-bit RGB, frame k = volume[:, :, k].T
    (rows J, columns I: the engine's frame orientation), the way SAM2's examples feed a video."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    u8 = np.clip(np.rint(np.asarray(scaled, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    for k in range(u8.shape[2]):
        Image.fromarray(np.ascontiguousarray(u8[:, :, k].T)).convert("RGB").save(folder / f"{k:05d}.jpg")
    return u8.shape[2]


def stock_track(predictor, state, frame_idx: int, points, labels) -> "torch.Tensor":
    """Stock SAM2 on one object: click on `frame_idx`, propagate forward then reverse on the same
    state (as the engine does); returns (K, H, W) mask logits at the video resolution."""
    import torch

    K, H, W = state["num_frames"], state["video_height"], state["video_width"]
    with torch.inference_mode():
        logits = torch.full((K, H, W), -1e4, dtype=torch.float32, device=state["device"])
        predictor.add_new_points_or_box(state, frame_idx=frame_idx, obj_id=1, points=points, labels=labels)
        for reverse in (False, True):
            for k, _, video_res in predictor.propagate_in_video(state, start_frame_idx=frame_idx, reverse=reverse):
                logits[k] = video_res[0, 0].float()
    return logits


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two boolean volumes; None when both are empty (agreement, but nothing to measure)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def make_case(shape, seed: int):
    """The phantom and the clicks: foreground at the organ's interior point on the middle slice,
    background inside the vessel on that slice (else at the point farthest from the organ)."""
    from medsam2.clicks import interior_point
    from medsam2.phantoms import PHANTOM_LABELS, make_phantom

    ph = make_phantom(tuple(shape), seed=seed)
    k = ph.image.shape[2] // 2
    organ = ph.label[:, :, k] == PHANTOM_LABELS["organ"]
    if not organ.any():
        raise SystemExit(f"the phantom (seed {seed}) shows no organ on the middle slice {k}; pick another --seed")
    x, y = interior_point(organ.T)  # frames are volume[:, :, k].T: x = i, y = j
    vessel = ph.label[:, :, k] == PHANTOM_LABELS["vessel"]
    bx, by = interior_point((vessel if vessel.any() else ~organ).T)
    return ph, [x, y, k], [bx, by, k]


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(device):
    import torch

    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Clock:
    """Wall-clock stages, synchronising CUDA at each boundary."""

    def __init__(self, device):
        self.device, self.stages = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        _sync(self.device)
        t0 = time.perf_counter()
        yield
        _sync(self.device)
        self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0


def _memory(device) -> dict:
    import torch

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}  # KiB on Linux
    if str(device).startswith("cuda"):
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _rss_now_mib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


# --------------------------------------------------------------------------------------------- workers


def worker_stock(job: dict) -> dict:
    import torch

    from medsam2.frames import scale_volume
    from medsam2.prompts import parse_objects

    device = job["device"]
    predictor = build_stock_predictor(job["config"], job["image_size"], job["checkpoint"], device)
    volume = np.load(job["volume"])
    fg, bg = job["click"], job["background_click"]
    k = fg[2]
    first = parse_objects({"foreground": [fg]}, volume.shape)[0].frame_inputs(k)
    second = parse_objects({"foreground": [fg], "background": [bg]}, volume.shape)[0].frame_inputs(k)
    with torch.inference_mode(), _autocast(device):
        predictor.forward_image(torch.zeros(1, 3, predictor.image_size, predictor.image_size, device=device))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_ready = _rss_now_mib()

    clock = Clock(device)
    folder = Path(job["workdir"]) / "stock-jpeg"
    with torch.inference_mode(), _autocast(device):
        with clock("jpeg_write_s"):
            scaled = scale_volume(volume, job["intensity"], "cpu").numpy()
            write_jpegs(scaled, folder)
        with clock("init_state_s"):
            state = predictor.init_state(video_path=str(folder))
        K, H, W = state["num_frames"], state["video_height"], state["video_width"]
        logits = torch.full((K, H, W), -1e4, dtype=torch.float32, device=state["device"])
        with clock("click_s"):
            _, _, m = predictor.add_new_points_or_box(state, frame_idx=k, obj_id=1, points=first[0], labels=first[1])
            logits[k] = m[0, 0].float()
        with clock("propagate_s"):
            for reverse in (False, True):
                for kk, _, video_res in predictor.propagate_in_video(state, start_frame_idx=k, reverse=reverse):
                    logits[kk] = video_res[0, 0].float()
            mask = (logits > 0).cpu().numpy()
        with clock("corrective_s"):
            predictor.reset_state(state)
            again = stock_track(predictor, state, k, second[0], second[1])
            mask2 = (again > 0).cpu().numpy()
    s = clock.stages
    e2e = s["jpeg_write_s"] + s["init_state_s"] + s["click_s"] + s["propagate_s"]
    np.save(Path(job["workdir"]) / "stock_mask.npy", mask.transpose(2, 1, 0))
    np.save(Path(job["workdir"]) / "stock_mask_corrective.npy", mask2.transpose(2, 1, 0))
    maskmem = state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
    mm_dtype = str(next(iter(maskmem.values()))["maskmem_features"].dtype) if maskmem else None
    return {
        "status": "ok",
        "stages": {n: s[n] for n in ("jpeg_write_s", "init_state_s", "click_s", "propagate_s")},
        "end_to_end_s": e2e,
        "clicked_slice_s": s["jpeg_write_s"] + s["init_state_s"] + s["click_s"],
        "corrective_s": s["corrective_s"],
        "rss_ready_mib": rss_ready,
        "jpeg_bytes": sum(p.stat().st_size for p in folder.glob("*.jpg")),
        "maskmem_dtype": mm_dtype,
        "fill_hole_area": predictor.fill_hole_area,
        "notes": [
            "clicked-slice latency = JPEG write + init_state + add_new_points_or_box",
            "corrective = reset_state + fg+bg clicks + propagate both ways on the loaded frames "
            "(each frame encoded again)",
            f"maskmem_features stored as {mm_dtype} on {state['storage_device']}",
            f"stock post-processing fill_hole_area={predictor.fill_hole_area} needs sam2's CUDA extension; "
            "without it sam2 warns and skips it",
        ],
    }


def worker_engine(job: dict) -> dict:
    import torch

    from medsam2.checkpoints import ModelSpec, build_model
    from medsam2.propagation import Segmenter
    from medsam2.prompts import parse_objects

    device = job["device"]
    model = build_model(ModelSpec(job["config"], job["image_size"], Path(job["checkpoint"])), device=device)
    seg = Segmenter(model, encode_batch_size=job["encode_batch_size"], intensity=job["intensity"],
                    precision=job.get("precision", "auto"), stop_after_empty=job.get("stop_after_empty", 0))
    volume = np.load(job["volume"])
    I, J, K = volume.shape
    fg, bg = job["click"], job["background_click"]
    k = fg[2]
    first = parse_objects({"foreground": [fg]}, volume.shape)
    second = parse_objects({"foreground": [fg], "background": [bg]}, volume.shape)
    pts, lbl, _ = first[0].frame_inputs(k)
    b = seg.encode_batch_size
    with torch.inference_mode(), _autocast(device):
        model.forward_image(torch.zeros(b, 3, model.image_size, model.image_size, device=device))
        model.forward_image(torch.zeros(1, 3, model.image_size, model.image_size, device=device))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_ready = _rss_now_mib()

    clock = Clock(device)
    with clock("open_s"):
        session = seg.open(volume)
    with clock("segment_s"):
        result = seg.segment(session, first)
    with clock("corrective_s"):
        result2 = seg.segment(session, second)
    with clock("clicked_slice_cached_s"), _autocast(device):
        state = model.init_volume_state(session.features, height=J, width=I)
        _, _, m = model.add_new_points_or_box(state, frame_idx=k, obj_id=1, points=pts, labels=lbl)
        (m[0, 0] > 0).cpu()
    del state
    with clock("clicked_slice_s"):
        fresh = seg.open(volume, encode=False)
        with _autocast(device):
            state = model.init_volume_state(fresh.features, height=J, width=I)
            _, _, m = model.add_new_points_or_box(state, frame_idx=k, obj_id=1, points=pts, labels=lbl)
            (m[0, 0] > 0).cpu()
    encoded_for_click = int(fresh.features.encoded.sum())
    del state, fresh
    s = clock.stages
    out = {
        "status": "ok",
        "stages": {"open_s": s["open_s"], "segment_s": s["segment_s"]},
        "end_to_end_s": s["open_s"] + s["segment_s"],
        "clicked_slice_s": s["clicked_slice_s"],
        "clicked_slice_cached_s": s["clicked_slice_cached_s"],
        "corrective_s": s["corrective_s"],
        "rss_ready_mib": rss_ready,
        "features_mib": session.nbytes / 2**20,
        "notes": [
            "open = scale + batched encoding of every slice; segment = click + propagation both ways",
            f"clicked-slice latency = open(encode=False) + init_volume_state + add_new_points_or_box "
            f"(encodes {encoded_for_click} slice); with features cached: clicked_slice_cached_s",
            "corrective = second segment() on the open session with one more background click",
        ],
    }
    np.save(Path(job["workdir"]) / "engine_mask.npy", result.label == 1)
    np.save(Path(job["workdir"]) / "engine_mask_corrective.npy", result2.label == 1)
    if job.get("breakdown"):
        out["breakdown"] = engine_breakdown(seg, session, first, device)
    return out


def engine_breakdown(seg, session, objects, device) -> dict:
    """One more segment() with timers around the model's parts (synchronising CUDA at each, which
    slows it a little): where propagation time goes."""
    model = seg.model
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    handles = []
    parts = {
        "memory_attention": model.memory_attention,
        "prompt_encoder": model.sam_prompt_encoder,
        "mask_decoder": model.sam_mask_decoder,
        "memory_encoder": model.memory_encoder,
    }
    for name, module in parts.items():
        def pre(_m, _a, name=name):
            _sync(device)
            totals.setdefault("_t0", {})[name] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            _sync(device)
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - totals["_t0"][name]
            counts[name] = counts.get(name, 0) + 1

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    _sync(device)
    t0 = time.perf_counter()
    try:
        seg.segment(session, objects)
    finally:
        for h in handles:
            h.remove()
    _sync(device)
    total = time.perf_counter() - t0
    totals.pop("_t0", None)
    parts_s = {n: totals.get(n, 0.0) for n in parts}
    parts_s["other (python, feature prep, resizing, bookkeeping)"] = total - sum(parts_s.values())
    return {"segment_s": total, "parts_s": parts_s, "calls": counts}


def worker_monailabel(job: dict) -> dict:
    """MONAI Label's own Sam2InferTask, offline, on the benchmark weights (see module docstring)."""
    import nibabel as nib
    import torch
    from omegaconf import OmegaConf

    from medsam2.checkpoints import load_model_config

    workdir = Path(job["workdir"])
    model_dir = workdir / "monailabel-model"
    model_dir.mkdir(exist_ok=True)
    ckpt_name, cfg_name = "bench_weights.pt", "bench_config.yaml"
    os.environ["MONAI_SAM_MODEL_PT"] = f"file://{model_dir / ckpt_name}"
    os.environ["MONAI_SAM_MODEL_CFG"] = f"file://{model_dir / cfg_name}"
    os.environ["MONAI_LABEL_DATASTORE_CACHE_PATH"] = str(workdir / "monailabel-cache")  # it wipes <this>/sam2
    target = model_dir / ckpt_name
    if not target.exists():
        os.symlink(job["checkpoint"], target)
    cfg = load_model_config(job["config"])
    size = int(job["image_size"] or cfg.model.image_size)
    cfg.model.image_size = size
    for part in ("self_attention", "cross_attention"):
        if "feat_sizes" in cfg.model.memory_attention.layer[part]:
            cfg.model.memory_attention.layer[part].feat_sizes = [size // 16, size // 16]
    OmegaConf.save(cfg, model_dir / cfg_name)

    try:
        from monailabel.interfaces.tasks.infer_v2 import InferType
        from monailabel.sam2.infer import Sam2InferTask
    except Exception as e:  # noqa: BLE001 - report whatever stops it
        return {"status": f"not run: cannot import monailabel.sam2.infer ({type(e).__name__}: {e})"}
    try:
        task = Sam2InferTask(str(model_dir), type=InferType.DEEPGROW, dimension=3)
    except Exception as e:  # noqa: BLE001
        return {"status": f"not run: Sam2InferTask.__init__ failed ({type(e).__name__}: {e})"}

    device = job["device"]
    affine = np.eye(4)
    warm = workdir / "monailabel-warmup.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 4), np.float32), affine), str(warm))
    image = workdir / "volume.nii.gz"
    fg, bg = job["click"], job["background_click"]
    task({"image": str(warm), "foreground": [[16, 16, 2]], "device": device})  # builds the predictor
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_ready = _rss_now_mib()
    clock = Clock(device)
    with clock("call_s"):
        mask_file, _ = task({"image": str(image), "foreground": [fg], "device": device})
    with clock("corrective_s"):
        mask_file2, _ = task({"image": str(image), "foreground": [fg], "background": [bg], "device": device})
    mask = np.asarray(nib.load(mask_file).dataobj) > 0
    mask2 = np.asarray(nib.load(mask_file2).dataobj) > 0
    np.save(workdir / "monailabel_mask.npy", mask)
    np.save(workdir / "monailabel_mask_corrective.npy", mask2)
    return {
        "status": "ok",
        "stages": {"call_s": clock.stages["call_s"]},
        "end_to_end_s": clock.stages["call_s"],
        "clicked_slice_s": None,
        "corrective_s": clock.stages["corrective_s"],
        "rss_ready_mib": rss_ready,
        "notes": [
            "default settings download SAM 2.1 hiera-large from huggingface.co in __init__ (no internet here); "
            "run with the benchmark weights placed in model_dir and named by MONAI_SAM_MODEL_PT/CFG",
            "one request: JPEG write of raw voxel values (no window) + init_state + click + forward propagation "
            "only (slices before the clicked one stay empty) + NIfTI writing; stages are not separable",
            "clicked-slice latency: n/a, the task returns only the whole volume",
            "corrective = second request with a background click: same state, no reset, forward again",
        ],
    }


def run_worker(name: str, job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    import torch

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    fn = {"stock": worker_stock, "engine": worker_engine, "monailabel": worker_monailabel}[name]
    out = fn(job)
    out.update(_memory(job["device"]))
    out["torch_threads"] = torch.get_num_threads()
    Path(job["workdir"], f"{name}.json").write_text(json.dumps(out, indent=2))
    sys.stdout.flush()
    os._exit(0)  # MONAI Label's cache thread would keep the process alive


# --------------------------------------------------------------------------------------------- parent


def _fmt(v, spec=".2f", none="-"):
    return none if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def print_table(results: dict, K: int) -> str:
    head = ["path", "status", "jpeg write s", "load/init/encode s", "click+propagate s", "end-to-end s",
            "slices/s", "clicked-slice s", "corrective s", "peak RSS MiB", "peak CUDA MiB", "Dice vs stock"]
    rows = []
    for name in PATHS:
        r = results.get(name)
        if r is None:
            continue
        if r.get("status") != "ok":
            rows.append([name, r.get("status", "?")] + ["-"] * (len(head) - 2))
            continue
        st = r.get("stages", {})
        if name == "stock":
            jpeg, load, prop = st["jpeg_write_s"], st["init_state_s"], st["click_s"] + st["propagate_s"]
        elif name == "engine":
            jpeg, load, prop = None, st["open_s"], st["segment_s"]
        else:
            jpeg, load, prop = None, None, None
        click = _fmt(r.get("clicked_slice_s"))
        if name == "engine":
            click += f" ({_fmt(r.get('clicked_slice_cached_s'), '.3f')} cached)"
        rows.append([
            name, "ok", _fmt(jpeg), _fmt(load), _fmt(prop) if name != "monailabel" else "(in one call)",
            _fmt(r["end_to_end_s"]), _fmt(K / r["end_to_end_s"], ".1f"), click, _fmt(r.get("corrective_s")),
            _fmt(r.get("peak_rss_mib"), ".0f"), _fmt(r.get("cuda_peak_mib"), ".0f"),
            _fmt(r.get("dice_vs_stock"), ".4f", "n/a" if name != "stock" else "-"),
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="sam2.1_hiera_t", help="sam2 or project config name (default sam2.1_hiera_t)")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--shape", type=int, nargs=3, default=(256, 256, 64), metavar=("I", "J", "K"))
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed for the random weights and phantom seed")
    p.add_argument("--checkpoint", help="use these weights instead of random ones")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of " + ",".join(PATHS))
    p.add_argument("--intensity", default="auto", help="intensity rule for the engine and the stock JPEGs")
    p.add_argument("--encode-batch-size", type=int, default=None,
                   help="slices per encoder batch (default: the engine's, 8 on CUDA and 1 on CPU)")
    p.add_argument("--precision", default="auto", help="engine: auto (bf16 on CUDA), bf16 (also on CPU) or fp32")
    p.add_argument("--stop-after-empty", type=int, default=0, help="engine: stop a direction after N empty slices")
    p.add_argument("--threads", type=int, help="torch.set_num_threads in each worker (default: torch's); on a "
                   "small shared CPU use 1: oversubscribed torch threads make timings slow and erratic")
    p.add_argument("--breakdown", action="store_true", help="time the engine's model parts in one more segment()")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per path")
    p.add_argument("--out", default="bench-results/speed.json")
    p.add_argument("--keep", action="store_true", help="keep the work folder (JPEGs, masks, logs)")
    p.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.job)
        return 0

    import torch

    from medsam2.checkpoints import ModelSpec, build_model, save_checkpoint
    from medsam2.phantoms import PHANTOM_LABELS
    from medsam2.propagation import pick_device

    device = str(pick_device(args.device))
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = set(paths) - set(PATHS)
    if unknown:
        p.error(f"unknown paths {sorted(unknown)}")
    workdir = Path(tempfile.mkdtemp(prefix="speed-bench-"))
    ph, fg, bg = make_case(args.shape, args.seed)
    np.save(workdir / "volume.npy", ph.image)
    if "monailabel" in paths:
        import nibabel as nib

        nib.save(nib.Nifti1Image(ph.image, ph.affine), str(workdir / "volume.nii.gz"))
    if args.checkpoint:
        ckpt = Path(args.checkpoint).resolve()
    else:
        torch.manual_seed(args.seed)
        model = build_model(ModelSpec(args.config, args.image_size))
        ckpt = save_checkpoint(model, workdir / "weights.pt", {"config": args.config, "seed": args.seed})
        del model
    job = {
        "config": args.config, "image_size": args.image_size, "checkpoint": str(ckpt), "device": device,
        "volume": str(workdir / "volume.npy"), "click": fg, "background_click": bg, "workdir": str(workdir),
        "intensity": args.intensity, "encode_batch_size": args.encode_batch_size, "threads": args.threads,
        "precision": args.precision, "stop_after_empty": args.stop_after_empty,
        "breakdown": args.breakdown,
    }
    job_path = workdir / "job.json"
    job_path.write_text(json.dumps(job, indent=2))
    print(f"work folder {workdir}; {args.config} at {args.image_size} px on {device}; volume {tuple(args.shape)}; "
          f"click {fg}, corrective background click {bg}", flush=True)

    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    for name in [n for n in PATHS if n in paths]:
        log = workdir / f"{name}.log"
        t0 = time.perf_counter()
        print(f"[{name}] running (log {log}) ...", flush=True)
        try:
            with open(log, "w") as f:
                cmd = [sys.executable, "-m", "benchmarks.speed", "--worker", name, "--job", str(job_path)]
                rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout).returncode
            res_file = workdir / f"{name}.json"
            if rc == 0 and res_file.exists():
                results[name] = json.loads(res_file.read_text())
            else:
                tail = log.read_text().strip().splitlines()[-3:]
                results[name] = {"status": f"failed (exit {rc}): {' | '.join(tail)}"}
        except subprocess.TimeoutExpired:
            results[name] = {"status": f"not finished within {args.timeout:.0f} s"}
        print(f"[{name}] {results[name].get('status')} in {time.perf_counter() - t0:.1f} s wall", flush=True)

    truth = ph.label == PHANTOM_LABELS["organ"]
    masks = {n: np.load(workdir / f"{n}_mask.npy") for n in results if results[n].get("status") == "ok"}
    for n, m in masks.items():
        r = results[n]
        r["mask_voxels"] = int(m.sum())
        r["dice_vs_truth"] = dice(m, truth)
        if n != "stock" and "stock" in masks:
            r["dice_vs_stock"] = dice(m, masks["stock"])
            m2 = np.load(workdir / f"{n}_mask_corrective.npy")
            r["dice_vs_stock_corrective"] = dice(m2, np.load(workdir / "stock_mask_corrective.npy"))
        if n == "monailabel" and "engine" in masks:
            r["dice_vs_engine"] = dice(m, masks["engine"])
        r["slices_per_s"] = args.shape[2] / r["end_to_end_s"]

    table = print_table(results, args.shape[2])
    print(table)
    report = {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.speed", *(argv or sys.argv[1:])]),
        "config": args.config, "image_size": args.image_size, "shape_ijk": list(args.shape), "slices": args.shape[2],
        "weights": str(args.checkpoint) if args.checkpoint else f"random (torch.manual_seed({args.seed}))",
        "phantom_seed": args.seed, "click_ijk": fg, "background_click_ijk": bg, "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "dice_note": "Dice between paths measures agreement of implementations; None = both masks empty",
        "results": results, "table": table,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
