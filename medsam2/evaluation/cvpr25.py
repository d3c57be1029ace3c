"""The CVPR 2025 interactive 3D segmentation challenge's evaluation, by its own rules.

Read from the official `CVPR25_iter_eval.py` and `get_boxes.py` (JunMa11/CVPR-MedSegFMCompetition,
2025-06-03) and written here, not copied. A case is a multi-class label map; all of its classes are
prompted and scored together:
- step 1: one box per class on the class's middle slice (`boxes`, with its first and last slice); a
  case without boxes scores 0 at step 1 and starts with clicks;
- steps 2-6: one click per class, in the largest 26-connected component of that class's error (missed
  and extra voxels together), at its distance-transform maximum (the EDT of the component's bounding
  box padded by 25 % on each side, in voxels, spacing ignored; ties broken by numpy's legacy
  generator seeded 42 before every click); a background click where the truth there is background,
  else a foreground click; a class already exact gets none;
- DSC and NSD (2 mm; DeepMind's surface-area NSD, which MONAI computes with `use_subvoxels`) per class,
  averaged over the case's classes; NSD counts 0 unless that mean DSC is above 0.2;
- DSC_AUC and NSD_AUC: trapezoid over the 5 click steps only (unit steps: at most 4.0); final: after
  step 6; 90 s per class over all steps (the script warns; the challenge's final test scores a case
  over it 0, which `summary` applies and counts).
Clicks are array indices of `imgs`, (D, H, W) = (z, y, x), whatever the official docstring says.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cc3d
import numpy as np
import torch
from monai.metrics import compute_surface_dice
from scipy.ndimage import distance_transform_edt

N_CLICKS = 5
TOLERANCE_MM = 2.0
NSD_NEEDS_DSC_ABOVE = 0.2
SECONDS_PER_CLASS = 90.0
EDT_DOWNSAMPLE_ABOVE = 60_000_000  # voxels of a padded crop above which the official EDT runs at half size
BOX_SEED = 2025  # get_boxes.py seeds numpy's legacy generator with it once
CSV_COLUMNS = (["CaseName", "TotalRunningTime"] + [f"RunningTime_{n}" for n in range(1, 7)]
               + ["DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"] + [f"DSC_{n}" for n in range(1, 7)]
               + [f"NSD_{n}" for n in range(1, 7)] + ["num_class", "runtime_upperbound"])


@dataclass
class ChallengeCase:
    """One case in the challenge's format (an input .npz with its ground truth)."""

    name: str  # file name, e.g. "CT_AbdTumor_case1.npz"
    imgs: np.ndarray  # (D, H, W) uint8
    spacing: tuple[float, float, float]  # mm per array axis
    gts: np.ndarray  # (D, H, W) label map, classes 1..C
    boxes: list[dict] | None  # per class: z_min, z_max, z_mid, z_mid_x_min, z_mid_y_min, z_mid_x_max, z_mid_y_max

    def inputs(self) -> dict:
        """What the evaluator puts in the input file at step 1."""
        out = {"imgs": self.imgs, "spacing": np.asarray(self.spacing)}
        if self.boxes is not None:
            out["boxes"] = np.array(self.boxes, dtype=object)
        return out


# ------------------------------------------------------------------------------------------- scores

def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """DeepMind's compute_dice_coefficient: 2|A n B| / (|A| + |B|); nan when both are empty."""
    total = int(truth.sum()) + int(pred.sum())
    return float("nan") if total == 0 else 2.0 * int((truth & pred).sum()) / total


def nsd(truth: np.ndarray, pred: np.ndarray, spacing, tolerance_mm: float = TOLERANCE_MM) -> float:
    """Normalised surface distance with DeepMind's surface areas (MONAI's subvoxel NSD; equal to the
    surface-distance package's compute_surface_dice_at_tolerance: tests/test_cvpr25.py). An empty
    prediction of a present class scores 0."""
    if not pred.any() or not truth.any():
        return 0.0 if truth.any() or pred.any() else float("nan")
    batch = [torch.from_numpy(np.ascontiguousarray(m, dtype=bool))[None, None].float() for m in (pred, truth)]
    value = compute_surface_dice(*batch, [float(tolerance_mm)], include_background=True,
                                 spacing=[float(s) for s in spacing], use_subvoxels=True)
    return float(value[0, 0])


def classes_of(gts: np.ndarray) -> list[int]:
    """The case's classes: the sorted label values of its ground truth, the smallest (background) left out."""
    return [int(v) for v in np.unique(gts)[1:]]


def scores(gts: np.ndarray, segs: np.ndarray, spacing) -> tuple[float, float, dict[int, tuple[float, float]]]:
    """(mean DSC, mean NSD, {class: (DSC, NSD)}) of one step; the mean NSD is 0 unless the mean DSC is
    above 0.2 (per-class NSD is reported as computed)."""
    per_class = {}
    for c in classes_of(gts):
        truth, pred = gts == c, segs == c
        per_class[c] = (dice(truth, pred), nsd(truth, pred, spacing))
    dsc = float(np.mean([d for d, _ in per_class.values()]))
    mean_nsd = float(np.mean([n for _, n in per_class.values()])) if dsc > NSD_NEEDS_DSC_ABOVE else 0.0
    return dsc, mean_nsd, per_class


def auc(values) -> float:
    """The official area: trapezoid over the last N_CLICKS values with unit steps."""
    ys = np.asarray(values, dtype=float)[-N_CLICKS:]
    return float(((ys[1:] + ys[:-1]) / 2).sum())


# ------------------------------------------------------------------------------------------- prompts

def case_boxes(gts: np.ndarray, rng: np.random.RandomState) -> list[dict]:
    """get_boxes.py's boxes for a label map already numbered 1..C: per class its slice range, its middle
    slice (the middle of the slices that hold it) and its 2D box there, every side widened by one
    shift of 0-5 (times size/256 pixels) drawn from `rng`."""
    boxes = []
    for c in classes_of(gts):
        z = np.nonzero((gts == c).any(axis=(1, 2)))[0]
        z_mid = int(z[len(z) // 2])
        ys, xs = np.nonzero(gts[z_mid] == c)
        H, W = gts.shape[1:]
        shift = int(rng.randint(0, 6, 1)[0])
        dx, dy = int(shift * W / 256), int(shift * H / 256)
        boxes.append({"z_min": int(z[0]), "z_max": int(z[-1]), "z_mid": z_mid,
                      "z_mid_x_min": max(0, int(xs.min()) - dx), "z_mid_y_min": max(0, int(ys.min()) - dy),
                      "z_mid_x_max": min(W - 1, int(xs.max()) + dx), "z_mid_y_max": min(H - 1, int(ys.max()) + dy)})
    return boxes


def component_edt(component: np.ndarray) -> np.ndarray:
    """The official EDT of one error component: computed on its bounding box padded by 25 % of the
    box (at least 1 voxel) on each side, so distances reach the component's border and never the
    image's; at half resolution (max-pooled, then repeated) when the padded box exceeds 60 M voxels."""
    coords = np.argwhere(component)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    size = hi - lo
    pad = np.maximum((size * 0.25).astype(int), 1)
    crop = np.zeros(size + 2 * pad, dtype=np.uint8)
    crop[tuple(slice(p, p + s) for p, s in zip(pad, size))] = component[tuple(slice(a, b) for a, b in zip(lo, hi))]
    if crop.size > EDT_DOWNSAMPLE_ABOVE:
        from skimage.measure import block_reduce

        edt = distance_transform_edt(block_reduce(crop, block_size=(2, 2, 2), func=np.max))
        edt = edt.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    else:
        edt = distance_transform_edt(crop)
    full = np.zeros(component.shape, dtype=edt.dtype)
    full[tuple(slice(a, b) for a, b in zip(lo, hi))] = edt[tuple(slice(p, p + s) for p, s in zip(pad, size))]
    return full


@dataclass(frozen=True)
class Click:
    kind: str  # "fg" or "bg"
    zyx: tuple[int, int, int]  # array index in imgs


def next_click(truth: np.ndarray, pred: np.ndarray) -> Click | None:
    """The official corrective click for one class (module docstring); None when the class is exact."""
    error = (truth != pred).astype(np.uint8)
    if not error.any():
        return None
    labels = cc3d.connected_components(error, connectivity=26)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    component = labels == int(np.argmax(sizes))
    edt = component_edt(component) * component
    if edt.sum() == 0:
        edt = component.astype(float)
    best = np.argwhere(edt == edt.max())
    zyx = tuple(int(v) for v in best[np.random.RandomState(42).choice(len(best))])
    return Click("fg" if truth[zyx] else "bg", zyx)


# ------------------------------------------------------------------------------------------- the loop

@dataclass
class CaseResult:
    row: dict  # the official CSV row
    per_class: list[dict]  # per class and step: DSC, NSD (this project's per-structure tables)


def run_case(case: ChallengeCase, predict: Callable[[Path, Path], None], workdir: Path) -> CaseResult:
    """The official loop over one case. `predict(input_npz, output_npz)` is the submission (what its
    predict.sh does for one file); the input file is rewritten before every step as the evaluator
    does, and a step that writes nothing leaves the previous output in place."""
    workdir = Path(workdir)
    (workdir / "inputs").mkdir(parents=True, exist_ok=True)
    (workdir / "outputs").mkdir(parents=True, exist_ok=True)
    inp, out = workdir / "inputs" / case.name, workdir / "outputs" / case.name
    out.unlink(missing_ok=True)
    classes = classes_of(case.gts)
    clicks = [{"fg": [], "bg": []} for _ in classes]
    order: list[list] = [[] for _ in classes]
    row = {"CaseName": case.name, "num_class": len(classes), "runtime_upperbound": len(classes) * SECONDS_PER_CLASS}
    dscs, nsds, per_class, total = [], [], [], 0.0
    for step in range(1, N_CLICKS + 2):
        if step == 1 and case.boxes is None:
            row.update({"RunningTime_1": 0, "DSC_1": 0, "NSD_1": 0})
            dscs.append(0.0)
            nsds.append(0.0)
            continue
        inputs = case.inputs()
        if step > 1:
            prev = np.load(out, allow_pickle=True)["segs"].astype(np.uint8) if out.exists() \
                else np.zeros_like(case.gts, dtype=np.uint8)
            for n, c in enumerate(classes):
                click = next_click(case.gts == c, prev == c)
                if click is None:
                    order[n].append(None)
                    continue
                clicks[n][click.kind].append(list(click.zyx))
                order[n].append(click.kind)
            inputs.update(clicks=np.array(clicks, dtype=object), clicks_order=np.array(order, dtype=object),
                          prev_pred=prev)
        np.savez(inp, **inputs)
        t0 = time.perf_counter()
        predict(inp, out)
        seconds = time.perf_counter() - t0
        total += seconds
        segs = np.load(out, allow_pickle=True)["segs"] if out.exists() else np.zeros_like(case.gts)
        if segs.shape != case.gts.shape:
            raise ValueError(f"{case.name}: the prediction has shape {segs.shape}, the case {case.gts.shape}")
        dsc, mean_nsd, classes_scored = scores(case.gts, segs, case.spacing)
        row.update({f"RunningTime_{step}": seconds, f"DSC_{step}": dsc, f"NSD_{step}": mean_nsd})
        dscs.append(dsc)
        nsds.append(mean_nsd)
        per_class += [{"case": case.name, "class": c, "step": step, "dice": d, "nsd": s}
                      for c, (d, s) in classes_scored.items()]
    row.update({"TotalRunningTime": total, "DSC_AUC": auc(dscs), "NSD_AUC": auc(nsds),
                "DSC_Final": dscs[-1], "NSD_Final": nsds[-1]})
    inp.unlink(missing_ok=True)
    return CaseResult({k: row[k] for k in CSV_COLUMNS}, per_class)


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def summary(rows: list[dict], enforce_time_limit: bool = True) -> dict:
    """Means over cases of the official columns, a case over its time budget scoring 0 (as on the
    final test) and counted."""
    over = [r["TotalRunningTime"] > r["runtime_upperbound"] for r in rows]
    out = {"cases": len(rows), "over_time": int(sum(over))}
    for key in ("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"):
        out[key] = round(float(np.mean([0.0 if o and enforce_time_limit else r[key] for o, r in zip(over, rows)])), 4)
    out["seconds_per_class"] = round(float(np.mean([r["TotalRunningTime"] / r["num_class"] for r in rows])), 2)
    return out


# ------------------------------------------------------------------------------------------- files

def load_cases(npz_dir: Path, gts_dir: Path | None = None) -> list[ChallengeCase]:
    """Every `*.npz` of a folder, ground truth in the file (`gts`) or in `gts_dir/<same name>`."""
    cases = []
    for path in sorted(Path(npz_dir).glob("*.npz")):
        data = np.load(path, allow_pickle=True)
        source = np.load(Path(gts_dir) / path.name, allow_pickle=True) if gts_dir else data
        if "gts" not in source:
            raise ValueError(f"{path.name}: no 'gts' in {'the gts folder' if gts_dir else 'the file'}")
        boxes = [dict(b) for b in data["boxes"]] if "boxes" in data else None
        cases.append(ChallengeCase(path.name, data["imgs"], tuple(float(s) for s in data["spacing"]),
                                   source["gts"], boxes))
    return cases


def case_from_volume(name: str, image: np.ndarray, label: np.ndarray, spacing, intensity="auto",
                     rng: np.random.RandomState | None = None) -> ChallengeCase:
    """One of this project's (I, J, K) volumes in the challenge's form: imgs (D, H, W) = (K, J, I) as
    uint8 grey levels (the engine's intensity rule, rounded), classes renumbered 1..C in order, boxes by
    get_boxes.py's rule."""
    from skimage.segmentation import relabel_sequential

    from ..frames import scale_volume

    grey = np.round(scale_volume(image, intensity).numpy() * 255.0).astype(np.uint8)
    gts = relabel_sequential(np.asarray(label).astype(np.int64))[0].transpose(2, 1, 0)
    rng = rng or np.random.RandomState(BOX_SEED)
    return ChallengeCase(name, np.ascontiguousarray(grey.transpose(2, 1, 0)),
                         tuple(float(s) for s in spacing[::-1]), np.ascontiguousarray(gts.astype(np.uint8)),
                         case_boxes(gts, rng))
