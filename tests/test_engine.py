"""The engine on a model the project trained itself: both directions, reuse, objects, roi (CPU)."""

import numpy as np
import pytest

from medsam2.checkpoints import ModelSpec, build_model
from medsam2.clicks import interior_point, largest_slice
from medsam2.demo_model import DEMO_CONFIG
from medsam2.phantoms import PHANTOM_LABELS, make_phantom
from medsam2.propagation import Segmenter
from medsam2.settings import EngineSettings
from medsam2.prompts import ObjectPrompt, parse_objects
from medsam2.evaluation.metrics import dice


@pytest.fixture(scope="module")
def segmenter(trained_checkpoint):
    return Segmenter(build_model(ModelSpec(DEMO_CONFIG, checkpoint=trained_checkpoint)))


@pytest.fixture(scope="module")
def case():
    return make_phantom((64, 64, 32), seed=777)  # not among the training phantoms


def click_on(truth):
    k = largest_slice(truth)
    x, y = interior_point(truth[:, :, k].T)
    return [x, y, k]


def middle_click(truth):
    slices = np.nonzero(truth.any(axis=(0, 1)))[0]
    k = int(slices[len(slices) // 2])
    x, y = interior_point(truth[:, :, k].T)
    return [x, y, k]


def test_one_click_segments_the_clicked_slice_and_slices_on_both_sides(segmenter, case):
    # on the organ's middle slice: on its largest slice the demo model is unreliable on these 64 x 64 x 32
    # phantoms (clicked-slice Dice 0.00-0.94 over seeds 100-104 and 777; docs/demo-model.md)
    truth = case.label == PHANTOM_LABELS["organ"]
    i, j, k = middle_click(truth)
    session = segmenter.open(case.image)
    result = segmenter.segment(session, parse_objects({"foreground": [[i, j, k]]}, case.image.shape))
    pred = result.label == 1
    assert result.label.shape == case.image.shape and result.label.dtype == np.uint8
    covered = np.nonzero(pred.any(axis=(0, 1)))[0]
    assert covered.min() < k - 3 and covered.max() > k + 3, covered
    # the clicked slice itself (the demo model: 0.78) and the organ in 3D (0.88), not the vessel
    assert dice(pred[:, :, k], truth[:, :, k]) > 0.7
    assert dice(pred, truth) > 0.8
    assert not np.isnan(result.objects[0].ious[covered]).any()


def test_a_structure_spanning_the_volume_is_segmented_before_and_after_the_click(segmenter, case):
    truth = case.label == PHANTOM_LABELS["vessel"]
    i, j, k = click_on(truth)
    pred = segmenter.segment(segmenter.open(case.image), parse_objects({"foreground": [[i, j, k]]},
                                                                        case.image.shape)).label == 1
    before, after = slice(0, max(k - 1, 1)), slice(k + 2, None)
    if k > 2:
        assert dice(pred[:, :, before], truth[:, :, before]) > 0.5
    assert dice(pred[:, :, after], truth[:, :, after]) > 0.5


def test_cached_features_give_identical_results(segmenter, case):
    prompt = parse_objects({"foreground": [click_on(case.label == 1)]}, case.image.shape)
    session = segmenter.open(case.image)
    first = segmenter.segment(session, prompt).label
    again = segmenter.segment(session, prompt).label
    fresh = segmenter.segment(segmenter.open(case.image), prompt).label
    assert np.array_equal(first, again) and np.array_equal(first, fresh)


def test_lazy_encoding_gives_the_same_masks_as_encoding_everything_first(segmenter, case):
    prompt = parse_objects({"foreground": [click_on(case.label == 1)]}, case.image.shape)
    eager = segmenter.segment(segmenter.open(case.image, encode=True), prompt).label
    lazy = segmenter.segment(segmenter.open(case.image, encode=False), prompt).label
    assert np.array_equal(eager, lazy)


def test_two_objects_in_one_request_get_their_own_values(segmenter, case):
    params = {"objects": [{"label": "organ", "foreground": [click_on(case.label == 1)]},
                          {"label": "vessel", "foreground": [click_on(case.label == 2)]}]}
    result = segmenter.segment(segmenter.open(case.image), parse_objects(params, case.image.shape, PHANTOM_LABELS))
    assert set(np.unique(result.label)) == {0, 1, 2}
    k = click_on(case.label == 1)[2]
    assert dice(result.label[:, :, k] == 1, case.label[:, :, k] == 1) > 0.65


def test_a_3d_roi_bounds_the_result(segmenter, case):
    truth = case.label == 1
    ii, jj, kk = np.nonzero(truth)
    k0, k1 = int(np.percentile(kk, 30)), int(np.percentile(kk, 70))
    roi = [int(ii.max()), int(ii.min()), int(jj.max()), int(jj.min()), k0, k1]  # reversed like Slicer can send
    result = segmenter.segment(segmenter.open(case.image), parse_objects({"roi": roi}, case.image.shape))
    covered = np.nonzero((result.label > 0).any(axis=(0, 1)))[0]
    assert covered.size and covered.min() >= k0 and covered.max() <= k1
    key = (k0 + k1) // 2  # the box prompts the roi's middle slice
    assert dice(result.label[:, :, key] > 0, truth[:, :, key]) > 0.65


@pytest.mark.parametrize("engine", ["batched", "plain"])
def test_a_background_click_on_another_slice_corrects_the_tracked_mask_and_does_not_erase_it(segmenter, engine):
    """A slice with background clicks only is a correction of what was tracked there (SAM 2's click on
    a tracked frame). Decoded on its own, a lone background click gave whatever SAM makes of it (an
    empty slice, or the other twin here), and that propagated (under the CVPR 2025 protocol one such
    click took a twin from Dice 0.99 to 0.12)."""
    from medsam2.evaluation.twins import twin_click
    from medsam2.memory_phantoms import make_twins

    from tests.conftest import TWINS_SEED

    case = make_twins(seed=TWINS_SEED)
    twin, other = case.label == 1, case.label == 2
    i, j, k = twin_click(case.label, 1)
    segmenter = Segmenter(segmenter.model, EngineSettings(engine=engine))
    session = segmenter.open(case.image)
    first = segmenter.segment(session, [ObjectPrompt(label="t", clicks={k: [(i + 0.5, j + 0.5, 1)]})]).label > 0
    # "not that one": a background click in the other twin, 3 slices on
    c = k + 3
    x, y = interior_point(other[:, :, c].T)
    obj = ObjectPrompt(label="t", clicks={k: [(i + 0.5, j + 0.5, 1)], c: [(x + 0.5, y + 0.5, 0)]})
    corrected = segmenter.segment(session, [obj]).label > 0
    assert dice(first, twin) > 0.9
    assert dice(corrected[:, :, c], twin[:, :, c]) > 0.9  # the corrected slice keeps the twin
    assert dice(corrected, twin) > 0.9
    assert not (corrected & other).any()
