"""Faults injected into the real server: what survives them.

- The server is killed (SIGKILL of its process group) at varied moments while it saves a label: the
  label on disk is always byte-identical to the old or the new one, and a restarted server lists the
  same images and labels and segments.
- Training runs that fail (an exception inside the run; a run whose weights diverge to NaN) leave the
  served checkpoint byte-identical, and the server keeps segmenting with it.
- A corrupt, truncated, code-carrying or mis-shaped checkpoint is answered 503 with the reason (never
  unpickled), the server keeps answering, and a good file is served as soon as it is put in place.
- A request that needs more memory than the server may use (a real address-space limit on the
  server process, no mock) is answered 503; the next request is served.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

import bad_files
from conftest import start_server, stop_server, wait_for_task
from medsam2.phantoms import make_phantom, write_studies
from medsam2.service import ModelProvider
from medsam2.settings import EngineSettings

pytestmark = pytest.mark.e2e

SMALL = "phantom_630"  # 32 x 32 x 8
CLICK = {"foreground": [[16, 16, 4]]}
MICRO = "sam2.1_hiera_micro"
QUIET = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}  # no scoring run at start-up competing for the CPU


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def segment(server, image=SMALL, model="medsam2", params=None):
    return server.post_infer(image, params or CLICK, model=model, output="json")


# ---------------------------------------------------------------- a label save killed mid-write

BIG = "big_630"
BIG_SHAPE = (256, 256, 160)  # a 10 MB uncompressed label: its save takes long enough to be hit


def test_a_label_save_killed_at_any_moment_leaves_the_old_or_the_new_label(tmp_path, random_checkpoint):
    studies = tmp_path / "studies"
    write_studies(studies, 1, shape=(32, 32, 8), seed=630)
    bad_files.nifti(studies / f"{BIG}.nii.gz", np.zeros(BIG_SHAPE, np.int16))
    versions = {}
    for name, (lo, hi) in {"v1": (10, 100), "v2": (120, 250)}.items():
        label = np.zeros(BIG_SHAPE, np.uint8)
        label[lo:hi, lo:hi, 20:140] = 1
        versions[name] = bad_files.nifti(tmp_path / f"{name}.nii", label).read_bytes()
    conf = {"checkpoint": random_checkpoint, "model_config": MICRO, "model_dir": tmp_path / "model"}
    stored = studies / "labels" / "final" / f"{BIG}.nii"
    record = studies / "datastore_v2.json"

    def save(server, name):
        return requests.put(f"{server.url}/datastore/label", params={"image": BIG},
                            files={"label": (f"{name}.nii", versions[name])}, timeout=120)

    server = start_server(studies, conf, tmp_path / "server0.log", QUIET)
    try:
        t0 = time.perf_counter()
        assert save(server, "v2").status_code == 200
        save_s = time.perf_counter() - t0
        assert save(server, "v1").status_code == 200 and stored.read_bytes() == versions["v1"]
        images = set(requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"])
        # when to kill: after a share of a whole save's time, or the moment the label file or the
        # datastore's record starts being written (a new file beside it, or its size or time changing)
        moments = [0.1, ("label", stored), ("datastore record", record), 1.5]
        outcomes = []
        for n, moment in enumerate(moments):
            old = "v1" if stored.read_bytes() == versions["v1"] else "v2"
            new = "v2" if old == "v1" else "v1"
            watched = None if isinstance(moment, float) else _file_state(moment[1])
            sender = threading.Thread(target=_ignore_connection_errors, args=(save, server, new))
            sender.start()
            if watched is None:
                time.sleep(save_s * moment)
            else:
                _wait_for_change(moment[1], watched, timeout=60)
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
            sender.join()
            on_disk = stored.read_bytes()
            whole = on_disk in (versions["v1"], versions["v2"])
            assert whole, f"kill {n}: a partial label ({len(on_disk)} bytes)"
            json.loads(record.read_text())  # the datastore's own record is whole too
            when = f"{moment:.0%} of a save" if watched is None else f"writing the {moment[0]}"
            outcomes.append((when, "new" if on_disk == versions[new] else "old", len(list(studies.rglob(".*.part")))))

            server = start_server(studies, conf, tmp_path / f"server{n + 1}.log", QUIET)
            listed = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
            assert set(listed) == images and "final" in listed[BIG]["labels"]
            served = requests.get(f"{server.url}/datastore/label", params={"label": BIG, "tag": "final"}, timeout=60)
            assert served.status_code == 200 and served.content == on_disk
            assert not list(studies.rglob(".*.part"))  # what the kill left half-written is gone
        print(f"\nlabel save ({save_s:.2f} s) killed {len(outcomes)} times (when, label left, half-written files "
              f"beside it): {outcomes}; no label or record broken")
        assert {o for _, o, _ in outcomes} == {"old", "new"}  # kills landed before and after the label was replaced
        assert segment(server).status_code == 200
    finally:
        stop_server(server.proc)


def _file_state(path: Path):
    """What changes when a file starts being written: the files beside it, its size and time."""
    st = path.stat()
    return sorted(os.listdir(path.parent)), st.st_size, st.st_mtime_ns


def _wait_for_change(path: Path, state, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _file_state(path) == state:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} was not written within {timeout} s")


def _ignore_connection_errors(save, server, name):
    try:
        save(server, name)
    except requests.RequestException:
        pass


# ---------------------------------------------------------------- failed training runs

def test_failed_training_runs_leave_the_served_checkpoint_intact(tmp_path, random_checkpoint):
    studies = tmp_path / "studies"
    write_studies(studies, 1, shape=(32, 32, 8), seed=630, with_labels=1)  # one labelled image: no validation set
    model_dir = tmp_path / "model"
    served = ModelProvider(EngineSettings(checkpoint=str(random_checkpoint), model_config=MICRO), model_dir).finetuned_path
    served.parent.mkdir(parents=True)
    shutil.copy(random_checkpoint, served)  # weights an earlier run published: the ones being served
    before = digest(served)
    server = start_server(studies, {"checkpoint": random_checkpoint, "model_config": MICRO, "model_dir": model_dir},
                          tmp_path / "server.log", QUIET)
    try:
        assert segment(server).status_code == 200
        runs = {
            "an exception inside the run": ({"train_modules": "decoder_only", "max_steps": 3}, "train_modules"),
            "a setting out of range": ({"anchor": -1, "max_steps": 3}, "anchor=-1.0"),
            "a share out of range": ({"unlabelled_click": 2, "max_steps": 3}, "unlabelled_click=2.0"),
            "another share out of range": ({"keep_start": -0.5, "max_steps": 3}, "keep_start=-0.5"),
            "a draw rule that does not exist": ({"draw": "volume", "max_steps": 3}, "draw=volume"),
            "a process count that is not one": ({"cpu_processes": "two", "max_steps": 3}, "cpu_processes"),
            "weights diverging to NaN": ({"lr": 1e30, "max_steps": 2, "clip_len": 2, "clips_per_step": 1},
                                         "no longer finite"),
        }
        for what, (params, reason) in runs.items():
            r = requests.post(f"{server.url}/train/medsam2", json=params, timeout=60)
            assert r.status_code == 200, r.text
            assert wait_for_task(server.url, "train", 600)["status"] == "ERROR", what
            stats = requests.get(f"{server.url}/info/", timeout=30).json()["train_stats"]["medsam2"]
            assert stats["status"] == "FAILED" and reason in stats["error"], (what, stats)
            assert digest(served) == before, f"{what} changed the served checkpoint"
            assert not list(served.parent.glob("*.part"))
            assert segment(server).status_code == 200
    finally:
        stop_server(server.proc)


# ---------------------------------------------------------------- bad checkpoints

class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):  # runs on unpickling: what a malicious checkpoint does
        return (Path(self.marker).touch, ())


def test_bad_checkpoints_are_refused_with_503_and_a_good_one_is_served_once_in_place(tmp_path, random_checkpoint):
    studies = tmp_path / "studies"
    write_studies(studies, 1, shape=(32, 32, 8), seed=630)
    bad_files.nifti(studies / "flat2d.nii.gz", make_phantom((32, 32, 8), seed=631).image[:, :, 4].astype(np.int16))
    checkpoint = tmp_path / "weights.pt"
    bad_files.truncated(random_checkpoint, checkpoint, keep=0.4)
    server = start_server(studies, {"checkpoint": checkpoint, "model_config": MICRO, "model_dir": tmp_path / "model"},
                          tmp_path / "server.log", QUIET)
    marker = tmp_path / "code-ran"
    state = torch.load(random_checkpoint, weights_only=True)
    misshaped = {"model": {k: v for k, v in list(state["model"].items())[1:]}}
    try:
        assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
        bad = [("truncated", None, "corrupt, truncated"),
               ("code inside", lambda p: torch.save({"model": Payload(marker)}, p), "weights-only"),
               ("a tensor missing", lambda p: torch.save(misshaped, p), "does not fit the model config"),
               ("not a checkpoint", lambda p: p.write_bytes(b"PK\x03\x04 not a zip"), "cannot read checkpoint")]
        for what, write, words in bad:
            if write:
                tmp = checkpoint.with_suffix(".new")
                write(tmp)
                os.replace(tmp, checkpoint)
            for model, image, params in (("medsam2", SMALL, CLICK),
                                         ("medsam2_oneprompt", "flat2d", {"label": "organ", "foreground": [[5, 5]]})):
                r = segment(server, image, model, params)
                assert r.status_code == 503, (what, model, r.text)
                assert "model is not available" in r.json()["detail"] and words in r.json()["detail"], r.text
            assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
        assert not marker.exists(), "the checkpoint's code ran"
        shutil.copy(random_checkpoint, checkpoint)
        assert segment(server).status_code == 200
    finally:
        stop_server(server.proc)


# ---------------------------------------------------------------- out of memory on one request

def vm_size_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def test_a_request_that_runs_out_of_memory_gets_503_and_the_server_goes_on(tmp_path, random_checkpoint):
    studies = tmp_path / "studies"
    write_studies(studies, 1, shape=(32, 32, 8), seed=630)
    big = np.kron(make_phantom((64, 64, 48), seed=632).image.astype(np.int16), np.ones((8, 8, 8), np.int16))
    nib.save(nib.Nifti1Image(big, np.eye(4)), str(studies / "big.nii"))  # 100 M voxels, 400 MB as float32
    del big
    server = start_server(studies, {"checkpoint": random_checkpoint, "model_config": MICRO,
                                    "model_dir": tmp_path / "model"}, tmp_path / "server.log", QUIET)
    try:
        assert segment(server).status_code == 200  # the model is loaded, a small image opened
        pid = server.proc.pid
        assert b"start_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        limit = vm_size_bytes(pid) + (768 << 20)  # room for small requests, not for a 100 M voxel volume
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
        r = segment(server, "big", params={"foreground": [[256, 256, 200]]})
        assert r.status_code == 503, r.text[:500]
        assert "ran out of memory" in r.json()["detail"]
        assert segment(server).status_code == 200
        assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
        print(f"\nout of memory under a {limit / 2**30:.1f} GiB address-space limit: 503, then the next request 200")
    finally:
        stop_server(server.proc)
