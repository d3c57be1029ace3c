"""What one fine-tuning run forgets, and what keeps it.

Each recipe fine-tunes the demo model as `/train` does with its defaults (1000 steps, the tracking
recipe, the mirror; no validation images, as `val_split` 0) on the chest CT cropped to its lungs
plus 10 mm, with the left lung labelled. Then one click each (the interior point of the structure's
largest slice, through the engine) on:
- the left lung (trained) and the right lung (never labelled: learned from its mirror image);
- what the demo model could do before and was not shown: the head CT's skull and head, Colin27's
  twelve subcortical structures (cropped to them + 10 mm), the organ and the vessel of four held-out
  phantoms (64 x 64 x 32, seeds 100-103), both twins of four held-out twin pairs (seeds 5000-5003).

Recipes:
- `none`: `/train`'s defaults;
- `replay`: 30 % of the clips from the demo model's own training data (`/train {"replay": 0.3}`);
- `anchor100`: L2-SP, every weight pulled back toward the demo model's (`TrainConfig.anchor` 100;
  `/train {"anchor": 100}`): a weight drifts at most about 1/100 from its start, where the run
  without it drifts 0.012 (root-mean-square) over all weights;
- `unlabelled_click`: half the clips also get a click outside the labelled lung, whose answer must
  contain the clicked pixel and say "object" (`PromptSettings.p_unlabelled_click` 0.5).
- `frozen_encoder`: the image encoder frozen, every other module trained (`/train {"train_modules":
  "no_image_encoder"}`): the module whose change alone erased what the demo model could do (`--modules`).
- `keep_start`: half the clips also answer three clicks outside the labelled lung as the demo model
  answers them (learning without forgetting, `TrainConfig.keep_start` 0.5; `/train {"keep_start": 0.5}`).
- `keep_start_unlabelled`: the same, half of those clicks on unlabelled images, as `/train` takes them
  from the datastore's other studies: the head CT and Colin27 (the very images the skull, the head and
  Colin27 are clicked on below: in a datastore they are the studies waiting to be labelled), two
  phantoms (seeds 200, 201) and two twin pairs (6000, 6001), not those clicked below.
  Both answer each click on the clicked slice alone (`keep_start_slices` 1).
- `keep_start_tracked`: `keep_start_unlabelled` with each click also tracked by memory through the next
  three slices, the start's answers kept on all four (`keep_start_slices` 4).
- `keep_start_tracked_chest`: the same with the chest CT itself as the only unlabelled image, as in a
  datastore of chest CTs, whose unlabelled images hold the lung being learned.
  These four keep every click (`keep_start_spares_labelled` off), as they were measured.
- `keep_start_spared`, `keep_start_spared_chest`: `keep_start_tracked` and `keep_start_tracked_chest`
  with the clicks that look like the labelled lung to the demo model's image encoder left out
  (`keep_start.LabelledLook`; `/train`'s default when keep_start is on).

`drift` is the root-mean-square distance of the trained weights from the demo model's.

`--seeds 0 1 2` trains each recipe once per seed (`TrainConfig.seed`: the weights' start is the demo
model's either way; the seed draws the clips, the prompts and the augmentation), rows `none@seed1` and
so on, and prints each recipe's spread (largest minus smallest over the seeds): the run-to-run noise
that "not worse" is judged against.

`--modules RECIPE` also asks where that recipe's run forgot: the trained model with one module given
back the demo model's weights (`back:`), and the demo model with one module taken from the trained
model (`only:`), for the image encoder, the prompt encoder, the mask decoder, memory attention, the
memory encoder, and the rest (object pointers and learned embeddings).

    python -m benchmarks.forgetting [--recipes none anchor100 replay] [--seeds 0 1 2] [--modules none] [--work DIR]
        [--clip-len 8]

About 15 minutes a run on 2 cores plus half a minute of clicks; a model already in --work, made from
the same demo model, is reused.
Prints a table and writes bench-results/forgetting.json.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.demo_breadth import click_point  # noqa: E402
from benchmarks.field_of_view import default_config  # noqa: E402
from benchmarks.fine_tune_tracking import recipe_models  # noqa: E402
from benchmarks.results import write_results  # noqa: E402
from medsam2.evaluation import real_data  # noqa: E402
from medsam2.evaluation.metrics import dice  # noqa: E402

RECIPES = {
    "none": {},
    "replay": {"replay_share": 0.3},
    "anchor100": {"anchor": 100.0},
    "unlabelled_click": {"prompts.p_unlabelled_click": 0.5},
    "frozen_encoder": {"train_modules": "no_image_encoder"},
    "keep_start": {"keep_start": 0.5, "keep_start_slices": 1, "keep_start_spares_labelled": False},
    "keep_start_unlabelled": {"keep_start": 0.5, "keep_start_slices": 1, "keep_start_spares_labelled": False,
                              "unlabelled": True},
    "keep_start_tracked": {"keep_start": 0.5, "keep_start_slices": 4, "keep_start_spares_labelled": False,
                           "unlabelled": True},
    "keep_start_tracked_chest": {"keep_start": 0.5, "keep_start_slices": 4, "keep_start_spares_labelled": False,
                                 "unlabelled": "chest"},
    "keep_start_spared": {"keep_start": 0.5, "keep_start_slices": 4, "unlabelled": True},
    "keep_start_spared_chest": {"keep_start": 0.5, "keep_start_slices": 4, "unlabelled": "chest"},
}
PHANTOM_SEEDS = (100, 101, 102, 103)
TWIN_SEEDS = (5000, 5001, 5002, 5003)
MODULES = {"image_encoder": ("image_encoder.",), "prompt_encoder": ("sam_prompt_encoder.",),
           "mask_decoder": ("sam_mask_decoder.",), "memory_attention": ("memory_attention.",),
           "memory_encoder": ("memory_encoder.",)}
COLUMNS = ("lung_left", "lung_right", "skull", "head", "colin27", "organ", "vessel", "twins")


def chest() -> real_data.RealVolume:
    return real_data.crop_to(real_data.chest_ct(), [1, 2], margin_mm=10)


def run_name(recipe: str, seed: int) -> str:
    """`none` for seed 0 (the rows measured before seeds were an option), `none@seed1` for others."""
    return recipe if seed == 0 else f"{recipe}@seed{seed}"


def train_recipe(volume: real_data.RealVolume, out: Path, steps: int, recipe: dict, seed: int = 0,
                 clip_len: int | None = None) -> dict:
    """`/train`'s TrainConfig (training/defaults.py) on the left lung, with `recipe` on top; `clip_len`:
    the slices a clip runs through memory (None: /train's)."""
    from medsam2.demo_model import training_pairs
    from medsam2.training.loop import train

    left = (volume.label == volume.structures["lung_left"]).astype(np.int16)
    recipe = dict(recipe)
    with_unlabelled = recipe.pop("unlabelled", False)
    # max_minutes off: every recipe runs its steps, however busy the machine is
    cfg = default_config(out, steps, max_minutes=None, seed=seed, **({"clip_len": clip_len} if clip_len else {}),
                         **recipe)

    def log(entry):
        if entry.get("step", 0) % 100 == 0:
            print(entry, flush=True)

    replay = training_pairs() if cfg.replay_share > 0 else None
    result = train(cfg, [(volume.image, left)], [], log=log, replay_pairs=replay,
                   unlabelled_images=[volume.image] if with_unlabelled == "chest"
                   else unlabelled_images() if with_unlabelled else None)
    return {"steps": result.steps, "seconds": round(result.seconds, 1)}


@functools.cache
def unlabelled_images() -> list[np.ndarray]:
    """`keep_start_unlabelled`'s images: the head CT, Colin27 cropped, phantoms 200-201, twins 6000-6001
    (read and made once, for every run that uses them)."""
    from medsam2.memory_phantoms import make_memory_phantom
    from medsam2.phantoms import make_phantom

    colin = real_data.colin27()
    colin = real_data.crop_to(colin, list(colin.structures.values()), margin_mm=10)
    return ([real_data.cranium().image, colin.image] + [make_phantom((64, 64, 32), seed=s).image for s in (200, 201)]
            + [make_memory_phantom("twins", seed=s).image for s in (6000, 6001)])


@functools.cache
def demo_state() -> dict:
    """The demo model's checkpoint ({"model": ..., "meta": ...}), read once per run."""
    import torch

    from medsam2.checkpoints import resolve_spec

    return torch.load(resolve_spec("demo", None, None, REPO / "model").checkpoint, map_location="cpu", weights_only=True)


def drift(checkpoint: Path) -> float:
    """Root-mean-square distance of `checkpoint`'s floating-point weights from the demo model's."""
    import torch

    def weights(state):
        state = state.get("model", state)
        return {k: v.float() for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}

    start = weights(demo_state())
    trained = weights(torch.load(checkpoint, map_location="cpu", weights_only=True))
    total = sum(float(((trained[k] - v) ** 2).sum()) for k, v in start.items())
    return (total / sum(v.numel() for v in start.values())) ** 0.5


def module_mixes(trained: Path, work: Path) -> dict[str, Path]:
    """Checkpoints mixing `trained` and the demo model by module (the `--modules` rows)."""
    import torch

    demo = demo_state()
    run = torch.load(trained, map_location="cpu", weights_only=True)
    groups = {**MODULES, "rest": None}
    known = tuple(p for prefixes in MODULES.values() for p in prefixes)
    out = {}
    for name, prefixes in groups.items():
        def member(key):
            return key.startswith(prefixes) if prefixes else not key.startswith(known)
        for kind, base, other in (("back", run, demo), ("only", demo, run)):
            state = {k: (other["model"][k] if member(k) else v) for k, v in base["model"].items()}
            path = work / f"{trained.stem}-{kind}-{name}.pt"
            torch.save({"model": state, "meta": run["meta"]}, path)
            out[f"{trained.stem}, {kind}: {name}"] = path
    return out


def clicks(checkpoint: Path, lungs: real_data.RealVolume, head: real_data.RealVolume,
           colin: real_data.RealVolume) -> dict[str, float]:
    """Mean one-click Dice per column of the table."""
    from benchmarks.demo_breadth import structure_rows
    from benchmarks.field_of_view import segmenter_for
    from medsam2.evaluation.runner import quiet_propagation
    from medsam2.evaluation.twins import clicker, twin_results
    from medsam2.memory_phantoms import make_memory_phantom
    from medsam2.phantoms import PHANTOM_LABELS, make_phantom

    segmenter = segmenter_for(checkpoint)
    row: dict[str, float] = {}
    with quiet_propagation():
        row.update(structure_rows(segmenter, lungs.image, {n: [v] for n, v in lungs.structures.items()}, lungs.label))
        row.update(structure_rows(segmenter, head.image, {"skull": [1], "head": [1, 2]}, head.label))
        row["colin27"] = float(np.mean(list(structure_rows(
            segmenter, colin.image, {n: [v] for n, v in colin.structures.items()}, colin.label).values())))
        for structure in ("organ", "vessel"):
            scores = []
            for seed in PHANTOM_SEEDS:
                p = make_phantom((64, 64, 32), seed=seed)
                truth = p.label == PHANTOM_LABELS[structure]
                scores.append(dice(clicker(segmenter, p.image)(click_point(truth)), truth))
            row[structure] = float(np.mean(scores))
        twins = []
        for seed in TWIN_SEEDS:
            case = make_memory_phantom("twins", seed=seed)
            twins += twin_results(case.label, clicker(segmenter, case.image))
        row["twins"] = float(np.mean([r.dice for r in twins]))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--work", type=Path, default=REPO / "bench-results" / "forgetting")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per recipe and seed")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "forgetting.json")
    ap.add_argument("--modules", choices=list(RECIPES), help="also take this recipe's model apart by module")
    ap.add_argument("--clip-len", type=int, help="slices a clip runs through memory (default: /train's; 8 before "
                    "2026-12-07, as in every table of docs/training.md)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    lungs, head = chest(), real_data.cranium()
    colin = real_data.colin27()
    colin = real_data.crop_to(colin, list(colin.structures.values()), margin_mm=10)
    planned = {run_name(r, seed): (r, seed) for r in args.recipes for seed in args.seeds}
    work = args.work if args.steps == 1000 else args.work / f"{args.steps}steps"  # never reuse another length's runs
    work = work / f"clip{args.clip_len}" if args.clip_len else work
    if args.modules:
        planned.setdefault(args.modules, (args.modules, 0))
    paths, runs = recipe_models(list(planned), work,
                                lambda name, path: train_recipe(lungs, path, args.steps, RECIPES[planned[name][0]],
                                                                planned[name][1], args.clip_len))
    if args.modules:
        paths.update(module_mixes(paths[args.modules], paths[args.modules].parent))
    results = {}
    for name, path in paths.items():
        t0 = time.perf_counter()
        results[name] = {**clicks(path, lungs, head, colin), "drift": drift(path)}
        print(f"{name}: clicks {time.perf_counter() - t0:.0f} s", flush=True)
    print("| recipe | " + " | ".join(COLUMNS) + " | drift |")
    print("|---|" + "---|" * (len(COLUMNS) + 1))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + f" | {row['drift']:.4f} |")
    spread = {}
    for recipe in args.recipes:
        rows = [results[run_name(recipe, seed)] for seed in args.seeds]
        if len(rows) > 1:
            spread[recipe] = {c: max(r[c] for r in rows) - min(r[c] for r in rows) for c in COLUMNS + ("drift",)}
            print(f"| {recipe}: spread over seeds {args.seeds} | "
                  + " | ".join(f"{spread[recipe][c]:.3f}" for c in COLUMNS) + f" | {spread[recipe]['drift']:.4f} |")
    write_results(args.out, {"recipes": {r: RECIPES[r] for r in args.recipes}, "steps": args.steps,
                             "seeds": args.seeds, "training_runs": runs, "results": results, "spread": spread})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
