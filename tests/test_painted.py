"""A painted labelmap (Slicer's scribbles, a hand-painted slice) to prompts: which slices, which voxels."""

import numpy as np
import pytest

from medsam2.painted import PaintHistory, labelmap_prompt, stroke_points
from medsam2.prompts import PromptError

SHAPE = (40, 30, 12)  # (I, J, K): not square, so a transposed mask would not fit
SLICER_INFO = [{"name": "organ", "id": 1}, {"name": "vessel", "id": 2},
               {"name": "foreground_scribbles", "id": 3}, {"name": "background_scribbles", "id": 4}]


def slicer_labelmap():
    """organ painted on slices 4 and 6, a vessel on 5, a foreground stroke on 8, a background one on 4."""
    lm = np.zeros(SHAPE, np.uint8)
    lm[5:15, 3:9, 4] = 1
    lm[6:14, 4:8, 6] = 1
    lm[30:34, 20:24, 5] = 2
    lm[10:30, 14:17, 8] = 3  # a horizontal stroke, 3 voxels wide, along i
    lm[20:38, 25:27, 4] = 4
    return lm


def test_the_selected_segment_becomes_a_mask_on_each_painted_slice_in_frame_orientation():
    lm = slicer_labelmap()
    obj = labelmap_prompt(lm, SLICER_INFO, "organ")
    assert obj.label == "organ" and sorted(obj.masks) == [4, 6]
    for k in (4, 6):
        assert obj.masks[k].shape == (SHAPE[1], SHAPE[0])  # rows J, columns I, as SAM 2's frames
        assert np.array_equal(obj.masks[k], (lm[:, :, k] == 1).T)


def test_scribbles_become_clicks_on_their_slices_inside_the_strokes():
    lm = slicer_labelmap()
    obj = labelmap_prompt(lm, SLICER_INFO, "organ")
    assert sorted(obj.clicks) == [4, 8]
    for k, layer, positive in ((8, 3, 1), (4, 4, 0)):
        clicks = obj.clicks[k]
        assert 1 <= len(clicks) <= 3 and all(p == positive for _, _, p in clicks)
        for x, y, _ in clicks:  # SAM 2 points are pixel centres: voxel (i, j) is (i + .5, j + .5)
            assert lm[int(x - 0.5), int(y - 0.5), k] == layer
    xs = sorted(x for x, _, _ in obj.clicks[8])
    assert xs[-1] - xs[0] >= 10  # spread along the 20-voxel stroke, not bunched


def test_another_segment_is_not_a_prompt_and_each_segment_can_be_selected():
    lm = slicer_labelmap()
    vessel = labelmap_prompt(lm, SLICER_INFO, "vessel")
    assert sorted(vessel.masks) == [5]
    assert np.array_equal(vessel.masks[5], (lm[:, :, 5] == 2).T)


def test_stroke_points_lie_on_the_stroke_middle_spread_and_bounded():
    stroke = np.zeros((30, 60), bool)
    stroke[10:15, 5:55] = True  # rows 10-14: the middle row is 12
    pts = stroke_points(stroke, per_stroke=3)
    assert len(pts) == 3 and all(stroke[y, x] for x, y in pts)
    assert all(abs(y - 12) <= 1 for _, y in pts)
    xs = sorted(x for x, _ in pts)
    assert min(np.diff(xs)) >= 6
    assert len(stroke_points(stroke, per_stroke=1)) == 1
    dot = np.zeros((30, 60), bool)
    dot[3:5, 3:5] = True  # a dab: one point, not three on top of each other
    assert len(stroke_points(dot)) == 1
    two = stroke | dot
    assert len(stroke_points(two, per_stroke=2)) == 3  # per stroke


def test_without_label_info_every_nonzero_voxel_is_the_structure():
    lm = np.zeros(SHAPE, np.float32)
    lm[5:15, 3:9, 7] = 1
    obj = labelmap_prompt(lm, None, None, label="liver")
    assert obj.label == "liver" and sorted(obj.masks) == [7] and not obj.clicks


@pytest.mark.parametrize("info, selected, lm_edit, message", [
    (SLICER_INFO[:2] + SLICER_INFO[3:], "organ", None, "values [3]"),  # a value label_info does not name
    (SLICER_INFO, "liver", None, "'liver' is not a segment"),
    (SLICER_INFO, "foreground_scribbles", None, "is not a segment"),
    (SLICER_INFO, None, None, "'selected_label_name' is missing"),
    ([{"name": "organ"}], "organ", None, "label_info"),
    ([{"name": "organ", "id": "x"}], "organ", None, "not a number"),
    ([{"name": "organ", "id": 0}], "organ", None, "ids start at 1"),
    (SLICER_INFO + [{"name": "organ", "id": 5}], "organ", None, "twice"),
    (SLICER_INFO, "organ", "no organ, no foreground", "nothing painted"),
    (SLICER_INFO, "organ", "fractions", "whole-number"),
    (SLICER_INFO, "organ", "negative", "negative values"),
])
def test_unusable_labelmaps_are_refused_with_the_reason(info, selected, lm_edit, message):
    lm = slicer_labelmap().astype(np.float32)
    if lm_edit == "no organ, no foreground":
        lm[np.isin(lm, (1, 3))] = 0
    elif lm_edit == "fractions":
        lm[0, 0, 0] = 0.5
    elif lm_edit == "negative":
        lm[0, 0, 0] = -1
    with pytest.raises(PromptError, match=message.replace("[", r"\[").replace("]", r"\]")):
        labelmap_prompt(lm, info, selected)


def test_background_scribbles_alone_are_refused_as_nothing_painted():
    lm = np.zeros(SHAPE, np.uint8)
    lm[20:38, 25:27, 4] = 4
    with pytest.raises(PromptError, match="nothing painted.*background scribbles alone"):
        labelmap_prompt(lm, SLICER_INFO, "organ")


def test_an_answer_sent_back_is_not_a_prompt_but_a_painted_or_repainted_slice_is():
    """Slicer's second Update sends the segment as the server answered it: the slices the server filled
    are not the user's, the slice the user painted first still is (as painted), a repainted one too."""
    lm = np.zeros(SHAPE, np.uint8)
    lm[5:15, 3:9, 4] = 1  # painted on slice 4
    first = labelmap_prompt(lm, SLICER_INFO, "organ")
    answer = np.zeros(SHAPE, bool)
    answer[4:16, 2:10, 1:10] = True  # what the server filled in
    answer[:, :, 4] = lm[:, :, 4] == 1  # exactly as painted there
    history = PaintHistory.of(answer, first.masks)
    back = answer.astype(np.uint8)  # the second Update: the answer, a background scribble on slice 8
    back[0:3, 0:3, 8] = 4
    again = labelmap_prompt(back, SLICER_INFO, "organ", history=history)
    assert sorted(again.masks) == [4] and np.array_equal(again.masks[4], first.masks[4])
    assert sorted(again.clicks) == [8]
    back[4:16, 2:12, 2] = 1  # the user repaints slice 2 larger
    repainted = labelmap_prompt(back, SLICER_INFO, "organ", history=history)
    assert sorted(repainted.masks) == [2, 4]
    assert np.array_equal(repainted.masks[2], (back[:, :, 2] == 1).T)
