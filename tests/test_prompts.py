"""Client prompts -> per-slice SAM2 prompts (fast, no model)."""

import math

import numpy as np
import pytest

from medsam2.prompts import PromptError, parse_objects, parse_roi

SHAPE = (64, 48, 20)  # (I, J, K)


def test_ijk_click_becomes_point_on_its_slice():
    (obj,) = parse_objects({"foreground": [[10, 30, 7]], "background": [[12, 5, 7], [1, 2, 9]], "label": "liver"}, SHAPE)
    assert obj.label == "liver" and obj.value == 1
    assert obj.frames == [7, 9]
    points, labels, box = obj.frame_inputs(7)
    # x is i, y is j, at pixel centres; foreground first
    np.testing.assert_allclose(points, [[10.5, 30.5], [12.5, 5.5]])
    assert labels.tolist() == [1, 0] and box is None
    assert obj.frame_inputs(9)[1].tolist() == [0]


def test_float_clicks_from_ohif_are_rounded_to_their_slice():
    (obj,) = parse_objects({"foreground": [[10.4, 30.6, 6.7]]}, SHAPE)
    assert obj.frames == [7]


def test_slicer_roi_pairs_are_sorted_clipped_and_boxed_on_the_middle_slice():
    # Slicer maps RAS corners to IJK: on an LPS volume i and j come reversed, and may overshoot by one voxel
    roi = parse_roi([40, 10, 30, 5, 2, 12], SHAPE)
    assert roi == (10, 40, 5, 30, 2, 12)
    assert parse_roi([-1, 70, 0, 47, 19, 25], SHAPE) == (0, 63, 0, 47, 19, 19)
    (obj,) = parse_objects({"roi": [40, 10, 30, 5, 2, 12], "label": "spleen"}, SHAPE)
    k, box = obj.box
    assert k == 7 and box == (10.0, 5.0, 41.0, 31.0)  # x0=i0, y0=j0, exclusive x1/y1
    assert obj.frames == [7]


def test_box_and_clicks_on_the_same_slice_are_sent_together():
    (obj,) = parse_objects({"roi": [10, 20, 10, 20, 5, 5], "foreground": [[15, 15, 5]]}, SHAPE)
    points, labels, box = obj.frame_inputs(5)
    assert points.shape == (1, 2) and box.tolist() == [10, 10, 21, 21]


def test_several_objects_take_their_values_from_the_label_map():
    objs = parse_objects({"objects": [{"label": "vessel", "foreground": [[1, 1, 1]]},
                                      {"label": "organ", "roi": [0, 5, 0, 5, 0, 0]}]},
                         SHAPE, {"organ": 1, "vessel": 2})
    assert [(o.label, o.value) for o in objs] == [("vessel", 2), ("organ", 1)]


@pytest.mark.parametrize("params, message", [
    ({}, "no prompt"),
    ({"background": [[1, 1, 1]]}, "no prompt"),
    ({"foreground": [[64, 0, 0]]}, "outside"),
    ({"foreground": [[0, -1, 0]]}, "outside"),
    ({"foreground": [[0, 0, 20]]}, "outside"),
    ({"foreground": [[math.nan, 0, 0]]}, "not finite"),
    ({"foreground": [[1, 2]]}, "[i, j, k]"),
    ({"foreground": "1,2,3"}, "must be a list"),
    ({"foreground": [["a", 0, 0]]}, "non-number"),
    ({"roi": [100, 120, 0, 5, 0, 1]}, "outside"),
    ({"roi": [1, 2, 3]}, "[i0, i1, j0, j1, k0, k1]"),
    ({"objects": [{"label": "a", "foreground": [[1, 1, 1]]}, {"label": "a", "foreground": [[2, 2, 2]]}]}, "twice"),
    ({"objects": "x"}, "must be a list"),
])
def test_bad_prompts_are_refused_with_a_message(params, message):
    with pytest.raises(PromptError, match=None) as e:
        parse_objects(params, SHAPE)
    assert message in str(e.value)


def test_a_2d_image_is_refused_by_the_3d_parser():
    with pytest.raises(PromptError, match="3D"):
        parse_objects({"foreground": [[1, 1, 1]]}, (64, 64))
