"""Benchmark building blocks on hand-computed cases: metrics, click placement, protocol determinism."""

import numpy as np
import pytest

from medsam2.evaluation.metrics import dice, slice_coverage, structure_metrics, surface_dice
from medsam2.evaluation.protocols import (Protocol, add_to_prompt, correction, first_interaction, simulate,
                                          worst_slice)
from medsam2.prompts import ObjectPrompt


def plane(k, shape=(8, 8, 8)):
    """A 4 x 4 one-voxel-thick square on slice k: every voxel is on its surface."""
    m = np.zeros(shape, bool)
    m[2:6, 2:6, k] = True
    return m


# ---- metrics -------------------------------------------------------------------------------

def test_dice_and_nsd_of_a_prediction_with_an_extra_plane():
    truth, pred = plane(2), plane(2) | plane(5)
    assert dice(pred, truth) == pytest.approx(2 * 16 / (16 + 32))
    # 16 truth + 16 matching prediction voxels within tolerance, 16 prediction voxels 3 slices x 2 mm = 6 mm off
    assert surface_dice(pred, truth, (1, 1, 2), tolerance_mm=1.0) == pytest.approx(32 / 48)
    assert surface_dice(pred, truth, (1, 1, 2), tolerance_mm=6.0) == pytest.approx(1.0)


def test_nsd_tolerance_is_in_millimetres_along_anisotropic_axes():
    def cube(k, shape=(10, 10, 12)):
        m = np.zeros(shape, bool)
        m[3:7, 3:7, k:k + 4] = True
        return m

    truth, pred = cube(3), cube(4)  # one slice apart: the end faces 3 mm apart along a 3 mm axis
    assert surface_dice(pred, truth, (1, 1, 3), tolerance_mm=2.9) < 0.9
    assert surface_dice(pred, truth, (1, 1, 3), tolerance_mm=3.0) == pytest.approx(1.0)
    assert surface_dice(pred, truth, (1, 1, 1), tolerance_mm=1.0) == pytest.approx(1.0)  # 1 mm apart
    assert surface_dice(pred, truth, (1, 1, 1), tolerance_mm=0.9) < 0.9
    shifted_in_plane = np.roll(plane(2), 1, axis=0)  # one voxel along i, 0.5 mm
    assert surface_dice(shifted_in_plane, plane(2), (0.5, 1, 3), tolerance_mm=0.5) == pytest.approx(1.0)


def test_dice_of_overlapping_boxes():
    truth = np.zeros((10, 10, 10), bool)
    truth[0:4, 0:5, 0:5] = True  # 100 voxels
    pred = np.zeros_like(truth)
    pred[2:6, 0:5, 0:5] = True  # 100 voxels, 50 shared
    assert dice(pred, truth) == pytest.approx(0.5)


def test_empty_masks_follow_the_documented_rules():
    empty = np.zeros((6, 6, 6), bool)
    some = plane(2, (6, 6, 6))
    assert dice(empty, empty) == 1.0 and surface_dice(empty, empty, (1, 1, 1), 1.0) == 1.0
    for pred, truth in ((empty, some), (some, empty)):
        assert dice(pred, truth) == 0.0 and surface_dice(pred, truth, (1, 1, 1), 1.0) == 0.0


def test_slice_coverage_counts_slices_on_each_side_of_the_prompted_one():
    truth = np.zeros((4, 4, 10), bool)
    truth[1:3, 1:3, 2:8] = True  # slices 2..7
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 4:9] = True  # slices 4..8
    assert slice_coverage(pred, truth, key_slice=5) == {
        "slices_before": 1, "slices_after": 3, "truth_slices_before": 3, "truth_slices_after": 2}
    m = structure_metrics(pred, truth, (1, 1, 1), 1.0, 5)
    assert m["dice"] == pytest.approx(2 * 16 / (24 + 20)) and 0 < m["nsd"] < 1


# ---- click placement -----------------------------------------------------------------------

def cone(shape=(40, 30, 9), peak=5):
    """Discs centred at (i, j) = (25, 12) whose radius peaks on slice `peak`."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    m = np.zeros(shape, bool)
    for k in range(shape[2]):
        m[:, :, k] = (i - 25) ** 2 + (j - 12) ** 2 <= (6 - abs(k - peak)) ** 2
    return m


def test_first_click_is_the_centre_of_the_largest_slice():
    step = first_interaction(Protocol("click"), cone(), np.random.default_rng(0))
    assert (step.kind, step.k, step.i, step.j) == ("click", 5, 25, 12)


def test_first_box_is_the_bounding_box_of_the_largest_slice():
    truth = np.zeros((20, 16, 6), bool)
    truth[3:9, 4:12, 2] = True
    truth[4:6, 5:7, 3] = True
    step = first_interaction(Protocol("box"), truth, np.random.default_rng(0))
    assert step.kind == "box" and step.k == 2 and step.box == (3.0, 4.0, 9.0, 12.0)  # (i0, j0, i1, j1) exclusive
    obj = ObjectPrompt("x")
    add_to_prompt(obj, step)
    assert obj.box == (2, (3.0, 4.0, 9.0, 12.0))


def test_corrections_go_to_the_largest_error_of_the_worst_slice():
    truth = np.zeros((30, 30, 6), bool)
    truth[5:25, 5:25, :] = True
    missed = truth.copy()
    missed[10:20, 12:18, 4] = False  # a hole on slice 4: 60 voxels
    missed[6:8, 6:8, 1] = False  # a smaller hole on slice 1
    step = correction(missed, truth)
    assert (step.kind, step.k) == ("fg", 4) and 10 <= step.i < 20 and 12 <= step.j < 18
    extra = truth.copy()
    extra[0:3, 26:30, 2] = True  # false positive on slice 2 only
    step = correction(extra, truth)
    assert (step.kind, step.k) == ("bg", 2) and 0 <= step.i < 3 and 26 <= step.j < 30
    assert worst_slice(truth, truth) is None and correction(truth, truth) is None
    obj = ObjectPrompt("x")
    add_to_prompt(obj, step)
    assert obj.clicks == {2: [(step.i + 0.5, step.j + 0.5, 0)]}


def test_protocol_names_parse():
    assert Protocol.parse("click+3") == Protocol("click", 3)
    assert Protocol.parse("box", corrections=2).name == "box+2"
    assert Protocol.parse("click").interactions == 1
    with pytest.raises(ValueError):
        Protocol.parse("lasso")


# ---- determinism ---------------------------------------------------------------------------

def fake_engine(truth):
    """A deterministic stand-in: the truth on prompted slices, the truth shifted by one voxel elsewhere."""
    def predict(obj):
        pred = np.roll(truth, 1, axis=0)
        for k in obj.frames:
            pred[:, :, k] = truth[:, :, k]
        return pred
    return predict


def run(protocol, truth, seed):
    return [(s.as_dict(), p.copy()) for s, p, _ in simulate(protocol, truth, fake_engine(truth),
                                                            np.random.default_rng(seed))]


def test_same_seed_gives_identical_clicks_and_results():
    truth = cone()
    for protocol in (Protocol("click", 3), Protocol("box", 2, box_jitter=0.1)):
        a, b = run(protocol, truth, 7), run(protocol, truth, 7)
        assert len(a) == protocol.interactions
        assert [s for s, _ in a] == [s for s, _ in b]
        assert all(np.array_equal(p, q) for (_, p), (_, q) in zip(a, b))
    jittered = Protocol("box", 0, box_jitter=0.1)
    assert run(jittered, truth, 1)[0][0] != run(jittered, truth, 2)[0][0]  # the seed is what varies


def test_protocol_stops_once_the_prediction_is_exact():
    truth = cone()
    steps = list(simulate(Protocol("click", 3), truth, lambda obj: truth, np.random.default_rng(0)))
    assert len(steps) == 1


def test_the_engine_run_is_deterministic(random_checkpoint):
    """The real engine (random weights) twice with the same seed: identical clicks and metrics."""
    from medsam2.checkpoints import ModelSpec, build_model
    from medsam2.evaluation.runner import RunSettings, evaluate_volume
    from medsam2.phantoms import make_phantom
    from medsam2.propagation import Segmenter

    segmenter = Segmenter(build_model(ModelSpec("sam2.1_hiera_micro", checkpoint=random_checkpoint)))
    p = make_phantom((32, 32, 8), seed=3)
    settings = RunSettings(Protocol("click", 1), ["fifo"], 2.0, seed=5, structures={"organ": [1]})
    runs = [evaluate_volume(segmenter, "p", p.image, p.label, p.spacing, settings, progress=False) for _ in range(2)]
    drop = ("seconds", "encode_s")
    a, b = ([{k: v for k, v in r.items() if k not in drop} for r in run] for run in runs)
    assert a == b and len(a) >= 1 and a[0]["kind"] == "click"


def test_the_end_key_slice_is_near_the_first_slice_of_the_structure():
    from medsam2.evaluation.protocols import key_slice

    truth = np.zeros((8, 8, 40), bool)
    truth[2:6, 2:6, 5:35] = True
    truth[1:7, 1:7, 30] = True  # largest slice, far from the start
    assert key_slice(truth, "largest") == 30
    k = key_slice(truth, "end")
    assert 5 <= k <= 8


# ---- the CVPR 2025 challenge protocol -------------------------------------------------------

def test_cvpr25_is_not_a_per_structure_protocol():
    with pytest.raises(ValueError, match="challenge's own loop"):
        Protocol.parse("cvpr25")


def test_a_box_with_a_slice_range_bounds_the_result_to_those_slices():
    p = Protocol("box", key_slice="middle", slice_range=True)
    truth = np.zeros((20, 16, 12), bool)
    truth[3:9, 4:12, 2:9] = True  # slices 2..8: the middle is 5
    truth[2:10, 4:12, 3] = True  # larger on slice 3 (not the middle)
    step = first_interaction(p, truth, np.random.default_rng(0))
    assert (step.kind, step.k, step.box, step.slices) == ("box", 5, (3.0, 4.0, 9.0, 12.0), (2, 8))
    obj = ObjectPrompt("x")
    add_to_prompt(obj, step, truth.shape)
    assert obj.box == (5, (3.0, 4.0, 9.0, 12.0)) and obj.roi == (0, 19, 0, 15, 2, 8)


def test_the_middle_slice_moves_to_the_nearest_slice_holding_the_structure():
    from medsam2.evaluation.protocols import key_slice

    truth = np.zeros((6, 6, 12), bool)
    truth[1:4, 1:4, [1, 2, 3, 9, 10]] = True  # extent 1..10, middle 5 is empty; 3 is nearer than 9
    assert key_slice(truth, "middle") == 3


def test_cvpr25_corrections_go_to_the_centre_of_the_largest_3d_error_component():
    from medsam2.evaluation.protocols import component_correction

    truth = np.zeros((30, 30, 20), bool)
    truth[2:12, 2:12, 2:12] = True
    pred = truth.copy()
    pred[3:8, 3:8, 5:10] = False  # missed: a 5 x 5 x 5 cube (125 voxels), centre (5, 5, 7)
    pred[20:24, 20:24, 10:14] = True  # false positive: 4 x 4 x 4 (64 voxels)
    step = component_correction(pred, truth)
    assert (step.kind, step.i, step.j, step.k) == ("fg", 5.0, 5.0, 7)
    pred[3:8, 3:8, 5:10] = True  # now the false positive is the largest error
    step = component_correction(pred, truth)
    assert step.kind == "bg" and 20 <= step.i < 24 and 20 <= step.j < 24 and 10 <= step.k < 14
    assert component_correction(truth, truth) is None
    # the slice-wise rule would have clicked elsewhere: a thin missed sheet is one slice's worst error
    sheet = truth.copy()
    sheet[2:12, 2:12, 2] = False  # 100 voxels on one slice, but one 3D component of 100
    sheet[3:8, 3:8, 5:10] = False  # 125 voxels over 5 slices (25 per slice)
    assert correction(sheet, truth).k == 2 and component_correction(sheet, truth).k == 7


def test_auc_is_the_trapezoid_over_interactions_and_over_time_structures_score_zero():
    from medsam2.evaluation.report import auc, summarize

    assert auc([0.5, 0.7, 0.9]) == pytest.approx((0.5 + 0.7) / 2 + (0.7 + 0.9) / 2)

    def run(case, dices, seconds):
        return [{"case": case, "structure": "s", "policy": "fifo", "interaction": n + 1, "dice": d, "nsd": d,
                 "seconds": seconds, "slices_before": 1, "slices_after": 1, "truth_slices_before": 1,
                 "truth_slices_after": 1, "dice_before": d, "dice_after": d, "other_covered": 0.0}
                for n, d in enumerate(dices)]

    records = run("a", [0.5, 0.7, 0.9], 1.0) + run("b", [0.6, 0.8], 1.0) + run("c", [0.9, 0.9, 0.9], 40.0)
    rows = {r["structure"]: r for r in summarize(records, 3, time_limit_s=90.0)}
    row = rows["s"]
    assert row["over_time"] == 1  # case c took 120 s
    assert row["dice_mean"] == pytest.approx((0.9 + 0.8 + 0.0) / 3, abs=1e-4)
    # b stopped early (exact): its last value is carried forward
    assert row["dice_auc_mean"] == pytest.approx((1.4 + (0.7 + 0.8) + 0.0) / 3, abs=1e-4)
    assert row["dice_by_interaction"] == pytest.approx([(0.5 + 0.6) / 3, (0.7 + 0.8) / 3, (0.9 + 0.8) / 3], abs=1e-4)
    unlimited = summarize(records, 3)[0]
    assert unlimited["over_time"] == 0 and unlimited["dice_mean"] == pytest.approx((0.9 + 0.8 + 0.9) / 3, abs=1e-4)
    assert summarize(records, 1)[0]["dice_auc_mean"] is None


def test_side_dice_and_other_covered_on_hand_made_twins():
    from medsam2.evaluation.metrics import other_covered, side_dice

    truth = np.zeros((10, 10, 7), bool)
    truth[1:4, 1:4, 1:6] = True
    twin = np.zeros_like(truth)
    twin[6:9, 6:9, 1:6] = True
    pred = truth.copy()
    pred[:, :, 4:] = False  # lost after slice 3
    pred[6:9, 6:9, 5] = True  # and took the twin on slice 5
    sides = side_dice(pred, truth, key_slice=2)
    assert sides["dice_before"] == pytest.approx(1.0)
    assert sides["dice_after"] == pytest.approx(2 * 9 / (18 + 27))  # slice 3 right; 4-5 missed; 9 extra
    assert other_covered(pred, twin) == pytest.approx(9 / 45)
    assert np.isnan(side_dice(truth, truth, key_slice=0)["dice_before"])  # nothing on either side
    assert np.isnan(other_covered(pred, None))
