"""Post-processing as the references do it: SAM 2's hole filling and MedSAM2's largest component.

Hole filling is checked against an independent reading of Meta's `fill_holes_in_mask_scores` (every
8-connected background region of at most `max_area` pixels gets logit 0.1) written with scikit-image,
on masks with holes of 1 to 9 pixels, diagonal holes, a small region at the border and empty slices.
"""

import numpy as np
import pytest
import torch
from skimage import measure

from medsam2.postprocess import FILL_VALUE, Postprocess, fill_holes, largest_component


def reference_fill(logits: np.ndarray, max_area: int) -> np.ndarray:
    out = logits.copy()
    for k in range(logits.shape[0]):
        labels = measure.label(logits[k] <= 0, connectivity=2, background=0)  # 8-connected background regions
        for region in measure.regionprops(labels):
            if region.area <= max_area:
                out[k][labels == region.label] = FILL_VALUE
    return out


def masks_with_holes() -> np.ndarray:
    rng = np.random.default_rng(0)
    logits = np.full((4, 40, 40), -5.0, dtype=np.float32)
    logits[0, 5:35, 5:35] = 3.0
    logits[0, 10, 10] = -2.0  # 1 px hole
    logits[0, 20:22, 20:24] = -1.0  # 8 px hole: filled
    logits[0, 28:31, 10:13] = -1.0  # 9 px hole: kept
    logits[0, 14, 30] = logits[0, 15, 31] = -1.0  # two pixels touching at a corner: one 8-connected hole
    logits[1, 0:2, 0:3] = -1.0  # 6 px background at the border of an all-foreground slice: filled too
    logits[1][logits[1] == -5.0] = 2.0
    logits[1, 0:2, 0:3] = -1.0
    logits[2] = np.where(rng.random((40, 40)) < 0.2, -1.0, 1.0)  # speckle
    # slice 3: empty (one large background region)
    return logits


@pytest.mark.parametrize("max_area", [0, 1, 8, 20])
def test_holes_are_filled_as_sam2_fills_them(max_area):
    logits = masks_with_holes()
    ours = fill_holes(torch.from_numpy(logits), max_area).numpy()
    np.testing.assert_array_equal(ours, reference_fill(logits, max_area) if max_area else logits)


def test_what_an_8_pixel_limit_fills_and_keeps():
    ours = fill_holes(torch.from_numpy(masks_with_holes()), 8).numpy()
    filled = np.float32(FILL_VALUE)
    assert ours[0, 10, 10] == ours[0, 20, 20] == ours[0, 14, 30] == ours[0, 15, 31] == filled
    assert (ours[0, 28:31, 10:13] < 0).all()  # 9 pixels: a real hole
    assert (ours[1] > 0).all() and (ours[3] < 0).all()


def test_the_largest_component_is_kept_in_3d_with_26_neighbours():
    mask = np.zeros((20, 20, 10), bool)
    mask[2:8, 2:8, 2:8] = True  # 216 voxels
    mask[8, 8, 8] = True  # touches the cube at a corner only: 26-connected to it
    mask[12:15, 12:15, 1:4] = True  # 27 voxels, apart
    kept = largest_component(mask)
    assert kept[2:8, 2:8, 2:8].all() and kept[8, 8, 8] and not kept[12:15, 12:15, 1:4].any()
    assert largest_component(np.zeros((3, 3, 3), bool)).sum() == 0


def test_postprocess_declarations_parse_and_bad_ones_are_refused():
    assert Postprocess.parse({"fill_hole_area": 0, "largest_component": True}) == Postprocess(0, True)
    assert Postprocess.parse(None) == Postprocess(8, False)
    with pytest.raises(ValueError, match=">= 0"):
        Postprocess.parse({"fill_hole_area": -1})
    with pytest.raises(ValueError, match="unknown postprocess fields"):
        Postprocess.parse({"fill_holes": 8})
