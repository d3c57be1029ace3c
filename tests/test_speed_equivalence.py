"""The engine's speed-ups change no masks: it segments like the plain stock SAM2VideoPredictor (CPU).

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

Tolerance: Dice >= 0.98 and at most 0.5 % of voxels differing. Batched and one-at-a-time
convolutions may round differently in float32, so bit equality is not required (on the CPU here the
masks came out identical). The test runs torch single-threaded and restores the thread count after:
on a busy 2-core machine two torch threads oversubscribe the cores and make it ten times slower.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `benchmarks` is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.speed import build_stock_predictor, dice, make_case, stock_track, write_jpegs  # noqa: E402
from medsam2.checkpoints import ModelSpec, build_model  # noqa: E402
from medsam2.frames import frames_from_scaled, scale_volume  # noqa: E402
from medsam2.propagation import Segmenter  # noqa: E402
from medsam2.prompts import parse_objects  # noqa: E402

MIN_DICE = 0.98
MAX_DISAGREEMENT = 0.005


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_engine_gives_the_masks_of_the_stock_sam2_video_predictor(random_checkpoint, tmp_path, one_thread):
    phantom, fg, bg = make_case((48, 48, 16), seed=0)
    volume, k = phantom.image, fg[2]
    objects = parse_objects({"foreground": [fg], "background": [bg]}, volume.shape)
    points, labels, _ = objects[0].frame_inputs(k)

    segmenter = Segmenter(build_model(ModelSpec("sam2.1_hiera_micro", checkpoint=random_checkpoint)))
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
    theirs = (stock_track(stock, state, k, points, labels) > 0).numpy().transpose(2, 1, 0)  # (K,J,I) -> (I,J,K)

    assert theirs.sum() > 100 and (~theirs).sum() > 100, "a trivial mask would prove nothing"
    assert np.nonzero(theirs.any(axis=(0, 1)))[0].tolist() != [k], "propagation must reach other slices"
    disagreement = float((ours != theirs).mean())
    assert dice(ours, theirs) >= MIN_DICE and disagreement <= MAX_DISAGREEMENT, (dice(ours, theirs), disagreement)
