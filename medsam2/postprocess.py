"""What the references do to a mask after the model: SAM 2's hole filling, MedSAM2's largest component.

- Hole filling (Meta's `sam2.utils.misc.fill_holes_in_mask_scores`, which `build_sam2_video_predictor`
  switches on with `fill_hole_area=8`): every background region (logit <= 0) of a low-resolution mask
  of at most `fill_hole_area` pixels, 8-connected, becomes foreground (logit 0.1); a region touching
  the border counts too. Meta runs it with its optional CUDA extension only (without it, a warning
  and no filling); here it runs with SciPy on any device, on the low-resolution logits of every slice
  before they are upsampled, which is where SAM 2's video predictor fills its outputs.
- Largest connected component (bowang-lab MedSAM2's `medsam2_infer_3D_CT.py`, `getLargestCC`:
  `skimage.measure.label` with full connectivity, 26 neighbours in 3D): of an object's 3D mask only
  its largest component is kept. Off unless the checkpoint's manifest entry or the request asks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

FILL_VALUE = 0.1  # the logit SAM 2 gives a filled hole


@dataclass(frozen=True)
class Postprocess:
    """Per checkpoint (manifest `postprocess`); `largest_component` can be overridden per request."""

    fill_hole_area: int = 8  # background regions of at most this many low-resolution pixels become foreground
    largest_component: bool = False  # keep only the largest 26-connected component of each object

    def __post_init__(self):
        if int(self.fill_hole_area) < 0:
            raise ValueError(f"postprocess fill_hole_area must be >= 0, got {self.fill_hole_area}")

    @classmethod
    def parse(cls, spec) -> "Postprocess":
        """From a manifest entry's `postprocess` object (None: the default)."""
        if spec is None or isinstance(spec, Postprocess):
            return spec or cls()
        if not isinstance(spec, dict):
            raise ValueError(f"postprocess must be an object, got {spec!r}")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown postprocess fields {sorted(unknown)}: use {sorted(cls.__dataclass_fields__)}")
        return cls(int(spec.get("fill_hole_area", 8)), bool(spec.get("largest_component", False)))

    def as_dict(self) -> dict:
        return {"fill_hole_area": self.fill_hole_area, "largest_component": self.largest_component}


_EIGHT_NEIGHBOURS_IN_A_SLICE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_NEIGHBOURS_IN_A_SLICE[1] = True  # (slice, row, column): connected within a slice only


def fill_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """(..., h, w) mask logits with every background region of at most `max_area` pixels (8-connected,
    within its slice) set to FILL_VALUE, as SAM 2's `fill_holes_in_mask_scores`. All slices in one
    labelling pass."""
    if max_area <= 0 or logits.numel() == 0:
        return logits
    shape = logits.shape
    background = (logits <= 0).reshape(-1, *shape[-2:]).cpu().numpy()
    labels, n = ndimage.label(background, structure=_EIGHT_NEIGHBOURS_IN_A_SLICE)
    if n == 0:
        return logits
    areas = np.bincount(labels.ravel())
    small = areas <= max_area
    small[0] = False  # label 0 is the foreground
    holes = small[labels]
    if not holes.any():
        return logits
    holes = torch.from_numpy(holes.reshape(shape)).to(logits.device)
    return torch.where(holes, torch.full_like(logits, FILL_VALUE), logits)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean volume (the lowest-numbered on ties, as
    MedSAM2's `np.argmax(np.bincount(...))`); an empty mask stays empty."""
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        return mask.astype(bool, copy=False)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1
