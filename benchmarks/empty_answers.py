"""Why a click gives nothing: the object score, or the mask.

SAM 2 blanks a slice when its object score says "no object" (`object_score_logits` <= 0); otherwise it
shows the decoded mask, which can itself be empty. A fine-tuned model that answers a click with Dice
0.000 could do either. For each checkpoint and each click (the interior point of the structure's
largest slice, through the engine) this prints the clicked slice's object-score logit, the share of the
volume's decoded slices that said "object", the voxels marked, and whether the clicked voxel is marked.

    python -m benchmarks.empty_answers CHECKPOINT [CHECKPOINT ...]

Cases: the organ of held-out phantoms (64 x 64 x 32, seeds 100-101) and the head CT's skull. Half a
minute a checkpoint on 2 cores; writes bench-results/empty_answers.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.demo_breadth import click_point, markdown_table  # noqa: E402
from benchmarks.field_of_view import segmenter_for  # noqa: E402
from benchmarks.results import write_results  # noqa: E402
from medsam2.evaluation import real_data  # noqa: E402
from medsam2.evaluation.metrics import dice  # noqa: E402


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from medsam2.phantoms import PHANTOM_LABELS, make_phantom

    out = {}
    for seed in (100, 101):
        p = make_phantom((64, 64, 32), seed=seed)
        out[f"phantom {seed} organ"] = (p.image, p.label == PHANTOM_LABELS["organ"])
    head = real_data.cranium()
    out["head CT skull"] = (head.image, head.label == 1)
    return out


def answers(checkpoint: Path) -> dict[str, dict]:
    """Per case: Dice, the clicked slice's object-score logit, the share of decoded slices with an
    object, voxels marked, and whether the clicked voxel is marked. The logits are the engine's own
    (`ObjectResult.object_scores`, nan on slices it did not decode)."""
    from medsam2.evaluation.runner import quiet_propagation
    from medsam2.prompts import ObjectPrompt

    segmenter = segmenter_for(checkpoint)
    rows = {}
    with quiet_propagation():
        for name, (image, truth) in cases().items():
            i, j, k = click_point(truth)
            result = segmenter.segment(segmenter.open(image),
                                       [ObjectPrompt(label=name, clicks={k: [(i + 0.5, j + 0.5, 1)]})])
            mask, scores = result.label > 0, result.objects[0].object_scores
            decoded = scores[~np.isnan(scores)]
            rows[name] = {"dice": dice(mask, truth), "clicked_object_logit": float(scores[k]),
                          "slices_with_object": float(np.mean(decoded > 0)),
                          "voxels_marked": int(mask.sum()), "clicked_voxel_marked": bool(mask[i, j, k])}
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "empty_answers.json")
    args = ap.parse_args(argv)
    results = {str(c): answers(c) for c in args.checkpoints}
    lines = [["checkpoint", "click", "Dice", "clicked slice's object logit", "slices with an object",
              "voxels marked", "clicked voxel marked"]]
    for checkpoint, rows in results.items():
        lines += [[Path(checkpoint).name, name, f"{r['dice']:.3f}", f"{r['clicked_object_logit']:.1f}",
                   f"{r['slices_with_object']:.2f}", str(r["voxels_marked"]), "yes" if r["clicked_voxel_marked"] else "no"]
                  for name, r in rows.items()]
    print(markdown_table(lines))
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
