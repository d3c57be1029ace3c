"""Where a fine-tuned model loses a real structure: on the clicked slice, or while tracking it.

Each recipe fine-tunes the demo model as `/train` does (1000 steps, lr 3e-4, mirror;
benchmarks/field_of_view.train_model) on Colin27's whole volume, labelled with the left caudate,
putamen, thalamus and hippocampus. Then every subcortical structure, both sides, is clicked once (the
interior point of its largest slice), and the answer is taken apart:
- `slice picked`: Dice on the clicked slice of the candidate SAM 2 picks (its predicted IoU);
- `slice best`: the best of SAM 2's three candidates for that click;
- `3D`: the one-click 3D Dice, as the product answers;
- `3D from truth`: the same slice prompted with its true mask (SAM 2's mask prompt), so that what is
  left is tracking alone.

Recipes (the two settings SAM 2's memory learns with; medsam2/demo_model.py's stage 2 uses both):
- `before`: the defaults up to 2026-12-06: tracked slices remembered from the model's own
  predictions, memory modules at the base lr;
- `true_memory`: half the clips remember their tracked slices from the true masks
  (`PromptSettings.p_true_memory` 0.5);
- `memory_lr`: memory attention and the memory encoder at 3 times the lr (`TrainConfig.memory_lr_scale`);
- `true_memory+memory_lr`: both, as the demo model's stage 2 learned to track; the fine-tuning
  default of a small model since 2026-12-06 (training/loop.TrackingRecipe).
- `true_memory+memory_lr+frozen_encoder`: that default with the image encoder frozen (`/train
  {"train_modules": "no_image_encoder"}`), which found the never-labelled lung more often
  (benchmarks/forgetting.py, docs/training.md).
- `true_memory+memory_lr+iou5`: that default with the IoU head's loss weighted 5 (`LossWeights.iou`).

    python -m benchmarks.fine_tune_tracking [--recipes before true_memory ...] [--work DIR]
        [--steps 1000] [--minutes 14] [--processes 1] [--seed 0] [--lr 3e-4] [--clip-len 8]

About 11 minutes a recipe on 2 cores plus a minute of clicks; a model already in --work, made from the
same demo model, is reused.
Prints a table and writes bench-results/fine_tune_tracking.json.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.demo_breadth import click_breakdown, click_point  # noqa: E402
from benchmarks.field_of_view import (TRAINED, default_config, run_job, segmenter_for, train_model,  # noqa: E402
                                     write_trained_volume)
from benchmarks.results import write_results  # noqa: E402
from medsam2.evaluation import real_data  # noqa: E402

# each a dict of TrainConfig overrides (field_of_view.with_overrides) on /train's defaults
RECIPES = {
    "before": {"prompts.p_true_memory": 0.0, "memory_lr_scale": 1.0},
    "true_memory": {"prompts.p_true_memory": 0.5, "memory_lr_scale": 1.0},
    "memory_lr": {"prompts.p_true_memory": 0.0, "memory_lr_scale": 3.0},
    "true_memory+memory_lr": {"prompts.p_true_memory": 0.5, "memory_lr_scale": 3.0},
    # /train's default with the image encoder frozen (train_modules no_image_encoder; benchmarks/forgetting.py)
    "true_memory+memory_lr+frozen_encoder": {"prompts.p_true_memory": 0.5, "memory_lr_scale": 3.0,
                                             "train_modules": "no_image_encoder"},
    # /train's default with the IoU head's loss 5 times heavier (LossWeights.iou): in runs that a time limit
    # shortens, SAM 2's pick on the clicked slice lags its best candidate (docs/training.md)
    "true_memory+memory_lr+iou5": {"prompts.p_true_memory": 0.5, "memory_lr_scale": 3.0, "weights.iou": 5.0},
}


def train_recipe(volume: real_data.RealVolume, out: Path, steps: int, recipe: dict, minutes: float | None = 14.0,
                 processes: int = 1, seed: int = 0, lr: float | None = None, clip_len: int | None = None) -> dict:
    """One run of `recipe`: in this process, or as `/train` runs it on a machine without GPUs (`processes`
    gloo ranks under torchrun, launch.one_machine_command); `minutes`: the time limit (None: none); `lr`:
    the peak learning rate (None: the model's default, training/loop.default_lr); `clip_len`: the slices
    a clip runs through memory (None: /train's, training/defaults.DEFAULT_RUN)."""
    settings = {"max_minutes": minutes, "seed": seed, "lr": lr, **recipe}
    if clip_len:
        settings["clip_len"] = clip_len
    if processes == 1:
        return train_model(volume, out, steps, windows=False, **settings)
    return train_in_processes(volume, out, steps, processes, **settings)


def train_in_processes(volume: real_data.RealVolume, out: Path, steps: int, processes: int, **overrides) -> dict:
    """`/train`'s path: the trained structures of `volume` as files, a job, torchrun with `processes` ranks."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = write_trained_volume(volume, Path(tmp))
        run = run_job(default_config(out, steps, **overrides), files, Path(tmp), processes)
    return {"steps": run.result["steps"], "seconds": round(run.seconds, 1), "processes": processes,
            "planned_steps": run.result["chosen"].get("planned_steps")}


def recipe_models(recipes, work: Path, train, tag: str = "") -> tuple[dict[str, Path], dict[str, dict]]:
    """The demo model and one fine-tuned checkpoint per recipe, made by `train(name, path)` where not
    there yet (benchmarks/forgetting.py uses it too): the paths by name, and the runs made. They are kept
    in `work`/<the demo model's sha256, first 8>-</train's DEFAULT_RUN's, first 6>/, so that neither a new
    demo model nor a change of /train's defaults reuses runs made before it; `tag` ends their file names
    (runs of other lengths)."""
    import json

    from medsam2.training.defaults import DEFAULT_RUN

    demo = REPO / "model" / "demo" / "medsam2_demo.pt"
    paths, runs = {"demo": demo}, {}
    defaults = hashlib.sha256(json.dumps(DEFAULT_RUN, sort_keys=True).encode()).hexdigest()[:6]
    folder = work / f"{hashlib.sha256(demo.read_bytes()).hexdigest()[:8]}-{defaults}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in recipes:
        paths[name] = folder / f"{name}{tag}.pt"
        if not paths[name].exists():
            runs[name] = train(name, paths[name])
    return paths, runs


def breakdown(checkpoint: Path, volume: real_data.RealVolume) -> dict[str, dict[str, float]]:
    """Per structure: the clicked slice's picked and best candidate, 3D from the click, 3D from the
    clicked slice's true mask (demo_breadth.click_breakdown)."""
    segmenter = segmenter_for(checkpoint)
    session = segmenter.open(volume.image)
    return {name: click_breakdown(segmenter, session, volume.label == value, click_point(volume.label == value))
            for name, value in sorted(volume.structures.items())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--work", type=Path, default=REPO / "bench-results" / "fine_tune_tracking")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=14.0, help="each run's time limit, as /train's; 0: none")
    ap.add_argument("--processes", type=int, default=1,
                    help="gloo ranks under torchrun, as /train runs without GPUs (default: one process)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, help="the peak learning rate (default: the model's, as /train's)")
    ap.add_argument("--clip-len", type=int, help="slices a clip runs through memory (default: /train's)")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "fine_tune_tracking.json")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    colin = real_data.colin27()
    trained = [colin.structures[n] for n in TRAINED]
    tag = "" if (args.steps, args.minutes, args.processes, args.seed) == (1000, 14.0, 1, 0) else \
        f"-{args.steps}steps-{args.minutes:g}min-{args.processes}p" + (f"-seed{args.seed}" if args.seed else "")
    tag += f"-lr{args.lr:g}" if args.lr else ""
    tag += f"-clip{args.clip_len}" if args.clip_len else ""
    paths, runs = recipe_models(args.recipes, args.work, lambda name, path: train_recipe(
        colin, path, args.steps, RECIPES[name], args.minutes or None, args.processes, args.seed, args.lr,
        args.clip_len), tag)
    results = {}
    for name, path in paths.items():
        t0 = time.perf_counter()
        results[name] = breakdown(path, colin)
        print(f"{name}: clicks {time.perf_counter() - t0:.0f} s", flush=True)
    names = {v: n for n, v in colin.structures.items()}
    groups = {"trained (L)": [names[v] for v in trained]}
    groups["counterparts (R)"] = [n.replace("_L", "_R") for n in groups["trained (L)"]]
    groups["never labelled"] = [n for n in sorted(colin.structures) if n not in groups["trained (L)"] + groups["counterparts (R)"]]
    measures = ("slice_picked", "slice_best", "3d", "3d_from_truth")
    print("| recipe | structures | slice picked | slice best | 3D | 3D from truth |")
    print("|---|---|---|---|---|---|")
    for recipe, rows in results.items():
        for group, members in groups.items():
            means = [np.mean([rows[m][k] for m in members]) for k in measures]
            print(f"| {recipe} | {group} | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    write_results(args.out, {"recipes": {r: RECIPES[r] for r in args.recipes}, "training_runs": runs,
                             "groups": groups, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
