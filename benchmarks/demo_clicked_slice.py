"""Can a short run fix the demo model's clicked slice without losing its tracking?

The OHIF browser test's organ click on the DICOMweb tests' series fails with the shipped demo model
(3D Dice 0.29). `benchmarks.demo_breadth` takes that click apart: tracked from the clicked slice's
true mask the organ comes out at 0.86, but on the clicked slice SAM 2 picks a candidate with Dice
0.46 when its best is 0.82. So the failure is the decoding of the clicked slice (the candidates and
their ranking), not the memory. Each try here starts from the shipped demo model. It trains on stage
3's broad mix (`demo_model.broad_pairs`: the stage-2 cases, wider twins, phantoms of four sizes,
real crops) and validates on `demo_model.broad_validation_pairs`. It keeps its best weights only if
they beat the shipped model there:
- `stage3_memory_lr`: stage 3 as `demo_model.stage_configs` has it, with the memory modules at 3
  times the lr (what fine-tuning a small model does since the tracking recipe);
- `decoder_slices`: the prompt encoder and mask decoder alone, on single prompted slices (as stage 1);
- `iou_head`: the IoU head alone, on clips of 8 slices: masks unchanged, only the ranking can move;
- `decoder_clips`: the prompt encoder and mask decoder alone, on clips of 8 slices, so the tracked
  slices they also decode keep their loss;
- `sized_phantoms`: stage 3 (all modules, clips of 8) on its mix without the real crops (the stage-2
  cases, wider twins, phantoms of four sizes: `benchmarks.demo_stage1` found that stage 1 on phantoms of
  four sizes decodes organ clicks far better, 32/32 against 21/32 found on the clicked slice, but stage
  2 from it did not learn to track), 1000 steps, validated on the stage-2 validation and four held-out
  phantoms, one of each size (seeds 950-953), instead of the real structures.

    python -m benchmarks.demo_clicked_slice [--tries decoder_slices iou_head ...] [--work DIR]

About 6 (decoder_slices, iou_head), 10 (decoder_clips), 17 (sized_phantoms) and 25 (stage3_memory_lr)
minutes on 2 cores.
Prints each try's validation history and writes bench-results/demo_clicked_slice.json. A try's
published weights (WORK/TRY.pt) can then be compared with
`python -m benchmarks.demo_breadth --checkpoints demo WORK/TRY.pt`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results import write_results  # noqa: E402

SHIPPED = REPO / "model" / "demo" / "medsam2_demo.pt"
DECODER = ("sam_prompt_encoder.", "sam_mask_decoder.")
TRIES = ("stage3_memory_lr", "decoder_slices", "iou_head", "decoder_clips", "sized_phantoms")


def try_config(name: str, out: Path):
    """Stage 3's settings (demo_model.stage_configs), changed as the try says."""
    from medsam2.demo_model import DemoRecipe, stage_configs
    from medsam2.training.prompt_sim import PromptSettings

    broad = replace(stage_configs(out, DemoRecipe(stage3_steps=1500, stage3_mix="broad"))[2],
                    init_checkpoint=SHIPPED, out_checkpoint=out)
    if name == "stage3_memory_lr":
        return replace(broad, memory_lr_scale=3.0)
    short = replace(broad, max_steps=800, val_every=200)
    if name == "decoder_slices":
        return replace(short, lr=2e-4, clip_len=1, clips_per_step=4, train_only=DECODER,
                       prompts=PromptSettings(max_corrections=3))
    if name == "iou_head":
        return replace(short, lr=1e-3, train_only=("sam_mask_decoder.iou_prediction_head.",))
    if name == "decoder_clips":
        return replace(short, lr=3e-4, train_only=DECODER)
    if name == "sized_phantoms":
        return replace(broad, max_steps=1000, val_every=250)
    raise ValueError(f"unknown try {name!r}: one of {', '.join(TRIES)}")


def try_data(name: str, real: dict):
    """(training pairs, validation pairs) of a try: stage 3's, or for `sized_phantoms` the same without
    real crops, validated on phantoms of each size instead of real structures."""
    from medsam2.demo_model import (broad_pairs, broad_validation_pairs, sized_phantom_pairs, stage2_validation_pairs,
                                    training_pairs, wide_twin_pairs)

    if name != "sized_phantoms":
        return broad_pairs(real), broad_validation_pairs(real)
    return training_pairs() + wide_twin_pairs() + sized_phantom_pairs(), stage2_validation_pairs("sized")


def main(argv=None) -> int:
    from medsam2.demo_model import compact, real_volumes
    from medsam2.training.loop import train

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tries", nargs="+", default=list(TRIES), choices=TRIES)
    ap.add_argument("--work", type=Path, default=REPO / "bench-results" / "demo_clicked_slice")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "demo_clicked_slice.json")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    real = real_volumes()
    results = {}
    for name in args.tries:
        cfg = try_config(name, args.work / f"{name}.pt")
        pairs, validation = try_data(name, real)
        r = train(cfg, pairs, validation, log=lambda e: print(name, e, flush=True) if "val_dice" in e else None)
        if r.published is not None:
            compact(r.published)
        results[name] = {"validation": [(e["step"], e["val_dice"]) for e in r.history if "val_dice" in e],
                         "initial": r.initial_dice, "best": r.best_dice, "seconds": r.seconds,
                         "published": str(r.published) if r.published else None}
    print("| try | validation Dice at each check (step 0 first) | kept |")
    print("|---|---|---|")
    for name, row in results.items():
        history = " ".join(f"{d:.3f}" for d in [row["initial"]] + [d for _, d in row["validation"]])
        print(f"| {name} | {history} | {'yes' if row['published'] else 'no'} |")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
