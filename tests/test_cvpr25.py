"""The CVPR 2025 interactive 3D challenge's rules, on cases small enough to work out by hand.

What the official `CVPR25_iter_eval.py` does is stated in medsam2/evaluation/cvpr25.py; each test
below fixes one rule with numbers computed by hand (or, for NSD, by DeepMind's surface-distance
code, which the challenge's SurfaceDice.py is), and the last ones run the whole loop and the
submission interface on generated cases.
"""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsam2.evaluation.cvpr25 import (CSV_COLUMNS, ChallengeCase, auc, case_boxes, case_from_volume, next_click,
                                       nsd, run_case, scores, summary, write_csv)

REPO = Path(__file__).resolve().parent.parent


def test_the_areas_count_the_five_click_steps_only_with_unit_steps():
    steps = [0.1, 0.5, 0.6, 0.7, 0.8, 0.9]  # the box, then 5 clicks
    assert auc(steps) == pytest.approx(0.5 * 0.5 + 0.6 + 0.7 + 0.8 + 0.5 * 0.9)  # 2.8; the box step is not in it
    assert auc([1.0] * 6) == pytest.approx(4.0)


def test_nsd_counts_zero_unless_the_case_mean_dice_is_above_0_2():
    gts = np.zeros((6, 10, 10), np.uint8)
    gts[1:5, 1:6, 1:6] = 1  # 100 voxels
    segs = np.zeros_like(gts)
    segs[1:5, 1:6, 1:2] = 1  # 20 voxels inside: Dice 2 * 20 / 120 = 1/3
    dsc, mean_nsd, per_class = scores(gts, segs, (1, 1, 1))
    assert dsc == pytest.approx(1 / 3) and mean_nsd > 0
    segs[:] = 0
    segs[1:5, 1:2, 1:4] = 1  # 12 voxels: Dice 24 / 112 = 0.214 > 0.2
    assert scores(gts, segs, (1, 1, 1))[0] == pytest.approx(24 / 112) and scores(gts, segs, (1, 1, 1))[1] > 0
    segs[:] = 0
    segs[1:5, 1:2, 1:3] = 1  # 8 voxels: Dice 16 / 108 = 0.148: NSD counts 0 although its surface is close
    dsc, mean_nsd, per_class = scores(gts, segs, (1, 1, 1))
    assert dsc == pytest.approx(16 / 108) and mean_nsd == 0.0 and per_class[1][1] > 0


def test_scores_are_the_mean_over_the_classes_of_the_truth_and_ignore_other_predicted_values():
    gts = np.zeros((4, 8, 8), np.uint8)
    gts[:, :4] = 1
    gts[:, 4:6] = 2
    segs = gts.copy()
    segs[:, 4:6] = 0  # class 2 missed entirely
    segs[:, 6:] = 7  # a value the truth does not have
    dsc, mean_nsd, per_class = scores(gts, segs, (1, 1, 1))
    assert per_class[1] == (1.0, 1.0) and per_class[2] == (0.0, 0.0)
    assert dsc == 0.5 and mean_nsd == 0.5


def test_nsd_equals_deepminds_surface_distance_code_on_anisotropic_voxels():
    np.bool = bool  # the package predates numpy 1.24, which removed this alias
    import surface_distance
    from scipy import ndimage

    rng = np.random.default_rng(1)
    for spacing in [(2.5, 0.8, 0.8), (1.0, 1.0, 1.0), (3.0, 0.7, 0.5)]:
        a = ndimage.gaussian_filter(rng.random((24, 30, 28)), 3) > 0.5
        b = ndimage.gaussian_filter(rng.random((24, 30, 28)), 3) > 0.5
        ref = surface_distance.compute_surface_dice_at_tolerance(
            surface_distance.compute_surface_distances(a, b, spacing), 2.0)
        assert nsd(a, b, spacing) == pytest.approx(ref, abs=1e-6)


def test_a_click_goes_to_the_largest_26_connected_error_of_missed_and_extra_voxels_together():
    truth = np.zeros((20, 20, 20), bool)
    truth[2:7, 2:7, 2:7] = True
    pred = truth.copy()
    pred[2:7, 2:7, 2:4] = False  # missed: 50 voxels
    pred[7, 7, 7] = True  # extra, touching the truth's corner: alone 1 voxel
    pred[12:16, 12:16, 12:16] = True  # extra, apart: 64 voxels, the largest single region
    click = next_click(truth, pred)
    assert click.kind == "bg" and all(12 <= v < 16 for v in click.zyx)
    pred[2:7, 2:7, 1] = True  # extra, face-adjacent to the missed region: missed + extra = 50 + 25 = 75 > 64
    click = next_click(truth, pred)
    assert click.zyx[2] in (1, 2, 3) and click.kind == ("fg" if truth[click.zyx] else "bg")
    assert next_click(truth, truth) is None


def test_the_click_is_the_distance_transform_centre_and_ties_go_to_the_seeded_choice():
    truth = np.zeros((9, 9, 9), bool)
    pred = np.zeros_like(truth)
    truth[1:6, 1:6, 1:6] = True  # missed 5 x 5 x 5: one centre, (3, 3, 3)
    assert next_click(truth, pred).zyx == (3, 3, 3) and next_click(truth, pred).kind == "fg"
    truth[:] = False
    truth[4, 2:7, 2:5] = True  # missed 1 x 5 x 3 slab: every voxel has distance 1, 15 ties in C order
    # np.random.seed(42); np.random.choice(15) -> 6: the 7th voxel in C order, (4, 4, 2)
    assert next_click(truth, pred).zyx == (4, 4, 2)


def test_boxes_follow_get_boxes_rule():
    gts = np.zeros((10, 64, 128), np.uint8)
    gts[2:9, 20:30, 40:60] = 1
    gts[3, 10:40, 10:70] = 1  # the largest slice is not the middle one
    gts[5:6, 5:8, 5:8] = 2
    boxes = case_boxes(gts, np.random.RandomState(0))
    shift = int(np.random.RandomState(0).randint(0, 6, 1)[0])  # one draw per class, in class order
    b = boxes[0]
    assert (b["z_min"], b["z_max"], b["z_mid"]) == (2, 8, 5)  # the middle of the 7 slices holding it
    assert (b["z_mid_x_min"], b["z_mid_x_max"]) == (max(0, 40 - int(shift * 128 / 256)), 59 + int(shift * 128 / 256))
    assert (b["z_mid_y_min"], b["z_mid_y_max"]) == (max(0, 20 - int(shift * 64 / 256)), 29 + int(shift * 64 / 256))
    assert (boxes[1]["z_min"], boxes[1]["z_max"], boxes[1]["z_mid"]) == (5, 5, 5)


def small_case(boxes: bool = True) -> ChallengeCase:
    gts = np.zeros((8, 24, 24), np.uint8)
    gts[1:7, 4:12, 4:12] = 1
    gts[2:6, 14:20, 14:22] = 2
    imgs = (gts * 100).astype(np.uint8)
    return ChallengeCase("case.npz", imgs, (2.0, 1.0, 1.0), gts,
                         case_boxes(gts, np.random.RandomState(0)) if boxes else None)


def test_the_loop_scores_a_perfect_submission_4_and_an_absent_one_0(tmp_path):
    case = small_case()
    seen = []

    def perfect(inp, out):
        data = np.load(inp, allow_pickle=True)
        seen.append(sorted(data.keys()))
        np.savez(out, segs=case.gts)

    result = run_case(case, perfect, tmp_path)
    assert list(result.row) == CSV_COLUMNS
    assert result.row["DSC_AUC"] == result.row["NSD_AUC"] == pytest.approx(4.0)
    assert seen[0] == ["boxes", "imgs", "spacing"]
    assert seen[1] == ["boxes", "clicks", "clicks_order", "imgs", "prev_pred", "spacing"]
    last = np.load(tmp_path / "inputs" / "case.npz", allow_pickle=True) if (tmp_path / "inputs" / "case.npz").exists() else None
    assert last is None  # the input is removed after the case, as the evaluator does
    result = run_case(case, lambda inp, out: None, tmp_path)  # writes nothing: zeros
    assert result.row["DSC_Final"] == 0.0 and result.row["num_class"] == 2 and result.row["runtime_upperbound"] == 180


def test_a_case_without_boxes_scores_0_at_step_1_and_starts_with_a_foreground_click_per_class(tmp_path):
    case = small_case(boxes=False)
    inputs = []

    def record(inp, out):
        data = np.load(inp, allow_pickle=True)
        inputs.append({k: data[k] for k in data.files})
        np.savez(out, segs=case.gts)

    result = run_case(case, record, tmp_path)
    assert (result.row["RunningTime_1"], result.row["DSC_1"], result.row["NSD_1"]) == (0, 0, 0)
    assert len(inputs) == 5 and "boxes" not in inputs[0]
    first = inputs[0]
    assert [c["fg"] != [] and c["bg"] == [] for c in first["clicks"]] == [True, True]
    z, y, x = first["clicks"][0]["fg"][0]
    assert case.gts[z, y, x] == 1  # (z, y, x) array indices of imgs
    assert list(first["clicks_order"][0]) == ["fg"]
    assert list(inputs[1]["clicks_order"][0]) == ["fg", None]  # exact after it: no click, recorded as None


def test_summary_scores_a_case_over_its_time_budget_0(tmp_path):
    rows = [{**{k: 0 for k in CSV_COLUMNS}, "DSC_AUC": 3.0, "NSD_AUC": 3.0, "DSC_Final": 0.9, "NSD_Final": 0.9,
             "TotalRunningTime": t, "num_class": 1, "runtime_upperbound": 90} for t in (10, 100)]
    s = summary(rows)
    assert s["over_time"] == 1 and s["DSC_AUC"] == 1.5 and s["DSC_Final"] == 0.45
    path = write_csv(tmp_path / "m.csv", rows)
    assert next(csv.reader(open(path))) == CSV_COLUMNS


# ------------------------------------------------------------------ the submission and the loop, end to end

def write_cases(folder: Path, gts_folder: Path, count: int = 2) -> list[str]:
    """Generated phantoms in the challenge's format: imgs/spacing/boxes in `folder`, gts in `gts_folder`."""
    from medsam2.phantoms import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    gts_folder.mkdir(parents=True, exist_ok=True)
    names = []
    for n in range(count):
        p = make_phantom((64, 64, 24), seed=300 + n)
        case = case_from_volume(f"CT_phantom_{n}.npz", p.image, p.label, p.spacing)
        np.savez(folder / case.name, **case.inputs())
        np.savez(gts_folder / case.name, gts=case.gts)
        names.append(case.name)
    return names


def test_challenge_predict_reads_inputs_and_writes_one_label_value_per_class(tmp_path):
    names = write_cases(tmp_path / "inputs", tmp_path / "gts", count=1)
    r = subprocess.run([sys.executable, "-m", "medsam2", "challenge-predict", "--inputs", str(tmp_path / "inputs"),
                        "--outputs", str(tmp_path / "outputs"), "--checkpoint", "demo"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    segs = np.load(tmp_path / "outputs" / names[0])["segs"]
    gts = np.load(tmp_path / "gts" / names[0])["gts"]
    assert segs.shape == gts.shape and segs.dtype == np.uint8
    assert set(np.unique(segs)) <= set(np.unique(gts))
    dsc, _, per_class = scores(gts, segs, (2.0, 1.0, 1.0))
    assert per_class[1][0] > 0.7, per_class  # the organ from its box (the demo model; docs/accuracy.md)


def test_the_evaluate_command_runs_the_official_loop_and_writes_its_columns(tmp_path):
    write_cases(tmp_path / "cases", tmp_path / "gts", count=2)
    out = tmp_path / "result"
    r = subprocess.run([sys.executable, "-m", "medsam2.evaluate", "--protocol", "cvpr25", "--npz",
                        str(tmp_path / "cases"), "--gts", str(tmp_path / "gts"), "--checkpoint", "demo",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    print(r.stdout[-1500:])
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == 2
    for row in rows:
        steps = [float(row[f"DSC_{n}"]) for n in range(1, 7)]
        assert float(row["DSC_AUC"]) == pytest.approx(auc(steps), abs=1e-6) and 0 <= float(row["DSC_AUC"]) <= 4
        assert float(row["DSC_Final"]) == pytest.approx(steps[-1])
    assert (out / "per_class.csv").exists() and (out / "summary.json").exists()
