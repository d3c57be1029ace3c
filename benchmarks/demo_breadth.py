"""What a demo model does beyond the cases it was trained on, one click per structure, side by side
for several checkpoints (the shipped demo model against a retrained one, say):

- twins: held-out identical twins (seeds 5000+), the usual generator and a wider one (`twins+wide`:
  radii, gaps, turns and extents beyond the training ranges); a click passes when the clicked twin
  has Dice >= 0.8 on both sides of the click and at most 5 % of the other twin is marked;
- organ clicks on phantom-like CTs of four sizes and eight seeds, among them the DICOMweb tests'
  series (64 x 56 x 32, seeds 700-703) and the accuracy benchmark's (seeds 100-103): the organ in 3D
  (Dice >= 0.8 counts as found), and how much of the vessel comes with it; the OHIF browser test's
  click (the organ's interior on the middle slice of the DICOMweb tests' series) is also taken apart
  (`click_breakdown`: the clicked slice's candidates, and tracking from its true mask);
- real anatomy never labelled in training (the demo recipe keeps them out): Colin27's twelve
  subcortical AAL structures (cropped to them + 10 mm) and MNI152's brain, white matter and lateral
  ventricles (nilearn's template, 2 mm);
- real anatomy of the training mix, for reference: the chest CT's lungs and the head CT's skull and head.

Each click is at the most interior point of the structure's largest slice, through the engine
(`Segmenter`), as the infer task runs it.

  python -m benchmarks.demo_breadth --checkpoints demo model/demo/candidate.pt

Prints one table and writes bench-results/demo_breadth.json. About 3 minutes per checkpoint on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results import write_results  # noqa: E402
from medsam2.clicks import interior_point, largest_slice  # noqa: E402
from medsam2.evaluation.metrics import dice  # noqa: E402

PHANTOM_SHAPES = ((64, 56, 32), (64, 64, 32), (48, 48, 24), (96, 96, 40))
PHANTOM_SEEDS = (700, 701, 702, 703, 100, 101, 102, 103)
TWIN_SEEDS = range(5000, 5008)


def click_point(truth: np.ndarray) -> tuple[int, int, int]:
    """(x, y, k) of the one click: the interior point of the structure's largest slice."""
    k = largest_slice(truth)
    x, y = interior_point(truth[:, :, k].T)
    return int(x), int(y), int(k)


def slice_candidates(segmenter, session, shape: tuple[int, int], point: tuple[int, int, int]):
    """SAM 2's candidates for one click on its slice, before propagation: the masks (M, I, J) at the
    slice's `shape` (I, J), their predicted IoUs (M,) and the low-resolution logits (M, s, s). Calls the
    engine's `Segmenter._prompt`: the one way to see them."""
    import torch

    from medsam2.predictor import last_decoder_outputs
    from medsam2.prompts import ObjectPrompt

    x, y, k = point
    click = ObjectPrompt(label="click", clicks={k: [(x + 0.5, y + 0.5, 1)]})
    with torch.inference_mode(), segmenter.autocast():
        segmenter._prompt(session, click)
    low, high, ious, *_ = last_decoder_outputs()
    candidates = torch.nn.functional.interpolate(high[:1].float(), size=shape[::-1], mode="bilinear")[0]
    masks = (candidates > 0).permute(0, 2, 1).cpu().numpy()
    return masks, ious[0].float().cpu().numpy(), low[0].float().cpu().numpy()


def clicked_slice(segmenter, session, truth: np.ndarray, point: tuple[int, int, int]) -> dict[str, float]:
    """One click's clicked slice alone: Dice of the candidate SAM 2 picks (by its predicted IoU) and of
    the best of its candidates (`slice_candidates`)."""
    masks, ious, _ = slice_candidates(segmenter, session, truth.shape[:2], point)
    on_slice = [dice(c, truth[:, :, point[2]]) for c in masks]
    return {"slice_picked": on_slice[int(ious.argmax())], "slice_best": max(on_slice)}


def click_breakdown(segmenter, session, truth: np.ndarray, point: tuple[int, int, int]) -> dict[str, float]:
    """Where one click's answer is lost: the clicked slice (`clicked_slice`), the one-click 3D Dice, and
    the 3D Dice with the clicked slice prompted by its true mask (what is left is tracking alone)."""
    from medsam2.evaluation.runner import quiet_propagation
    from medsam2.prompts import ObjectPrompt

    x, y, k = point
    click = ObjectPrompt(label="click", clicks={k: [(x + 0.5, y + 0.5, 1)]})
    on_slice = clicked_slice(segmenter, session, truth, point)
    with quiet_propagation():
        from_click = segmenter.segment(session, [click]).label > 0
        from_truth = segmenter.segment(session, [ObjectPrompt(label="truth", masks={k: truth[:, :, k].T.copy()})]).label > 0
    return {**on_slice, "3d": dice(from_click, truth), "3d_from_truth": dice(from_truth, truth)}


def one_click(segment, truth: np.ndarray) -> np.ndarray:
    return segment(click_point(truth))


def twin_rows(segmenter) -> dict:
    from medsam2.evaluation.twins import clicker, twin_results
    from medsam2.memory_phantoms import make_memory_phantom

    out = {}
    for kind in ("twins", "twins+wide"):
        results = []
        for seed in TWIN_SEEDS:
            case = make_memory_phantom(kind, seed=seed)
            results += twin_results(case.label, clicker(segmenter, case.image))
        out[kind] = {"clicks": len(results), "pass": sum(r.passes() for r in results),
                     "dice": float(np.mean([r.dice for r in results])),
                     "other_covered": float(np.mean([r.other_covered for r in results]))}
    return out


def organ_rows(segmenter) -> dict:
    from medsam2.evaluation.twins import clicker
    from medsam2.phantoms import PHANTOM_LABELS, make_phantom

    dices, vessel = [], []
    middle = []  # the OHIF browser test's click: the organ's interior on the middle slice of the DICOM series
    for shape in PHANTOM_SHAPES:
        for seed in PHANTOM_SEEDS:
            p = make_phantom(shape, seed=seed)
            truth = p.label == PHANTOM_LABELS["organ"]
            segment = clicker(segmenter, p.image)
            pred = one_click(segment, truth)
            dices.append(dice(pred, truth))
            vessel.append(float((pred & (p.label == PHANTOM_LABELS["vessel"])).sum()
                                / max(1, (p.label == PHANTOM_LABELS["vessel"]).sum())))
            if shape == PHANTOM_SHAPES[0] and seed in PHANTOM_SEEDS[:4]:  # the DICOMweb tests' series
                k = truth.shape[2] // 2
                x, y = interior_point(truth[:, :, k].T)
                middle.append(click_breakdown(segmenter, segmenter.open(p.image), truth, (int(x), int(y), k)))
    return {"clicks": len(dices), "found": int(sum(d >= 0.8 for d in dices)), "dice": float(np.mean(dices)),
            "dicom_series": float(np.mean(dices[:4])), "dicom_series_middle": [b["3d"] for b in middle],
            "dicom_series_middle_breakdown": middle,
            "vessel_covered": float(np.mean(vessel))}


def structure_rows(segmenter, image: np.ndarray, structures: dict[str, list[int]], label: np.ndarray) -> dict:
    from medsam2.evaluation.twins import clicker

    segment = clicker(segmenter, image)
    return {name: dice(one_click(segment, np.isin(label, values)), np.isin(label, values))
            for name, values in structures.items()}


def real_sets(work: Path) -> dict:
    """name -> (image, label, {structure: values}, held_out); sets that cannot be had are left out."""
    from medsam2.evaluation import real_data
    from medsam2.evaluation.datasets import MNI_STRUCTURES, list_cases, load_case, make_mni152

    sets = {}
    try:
        colin = real_data.colin27()
        colin = real_data.crop_to(colin, colin.structures.values(), margin_mm=10)
        sets["Colin27 subcortical"] = (colin.image, colin.label, {n: [v] for n, v in colin.structures.items()}, True)
        chest = real_data.crop_to(real_data.chest_ct(), [1, 2], margin_mm=10)
        sets["chest CT lungs"] = (chest.image, chest.label, {n: [v] for n, v in chest.structures.items()}, False)
        head = real_data.cranium()
        sets["head CT"] = (head.image, head.label, {"skull": [1], "head": [1, 2]}, False)
    except real_data.DataUnavailable as e:
        print(f"left out: {e}")
    try:
        make_mni152(work / "mni152")
        image, label, _ = load_case(list_cases(work / "mni152")[0])
        sets["MNI152"] = (image, label, MNI_STRUCTURES, True)
    except Exception as e:  # noqa: BLE001 (nilearn missing: the set is left out, saying why)
        print(f"left out MNI152: {type(e).__name__}: {e}")
    return sets


def markdown_table(lines: list[list[str]]) -> str:
    """Rows of cells as a Markdown table, the first row its header."""
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines[1:]])


def main(argv=None) -> int:
    from medsam2.checkpoints import build_model, resolve_spec
    from medsam2.demo_model import DEMO_CONFIG
    from medsam2.evaluation.runner import quiet_propagation
    from medsam2.propagation import Segmenter

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", nargs="+", default=["demo"], help="manifest names or .pt files")
    ap.add_argument("--model-config", default=DEMO_CONFIG)
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "demo_breadth.json")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="demo-breadth-"))
    sets = real_sets(work)
    results = {}
    for name in args.checkpoints:
        t0 = time.perf_counter()
        config = None if not name.endswith(".pt") else args.model_config
        segmenter = Segmenter(build_model(resolve_spec(name, config, None, REPO / "model")))
        with quiet_propagation():
            row = {"twins": twin_rows(segmenter), "organ": organ_rows(segmenter),
                   "real": {s: structure_rows(segmenter, img, structures, lab) for s, (img, lab, structures, _) in sets.items()}}
        row["seconds"] = time.perf_counter() - t0
        results[name] = row
        print(f"{name}: {row['seconds']:.0f} s", flush=True)

    names = list(results)
    lines = [["", *names]]
    for kind in ("twins", "twins+wide"):
        lines.append([f"{kind}: clicks passing (mean Dice)",
                      *(f"{results[n]['twins'][kind]['pass']}/{results[n]['twins'][kind]['clicks']} "
                        f"({results[n]['twins'][kind]['dice']:.3f})" for n in names)])
    lines.append(["organ clicks, 4 sizes x 8 seeds: found (mean Dice)",
                  *(f"{results[n]['organ']['found']}/{results[n]['organ']['clicks']} ({results[n]['organ']['dice']:.3f})"
                    for n in names)])
    lines.append(["  the DICOMweb tests' series (64x56x32, seeds 700-703): mean Dice",
                  *(f"{results[n]['organ']['dicom_series']:.3f}" for n in names)])
    lines.append(["  the same, OHIF's click (middle slice): Dice per seed",
                  *(" ".join(f"{d:.2f}" for d in results[n]["organ"]["dicom_series_middle"]) for n in names)])
    for measure, title in (("slice_picked", "clicked slice, SAM 2's pick"), ("slice_best", "clicked slice, best candidate"),
                           ("3d_from_truth", "3D from the clicked slice's true mask")):
        lines.append([f"    {title}: Dice per seed",
                      *(" ".join(f"{b[measure]:.2f}" for b in results[n]["organ"]["dicom_series_middle_breakdown"])
                        for n in names)])
    lines.append(["  vessel marked with the organ", *(f"{results[n]['organ']['vessel_covered']:.1%}" for n in names)])
    for set_name, (_, _, structures, held_out) in sets.items():
        tag = "never labelled" if held_out else "in the training mix"
        lines.append([f"{set_name} ({tag}): mean Dice",
                      *(f"{np.mean(list(results[n]['real'][set_name].values())):.3f}" for n in names)])
        for structure in structures:
            lines.append([f"  {structure}", *(f"{results[n]['real'][set_name][structure]:.3f}" for n in names)])
    print(markdown_table(lines))
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
