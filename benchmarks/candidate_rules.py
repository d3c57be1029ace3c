"""Which of SAM 2's three candidates a click should get: SAM 2's pick against other rules, on the
clicked slice only.

SAM 2 answers a single click with three candidate masks and keeps the one its IoU head rates best. The
OHIF organ click fails there (docs/demo-model.md, "The OHIF organ click, taken apart"): the best
candidate is right, the pick is not. This asks whether a rule that needs no training would pick
better: the highest stability score (SAM's: the area above logit +1 over the area above -1, on the
low-resolution logits), the IoU times the stability, the largest candidate. Clicks: the organ and
the vessel of `demo_breadth`'s phantoms of four sizes at their largest slice, the organ on the middle
slice (OHIF's click, as the browser test makes it), both twins of `demo_breadth`'s twin pairs, and the
real structures of `demo_breadth.real_sets`.

    python -m benchmarks.candidate_rules [--checkpoint demo] [--propagated]

Prints the mean clicked-slice Dice per set and rule and writes bench-results/candidate_rules.json.
Half a minute on 2 cores.

`--propagated` (3 minutes) also propagates each candidate through the volume, given as the clicked
slice's mask, and adds the rules that look ahead: keep the candidate that memory tracks most surely,
by the mean over the tracked slices of the predicted IoU where the object score says "present" (0
where it says "absent"), on the `LOOK_AHEAD` slices each side of the click or on the whole volume.
Scored by the 3D Dice of the candidate each rule keeps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.demo_breadth import (PHANTOM_SEEDS, PHANTOM_SHAPES, TWIN_SEEDS, click_point,  # noqa: E402
                                     markdown_table, real_sets, slice_candidates)
from benchmarks.results import write_results  # noqa: E402
from medsam2.clicks import interior_point  # noqa: E402
from medsam2.evaluation.metrics import dice  # noqa: E402

RULES = {
    "SAM 2's pick (IoU)": lambda c: np.argmax(c["iou"]),
    "stability": lambda c: np.argmax(c["stability"]),
    "IoU x stability": lambda c: np.argmax(np.multiply(c["iou"], c["stability"])),
    "largest": lambda c: np.argmax(c["area"]),
    "best (the truth picks)": lambda c: np.argmax(c["dice"]),
}


LOOK_AHEAD = 3  # slices each side of the click that the near look-ahead rule reads

PROPAGATED_RULES = {
    "SAM 2's pick (IoU)": lambda c: np.argmax(c["iou"]),
    f"look-ahead, {LOOK_AHEAD} slices each side": lambda c: np.argmax(c["sure_near"]),
    "look-ahead, whole volume": lambda c: np.argmax(c["sure_all"]),
    "best (the truth picks)": lambda c: np.argmax(c["dice_3d"]),
}


def candidates(segmenter, session, truth: np.ndarray, point: tuple[int, int, int],
               propagated: bool = False) -> dict[str, list[float]]:
    """The clicked slice's three candidates: Dice against `truth`, predicted IoU, stability, area; with
    `propagated`, also each one's 3D Dice and how surely memory tracks it (`tracked_sureness`)."""
    masks, ious, low = slice_candidates(segmenter, session, truth.shape[:2], point)
    out = {"dice": [dice(m, truth[:, :, point[2]]) for m in masks], "iou": ious.tolist(),
           "stability": [float((m > 1).sum() / max(1, (m > -1).sum())) for m in low],
           "area": [int(m.sum()) for m in masks]}
    if propagated:
        from medsam2.prompts import ObjectPrompt

        k = point[2]
        for name in ("dice_3d", "sure_near", "sure_all"):
            out[name] = []
        for m in masks:
            result = segmenter.segment(session, [ObjectPrompt(label="candidate", masks={k: m.T.copy()})])
            track = result.objects[0] if result.objects else None
            out["dice_3d"].append(dice(result.label > 0, truth))
            out["sure_near"].append(tracked_sureness(track, k, LOOK_AHEAD))
            out["sure_all"].append(tracked_sureness(track, k, None))
    return out


def tracked_sureness(track, k: int, reach: int | None) -> float:
    """Mean over the tracked slices within `reach` of slice k (None: all) of the predicted IoU where the
    object score is positive, 0 where it is not; 0 for an empty candidate."""
    if track is None:
        return 0.0
    near = [i for i in range(len(track.ious)) if i != k and (reach is None or abs(i - k) <= reach)
            and np.isfinite(track.ious[i])]
    return float(np.mean([track.ious[i] if track.object_scores[i] > 0 else 0.0 for i in near])) if near else 0.0


def clicks(segmenter, sets: dict, propagated: bool = False) -> dict[str, list[dict]]:
    """Set name -> the candidates of each click in it."""
    from medsam2.evaluation.twins import TWIN_LABELS, twin_click
    from medsam2.memory_phantoms import make_memory_phantom
    from medsam2.phantoms import PHANTOM_LABELS, make_phantom

    out = defaultdict(list)
    for shape in PHANTOM_SHAPES:
        for seed in PHANTOM_SEEDS:
            p = make_phantom(shape, seed=seed)
            session = segmenter.open(p.image)
            for structure in ("organ", "vessel"):
                truth = p.label == PHANTOM_LABELS[structure]
                out[f"phantom {structure}, largest slice"].append(
                    candidates(segmenter, session, truth, click_point(truth), propagated))
            organ = p.label == PHANTOM_LABELS["organ"]
            k = organ.shape[2] // 2
            if organ[:, :, k].any():
                x, y = interior_point(organ[:, :, k].T)
                out["phantom organ, middle slice (OHIF's click)"].append(
                    candidates(segmenter, session, organ, (int(x), int(y), k), propagated))
    for kind in ("twins", "twins+wide"):
        for seed in TWIN_SEEDS:
            case = make_memory_phantom(kind, seed=seed)
            session = segmenter.open(case.image)
            for value in TWIN_LABELS.values():
                out[kind].append(candidates(segmenter, session, case.label == value, twin_click(case.label, value),
                                          propagated))
    for name, (image, label, structures, _) in sets.items():
        session = segmenter.open(image)
        for values in structures.values():
            truth = np.isin(label, values)
            out[name].append(candidates(segmenter, session, truth, click_point(truth), propagated))
    return dict(out)


def main(argv=None) -> int:
    from medsam2.checkpoints import build_model, resolve_spec
    from medsam2.demo_model import DEMO_CONFIG
    from medsam2.evaluation.runner import quiet_propagation
    from medsam2.propagation import Segmenter

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="demo", help="a manifest name or a .pt file of the demo config")
    ap.add_argument("--propagated", action="store_true", help="also the look-ahead rules, scored in 3D")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "candidate_rules.json")
    args = ap.parse_args(argv)
    config = DEMO_CONFIG if args.checkpoint.endswith(".pt") else None
    segmenter = Segmenter(build_model(resolve_spec(args.checkpoint, config, None, REPO / "model")))
    with quiet_propagation():
        by_set = clicks(segmenter, real_sets(Path(tempfile.mkdtemp(prefix="candidate-rules-"))), args.propagated)
    by_set["all"] = [c for cs in by_set.values() for c in cs]
    table = {}
    for title, rules, measure in (("clicked-slice Dice", RULES, "dice"), ("3D Dice", PROPAGATED_RULES, "dice_3d")):
        if measure == "dice_3d" and not args.propagated:
            continue
        table[title] = {name: {rule: float(np.mean([c[measure][pick(c)] for c in cs])) for rule, pick in rules.items()}
                        for name, cs in by_set.items()}
        lines = [[f"{title}, mean", "clicks", *rules]]
        lines += [[name, str(len(by_set[name])), *(f"{table[title][name][r]:.3f}" for r in rules)] for name in by_set]
        print(markdown_table(lines))
    write_results(args.out, {"checkpoint": args.checkpoint, "table": table, "clicks": by_set})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
