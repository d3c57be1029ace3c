"""The twin check: does a click on one of two identical-looking structures follow that one?

The case that tells tracking by memory from segmenting by appearance (memory_phantoms.make_twins):
a click at the most interior point of one twin, on the middle slice of the slices both twins share,
must give that twin through the whole volume, on both sides of the click, and leave the other twin
alone; a click on the other twin, the mirror result. A model that segments every structure of that
look scores a Dice near 0.67 on each and covers most of the other twin; one that only segments the
clicked slice scores near 0 on both sides. The same function serves the engine tests, the tests
through the real server, and the README's figures, with whatever `segment` callable they have:

  python -m medsam2.evaluation.twins --checkpoint demo --count 8              # held-out twins 5000-5007
  python -m medsam2.evaluation.twins --checkpoint demo --count 8 --memory-cut # the same, memory cut
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..clicks import interior_point
from ..memory_phantoms import TWIN_LABELS
from .metrics import dice, other_covered, side_dice

# what the demo model must reach on held-out twins (issue: Dice >= 0.8 each side, <= 5 % of the other)
MIN_DICE = 0.8
MAX_OTHER_COVERED = 0.05


@dataclass(frozen=True)
class TwinResult:
    value: int  # the clicked twin's label value
    click: tuple[int, int, int]  # (i, j, k)
    dice: float
    dice_before: float
    dice_after: float
    dice_clicked_slice: float
    other_covered: float

    def passes(self, min_dice: float = MIN_DICE, max_other: float = MAX_OTHER_COVERED) -> bool:
        return (self.dice_before >= min_dice and self.dice_after >= min_dice
                and self.other_covered <= max_other)


def twin_click(label: np.ndarray, value: int) -> tuple[int, int, int]:
    """(i, j, k): the middle of the slices holding both twins, the clicked twin's most interior point."""
    values = list(TWIN_LABELS.values())
    both = [k for k in range(label.shape[2]) if all((label[:, :, k] == v).any() for v in values)]
    if not both:
        raise ValueError("the twins share no slice")
    k = both[len(both) // 2]
    x, y = interior_point((label[:, :, k] == value).T)  # frame rows are J, columns I
    return int(x), int(y), int(k)


def clicker(segmenter, image: np.ndarray) -> Callable[[tuple[int, int, int]], np.ndarray]:
    """`segment((i, j, k))` for `twin_results`: one positive click at voxel (i, j) of slice k, through
    the engine (`Segmenter`) on `image`, opened once; the boolean prediction."""
    from ..prompts import ObjectPrompt

    session = segmenter.open(image)

    def segment(ijk):
        i, j, k = ijk
        return segmenter.segment(session, [ObjectPrompt(label="twin", clicks={k: [(i + 0.5, j + 0.5, 1)]})]).label > 0
    return segment


def twin_results(label: np.ndarray, segment: Callable[[tuple[int, int, int]], np.ndarray]) -> list[TwinResult]:
    """Click each twin in turn; `segment((i, j, k))` returns the boolean (I, J, K) prediction."""
    results = []
    for value in TWIN_LABELS.values():
        other = next(v for v in TWIN_LABELS.values() if v != value)
        truth, others = label == value, label == other
        i, j, k = twin_click(label, value)
        pred = np.asarray(segment((i, j, k)), dtype=bool)
        sides = side_dice(pred, truth, k)
        results.append(TwinResult(value, (i, j, k), dice(pred, truth), sides["dice_before"], sides["dice_after"],
                                  dice(pred[:, :, k], truth[:, :, k]), other_covered(pred, others)))
    return results


def main(argv=None) -> int:
    """Click each twin of `--count` generated cases (seeds from `--seed`); print every click and a summary."""
    import argparse
    import contextlib
    import json

    from ..checkpoints import CheckpointError, build_model, resolve_spec
    from ..memory_phantoms import make_memory_phantom
    from ..propagation import Segmenter
    from ..training.diagnostics import memory_cut

    ap = argparse.ArgumentParser(prog="python -m medsam2.evaluation.twins", description=main.__doc__)
    ap.add_argument("--checkpoint", default="demo", help="manifest name or .pt path")
    ap.add_argument("--model-config", default=None)
    ap.add_argument("--kind", default="twins", help="twins[+fade][+gap][+drift]")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--seed", type=int, default=5000, help="first seed (5000+: never a demo-model training seed)")
    ap.add_argument("--memory-cut", action="store_true", help="zero every memory and object pointer (diagnostics)")
    ap.add_argument("--model-dir", default="model")
    args = ap.parse_args(argv)
    try:
        segmenter = Segmenter(build_model(resolve_spec(args.checkpoint, args.model_config, None, Path(args.model_dir))))
    except CheckpointError as e:
        print(f"error: {e}")
        return 2
    results = []
    for seed in range(args.seed, args.seed + args.count):
        case = make_memory_phantom(args.kind, seed=seed)
        with memory_cut(segmenter.model) if args.memory_cut else contextlib.nullcontext():
            rows = twin_results(case.label, clicker(segmenter, case.image))
        for r in rows:
            results.append(r)
            print(json.dumps({"seed": seed, "twin": r.value, "click": r.click, "passes": r.passes(),
                              **{k: round(getattr(r, k), 3) for k in ("dice", "dice_before", "dice_after",
                                                                      "dice_clicked_slice", "other_covered")}}))
    print(f"{sum(r.passes() for r in results)}/{len(results)} clicks pass (Dice >= {MIN_DICE} before and after "
          f"the click, other twin covered <= {MAX_OTHER_COVERED:.0%})")
    for k in ("dice", "dice_before", "dice_after", "dice_clicked_slice", "other_covered"):
        v = [getattr(r, k) for r in results]
        print(f"{k:20s} mean {np.mean(v):.3f}  min {np.min(v):.3f}  max {np.max(v):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
