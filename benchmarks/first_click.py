"""The wait after a click on a CPU: stock SAM 2 against the engine, with encoding ahead and CPU runtimes.

    python -m benchmarks.first_click --threads 2                       # the issue's two volumes, every path
    python -m benchmarks.first_click --shapes 64x64x16 --config sam2.1_hiera_micro --image-size 128 --look 2

One run, the same random weights (`--config` at `--image-size`, `torch.manual_seed(--seed)`) and, per
volume, the same phantom and clicks as `benchmarks.speed` (foreground on the organ's middle slice; the
corrective click adds a background click on that slice). Each path runs in its own process, one after
the other. Three waits, each from the click to the whole label:
(a) first click on an image opened `--look` seconds before: the engine's server path
    (`InteractiveSegmenter`): `encode_ahead` when the image is fetched, the click `--look` s later
    (stock SAM 2 does nothing before a click: its (a) is its (b));
(b) first click on an image never opened: load, encode and propagate;
(c) corrective click: one more background click on the same slice, the image open.
Paths: `stock` (`SAM2VideoPredictor` on a JPEG folder, as MONAI Label's SAM 2 task feeds it; see
benchmarks/speed.py); the engine with the server's defaults on this machine (`engine-defaults`:
`encoder_runtime auto`, `precision auto`); and the engine in fp32 with its image encoder run by PyTorch
(`engine`, the reference), ONNX Runtime fp32 / int8 (`engine-ort`, `engine-ort-int8`) and OpenVINO at
its default precision for this CPU (`engine-openvino`), and all in PyTorch bf16 autocast
(`engine-bf16`, `--conf precision bf16`: the whole model).
Masks are compared with stock's and with the torch fp32 engine's (Dice; random weights, so only
agreement means something). Prints a table per volume, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medsam2.evaluation.metrics import dice
from medsam2.stock import make_case

from benchmarks.results import write_results

REPO = Path(__file__).resolve().parent.parent
ENGINES = {  # path -> (encoder_runtime, encoder_precision, Segmenter precision)
    "engine-defaults": ("auto", "auto", "auto"),  # what the server does by default on this machine
    "engine": ("torch", "auto", "fp32"),
    "engine-bf16": ("torch", "auto", "bf16"),
    "engine-ort": ("onnxruntime", "fp32", "fp32"),
    "engine-ort-int8": ("onnxruntime", "int8", "fp32"),
    "engine-openvino": ("openvino", "auto", "fp32"),
}
PATHS = ("stock", *ENGINES)


def describe(encoder, segmenter) -> str:
    """What ran: the encoder, and bf16 autocast (which also covers a PyTorch encoder) for the rest."""
    if segmenter.dtype is None:
        return encoder.describe()
    if encoder.runtime == "torch":
        return "torch, the whole model in bf16 autocast"
    return f"{encoder.describe()}, the rest in bf16"


def worker_engine(job: dict, path: str) -> dict:
    """The three waits through the server's own engine object (InteractiveSegmenter)."""
    import torch

    from medsam2.prompts import parse_objects
    from medsam2.service import ImageFile, InteractiveSegmenter, ModelProvider
    from medsam2.sessions import SessionCache
    from medsam2.settings import EngineSettings

    runtime, encoder_precision, precision = ENGINES[path]
    settings = EngineSettings(checkpoint=job["checkpoint"], model_config=job["config"], image_size=job["image_size"],
                              device="cpu", encoder_runtime=runtime, encoder_precision=encoder_precision,
                              precision=precision)
    provider = ModelProvider(settings, Path(job["workdir"]) / "model")
    t0 = time.perf_counter()
    segmenter, _ = provider.get()  # builds the model, and exports / loads the encoder for its runtime
    load_s = time.perf_counter() - t0
    volume = np.load(job["volume"])
    header = {"affine": np.eye(4)}
    first = parse_objects({"foreground": [job["click"]]}, volume.shape)
    second = parse_objects({"foreground": [job["click"]], "background": [job["background_click"]]}, volume.shape)

    def click(engine, client, objects):
        t = time.perf_counter()
        with engine.ahead.inference():
            session, cached = engine.open(client, ImageFile("volume", 1), lambda: (volume, header))
            result, stats = engine.run(session, objects, None, cached)
        return time.perf_counter() - t, result, stats

    warm = InteractiveSegmenter(provider, SessionCache())  # untimed: first calls of every kernel
    small = volume[:, :, : min(8, volume.shape[2])]
    session, _ = warm.open("warm", ImageFile("small", 1), lambda: (small, header))
    warm.run(session, parse_objects({"foreground": [[s // 2 for s in small.shape]]}, small.shape))
    del warm, session

    engine = InteractiveSegmenter(provider, SessionCache(), encode_ahead=False)
    unopened_s, result, stats_b = click(engine, "b", first)
    corrective_s, result2, stats_c = click(engine, "b", second)
    del engine

    engine = InteractiveSegmenter(provider, SessionCache())
    job_ahead = engine.encode_ahead("user", "volume", lambda: (ImageFile("volume", 1), lambda: (volume, header)))
    time.sleep(job["look_s"])  # the user looks at the image
    encoded_at_click = job_ahead.encoded
    opened_s, result_a, stats_a = click(engine, "a", first)
    engine.ahead.close()

    np.save(Path(job["workdir"]) / f"{path}_mask.npy", result.label == 1)
    np.save(Path(job["workdir"]) / f"{path}_mask_corrective.npy", result2.label == 1)
    return {
        "status": "ok",
        "encoder": describe(provider.encoder, segmenter),
        "encoder_load_s": provider.encoder.load_s,
        "model_load_s": load_s,
        "opened_s": opened_s,
        "opened_slices_encoded_before": stats_a["slices_encoded_before"],
        "opened_encoded_at_click": encoded_at_click,
        "opened_same_as_unopened": bool(np.array_equal(result_a.label, result.label)),
        "unopened_s": unopened_s,
        "unopened_encode_s": stats_b["encode_s"],
        "corrective_s": corrective_s,
        "torch_threads": torch.get_num_threads(),
    }


def worker_stock(job: dict) -> dict:
    from benchmarks import speed

    out = speed.worker_stock(job)
    return {"status": "ok", "opened_s": out["end_to_end_s"], "unopened_s": out["end_to_end_s"],
            "corrective_s": out["corrective_s"], "stages": out["stages"]}


def run_worker(name: str, job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    import torch

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    out = worker_stock(job) if name == "stock" else worker_engine(job, name)
    Path(job["workdir"], f"{name}.json").write_text(json.dumps(out, indent=2))
    sys.stdout.flush()
    os._exit(0)


def table(results: dict, shape) -> str:
    stock = results.get("stock", {})

    def cell(r, key):
        if r.get("status") != "ok":
            return "-"
        value = r[key]
        base = stock.get(key) if stock.get("status") == "ok" else None
        return f"{value:.1f} s" + (f" ({base / value:.1f}x)" if base and r is not stock else "")

    lines = [f"{shape[0]} x {shape[1]} x {shape[2]} (I x J x K)",
             "| path | encoder | (a) first click, opened before | slices encoded at the click | (b) first click, "
             "unopened | (c) corrective click | Dice vs stock | Dice vs engine fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if r.get("status") != "ok":
            lines.append(f"| {name} | {r.get('status')} | | | | | | |")
            continue
        before = f"{r['opened_slices_encoded_before']} of {shape[2]}" if "opened_slices_encoded_before" in r else "-"
        d_stock = r.get("dice_vs_stock")
        d_engine = r.get("dice_vs_engine")
        lines.append(f"| {name} | {r.get('encoder', 'torch (fp32), JPEG frames')} | {cell(r, 'opened_s')} | {before} | "
                     f"{cell(r, 'unopened_s')} | {cell(r, 'corrective_s')} | "
                     f"{'-' if d_stock is None else f'{d_stock:.3f}'} | {'-' if d_engine is None else f'{d_engine:.3f}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="sam2.1_hiera_t")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--shapes", default="256x256x64,512x512x40", help="volumes I x J x K, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of " + ",".join(PATHS))
    p.add_argument("--look", type=float, default=20.0, help="seconds between opening an image and the click (a)")
    p.add_argument("--threads", type=int, help="torch (and runtime) threads per worker")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--out", default="bench-results/first_click.json")
    p.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.job)
        return 0

    import torch

    from medsam2.checkpoints import ModelSpec, build_model, save_checkpoint

    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if set(paths) - set(PATHS):
        p.error(f"unknown paths {sorted(set(paths) - set(PATHS))}")
    root = Path(tempfile.mkdtemp(prefix="first-click-"))
    torch.manual_seed(args.seed)
    ckpt = save_checkpoint(build_model(ModelSpec(args.config, args.image_size)), root / "weights.pt",
                           {"config": args.config, "seed": args.seed})
    report = {"command": " ".join(["python", "-m", "benchmarks.first_click", *(argv or sys.argv[1:])]),
              "config": args.config, "image_size": args.image_size, "weights": f"random (torch.manual_seed({args.seed}))",
              "look_s": args.look, "cpu": platform.processor() or "cpu", "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "threads": args.threads or torch.get_num_threads(), "volumes": []}
    tables = []
    for spec in args.shapes.split(","):
        shape = tuple(int(v) for v in spec.lower().split("x"))
        workdir = root / spec
        workdir.mkdir()
        ph, fg, bg = make_case(shape, args.seed)
        np.save(workdir / "volume.npy", ph.image)
        job = {"config": args.config, "image_size": args.image_size, "checkpoint": str(ckpt), "device": "cpu",
               "volume": str(workdir / "volume.npy"), "click": fg, "background_click": bg, "workdir": str(workdir),
               "intensity": "auto", "threads": args.threads, "directions": "independent", "seed": args.seed,
               "look_s": args.look}
        (workdir / "job.json").write_text(json.dumps(job))
        results = {}
        for name in paths:
            t0 = time.perf_counter()
            with open(workdir / f"{name}.log", "w") as log:
                cmd = [sys.executable, "-m", "benchmarks.first_click", "--worker", name, "--job", str(workdir / "job.json")]
                try:
                    rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        timeout=args.timeout).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            out = workdir / f"{name}.json"
            results[name] = json.loads(out.read_text()) if rc == 0 and out.exists() else {
                "status": f"failed ({rc}): " + " | ".join((workdir / f"{name}.log").read_text().splitlines()[-2:])}
            print(f"[{spec} {name}] {results[name].get('status')} in {time.perf_counter() - t0:.0f} s", flush=True)
        masks = {n: np.load(workdir / f"{n}_mask.npy") for n in results if (workdir / f"{n}_mask.npy").exists()}
        for n, m in masks.items():
            for ref, key in (("stock", "dice_vs_stock"), ("engine", "dice_vs_engine")):
                if n != ref and ref in masks:
                    results[n][key] = dice(m, masks[ref])
        text = table(results, shape)
        print(text, flush=True)
        tables.append(text)
        report["volumes"].append({"shape_ijk": list(shape), "click_ijk": fg, "background_click_ijk": bg,
                                  "results": results, "table": text})
    out = Path(args.out)
    write_results(out, report, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
