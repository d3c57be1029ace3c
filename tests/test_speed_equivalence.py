"""The engine's speed-ups change no masks: it segments like the plain stock SAM2VideoPredictor (CPU),
and its batched tracker (all objects and both directions in one step per slice) gives the masks of
its plain path (SAM2's own propagate_in_video, one slice of one object at a time).

The engine differs from stock SAM2 in how frames reach the model (in-memory tensors instead of a
JPEG folder), in encoding every slice in batches once (stock encodes each frame alone as it reaches
it and keeps only the latest), and in its predictor subclass. To compare like with like, the stock
side here is sam2's own `build_sam2_video_predictor` (a plain `SAM2VideoPredictor`, same config and
checkpoint) whose `init_state` really runs on a JPEG folder of the volume; its decoded JPEG frames are
then replaced by the very frames the engine builds (`frames_from_scaled` of the same scaled volume)
and its feature cache (frame 0, encoded from the JPEG) is emptied, because JPEG quantisation and
PIL's resize would otherwise change the inputs and no longer test the engine. The only setting
changed on the stock predictor is `fill_hole_area=0` (its default 8 needs sam2's CUDA extension;
without it sam2 warns and skips, and the engine builds with 0). Stock propagation then runs
unchanged: click on the middle slice, `propagate_in_video` forward then reverse on the same state.

Both directions are tracked the way `directions` says: "independent" (the engine's default; stock SAM2
is given `reset_state` and the click again before the backward pass) or "sequential" (backward on
the same state, stock SAM2's own order).

Tolerance: Dice >= 0.98 and at most 0.5 % of voxels differing. Batched and one-at-a-time
convolutions may round differently in float32, so bit equality is not required (on the CPU here the
masks came out identical). The test runs torch single-threaded and restores the thread count after:
on a busy 2-core machine two torch threads oversubscribe the cores and make it ten times slower.
"""

import numpy as np
import pytest
import torch

from medsam2.checkpoints import ModelSpec, build_model
from medsam2.evaluation.metrics import dice
from medsam2.stock import build_stock_predictor, make_case, stock_track, write_jpegs
from medsam2.demo_model import DEMO_CONFIG
from medsam2.clicks import interior_point, largest_slice
from medsam2.frames import frames_from_scaled, scale_volume
from medsam2.memory import SelfSortingPolicy
from medsam2.phantoms import PHANTOM_LABELS, make_phantom
from medsam2.propagation import Segmenter
from medsam2.settings import EngineSettings
from medsam2.prompts import parse_objects

MIN_DICE = 0.98
MAX_DISAGREEMENT = 0.005


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def close_enough(a: np.ndarray, b: np.ndarray) -> bool:
    return dice(a, b) >= MIN_DICE and float((a != b).mean()) <= MAX_DISAGREEMENT


@pytest.fixture(scope="module")
def random_model(random_checkpoint):
    return build_model(ModelSpec("sam2.1_hiera_micro", checkpoint=random_checkpoint))


@pytest.mark.parametrize("directions", ["independent", "sequential"])
def test_engine_gives_the_masks_of_the_stock_sam2_video_predictor(random_model, random_checkpoint, tmp_path,
                                                                  one_thread, directions):
    phantom, fg, bg = make_case((48, 48, 16), seed=0)
    volume, k = phantom.image, fg[2]
    objects = parse_objects({"foreground": [fg], "background": [bg]}, volume.shape)
    points, labels, _ = objects[0].frame_inputs(k)

    segmenter = Segmenter(random_model, EngineSettings(directions=directions))
    ours = segmenter.segment(segmenter.open(volume), objects).label == 1

    stock = build_stock_predictor("sam2.1_hiera_micro", None, random_checkpoint, "cpu")
    assert type(stock).__module__ == "sam2.sam2_video_predictor"
    stock.fill_hole_area = 0
    scaled = scale_volume(volume, "auto", "cpu")
    write_jpegs(scaled.numpy(), tmp_path / "jpeg")
    state = stock.init_state(video_path=str(tmp_path / "jpeg"))
    assert state["num_frames"] == volume.shape[2]
    assert (state["video_height"], state["video_width"]) == (volume.shape[1], volume.shape[0])
    with torch.inference_mode():
        state["images"] = frames_from_scaled(scaled, slice(None), stock.image_size)
    state["cached_features"] = {}
    theirs = stock_track(stock, state, k, points, labels, directions) > 0
    theirs = theirs.numpy().transpose(2, 1, 0)  # (K, J, I) -> (I, J, K)

    assert theirs.sum() > 100 and (~theirs).sum() > 100, "a trivial mask would prove nothing"
    assert np.nonzero(theirs.any(axis=(0, 1)))[0].tolist() != [k], "propagation must reach other slices"
    assert close_enough(ours, theirs), (dice(ours, theirs), float((ours != theirs).mean()))


BATCHED_CASES = {  # name -> (params, memory policy factory, directions)
    "one click": ({"foreground": [[20, 22, 20]]}, None, "independent"),
    "clicks on two slices": ({"foreground": [[20, 22, 20], [21, 22, 6]], "background": [[40, 40, 20]]}, None,
                             "independent"),
    "two objects, one bounded by a 3D roi": (
        {"objects": [{"label": "organ", "foreground": [[20, 22, 20]]},
                     {"label": "vessel", "roi": [5, 30, 5, 30, 10, 30]}]}, None, "independent"),
    "self-sorting memory": ({"foreground": [[20, 22, 20]]}, SelfSortingPolicy, "independent"),
    "stock SAM2's order": ({"foreground": [[20, 22, 20]], "background": [[40, 40, 20]]}, None, "sequential"),
}


@pytest.mark.parametrize("case", list(BATCHED_CASES))
def test_batched_tracker_gives_the_masks_of_the_plain_path(random_model, one_thread, case):
    params, policy, directions = BATCHED_CASES[case]
    volume = make_phantom((48, 48, 40), seed=3).image
    objects = parse_objects(params, volume.shape, PHANTOM_LABELS)
    plain = Segmenter(random_model, EngineSettings(engine="plain", directions=directions))
    batched = Segmenter(random_model, EngineSettings(engine="batched", directions=directions))
    a = plain.segment(plain.open(volume), objects, policy)
    b = batched.segment(batched.open(volume), objects, policy)
    assert (a.label > 0).sum() > 100 and (a.label == 0).sum() > 100, "a trivial mask would prove nothing"
    assert len(np.unique(a.label)) == len(objects) + 1
    for value in np.unique(a.label)[1:]:
        assert close_enough(a.label == value, b.label == value), case
    for x, y in zip(a.objects, b.objects):
        assert x.slices == y.slices
        np.testing.assert_allclose(x.ious, y.ious, atol=1e-4)
    if directions == "independent" and all(len(o.frames) == 1 for o in objects):
        assert b.timings["steps"] <= 25, b.timings  # all lanes (objects x directions) advance in the same steps


def test_stopping_after_empty_slices_skips_their_encoding_and_matches_the_plain_path(trained_checkpoint, one_thread):
    """The organ is cut off by air at both ends: both paths stop 2 slices past its ends, never encode the
    slices beyond, and agree."""
    case = make_phantom((64, 64, 32), seed=777)
    volume = case.image.copy()
    volume[:, :, :8] = volume[:, :, 24:] = -1000.0
    organ = (case.label == PHANTOM_LABELS["organ"])[:, :, 8:24]
    k = largest_slice(organ) + 8
    x, y = interior_point((case.label[:, :, k] == PHANTOM_LABELS["organ"]).T)
    objects = parse_objects({"foreground": [[x, y, k]]}, volume.shape)
    model = build_model(ModelSpec(DEMO_CONFIG, checkpoint=trained_checkpoint))
    results, encoded = {}, {}
    for engine in ("plain", "batched"):
        seg = Segmenter(model, EngineSettings(engine=engine, stop_after_empty=2))
        session = seg.open(volume)
        results[engine] = seg.segment(session, objects)
        encoded[engine] = int(session.features.encoded.sum())
    full = Segmenter(model, EngineSettings(stop_after_empty=0))
    whole = full.segment(full.open(volume), objects)
    assert results["plain"].objects[0].slices == results["batched"].objects[0].slices == whole.objects[0].slices
    assert np.array_equal(results["plain"].label, results["batched"].label)
    assert encoded["plain"] == encoded["batched"] < volume.shape[2] - 8, encoded


class RecordingPolicy(SelfSortingPolicy):
    """The self-sorting policy, every slice entering the bank, remembering what it chose for each slice."""

    def __init__(self):
        super().__init__(min_confidence=0.0)
        self.choices = {}

    def choose(self, tracked, frame_idx, reverse, embedding):
        chosen = super().choose(tracked, frame_idx, reverse, embedding)
        self.choices[(reverse, frame_idx)] = chosen
        return chosen


def test_both_paths_give_the_self_sorting_bank_the_same_slices_to_choose_from(random_model, one_thread):
    volume = make_phantom((48, 48, 40), seed=3).image
    objects = parse_objects({"foreground": [[20, 22, 20]]}, volume.shape)
    choices = {}
    for engine in ("plain", "batched"):
        policies = []

        def factory():
            policies.append(RecordingPolicy())
            return policies[-1]

        seg = Segmenter(random_model, EngineSettings(engine=engine))
        seg.segment(seg.open(volume), objects, factory)
        choices[engine] = {key: chosen for p in policies for key, chosen in p.choices.items()}
    assert choices["plain"] == choices["batched"]
    # the bank really chose: somewhere its picks are not just the most recent slices
    recent = {(rev, f): [f + (1 if rev else -1) * n for n in range(1, len(c) + 1)]
              for (rev, f), c in choices["plain"].items()}
    assert any(sorted(c) != sorted(recent[key]) for key, c in choices["plain"].items())
