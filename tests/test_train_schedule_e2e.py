"""Fine-tuning runs that start by themselves (`--conf train_every 2`) through the real server: labels
saved over REST start a run at the second one, the run's version is served, and a restart keeps the
count of new labels and the versions (apps/medsam2/lib/train_schedule.py, medsam2/versions.py)."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import start_server, stop_server
from medsam2.phantoms import make_phantom, write_studies

pytestmark = pytest.mark.e2e

SHAPE = (32, 32, 8)
IMAGES = [f"phantom_{n}" for n in range(720, 724)]


def save_final_label(url: str, image: str, seed: int, folder) -> None:
    path = folder / f"{image}_label.nii.gz"
    nib.save(nib.Nifti1Image(make_phantom(SHAPE, seed=seed).label.astype(np.uint8), np.eye(4)), str(path))
    with open(path, "rb") as f:
        r = requests.put(f"{url}/datastore/label", params={"image": image, "tag": "final"},
                         files={"label": (path.name, f)}, timeout=60)
    assert r.status_code == 200, r.text


def schedule_of(url: str) -> dict:
    return requests.get(f"{url}/info/", timeout=30).json()["train_schedule"]["medsam2"]


def test_the_second_new_label_starts_a_run_and_a_restart_keeps_the_count(tmp_path):
    studies = tmp_path / "studies"
    write_studies(studies, len(IMAGES), shape=SHAPE, seed=720)
    conf = {"checkpoint": "random", "model_config": "sam2.1_hiera_micro", "model_dir": tmp_path / "model",
            "train_every": 2, "auto_train_params": json.dumps({"max_steps": 2, "clip_len": 3, "val_split": 0}, separators=(",", ":"))}
    server = start_server(studies, conf, tmp_path / "server.log", {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    try:
        assert schedule_of(server.url)["labels_since_last_run"] == 0
        save_final_label(server.url, IMAGES[0], 720, tmp_path)
        time.sleep(12)  # two checks: one new label starts nothing
        assert schedule_of(server.url)["labels_since_last_run"] == 1
        assert requests.get(f"{server.url}/model/medsam2/versions", timeout=30).json()["versions"] == []
        save_final_label(server.url, IMAGES[1], 721, tmp_path)
        deadline = time.time() + 300
        while not (versions := requests.get(f"{server.url}/model/medsam2/versions", timeout=30).json())["versions"]:
            assert time.time() < deadline, server.log.read_text()[-3000:]
            time.sleep(2)
        assert versions["served"] == versions["versions"][0]["id"] and versions["versions"][0]["train_images"] == 2
        assert "starting a fine-tuning run of medsam2 by itself: 2 new labels" in server.log.read_text()
        # tracked in MLflow: the run, its loss per step, the published checkpoint, the version it was kept as
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'model' / 'mlflow.db'}")
        (run,) = mlflow.search_runs(experiment_names=["medsam2 fine-tuning"], output_format="list")
        assert run.data.tags["version"] == versions["served"] and run.info.status == "FINISHED"
        assert "loss" in run.data.metrics and run.data.params["max_steps"] == "2"
        artifacts = mlflow.MlflowClient().list_artifacts(run.info.run_id, "checkpoint")
        assert [a.path.endswith(".pt") for a in artifacts] == [True]
        assert schedule_of(server.url)["labels_since_last_run"] == 0  # used up by the run
        save_final_label(server.url, IMAGES[2], 722, tmp_path)
        assert schedule_of(server.url)["labels_since_last_run"] == 1
    finally:
        stop_server(server.proc)
    server = start_server(studies, conf, tmp_path / "server2.log", {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    try:
        assert schedule_of(server.url)["labels_since_last_run"] == 1  # the count survives the restart
        assert requests.get(f"{server.url}/model/medsam2/versions", timeout=30).json() == versions
    finally:
        stop_server(server.proc)


def test_a_schedule_that_makes_no_sense_stops_the_server_with_the_reason(tmp_path):
    studies = tmp_path / "studies"
    write_studies(studies, 1, shape=SHAPE, seed=720)
    with pytest.raises(RuntimeError) as e:
        start_server(studies, {"checkpoint": "random", "model_config": "sam2.1_hiera_micro", "train_at": "7pm",
                               "model_dir": tmp_path / "model"}, tmp_path / "server.log")
    assert "--conf train_at must be a time of day as HH:MM" in str(e.value)
