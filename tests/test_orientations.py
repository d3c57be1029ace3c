"""Multi-orientation fusion: prompts carried over voxel for voxel, volumes turned and back, the vote."""

import numpy as np
import pytest

from medsam2.orientations import fuse, from_orientation, parse_orientations, reorient_prompt, to_orientation
from medsam2.prompts import ObjectPrompt


def frame_voxel(obj, volume_shape):
    """The voxels a prompt's clicks sit on, as a boolean volume in that prompt's orientation."""
    m = np.zeros(volume_shape, bool)
    for k, pts in obj.clicks.items():
        for x, y, _ in pts:
            m[int(x - 0.5), int(y - 0.5), k] = True
    return m


@pytest.mark.parametrize("name", ["axial", "coronal", "sagittal"])
def test_a_click_lands_on_the_same_voxel_in_every_orientation(name):
    shape = (7, 5, 3)
    obj = ObjectPrompt("x", clicks={2: [(4.5, 1.5, 1)], 0: [(0.5, 3.5, 0)]})  # voxels (4, 1, 2), (0, 3, 0)
    turned = reorient_prompt(obj, name)
    volume = np.zeros(shape)
    assert to_orientation(volume, name).shape == tuple(np.moveaxis(volume, {"axial": 2, "coronal": 1, "sagittal": 0}[name], 2).shape)
    back = from_orientation(frame_voxel(turned, to_orientation(volume, name).shape), name)
    assert back.shape == shape and set(map(tuple, np.argwhere(back))) == {(4, 1, 2), (0, 3, 0)}
    labels = sorted(p for pts in turned.clicks.values() for _, _, p in pts)
    assert labels == [0, 1]


def test_a_box_becomes_its_centre_click_and_a_roi_is_permuted():
    obj = ObjectPrompt("x", box=(3, (2.0, 4.0, 6.0, 8.0)), roi=(2, 5, 4, 7, 1, 5))
    sagittal = reorient_prompt(obj, "sagittal")  # slices across i: voxel (i, j, k) -> (j, k, i)
    # the box's centre is voxel (3.5, 5.5) on slice 3: sagittal slice 4 (half up), point (j, k) = (5.5, 3)
    assert sagittal.box is None and sagittal.clicks == {4: [(6.0, 3.5, 1)]}
    assert sagittal.roi == (4, 7, 1, 5, 2, 5)
    assert reorient_prompt(obj, "axial") is obj


def test_the_vote_keeps_voxels_most_passes_agree_on():
    a, b, c = (np.zeros((2, 2, 1), bool) for _ in range(3))
    a[0, 0] = b[0, 0] = True  # two of three
    c[1, 1] = True  # one of three
    assert fuse([a, b, c]).tolist() == [[[True], [False]], [[False], [False]]]
    assert np.array_equal(fuse([c]), c)
    with pytest.raises(ValueError):
        parse_orientations("axial,oblique")
    assert parse_orientations("axial, sagittal") == ("axial", "sagittal")
