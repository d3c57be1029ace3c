"""End to end on CPU: train through /train/medsam2 from scratch, serve the new weights without a
restart, keep them when a run is stopped, score unlabelled images and pick the least confident."""

import hashlib
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import REPEATABLE_RUN, start_server, stop_server, wait_for_task
from medsam2.clicks import interior_point, largest_slice
from medsam2.phantoms import make_phantom, write_studies

pytestmark = pytest.mark.e2e

TRAIN_STEPS = 150
HELD_OUT = "phantom_900"


@pytest.fixture(scope="module")
def learning_server(tmp_path_factory):
    studies = tmp_path_factory.mktemp("learning_studies")
    write_studies(studies, 6, shape=(64, 64, 32), seed=0, with_labels=6)  # labelled: phantom_000..005
    write_studies(studies, 3, shape=(64, 64, 32), seed=900)  # unlabelled: phantom_900..902
    model_dir = tmp_path_factory.mktemp("model")
    log = tmp_path_factory.mktemp("learning_logs") / "server.log"
    # the demo model's config from random weights: its 150 steps learn the held-out vessel (0.86 when
    # measured) in two thirds of the micro config's time (the test alone: 208 s against about 300 s; micro: 0.97)
    server = start_server(studies, {"checkpoint": "random", "model_config": "sam2.1_hiera_nano",
                                    "model_dir": model_dir}, log)
    server.model_dir = model_dir
    yield server
    stop_server(server.proc)


def one_click_dice(server, image_id, seed, value=2):
    """3D Dice of one click on the vessel (the structure a model trained for minutes can follow)."""
    truth = make_phantom((64, 64, 32), seed=seed).label == value
    k = largest_slice(truth)
    x, y = interior_point(truth[:, :, k].T)
    r = server.post_infer(image_id, {"foreground": [[x, y, k]], "result_extension": ".nii.gz"})
    assert r.status_code == 200, r.text
    path = server.log.parent / f"{image_id}.nii.gz"
    path.write_bytes(r.content)
    pred = np.asarray(nib.load(str(path)).dataobj) > 0
    return 2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum())


def train_stats(server) -> dict:
    return requests.get(f"{server.url}/info/", timeout=30).json()["train_stats"]["medsam2"]


def test_training_from_scratch_makes_the_served_model_better_without_a_restart(learning_server):
    server = learning_server
    before = one_click_dice(server, HELD_OUT, 900)
    r = requests.post(f"{server.url}/train/medsam2", json={"max_steps": TRAIN_STEPS, "val_every": TRAIN_STEPS,
                                                            "clip_len": 8, "seed": 0, **REPEATABLE_RUN}, timeout=60)
    assert r.status_code == 200, r.text
    status = wait_for_task(server.url, "train", 1500)
    assert status["status"] == "DONE", status.get("details")
    stats = train_stats(server)
    # the validation images are chosen by image id (training/validation.py): at least one of the six
    assert stats["status"] == "DONE" and stats["train_images"] + stats["val_images"] == 6 and stats["val_images"] >= 1
    assert stats["best_val_dice"] > stats["initial_val_dice"]
    assert list((server.model_dir / "runs" / "medsam2").glob("*/events.out.tfevents.*"))
    after = one_click_dice(server, HELD_OUT, 900)
    print(f"\none-click 3D Dice on the held-out phantom's vessel: {before:.3f} before, {after:.3f} after "
          f"{TRAIN_STEPS} steps")
    assert after > before + 0.2 and after > 0.5


def test_every_publish_is_a_version_and_a_rollback_serves_the_old_weights(learning_server):
    server = learning_server
    listing = requests.get(f"{server.url}/model/medsam2/versions", timeout=30).json()
    assert requests.get(f"{server.url}/info/", timeout=30).json()["model_versions"]["medsam2"] == listing
    trained = listing["versions"][-1]
    assert listing["served"] == trained["id"] and trained["parent"] == "base"
    assert trained["val_dice"] > trained["parent_val_dice"] and trained["train_images"] == train_stats(server)["train_images"]
    before = one_click_dice(server, HELD_OUT, 900)
    r = requests.post(f"{server.url}/model/medsam2/rollback", params={"version": "base"}, timeout=30)
    assert r.status_code == 200 and r.json() == {"served": "base"}
    assert one_click_dice(server, HELD_OUT, 900) < before - 0.2  # the untrained weights again
    for bad, status in (("20990101T000000Z-deadbeef", 404), ("../../x", 404)):
        r = requests.post(f"{server.url}/model/medsam2/rollback", params={"version": bad}, timeout=30)
        assert r.status_code == status and "no version" in r.json()["detail"]
    r = requests.post(f"{server.url}/model/medsam2/rollback", params={"version": trained["id"]}, timeout=30)
    assert r.status_code == 200
    assert one_click_dice(server, HELD_OUT, 900) == before  # the same weights: the same mask
    kept = server.model_dir / "versions" / "medsam2" / f"{trained['id']}.pt"
    good = kept.read_bytes()
    kept.write_bytes(good[:-100])  # damaged on disk
    try:
        r = requests.post(f"{server.url}/model/medsam2/rollback", params={"version": trained["id"]}, timeout=30)
        assert r.status_code == 409 and "damaged" in r.json()["detail"]
        assert one_click_dice(server, HELD_OUT, 900) == before  # nothing changed
    finally:
        kept.write_bytes(good)


def scored_with(server, image_id="phantom_900") -> str | None:
    info = requests.get(f"{server.url}/datastore/image/info", params={"image": image_id}, timeout=30).json()
    return info.get("medsam2_confidence_model")


def wait_scored_with(server, accept, timeout=300) -> str:
    deadline = time.time() + timeout
    while not accept(version := scored_with(server)):
        assert time.time() < deadline, f"the next-sample scores still come from model {version}"
        time.sleep(2)
    return version


def test_next_sample_scores_follow_the_served_model_through_a_rollback(learning_server):
    """Scores made by an old model would hand over the wrong next image: a change of the served model
    (here two rollbacks; a promotion the same way) scores the unlabelled images again with it."""
    server = learning_server
    trained = requests.get(f"{server.url}/model/medsam2/versions", timeout=30).json()["served"]
    assert trained != "base"
    wait_scored_with(server, lambda v: v == trained)  # scored after the training run
    for version in ("base", trained):
        r = requests.post(f"{server.url}/model/medsam2/rollback", params={"version": version}, timeout=30)
        assert r.status_code == 200
        wait_scored_with(server, lambda v: v == version)
    if requests.get(f"{server.url}/scoring/", timeout=30).status_code == 200:
        wait_for_task(server.url, "scoring", 600)


def test_a_stopped_run_leaves_the_served_weights_intact(learning_server):
    server = learning_server
    served = next((server.model_dir / "finetuned").glob("*.pt"))
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    r = requests.post(f"{server.url}/train/medsam2", json={"max_steps": 5000}, timeout=60)
    assert r.status_code == 200
    deadline = time.time() + 120
    while train_stats(server)["status"] != "RUNNING":  # the run has started (and shows so in /info)
        assert time.time() < deadline, train_stats(server)
        time.sleep(1)
    time.sleep(5)
    assert train_stats(server)["status"] == "RUNNING"
    assert requests.delete(f"{server.url}/train/", timeout=60).status_code == 200
    assert wait_for_task(server.url, "train", 1500)["status"] == "STOPPED"
    # /info says so too, instead of RUNNING for ever, once the killed process is gone (that takes a
    # moment after the task reports STOPPED: under load, /info said RUNNING when asked at once)
    deadline = time.time() + 60
    while (stats := train_stats(server))["status"] == "RUNNING" and time.time() < deadline:
        time.sleep(1)
    assert stats["status"] == "STOPPED" and "nothing was published" in stats["error"]
    assert hashlib.sha256(served.read_bytes()).hexdigest() == digest
    assert one_click_dice(server, HELD_OUT, 900) > 0.5


def test_scoring_then_next_sample_hands_over_the_least_confident_image(learning_server):
    server = learning_server
    # MONAI Label starts every scoring method by itself after a training run: let that one finish first
    if requests.get(f"{server.url}/scoring/", timeout=30).status_code == 200:
        wait_for_task(server.url, "scoring", 600)
    r = requests.post(f"{server.url}/scoring/medsam2_confidence", timeout=60)
    assert r.status_code == 200, r.text
    assert wait_for_task(server.url, "scoring", 600)["status"] == "DONE"
    scores = {}
    for image_id in ("phantom_900", "phantom_901", "phantom_902"):
        info = requests.get(f"{server.url}/datastore/image/info", params={"image": image_id}, timeout=30).json()
        scores[image_id] = info["medsam2_confidence"]
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    r = requests.post(f"{server.url}/activelearning/least_confident", timeout=60)
    assert r.status_code == 200 and r.json()["id"] == min(scores, key=scores.get)
    assert requests.post(f"{server.url}/activelearning/random", timeout=60).json()["id"] in scores


@pytest.mark.torchrun
def test_training_on_two_cpu_processes_runs_under_torchrun_and_rank_0_publishes(learning_server):
    """`cpu_processes` 2 on a machine without GPUs: 2 gloo processes launched by torchrun (training/launch.py).
    With `keep_start` the ranks also read the datastore's unlabelled images (phantom_900..902), from the
    weights the first test published (keep_start needs a checkpoint to start from)."""
    import json

    server = learning_server
    before = {str(p): p.stat().st_mtime_ns for p in (server.model_dir / "finetuned").glob("*.pt")}
    # val_split 0: no validation, so the run publishes whatever 3 steps give (this checks the launch, not learning)
    r = requests.post(f"{server.url}/train/medsam2", json={"cpu_processes": 2, "max_steps": 3,
                                                            "val_split": 0, "clip_len": 4, "seed": 1,
                                                            "keep_start": 1}, timeout=60)
    assert r.status_code == 200, r.text
    status = wait_for_task(server.url, "train", 900)
    assert status["status"] == "DONE", status.get("details")
    stats = train_stats(server)
    assert stats["status"] == "DONE" and stats["steps"] == 3 and stats["unlabelled_images"] == 3
    job = json.loads((server.model_dir / "train" / "torchrun-job.json").read_text())
    assert sorted(Path(f).name.split(".")[0] for f in job["unlabelled"]) == ["phantom_900", "phantom_901", "phantom_902"]
    published = Path(stats["published"])
    assert published.parent == server.model_dir / "finetuned" and published.stat().st_mtime_ns != before.get(
        str(published))  # published (again), in place
    result = json.loads((server.model_dir / "train" / "torchrun-job.result.json").read_text())
    assert result["world_size"] == 2 and len(set(result["rank_digests"])) == 1
