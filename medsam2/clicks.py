"""Where a simulated clinician clicks: shared by training (prompt simulation) and evaluation.

All functions take 2D boolean masks indexed [row, col] = [y, x] and return (x, y) positions in pixel
units, so they apply to SAM2 frames (rows J, columns I, see frames.py) directly.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def interior_point(mask: np.ndarray) -> tuple[int, int] | None:
    """The pixel farthest from the mask border (ties: the first in row-major order)."""
    if not mask.any():
        return None
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def random_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    n = int(rng.integers(len(ys)))
    return int(xs[n]), int(ys[n])


def bounding_box(mask: np.ndarray, rng: np.random.Generator | None = None, jitter: float = 0.0):
    """(x0, y0, x1, y1) with x1/y1 exclusive; optional jitter as a fraction of the box size."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    x0, x1, y0, y1 = float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1)
    if rng is not None and jitter > 0:
        w, h = x1 - x0, y1 - y0
        x0 += rng.uniform(-jitter, jitter) * w
        x1 += rng.uniform(-jitter, jitter) * w
        y0 += rng.uniform(-jitter, jitter) * h
        y1 += rng.uniform(-jitter, jitter) * h
        H, W = mask.shape
        x0, x1 = np.clip(sorted((x0, x1)), 0, W)
        y0, y1 = np.clip(sorted((y0, y1)), 0, H)
    return float(x0), float(y0), float(x1), float(y1)


def corrective_click(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int] | None:
    """(x, y, positive) in the largest error region, at its most interior pixel.

    A missed region gets a foreground click (positive=1), a false-positive region a background
    click (0). None when the prediction is already exact.
    """
    best = None
    for region, positive in ((truth & ~pred, 1), (pred & ~truth, 0)):
        labels, n = ndimage.label(region)
        if n == 0:
            continue
        sizes = ndimage.sum(region, labels, index=np.arange(1, n + 1))
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (sizes[k], labels == k + 1, positive)
    if best is None:
        return None
    x, y = interior_point(best[1])
    return x, y, best[2]


def largest_slice(mask3d: np.ndarray) -> int | None:
    """Slice index k (last axis) with the largest area of a (I, J, K) mask."""
    areas = mask3d.reshape(-1, mask3d.shape[-1]).sum(axis=0)
    return int(np.argmax(areas)) if areas.max() > 0 else None
