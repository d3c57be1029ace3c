"""Encoding an image before the first click (medsam2/encode_ahead.py) with the demo model, no server:
the click adopts what was encoded and answers exactly as without it; the worker yields to inferences,
is cancelled by the user's next image, stays within the cache budget and never evicts another user's
open image."""

import threading
import time

import numpy as np
import pytest

from medsam2.clicks import interior_point
from medsam2.encode_ahead import centre_out, features_nbytes_bound
from medsam2.phantoms import PHANTOM_LABELS, make_phantom
from medsam2.prompts import parse_objects
from medsam2.service import ImageFile, InteractiveSegmenter, ModelProvider
from medsam2.sessions import SessionCache
from medsam2.settings import EngineSettings

from conftest import DEMO_CONFIG, REPO

SHAPE = (64, 64, 16)


@pytest.fixture(scope="module")
def provider():
    return ModelProvider(EngineSettings(checkpoint="demo", model_config=DEMO_CONFIG, encoder_runtime="torch"), REPO / "model")


@pytest.fixture(scope="module")
def volumes():
    return {name: make_phantom(SHAPE, seed=seed) for name, seed in (("a", 801), ("b", 802), ("c", 803))}


def engine_with(provider, max_mb=4096, entries=8):
    return InteractiveSegmenter(provider, SessionCache(max_bytes=int(max_mb * 2**20), max_entries=entries))


def ahead(engine, user, name, volumes, delay=0.0):
    """Ask the engine to encode image `name` for `user`, as the app does when a client fetches it."""
    def locate():
        time.sleep(delay)
        return ImageFile(f"/images/{name}", 1), lambda: (volumes[name].image, {"affine": np.eye(4)})
    return engine.encode_ahead(user, name, locate)


def click(engine, client, name, volumes):
    """A first click on the organ's middle slice, as the infer task makes it."""
    case = volumes[name]
    truth = case.label == PHANTOM_LABELS["organ"]
    slices = np.nonzero(truth.any(axis=(0, 1)))[0]
    k = int(slices[len(slices) // 2])
    i, j = interior_point(truth[:, :, k].T)
    with engine.ahead.inference():
        session, cached = engine.open(client, ImageFile(f"/images/{name}", 1),
                                                 lambda: (case.image, {"affine": np.eye(4)}))
        objects = parse_objects({"foreground": [[i, j, k]]}, session.shape)
        return engine.run(session, objects, None, cached)


def ahead_sessions(engine):
    return [key for key in engine.cache.keys() if key.client.startswith("encode-ahead")]


def test_centre_out_visits_every_slice_once_from_the_middle():
    assert centre_out(5) == [2, 3, 1, 4, 0]
    assert sorted(centre_out(16)) == list(range(16)) and centre_out(1) == [0]


def test_the_bound_holds_what_the_features_of_a_volume_take(provider, volumes):
    segmenter, _ = provider.get()
    session = segmenter.open(volumes["a"].image)
    before = session.features.nbytes
    session.features.ensure([3])  # allocates the features of every slice
    allocated = session.features.nbytes - before
    bound = features_nbytes_bound(segmenter.model, SHAPE[2])
    assert 0.95 * bound < allocated <= bound  # a bound, not a guess


def test_a_first_click_adopts_the_slices_encoded_ahead_and_answers_as_without_them(provider, volumes):
    plain = engine_with(provider)
    expected, stats = click(plain, "slicer", "a", volumes)
    assert stats["slices_encoded_before"] == 0 and not stats["encoded_ahead"]

    engine = engine_with(provider)
    job = ahead(engine, "address:10.0.0.1", "a", volumes)
    assert engine.ahead.wait_idle(120) and job.ended == "done" and job.encoded == SHAPE[2]
    result, stats = click(engine, "slicer", "a", volumes)
    assert stats["encoded_ahead"] and stats["cached_features"]
    assert stats["slices_encoded_before"] == SHAPE[2] and stats["encode_s"] == 0.0
    assert np.array_equal(result.label, expected.label)
    # the session is now the click's: no session of this image is left waiting for a click
    assert ahead_sessions(engine) == [] and len(engine.cache) == 1
    again, stats = click(engine, "slicer", "a", volumes)
    assert not stats["encoded_ahead"] and np.array_equal(again.label, expected.label)


def test_the_worker_waits_while_an_inference_runs(provider, volumes):
    engine = engine_with(provider)
    with engine.ahead.inference():
        job = ahead(engine, "u", "a", volumes)
        time.sleep(1.0)
        assert job.image is None and job.encoded == 0  # not even located
    assert engine.ahead.wait_idle(120) and job.encoded == SHAPE[2]

    # paused part-way: the count stops growing while the inference runs, and goes on after it
    engine = engine_with(provider)
    job = ahead(engine, "u", "b", volumes)
    while job.encoded < 2:
        time.sleep(0.01)
    with engine.ahead.inference():
        time.sleep(0.3)  # the slice under way, if any, finishes
        paused_at = job.encoded
        time.sleep(1.0)
        assert job.encoded == paused_at < SHAPE[2]
    assert engine.ahead.wait_idle(120) and job.ended == "done" and job.encoded == SHAPE[2]


def test_a_click_during_encoding_uses_the_slices_done_and_the_rest_continue_after_it(provider, volumes):
    expected, _ = click(engine_with(provider), "slicer", "c", volumes)
    engine = engine_with(provider)
    job = ahead(engine, "u", "c", volumes)
    while job.encoded < 3:
        time.sleep(0.01)
    result, stats = click(engine, "slicer", "c", volumes)
    assert stats["encoded_ahead"] and 3 <= stats["slices_encoded_before"] < SHAPE[2]
    assert np.array_equal(result.label, expected.label)
    assert engine.ahead.wait_idle(120) and job.ended == "done"


def test_a_users_next_image_cancels_the_previous_one_and_drops_it(provider, volumes):
    engine = engine_with(provider)
    first = ahead(engine, "u", "a", volumes)
    while first.session is None:
        time.sleep(0.01)
    second = ahead(engine, "u", "b", volumes)
    assert ahead(engine, "u", "b", volumes) is None  # the same image again: nothing new
    assert engine.ahead.wait_idle(120)
    assert first.ended == "cancelled" and first.encoded < SHAPE[2] and second.ended == "done"
    assert [key.image.file.path for key in ahead_sessions(engine)] == ["/images/b"]  # one image ahead per user


def test_two_users_are_one_image_ahead_each_and_share_an_image_they_both_open(provider, volumes):
    engine = engine_with(provider)
    a = ahead(engine, "u1", "a", volumes)
    b = ahead(engine, "u2", "b", volumes)
    assert ahead(engine, "u3", "a", volumes) is None  # u1's job encodes it: the first click adopts that
    assert engine.ahead.wait_idle(120) and a.ended == b.ended == "done"
    assert sorted(key.image.file.path for key in ahead_sessions(engine)) == ["/images/a", "/images/b"]


def test_an_open_image_is_not_encoded_again(provider, volumes):
    engine = engine_with(provider)
    click(engine, "slicer", "a", volumes)
    job = ahead(engine, "u", "a", volumes)
    assert engine.ahead.wait_idle(120) and job.ended == "open" and ahead_sessions(engine) == []


def test_encoding_ahead_stays_within_the_budget_and_never_evicts_an_open_image(provider, volumes):
    segmenter, _ = provider.get()
    scaled = 4 * int(np.prod(SHAPE))
    features = features_nbytes_bound(segmenter.model, SHAPE[2])
    # room for one clicked image (its scaled volume dropped, every slice encoded) and the scaled volume
    # of another, not for that one's features
    engine = engine_with(provider, max_mb=(2 * scaled + 1.5 * features) / 2**20)
    click(engine, "slicer", "a", volumes)
    opened = engine.cache.keys()
    peak = []
    job = ahead(engine, "u2", "b", volumes)
    while job.ended is None:
        peak.append(engine.cache.nbytes)
        time.sleep(0.002)
    assert job.ended == "budget" and job.encoded == 0, (job.ended, job.encoded)
    assert max(peak + [engine.cache.nbytes]) <= engine.cache.max_bytes
    assert engine.cache.keys() == opened  # the other user's image stays open; the guess is dropped

    # with room for both, the same job runs to the end
    engine = engine_with(provider, max_mb=(2 * scaled + 2 * features) / 2**20)
    click(engine, "slicer", "a", volumes)
    job = ahead(engine, "u2", "b", volumes)
    assert engine.ahead.wait_idle(120) and job.ended == "done" and len(engine.cache) == 2
    assert engine.cache.nbytes <= engine.cache.max_bytes

    # no room at all (the entry count): the job ends without putting anything in the cache
    engine = engine_with(provider, entries=1)
    click(engine, "slicer", "a", volumes)
    job = ahead(engine, "u2", "b", volumes)
    assert engine.ahead.wait_idle(120) and job.ended == "no room" and ahead_sessions(engine) == []
    assert len(engine.cache) == 1


def test_a_failed_guess_is_logged_and_leaves_nothing(provider, volumes, caplog):
    engine = engine_with(provider)

    def locate():
        raise FileNotFoundError("image 'x' is not in the datastore")
    job = engine.encode_ahead("u", "x", locate)
    assert engine.ahead.wait_idle(60) and job.ended == "error: FileNotFoundError"
    assert len(engine.cache) == 0 and "not in the datastore" in caplog.text


def test_a_click_waits_for_the_image_being_fetched_ahead(provider, volumes):
    engine = engine_with(provider)
    fetching = threading.Event()

    def locate():  # a DICOMweb series being downloaded
        fetching.set()
        time.sleep(1.0)
        return ImageFile("/images/a", 1), lambda: (volumes["a"].image, {"affine": np.eye(4)})
    job = engine.encode_ahead("u", "a", locate)
    assert fetching.wait(30)
    t0 = time.perf_counter()
    with engine.ahead.fetching("a"):  # what the app holds while a click fetches the image itself
        assert time.perf_counter() - t0 > 0.5 and job.image is not None
    t0 = time.perf_counter()
    with engine.ahead.fetching("b"):  # another image: at once
        assert time.perf_counter() - t0 < 0.1
    assert engine.ahead.wait_idle(120)


def test_turned_off_it_starts_nothing(provider, volumes):
    engine = InteractiveSegmenter(provider, SessionCache(), encode_ahead=False)
    assert ahead(engine, "u", "a", volumes) is None and len(engine.cache) == 0
    time.sleep(0.1)
    assert engine.ahead.job_of("u") is None
