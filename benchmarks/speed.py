"""Speed benchmark: stock SAM2 (JPEG folder), MONAI Label's Sam2InferTask and this project's engine.

    python -m benchmarks.speed                                   # sam2.1_hiera_t at 512 px, 64 slices of 256x256
    python -m benchmarks.speed --shape 512 512 300 --image-size 1024 --paths stock,plain,engine   # the GPU target
    python -m benchmarks.speed --config sam2.1_hiera_micro --shape 64 64 16 --out bench-results/small.json

All paths run on the same weights (random weights of `--config`, built once with a fixed
`torch.manual_seed` and saved as a checkpoint, or `--checkpoint`), the same synthetic volume
(`medsam2.phantoms.make_phantom(--shape, --seed)`) and the same click: a foreground click on the
middle slice at the organ's most interior point (`medsam2.clicks.interior_point`); the corrective
click adds a background click on the same slice (inside the vessel when the slice shows it).

Each path runs in its own subprocess, one after the other, so peak memory (CPU RSS from
`getrusage`, and `torch.cuda.max_memory_allocated` on CUDA) belongs to that path alone and MONAI
Label's task (which resets hydra and starts a cache thread at import) cannot disturb the others.
Model building is not timed (a server does it once). Before the timers every SAM2 path runs one
untimed warm-up propagation on a small volume of the same slice size (cuDNN/cuBLAS set-up, and the
engine's CUDA-graph captures; its seconds are reported as `warmup_s`). On CUDA all SAM2 paths run
under bf16 autocast, as SAM2's examples do; MONAI Label's task enters bf16 autocast itself.

Both directions are tracked the way `--directions` says (the engine's default, "independent": forward
from the clicked slice, then backward from it afresh, as MedSAM2 does with stock SAM2; "sequential":
backward on the same state, stock SAM2's `propagate_in_video(reverse=True)` after the forward pass).

(a) stock: window the volume (the same intensity rule as the engine), write every slice as an
    8-bit RGB JPEG with PIL (default quality 75), `build_sam2_video_predictor` with the sam2 config
    and hydra overrides for the image size, `init_state(video_path=folder)` (decodes every JPEG and
    encodes frame 0), `add_new_points_or_box` on the clicked slice, `propagate_in_video` forward,
    then reverse (after `reset_state` and the same click again when independent). Stock SAM2 encodes
    each frame again as it reaches it (it caches only the most recent frame's features). Its
    clicked-slice latency is JPEG writing + init_state + the click. Its corrective click is
    `reset_state` + both clicks + propagation both ways on the already loaded frames.
(b) monailabel: `monailabel.sam2.infer.Sam2InferTask` with `dimension=3`. Its `__init__` downloads
    SAM 2.1 hiera-large from Hugging Face unless the files named by `MONAI_SAM_MODEL_PT` /
    `MONAI_SAM_MODEL_CFG` already exist in its model_dir, so the worker places the benchmark's
    checkpoint and a config yaml there and names them through those settings: the task then runs
    offline on the same weights. It writes raw voxel values as JPEGs (no window), propagates
    forward only and returns only the whole volume. Its first request builds the predictor, so an
    untimed request on a tiny volume runs first. If it cannot run, the table says why.
(c) the engine (`medsam2.propagation.Segmenter`), in variants of the same code:
    plain          the un-optimised path: in-memory frames, SAM2's own `propagate_in_video`, one slice
                   of one object at a time (the reference the optimised masks are compared with);
    engine         the default: batched lanes (all objects and both directions advance together),
                   slices encoded in batches (up front on a GPU, on demand on a CPU);
    engine-graphs  GPU only: the batched step replayed as CUDA graphs, slices encoded on a second
                   stream alongside propagation (not yet the default: unverified on a GPU);
    engine-offload engine-graphs with the largest feature level kept in pinned host memory.
    End to end = `open` (volume to the device, intensity scaling) + `segment` (click, propagation both
    ways, encoding every slice on the way) + the label back in host memory. Clicked-slice latency =
    `open` + the `segment` time until the clicked slice's mask exists (`prompted_s`, GPU synchronised).
    Corrective = a second `segment` on the open session with one more background click (features
    cached). Stages: one more fresh session encoded up front (`open(encode=True)`), then `segment`:
    encoding alone, propagation alone.

Dice is computed between the 3D masks of the paths (each path vs stock, the engine variants vs
plain: the optimised path's tolerance) and against the phantom's organ (meaningless with random
weights, reported for real checkpoints).
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

from medsam2.evaluation.metrics import dice
from medsam2.stock import build_stock_predictor, make_case, stock_propagate, stock_track, write_jpegs

from benchmarks.results import write_results

REPO = Path(__file__).resolve().parent.parent
WARMUP_SLICES = 40
PATHS = ("stock", "monailabel", "plain", "engine", "engine-graphs", "engine-offload")
DEFAULT_PATHS = ("stock", "monailabel", "plain", "engine")
ENGINE_VARIANTS = {  # Segmenter options of each engine path (the GPU-only options do nothing on a CPU)
    "plain": {"engine": "plain"},
    "engine": {"engine": "batched"},
    "engine-graphs": {"engine": "batched", "cuda_graphs": True, "overlap_encoding": True},
    "engine-offload": {"engine": "batched", "cuda_graphs": True, "overlap_encoding": True, "offload_levels": (0,)},
}


# --------------------------------------------------------------------------------------------- helpers


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


def warmup_volume(job: dict) -> np.ndarray:
    """A small phantom with the benchmark volume's slice size, for the untimed warm-up: on CUDA 40
    slices (enough steps for every memory shape a propagation meets, so every CUDA graph is captured),
    on a CPU 8 (nothing there to capture)."""
    from medsam2.phantoms import make_phantom

    I, J, _ = np.load(job["volume"], mmap_mode="r").shape
    return make_phantom((I, J, WARMUP_SLICES if job["device"].startswith("cuda") else 8), seed=job["seed"] + 1).image


def worker_stock(job: dict) -> dict:
    import torch

    from medsam2.frames import scale_volume
    from medsam2.prompts import parse_objects

    device, directions = job["device"], job["directions"]
    predictor = build_stock_predictor(job["config"], job["image_size"], job["checkpoint"], device)
    volume = np.load(job["volume"])
    fg, bg = job["click"], job["background_click"]
    k = fg[2]
    first = parse_objects({"foreground": [fg]}, volume.shape)[0].frame_inputs(k)
    second = parse_objects({"foreground": [fg], "background": [bg]}, volume.shape)[0].frame_inputs(k)

    t0 = time.perf_counter()
    warm = Path(job["workdir"]) / "stock-warmup"
    write_jpegs(scale_volume(warmup_volume(job), job["intensity"], "cpu").numpy(), warm)
    with torch.inference_mode(), _autocast(device):
        state = predictor.init_state(video_path=str(warm))
        c = np.array([[volume.shape[0] / 2, volume.shape[1] / 2]], np.float32)
        stock_track(predictor, state, state["num_frames"] // 2, c, np.array([1], np.int32), directions)
    del state
    _sync(device)
    warmup_s = time.perf_counter() - t0
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
            stock_propagate(predictor, state, k, first[0], first[1], directions, logits)
            mask = (logits > 0).cpu().numpy()
        with clock("corrective_s"):
            predictor.reset_state(state)
            again = stock_track(predictor, state, k, second[0], second[1], directions)
            mask2 = (again > 0).cpu().numpy()
    s = clock.stages
    e2e = s["jpeg_write_s"] + s["init_state_s"] + s["click_s"] + s["propagate_s"]
    np.save(Path(job["workdir"]) / "stock_mask.npy", mask.transpose(2, 1, 0))
    np.save(Path(job["workdir"]) / "stock_mask_corrective.npy", mask2.transpose(2, 1, 0))
    return {
        "status": "ok",
        "stages": {n: s[n] for n in ("jpeg_write_s", "init_state_s", "click_s", "propagate_s")},
        "end_to_end_s": e2e,
        "clicked_slice_s": s["jpeg_write_s"] + s["init_state_s"] + s["click_s"],
        "corrective_s": s["corrective_s"],
        "warmup_s": warmup_s,
        "rss_ready_mib": rss_ready,
        "jpeg_bytes": sum(p.stat().st_size for p in folder.glob("*.jpg")),
        "fill_hole_area": predictor.fill_hole_area,
        "notes": [
            "clicked-slice latency = JPEG write + init_state + add_new_points_or_box",
            "corrective = reset_state + fg+bg clicks + propagate both ways on the loaded frames "
            "(each frame encoded again)",
            f"stock post-processing fill_hole_area={predictor.fill_hole_area} needs sam2's CUDA extension; "
            "without it sam2 warns and skips it",
        ],
    }


def worker_engine(job: dict, variant: str) -> dict:
    import torch

    from medsam2.checkpoints import ModelSpec, build_model
    from medsam2.propagation import Segmenter
    from medsam2.prompts import parse_objects
    from medsam2.settings import EngineSettings

    device = job["device"]
    model = build_model(ModelSpec(job["config"], job["image_size"], Path(job["checkpoint"])), device=device)
    options = dict(ENGINE_VARIANTS[variant])
    seg = Segmenter(model, EngineSettings(encode_batch=job["encode_batch_size"], intensity=job["intensity"],
                                          precision=job["precision"], stop_after_empty=job["stop_after_empty"],
                                          settle_slices=job["settle_slices"], directions=job["directions"], **options))
    volume = np.load(job["volume"])
    fg, bg = job["click"], job["background_click"]
    first = parse_objects({"foreground": [fg]}, volume.shape)
    second = parse_objects({"foreground": [fg], "background": [bg]}, volume.shape)

    t0 = time.perf_counter()
    warm = warmup_volume(job)
    seg.segment(seg.open(warm), parse_objects({"foreground": [[n // 2 for n in warm.shape]]}, warm.shape))
    _sync(device)
    warmup_s = time.perf_counter() - t0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_ready = _rss_now_mib()

    clock = Clock(device)
    with clock("open_s"):
        session = seg.open(volume)
    with clock("segment_s"):
        result = seg.segment(session, first)  # returns the label as a numpy array: synchronised
    with clock("corrective_s"):
        result2 = seg.segment(session, second)
    memory = _memory(device)
    features_mib = session.nbytes / 2**20
    host_mib = session.features.host_nbytes / 2**20
    del session
    with clock("encode_only_s"):
        staged = seg.open(volume, encode=True)
    with clock("propagate_only_s"):
        seg.segment(staged, first)
    del staged
    s = clock.stages
    steps = getattr(seg, "_steps", None)
    out = {
        "status": "ok",
        "variant": variant,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "stages": {"open_s": s["open_s"], "segment_s": s["segment_s"], "prompted_s": result.timings["prompted_s"],
                   "encode_only_s": s["encode_only_s"], "propagate_only_s": s["propagate_only_s"]},
        "end_to_end_s": s["open_s"] + s["segment_s"],
        "clicked_slice_s": s["open_s"] + result.timings["prompted_s"],
        "clicked_slice_cached_s": result2.timings["prompted_s"],
        "corrective_s": s["corrective_s"],
        "corrective_slices_tracked": result2.timings.get("slices"),
        "corrective_slices_settled": result2.timings.get("settled"),
        "warmup_s": warmup_s,
        "steps": result.timings.get("steps"),
        "cuda_graphs": None if steps is None else {"captured": steps.captured, "failures": steps.capture_failures[:3]},
        "rss_ready_mib": rss_ready,
        "features_mib": features_mib,
        "features_host_mib": host_mib,
        "notes": [
            "end to end = open (volume to device, scaling) + segment (click, encoding, propagation both ways, label)",
            "clicked-slice latency = open + segment until the clicked slice's mask exists (GPU synchronised); "
            "clicked_slice_cached_s: the same on the open image (the corrective request)",
            "corrective = second segment() on the open session with one more background click",
            "peak memory covers open, segment and corrective (not the stages run after them)",
        ],
        **memory,
    }
    np.save(Path(job["workdir"]) / f"{variant}_mask.npy", result.label == 1)
    np.save(Path(job["workdir"]) / f"{variant}_mask_corrective.npy", result2.label == 1)
    if job.get("breakdown") and not seg.use_graphs:  # hooks that synchronise cannot run inside a graph
        out["breakdown"] = engine_breakdown(seg, seg.open(volume, encode=True), first, device)
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
    if name in ENGINE_VARIANTS:
        out = worker_engine(job, name)
    else:
        out = {"stock": worker_stock, "monailabel": worker_monailabel}[name](job)
        out.update(_memory(job["device"]))
    out["torch_threads"] = torch.get_num_threads()
    Path(job["workdir"], f"{name}.json").write_text(json.dumps(out, indent=2))
    sys.stdout.flush()
    os._exit(0)  # MONAI Label's cache thread would keep the process alive


# --------------------------------------------------------------------------------------------- parent


def _fmt(v, spec=".2f", none="-"):
    return none if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def print_table(results: dict, K: int) -> str:
    head = ["path", "status", "end-to-end s", "slices/s", "clicked-slice s", "corrective s", "JPEG write s",
            "load/encode s", "propagate s", "peak CUDA MiB", "peak RSS MiB", "Dice vs stock", "Dice vs plain"]
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
        elif name in ENGINE_VARIANTS:  # encoding alone / propagation alone, from the staged run
            jpeg, load, prop = None, st["encode_only_s"], st["propagate_only_s"]
        else:
            jpeg, load, prop = None, None, None
        rows.append([
            name, "ok", _fmt(r["end_to_end_s"]), _fmt(K / r["end_to_end_s"], ".1f"),
            _fmt(r.get("clicked_slice_s"), ".3f"), _fmt(r.get("corrective_s"), ".3f"), _fmt(jpeg), _fmt(load),
            _fmt(prop) if name != "monailabel" else "(in one call)", _fmt(r.get("cuda_peak_mib"), ".0f"),
            _fmt(r.get("peak_rss_mib"), ".0f"), _fmt(r.get("dice_vs_stock"), ".4f", "n/a" if name != "stock" else "-"),
            _fmt(r.get("dice_vs_plain"), ".4f", "-"),
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
    p.add_argument("--paths", default=",".join(DEFAULT_PATHS), help="comma-separated subset of " + ",".join(PATHS))
    p.add_argument("--directions", default="independent", help="independent (the engine's default) or sequential")
    p.add_argument("--intensity", default="auto", help="intensity rule for the engine and the stock JPEGs")
    p.add_argument("--encode-batch-size", type=int, default=None,
                   help="slices per encoder batch (default: the engine's, 8 on CUDA and 1 on CPU)")
    p.add_argument("--precision", default="auto", help="engine: auto (bf16 on CUDA), bf16 (also on CPU) or fp32")
    p.add_argument("--stop-after-empty", type=int, default=0, help="engine: stop a direction after N empty slices")
    p.add_argument("--settle-slices", type=int, default=0,
                   help="engine: a correction re-propagates until N slices come out unchanged (0 = to the ends)")
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
        "precision": args.precision, "stop_after_empty": args.stop_after_empty, "settle_slices": args.settle_slices,
        "breakdown": args.breakdown, "directions": args.directions, "seed": args.seed,
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
        for ref in ("stock", "plain"):  # agreement with stock SAM2, and with the un-optimised engine path
            if n != ref and ref in masks and not (ref == "plain" and n not in ENGINE_VARIANTS):
                r[f"dice_vs_{ref}"] = dice(m, masks[ref])
                m2, ref2 = (np.load(workdir / f"{x}_mask_corrective.npy") for x in (n, ref))
                r[f"dice_vs_{ref}_corrective"] = dice(m2, ref2)
                r[f"voxels_differing_vs_{ref}"] = int((m != masks[ref]).sum())
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
        "directions": args.directions, "precision": args.precision, "settle_slices": args.settle_slices,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "dice_note": "Dice between paths measures agreement of implementations; None = both masks empty",
        "results": results, "table": table,
    }
    out = Path(args.out)
    write_results(out, report, default=str)
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
