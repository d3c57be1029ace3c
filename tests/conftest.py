"""Shared fixtures: generated data, checkpoints the tests build, and the real server on 127.0.0.1.

Nothing here is mocked: `server` starts `monailabel start_server --app apps/medsam2` as a user
would, with a checkpoint the tests made themselves (no weights can be downloaded here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

# The suite runs on pytest-xdist workers (README): each worker, and every server and training run it
# starts (they inherit the environment), gets its share of the cores. With 2 threads each on 2 cores, the
# from-scratch run of test_server_learning, next to the lung run of test_real_learning_e2e, had not
# finished after 12 minutes where it takes 3.5 alone: their threads spun against each other.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import torch  # noqa: E402 (after OMP_NUM_THREADS)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.server import free_port, launch_server, stop_server, wait_for_task  # noqa: E402,F401 (re-exported)

from medsam2.demo_model import DEMO_CONFIG  # noqa: E402 (re-exported: the config of trained_checkpoint)

TWINS_SEED = 5010  # the studies' twins_5010
SAMPLE_PHANTOM = "sample_phantom_000"  # in the studies: the sample study's phantom_000 (128 x 128 x 48)
# What a /train request adds where a test asserts how well the run learned, so that the run is the same
# wherever the CPU rounds the same: one process (on 2 cores /train would run two, whose ranks draw other
# clips than one process does), and no time limit (with one, the schedule is fitted to measured step
# times, and a busy machine would shorten it: medsam2/training/schedule.py).
REPEATABLE_RUN = {"cpu_processes": 1, "max_minutes": 0}


@pytest.fixture(scope="session", autouse=True)
def machine_choices(tmp_path_factory):
    """One record of speed choices for the whole run (medsam2/machine_choice.py), shared by every
    server the tests start (they inherit the environment), so that two servers compared with each
    other encode with the same runtime and precision; the user's own record is left alone."""
    path = tmp_path_factory.mktemp("machine") / "machine-choices.json"
    os.environ["MEDSAM2_CHOICES"] = str(path)
    yield path


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """Random weights of the micro config: the shapes of a real checkpoint, no skill."""
    from medsam2.checkpoints import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(ModelSpec("sam2.1_hiera_micro"))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "micro_random.pt")


@pytest.fixture(scope="session")
def trained_checkpoint() -> Path:
    """The demo model shipped in model/demo/ (the nano config trained from scratch by the project's own
    trainer, medsam2/demo_model.py), checked against the sha256 in model/manifest.json. Serve it with
    model_config DEMO_CONFIG."""
    from medsam2.checkpoints import resolve_spec

    return resolve_spec("demo", None, None, REPO / "model").checkpoint


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, studies: Path, log: Path):
        self.url, self.proc, self.studies, self.log = url, proc, studies, log

    def post_infer(self, image: str, params, model: str = "medsam2", output: str = "image", **kw):
        body = params if isinstance(params, str) else __import__("json").dumps(params)
        return requests.post(f"{self.url}/infer/{model}", params={"image": image, "output": output},
                             files={"params": (None, body)}, timeout=300, **kw)


    def encode_ahead_job(self, image: str, timeout: float = 120) -> tuple[str, str, int]:
        """(user, how it ended, slices encoded) of the server's latest encode-ahead job for `image`,
        read from its log (waiting until the job has ended)."""
        import re
        import time

        pattern = re.compile(rf"encode ahead of {re.escape(image)} for (\S+): (\w[\w ]*) after (\d+) slices")
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = pattern.findall(self.log.read_text())
            if found:
                user, ended, slices = found[-1]
                return user, ended, int(slices)
            time.sleep(0.2)
        raise AssertionError(f"no encode-ahead job for {image} in the log:\n{self.log.read_text()[-2000:]}")


def start_server(studies: Path, conf: dict, log: Path, env_extra: dict | None = None,
                 ready_headers: dict | None = None) -> Server:
    url, proc = launch_server(studies, conf, log, env_extra, ready_headers=ready_headers)
    return Server(url, proc, studies, log)


@pytest.fixture(scope="session")
def studies(tmp_path_factory) -> Path:
    """Three phantom volumes (phantom_500..502), a pair of identical-looking twins (twins_5010, held out
    from the demo model's training), the sample study's phantom_000 (sample_phantom_000), three images
    the 3D task must refuse, and two 2D images (the middle slices of phantoms 510 and 511) for One-Prompt."""
    import nibabel as nib
    import numpy as np

    from medsam2.memory_phantoms import make_twins
    from medsam2.phantoms import SAMPLE_SHAPE, make_phantom, save_nifti, write_studies

    folder = tmp_path_factory.mktemp("studies")
    write_studies(folder, 3, shape=(64, 64, 32), seed=500)
    save_nifti(make_twins((64, 64, 32), seed=TWINS_SEED), folder / "twins_5010.nii.gz")
    # the bundled sample study's phantom_000 (`python -m medsam2 sample`), the README's first click
    save_nifti(make_phantom(SAMPLE_SHAPE, seed=0), folder / f"{SAMPLE_PHANTOM}.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(2000))  # gzip magic, then garbage
    nib.save(nib.Nifti1Image(np.zeros((64, 64), np.int16), np.eye(4)), str(folder / "flat2d.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8, 3), np.int16), np.eye(4)), str(folder / "stack4d.nii.gz"))
    for name, seed in (("photo2d_a", 510), ("photo2d_b", 511)):  # 2D images for One-Prompt
        p = make_phantom((64, 64, 32), seed=seed)
        nib.save(nib.Nifti1Image(p.image[:, :, 16].astype(np.int16), np.eye(4)), str(folder / f"{name}.nii.gz"))
    return folder


@pytest.fixture(scope="session")
def server(studies, trained_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server.log"
    conf = {"checkpoint": trained_checkpoint, "model_config": DEMO_CONFIG,
            "model_dir": tmp_path_factory.mktemp("served_model")}
    s = start_server(studies, conf, log)
    s.conf = conf
    yield s
    stop_server(s.proc)


# The longest files of the suite (pytest --durations: the two fine-tuning runs through the server take
# 4-5 minutes each, the replicas and the faults 2-3): the first e2e files the suite's two workers
# (pytest-xdist, one file per worker at a time) take, so that neither is left with one at the end.
LONGEST_FIRST = ("test_server_learning.py", "test_real_learning_e2e.py", "test_replicas_e2e.py", "test_faults_e2e.py")


def pytest_collection_modifyitems(config, items):
    """Fast unit tests first, then the tests that start the real server (marked e2e), the longest of
    those first, each group in file order: a broken engine is reported in seconds, before any server
    starts."""
    def order(item):
        e2e = item.get_closest_marker("e2e") is not None
        name = item.path.name
        return e2e, LONGEST_FIRST.index(name) if e2e and name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=order)
