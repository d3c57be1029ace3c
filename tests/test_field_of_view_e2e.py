"""The field of view through the real server (`--conf field_of_view auto`), as Slicer clicks: a vessel
too small for the model's input on the whole slice is answered from a window around it, and a
corrective click reuses the window's encoded slices."""

import json

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from benchmarks.server import stop_server, wait_for_task
from conftest import start_server
from medsam2.clicks import interior_point, largest_slice
from medsam2.demo_model import DEMO_CONFIG
from medsam2.evaluation.metrics import dice
from medsam2.phantoms import PHANTOM_LABELS
from test_field_of_view import embedded

pytestmark = pytest.mark.e2e

IMAGE = "small_vessel_256"


@pytest.fixture(scope="module")
def windowed_server(tmp_path_factory, trained_checkpoint):
    studies = tmp_path_factory.mktemp("fov_studies")
    _, image, label = embedded(102)  # a vessel the whole-slice view misses (Dice 0.00 with the field of view off)
    nib.save(nib.Nifti1Image(image.astype(np.int16), np.eye(4)), str(studies / f"{IMAGE}.nii.gz"))
    conf = {"checkpoint": trained_checkpoint, "model_config": DEMO_CONFIG, "field_of_view": "auto",
            "encode_ahead": "false", "model_dir": tmp_path_factory.mktemp("fov_model")}
    server = start_server(studies, conf, tmp_path_factory.mktemp("fov_logs") / "server.log",
                          {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    server.truth, server.conf = label == PHANTOM_LABELS["vessel"], conf
    yield server
    stop_server(server.proc)


def test_a_click_on_a_small_vessel_is_answered_from_its_window_and_a_correction_reuses_it(windowed_server, tmp_path):
    truth = windowed_server.truth
    k = largest_slice(truth)
    i, j = interior_point(truth[:, :, k].T)
    client = MONAILabelClient(windowed_server.url, tmpdir=str(tmp_path), client_id="slicer-fov")
    label_file, params = client.infer("medsam2", IMAGE, {"foreground": [[i, j, k]], "label": "vessel"})
    first = nrrd.read(label_file)[0] > 0
    assert first.shape == truth.shape and dice(first, truth) > 0.8, dice(first, truth)
    assert params["engine"]["windows"] == 1

    # a background click far from the vessel, inside its window's rows: the same window, nothing encoded again
    label_file, params = client.infer("medsam2", IMAGE, {"foreground": [[i, j, k]], "background": [[i - 20, j, k]],
                                                         "label": "vessel"})
    assert params["engine"]["windows"] == 1 and params["engine"]["cached_features"] is True
    assert params["engine"]["encode_s"] == 0.0
    assert dice(nrrd.read(label_file)[0] > 0, truth) > 0.8


def test_training_with_the_field_of_view_on_shows_clips_in_windows(windowed_server, tmp_path):
    """/train on a server with the field of view on trains on the views it serves (half the clips in
    windows) and records it with the run (MLflow params)."""
    import mlflow

    from medsam2.training.tracking import EXPERIMENT, default_uri

    nib.save(nib.Nifti1Image(windowed_server.truth.astype(np.uint8), np.eye(4)), str(tmp_path / "vessel.nii.gz"))
    r = requests.put(f"{windowed_server.url}/datastore/label", params={"image": IMAGE, "tag": "final"},
                     files={"params": (None, json.dumps({"label_info": [{"name": "vessel"}]})),
                            "label": ("vessel.nii.gz", (tmp_path / "vessel.nii.gz").read_bytes())}, timeout=120)
    assert r.status_code == 200, r.text
    r = requests.post(f"{windowed_server.url}/train/medsam2", json={"max_steps": 4, "val_split": 0}, timeout=60)
    assert r.status_code == 200, r.text
    status = wait_for_task(windowed_server.url, "train", 600)
    assert status["status"] == "DONE", status.get("details")
    mlflow.set_tracking_uri(default_uri(windowed_server.conf["model_dir"]))
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert params["field_of_view"] == "auto" and float(params["augment.p_window"]) == 0.5, params
    # and how the demo model (a small model) was trained where /train's settings left it to the model
    assert (float(params["chosen.p_true_memory"]), float(params["chosen.memory_lr_scale"])) == (0.5, 3.0), params
