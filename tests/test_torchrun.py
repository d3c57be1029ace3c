"""Fine-tuning launched by torchrun: 2 CPU processes (gloo) hold the same weights and one file is
published (medsam2/training/launch.py). Run alone with `pytest -m torchrun`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, free_port

from medsam2.phantoms import make_phantom, save_nifti
from medsam2.training.launch import config_from_json, config_to_json, result_path, write_job
from medsam2.training.loop import TrainConfig

pytestmark = pytest.mark.torchrun


def test_a_job_file_keeps_every_training_setting(tmp_path):
    from medsam2.training.clips import Augment

    cfg = TrainConfig(model_config="sam2.1_hiera_micro", out_checkpoint=tmp_path / "out.pt", max_steps=7,
                      augment=Augment(p_flip=0.25), lr=1e-4, train_only=("sam_mask_decoder.",))
    assert config_from_json(json.loads(json.dumps(config_to_json(cfg)))) == cfg


def test_two_gloo_ranks_train_the_same_weights_and_rank_0_alone_publishes(tmp_path):
    files = []
    for n, seed in enumerate((801, 802)):
        save_nifti(make_phantom((32, 32, 8), seed=seed), tmp_path / f"image_{n}.nii.gz",
                   tmp_path / f"label_{n}.nii.gz")
        files.append((tmp_path / f"image_{n}.nii.gz", tmp_path / f"label_{n}.nii.gz"))
    publish = tmp_path / "published" / "finetuned.pt"
    cfg = TrainConfig(model_config="sam2.1_hiera_micro", out_checkpoint=publish, max_steps=3, clip_len=3,
                      max_objects=2, clips_per_step=2, warmup_steps=1, seed=3)
    job = write_job(tmp_path / "job.json", cfg, files, [])
    # loopback only: the rendezvous on 127.0.0.1, gloo's sockets on the loopback interface
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
                        "-m", "medsam2.training.launch",
                        "--job", str(job)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    result = json.loads(result_path(job).read_text())
    assert result["world_size"] == 2 and result["steps"] == 3
    assert result["chosen"]["clips_per_rank"] == 1  # the step's 2 clips shared, one on each rank
    assert len(result["rank_digests"]) == 2 and len(set(result["rank_digests"])) == 1  # identical weights
    assert result["published"] == str(publish) and publish.exists()
    assert sorted(p.name for p in publish.parent.iterdir()) == ["finetuned.pt"]  # one file, written once


def test_a_run_that_fails_under_torchrun_says_why(tmp_path):
    """/train on 2 cores runs under torchrun by default; a run that fails there must report its reason
    (here a bad `train_modules`), not torchrun's trailer, and not an earlier job's error."""
    from medsam2.training.launch import first_error, one_machine_command

    save_nifti(make_phantom((32, 32, 8), seed=801), tmp_path / "image.nii.gz", tmp_path / "label.nii.gz")
    (tmp_path / "job.error-1.json").write_text(json.dumps({"rank": 1, "time": 0, "message": "an earlier job's"}))
    cfg = TrainConfig(model_config="sam2.1_hiera_micro", out_checkpoint=tmp_path / "out.pt", max_steps=3,
                      clip_len=3, clips_per_step=2, train_modules="the decoder, please")
    job = write_job(tmp_path / "job.json", cfg, [(tmp_path / "image.nii.gz", tmp_path / "label.nii.gz")], [])
    cmd, env = one_machine_command(job, 2)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0
    reason = first_error(job)
    assert reason is not None and reason.startswith("ValueError") and "train_modules" in reason, reason
    assert not (tmp_path / "out.pt").exists()


def test_a_run_on_cpus_uses_one_process_per_thread_and_at_most_one_per_clip():
    """/train's default on a machine without GPUs (`cpu_processes` auto): 2 threads and 2 clips a step
    give 2 processes of one clip each; one thread (the suite's workers), or one clip, gives one process."""
    from medsam2.training.launch import cpu_processes

    assert cpu_processes(clips_per_step=2, threads=2) == 2
    assert cpu_processes(clips_per_step=2, threads=1) == 1
    assert cpu_processes(clips_per_step=1, threads=16) == 1
    assert cpu_processes(clips_per_step=4, threads=16) == 4


def test_the_train_task_reads_cpu_processes_and_refuses_what_is_not_a_count(tmp_path, monkeypatch):
    import torch

    sys.path.insert(0, str(REPO / "apps" / "medsam2"))
    from lib.trainers.medsam2 import MedSam2Trainer
    from medsam2.training.launch import cpu_processes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without GPUs, as CI

    cfg = TrainConfig(model_config="sam2.1_hiera_micro", out_checkpoint=tmp_path / "out.pt", clips_per_step=2)
    assert MedSam2Trainer._processes({}, cfg) == cpu_processes(2)
    assert MedSam2Trainer._processes({"cpu_processes": "auto"}, cfg) == cpu_processes(2)
    assert MedSam2Trainer._processes({"cpu_processes": 3}, cfg) == 3
    for bad in ("two", 0, -1, "1.5"):
        with pytest.raises(ValueError, match="cpu_processes"):
            MedSam2Trainer._processes({"cpu_processes": bad}, cfg)
