"""The session's verbs: add prompts, propagate, reset; the propagator interface both engines share."""

import numpy as np
import pytest

from medsam2.checkpoints import ModelSpec, build_model
from medsam2.clicks import interior_point, largest_slice
from medsam2.demo_model import DEMO_CONFIG
from medsam2.phantoms import PHANTOM_LABELS, make_phantom
from medsam2.propagation import Segmenter
from medsam2.propagators import BatchedPropagator, PlainPropagator
from medsam2.prompts import parse_objects
from medsam2.session import SessionState
from medsam2.settings import EngineSettings


@pytest.fixture(scope="module")
def model(trained_checkpoint):
    return build_model(ModelSpec(DEMO_CONFIG, checkpoint=trained_checkpoint))


@pytest.fixture(scope="module")
def case():
    ph = make_phantom((48, 48, 16), seed=778)
    organ = ph.label == PHANTOM_LABELS["organ"]
    k = largest_slice(organ)
    x, y = interior_point(organ[:, :, k].T)
    return ph.image, {"foreground": [[x, y, k]], "label": "organ"}


def test_add_prompts_then_propagate_is_one_segment_call(model, case):
    image, params = case
    segmenter = Segmenter(model)
    objects = parse_objects(params, image.shape)
    expected = segmenter.segment(segmenter.open(image), objects).label
    session = segmenter.open(image)
    assert session.state is SessionState.OPEN and session.segmenter is segmenter
    session.add_prompts(objects)
    assert session.prompts["organ"] is objects[0]
    assert np.array_equal(session.propagate().label, expected)
    assert np.array_equal(session.segment(objects).label, expected)


def test_the_same_prompts_are_answered_from_the_track_until_the_label_is_reset(model, case):
    image, params = case
    session = Segmenter(model).open(image)
    objects = parse_objects(params, image.shape)
    first = session.segment(objects)
    again = session.segment(objects)
    assert again.timings["reused"] == 1 and np.array_equal(again.label, first.label)
    session.reset("organ")
    assert "organ" not in session.tracks and "organ" not in session.prompts
    tracked = session.segment(objects)
    assert tracked.timings["reused"] == 0 and np.array_equal(tracked.label, first.label)
    session.reset()
    assert not session.tracks and not session.prompts and session.features.encoded.any()  # slices stay encoded


def test_the_engine_setting_picks_the_propagator_and_both_answer_alike(model, case):
    image, params = case
    objects = parse_objects(params, image.shape)
    batched, plain = Segmenter(model), Segmenter(model, EngineSettings(engine="plain"))
    assert isinstance(batched.propagator, BatchedPropagator) and isinstance(plain.propagator, PlainPropagator)
    a = batched.segment(batched.open(image), objects).label
    b = plain.segment(plain.open(image), objects).label
    assert (a != b).mean() <= 0.005
