"""Per-structure accuracy of a 3D prediction: Dice, normalised surface distance, slice coverage.

Dice and NSD are MONAI's (`compute_dice`, `compute_surface_dice`). NSD (Nikolov et al. 2021) is the
share of both boundaries' surface area lying within `tolerance_mm` of the other boundary, with
distances in millimetres from the voxel spacing (a one-slice error along a 5 mm axis is not forgiven
by a 2 mm tolerance, the same error along a 1 mm axis is); surface areas are DeepMind's, as in the
CVPR 2025 challenge's scoring (MONAI's `use_subvoxels`; counting boundary voxels instead, as MONAI
does by default, gave up to 0.06 less on the same masks).

Empty masks, decided once here (MONAI alone gives nan for some of these):
  truth and prediction both empty  -> Dice = NSD = 1 (nothing to find, nothing found);
  exactly one of them empty        -> Dice = NSD = 0 (the structure was missed, or invented).
The benchmark only scores structures present in the truth, so the first case arises in tests only.

Two figures say whether a structure was *followed*: Dice on the slices before and on the slices
after the prompted one (nan on a side where neither truth nor prediction has anything), and the
share of the other labelled structures' voxels the prediction covers (`other_covered`: a model that
segments every look-alike scores a high Dice on a pair of twins' union but covers the other twin).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_surface_dice


def _batch(mask: np.ndarray) -> torch.Tensor:
    """(I, J, K) bool -> (1, 1, I, J, K) float: MONAI's one-hot batch layout with a single class."""
    return torch.as_tensor(np.asarray(mask, dtype=bool))[None, None].float()


def _empty_rule(pred: np.ndarray, truth: np.ndarray) -> float | None:
    p, t = bool(np.any(pred)), bool(np.any(truth))
    if p and t:
        return None
    return 1.0 if not p and not t else 0.0


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean volumes (empty rules in the module docstring)."""
    fixed = _empty_rule(pred, truth)
    if fixed is not None:
        return fixed
    return float(compute_dice(_batch(pred), _batch(truth), include_background=True, ignore_empty=False)[0, 0])


def surface_dice(pred: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float) -> float:
    """Normalised surface distance (surface Dice) at `tolerance_mm`, with `spacing` in mm per axis."""
    fixed = _empty_rule(pred, truth)
    if fixed is not None:
        return fixed
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internal argument
        warnings.simplefilter("ignore")
        nsd = compute_surface_dice(_batch(pred), _batch(truth), [float(tolerance_mm)], include_background=True,
                                   spacing=[float(s) for s in spacing], use_subvoxels=True)
    return float(nsd[0, 0])


def slice_coverage(pred: np.ndarray, truth: np.ndarray, key_slice: int) -> dict[str, int]:
    """How far propagation reached: slices (last axis) with a nonzero prediction before and after the
    prompted slice, next to the same counts for the truth."""
    p = np.nonzero(np.asarray(pred).any(axis=(0, 1)))[0]
    t = np.nonzero(np.asarray(truth).any(axis=(0, 1)))[0]
    return {
        "slices_before": int((p < key_slice).sum()),
        "slices_after": int((p > key_slice).sum()),
        "truth_slices_before": int((t < key_slice).sum()),
        "truth_slices_after": int((t > key_slice).sum()),
    }


def side_dice(pred: np.ndarray, truth: np.ndarray, key_slice: int) -> dict[str, float]:
    """Dice over the slices before and over the slices after the prompted one (see module docstring)."""
    out = {}
    for name, part in (("dice_before", np.s_[:, :, :key_slice]), ("dice_after", np.s_[:, :, key_slice + 1:])):
        p, t = np.asarray(pred)[part], np.asarray(truth)[part]
        out[name] = float("nan") if not p.any() and not t.any() else dice(p, t)
    return out


def other_covered(pred: np.ndarray, others: np.ndarray | None) -> float:
    """Share of `others` (other structures' voxels, outside the truth) that the prediction covers."""
    if others is None or not np.any(others):
        return float("nan")
    return float(np.logical_and(pred, others).sum() / np.sum(others))


def structure_metrics(pred: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float, key_slice: int,
                      others: np.ndarray | None = None) -> dict:
    """Everything the benchmark records for one structure after one interaction."""
    return {"dice": dice(pred, truth), "nsd": surface_dice(pred, truth, spacing, tolerance_mm),
            **side_dice(pred, truth, key_slice), "other_covered": other_covered(pred, others),
            **slice_coverage(pred, truth, key_slice)}
