"""Multi-orientation fusion (the MedSAM-2 paper): segment along axial, coronal and sagittal slices, vote.

The engine treats a volume as a video of its axial slices (the last voxel axis, k). The paper also
runs the other two orientations and combines the passes. Here an orientation is the voxel axis that
becomes the slice axis (`np.moveaxis(volume, axis, 2)`); each orientation is opened as its own
session (its slices encoded once), the prompts are carried over voxel for voxel (a click (i, j, k) is
a click in every orientation; a box, which is a plane figure, becomes a click at its centre in the
other orientations, and a roi's voxel bounds are permuted), and a voxel is kept where most passes
keep it. It costs one encoding and one propagation per orientation. Used by the accuracy benchmark
(`python -m medsam2.evaluate run ... --orientations axial,coronal,sagittal`); see the README for
whether it pays.
"""

from __future__ import annotations

import numpy as np

from .prompts import ObjectPrompt

ORIENTATIONS = {"axial": 2, "coronal": 1, "sagittal": 0}  # the voxel axis slices are taken across


def parse_orientations(spec: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(spec).split(",") if n.strip())
    unknown = [n for n in names if n not in ORIENTATIONS]
    if not names or unknown:
        raise ValueError(f"orientations must be a comma-separated subset of {list(ORIENTATIONS)}, got {spec!r}")
    return names


def to_orientation(volume: np.ndarray, name: str) -> np.ndarray:
    return np.moveaxis(volume, ORIENTATIONS[name], 2)


def from_orientation(volume: np.ndarray, name: str) -> np.ndarray:
    return np.moveaxis(volume, 2, ORIENTATIONS[name])


def _voxel_to(name: str, ijk) -> tuple:
    """A voxel position (i, j, k) in the axes of `name` (the order np.moveaxis gives)."""
    axis = ORIENTATIONS[name]
    rest = [c for n, c in enumerate(ijk) if n != axis]
    return (*rest, ijk[axis])


def reorient_prompt(obj: ObjectPrompt, name: str) -> ObjectPrompt:
    """The object's prompts in orientation `name` (module docstring)."""
    if name == "axial":
        return obj
    out = ObjectPrompt(label=obj.label, value=obj.value)
    points = [((x - 0.5, y - 0.5, k), p) for k, pts in obj.clicks.items() for x, y, p in pts]
    if obj.box is not None:
        k, (x0, y0, x1, y1) = obj.box
        points.append((((x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5, k), 1))
    for ijk, positive in points:
        a, b, c = _voxel_to(name, ijk)
        out.clicks.setdefault(int(np.floor(c + 0.5)), []).append((a + 0.5, b + 0.5, positive))
    if obj.roi is not None:
        i0, i1, j0, j1, k0, k1 = obj.roi
        lo, hi = _voxel_to(name, (i0, j0, k0)), _voxel_to(name, (i1, j1, k1))
        out.roi = (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
    return out


def fuse(masks: list[np.ndarray]) -> np.ndarray:
    """Voxels kept by more than half of the passes (a single pass is returned as it is)."""
    stacked = np.stack([np.asarray(m, dtype=bool) for m in masks])
    return stacked.sum(axis=0) * 2 > len(masks)
