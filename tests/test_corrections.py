"""Corrections and repeated requests on an open image (CPU, random weights of the micro config).

Both clients resend every click of a label with each request. The engine answers the same prompts
again from the label's previous result, and with `settle_slices` re-propagates a correction only
until the masks stop changing, keeping the previous masks beyond.
"""

import numpy as np
import pytest
import torch

from medsam2.checkpoints import ModelSpec, build_model
from medsam2.phantoms import make_phantom
from medsam2.propagation import Segmenter
from medsam2.settings import EngineSettings
from medsam2.prompts import parse_objects
from medsam2.evaluation.metrics import dice

FIRST = {"foreground": [[20, 22, 20]]}
CORRECTED = {"foreground": [[20, 22, 20]], "background": [[2, 2, 20]]}


@pytest.fixture(scope="module")
def model(random_checkpoint):
    return build_model(ModelSpec("sam2.1_hiera_micro", checkpoint=random_checkpoint))


@pytest.fixture(scope="module")
def volume():
    return make_phantom((48, 48, 40), seed=3).image


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_same_prompts_again_are_answered_from_the_previous_result(model, volume):
    seg = Segmenter(model)
    session = seg.open(volume)
    first = seg.segment(session, parse_objects(FIRST, volume.shape))
    again = seg.segment(session, parse_objects(FIRST, volume.shape))
    assert again.timings["reused"] == 1 and "steps" not in again.timings
    assert np.array_equal(first.label, again.label)
    assert first.objects[0].slices == again.objects[0].slices
    other_label = seg.segment(session, parse_objects({**FIRST, "label": "lesion"}, volume.shape))
    assert other_label.timings["reused"] == 0  # another label is its own object


def test_a_correction_stops_where_the_masks_settle_and_keeps_the_previous_masks_beyond(model, volume):
    seg = Segmenter(model, EngineSettings(settle_slices=3))
    session = seg.open(volume)
    first = seg.segment(session, parse_objects(FIRST, volume.shape))
    corrected = seg.segment(session, parse_objects(CORRECTED, volume.shape))
    full = Segmenter(model)
    reference = full.segment(full.open(volume), parse_objects(CORRECTED, volume.shape))

    settled, steps = corrected.timings["settled"], corrected.timings["steps"]
    assert settled > 0 and steps >= 3, corrected.timings  # each direction recomputed at least 3 slices
    assert settled + corrected.timings["slices"] + 1 == volume.shape[2]  # + the prompted slice
    # the slices beyond where both directions stopped are exactly the previous result
    kept = [k for k in range(volume.shape[2]) if abs(k - 20) > steps]
    assert np.array_equal(corrected.label[:, :, kept], first.label[:, :, kept])
    assert dice(corrected.label > 0, reference.label > 0) >= 0.98


def test_a_correction_on_another_slice_is_propagated_at_least_to_that_slice(model, volume):
    seg = Segmenter(model, EngineSettings(settle_slices=3))
    session = seg.open(volume)
    seg.segment(session, parse_objects(FIRST, volume.shape))
    added = {"foreground": [[20, 22, 20], [22, 22, 32]]}
    corrected = seg.segment(session, parse_objects(added, volume.shape))
    full = Segmenter(model)
    reference = full.segment(full.open(volume), parse_objects(added, volume.shape))
    assert corrected.timings["steps"] >= 12, corrected.timings  # from slice 20 past the new prompt on 32
    for k in range(20, 33):
        assert np.array_equal(corrected.label[:, :, k], reference.label[:, :, k]), k


def test_without_settling_a_correction_is_propagated_to_both_ends(model, volume):
    seg = Segmenter(model, EngineSettings(settle_slices=0))
    session = seg.open(volume)
    seg.segment(session, parse_objects(FIRST, volume.shape))
    corrected = seg.segment(session, parse_objects(CORRECTED, volume.shape))
    fresh = Segmenter(model)
    reference = fresh.segment(fresh.open(volume), parse_objects(CORRECTED, volume.shape))
    assert corrected.timings["settled"] == 0
    assert np.array_equal(corrected.label, reference.label)
