"""`python -m medsam2.evaluate` as a user runs it: generated datastores in, tables and a plot out."""

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import REPO


def evaluate(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "medsam2.evaluate", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    r = evaluate("make-phantoms", folder, "--count", 2, "--shape", 48, 48, 16)
    assert r.returncode == 0, r.stderr
    return folder


def test_make_phantoms_writes_a_datastore_folder(phantoms):
    images = sorted(p.name for p in phantoms.glob("*.nii.gz"))
    assert images == ["phantom_100.nii.gz", "phantom_101.nii.gz"]
    for name in images:
        label = nib.load(phantoms / "labels" / "final" / name)
        assert label.shape == (48, 48, 16) and set(np.unique(np.asarray(label.dataobj))) == {0, 1, 2, 3}
    assert json.loads((phantoms / "labels.json").read_text()) == {"organ": 1, "vessel": 2, "lesion": 3}


def test_run_writes_summary_tables_per_case_records_and_a_plot(phantoms, random_checkpoint, tmp_path):
    out = tmp_path / "out"
    r = evaluate("run", phantoms, "--checkpoint", random_checkpoint, "--model-config", "sam2.1_hiera_micro",
                 "--protocol", "click", "--corrections", 1, "--policy", "fifo", "--seed", 0, "--out", out,
                 "--labels", json.dumps({"organ": 1, "lesion": 3}))  # two of three structures: CPU time
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Dice mean" in r.stdout and "NSD mean" in r.stdout and "organ" in r.stdout
    assert "phantom_100" in r.stderr  # the per-case progress bar

    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["protocol"] == "click+1" and summary["config"]["policies"] == ["fifo"]
    assert summary["config"]["cases"] == ["phantom_100", "phantom_101"]
    rows = {(s["policy"], s["structure"]): s for s in summary["summary"]}
    assert set(rows) == {("fifo", n) for n in ("organ", "lesion", "all")}
    for row in rows.values():
        for key in ("dice_mean", "dice_median", "nsd_mean", "nsd_median", "dice_first_mean"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
        assert row["seconds_per_interaction"] > 0 and len(row["dice_by_interaction"]) == 2
        assert row["truth_slices_before_mean"] + row["truth_slices_after_mean"] > 0
    assert rows[("fifo", "all")]["cases"] == 4 and rows[("fifo", "organ")]["cases"] == 2

    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and {"structure", "dice_mean", "dice_median", "nsd_mean", "nsd_median"} <= set(table[0])

    with open(out / "cases.csv") as f:
        records = list(csv.DictReader(f))
    assert {"case", "structure", "policy", "interaction", "kind", "k", "i", "j", "dice", "nsd", "seconds",
            "slices_before", "slices_after"} <= set(records[0])
    firsts = [r for r in records if r["interaction"] == "1"]
    assert len(firsts) == 4 and {r["kind"] for r in firsts} == {"click"}
    assert {r["kind"] for r in records if r["interaction"] == "2"} <= {"fg", "bg"}
    assert len(json.loads((out / "cases.json").read_text())["records"]) == len(records)
    assert {r["spacing"] for r in records} == {"[1.0, 1.0, 2.5]"}  # the phantoms' spacing, read from the files

    png = (out / "dice_vs_interactions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_unknown_policy_and_missing_labels_are_refused(phantoms, tmp_path):
    from medsam2.evaluate import main

    assert main(["run", str(phantoms), "--checkpoint", "random", "--model-config", "sam2.1_hiera_micro",
                 "--policy", "no_such_policy"]) == 2
    assert main(["run", str(tmp_path), "--checkpoint", "random", "--model-config", "sam2.1_hiera_micro"]) == 2


def test_make_mni152_labels_nest_inside_the_brain(tmp_path):
    r = evaluate("make-mni152", tmp_path, "--resolution", 3)
    assert r.returncode == 0, r.stderr[-3000:]
    image = nib.load(tmp_path / "mni152.nii.gz")
    label = np.asarray(nib.load(tmp_path / "labels" / "final" / "mni152.nii.gz").dataobj)
    assert image.shape == label.shape and np.allclose(np.abs(np.diag(image.affine)[:3]), 3.0)
    structures = json.loads((tmp_path / "labels.json").read_text())
    assert structures == {"brain": [1, 2, 3], "white_matter": [2], "lateral_ventricles": [3]}
    ml = {name: np.isin(label, values).sum() * 27 / 1000 for name, values in structures.items()}
    assert 1000 < ml["brain"] < 2500 and 300 < ml["white_matter"] < 900 and 5 < ml["lateral_ventricles"] < 60, ml
    ventricles = np.argwhere(label == 3)
    mid = label.shape[0] / 2
    assert (ventricles[:, 0] < mid).any() and (ventricles[:, 0] > mid).any()  # both hemispheres
