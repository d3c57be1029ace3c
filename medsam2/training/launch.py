"""Fine-tuning on several processes, on one machine or several, launched by torchrun.

    # one machine, 4 GPUs (NCCL) or 2 CPU processes (gloo):
    torchrun --nproc_per_node 4 -m medsam2.training.launch --job JOB.json
    # two GPU nodes, 8 GPUs each: the same command on each node, node_rank 0 and 1
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HEAD_NODE:29400 --rdzv_id medsam2 -m medsam2.training.launch --job JOB.json

JOB.json holds the training settings (`TrainConfig`'s fields: model config, starting checkpoint, where
to publish, steps, ...) and the training and validation pairs as image/label file paths, which every
rank reads itself (a shared folder on several nodes). torchrun sets RANK, WORLD_SIZE and the
rendezvous; each rank trains with DDP (gradients averaged: the same weights on every rank after
every step, checked at the end by a digest of each rank's weights), rank 0 validates and publishes
the checkpoint, and writes `<job>.result.json` (history, Dice, digests, the published file); a rank
that fails writes what ended it to `<job>.error-<rank>.json` (`first_error` reads them). The
server's `/train` with `multi_gpu` writes such a job (`write_job`) and runs this command
(apps/medsam2/lib/trainers/medsam2.py); by hand, any JSON with these keys works.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .loop import TrainConfig, TrainResult, train

PATH_FIELDS = ("out_checkpoint", "init_checkpoint")


def config_to_json(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_from_json(data: dict) -> TrainConfig:
    """TrainConfig from `config_to_json`'s output: nested settings rebuilt as their dataclasses."""
    values = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in data:
            continue
        value = data[f.name]
        if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
            value = type(f.default_factory())(**value)
        elif f.name in PATH_FIELDS and value is not None:
            value = Path(value)
        elif isinstance(f.default, tuple):  # JSON gave a list (train_only)
            value = tuple(value)
        values[f.name] = value
    return TrainConfig(**values)


def cpu_processes(clips_per_step: int, threads: int | None = None) -> int:
    """How many processes a run on CPUs uses unless told: one per thread this process may use
    (`torch.get_num_threads()`: OMP_NUM_THREADS, else the cores), at most one per clip of a step.
    The demo model's step is thousands of small operations that a second thread hardly speeds up:
    on 2 AMD EPYC cores, Colin27's step of 2 clips took 1.45 s on one thread and 1.26 s on two, and
    2 processes of one thread and one clip each took 0.79 s (docs/training.md, "Slower machines")."""
    threads = threads or torch.get_num_threads()
    return max(1, min(int(threads), int(clips_per_step)))


def one_machine_command(job: Path, processes: int) -> tuple[list[str], dict]:
    """The command and environment that run `job` on this machine: `torchrun --nproc_per_node
    <processes>`, its rendezvous on a free port of 127.0.0.1 and gloo's sockets on the loopback; each
    rank with its share of the threads this process may use (torchrun would give each one). One
    process: this module directly, with every thread."""
    import socket

    env = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
           "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // processes))}
    if processes == 1:
        return [sys.executable, "-m", "medsam2.training.launch", "--job", str(job)], env
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--nnodes", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
            "-m", "medsam2.training.launch", "--job", str(job)], env


def replay_pairs(cfg: TrainConfig):
    """What the model was trained on, for `cfg.replay_share` of the clips: the demo model's generated
    phantoms, the only training data known here. None when the run replays nothing."""
    if cfg.replay_share <= 0:
        return None
    from ..demo_model import DEMO_CONFIG, training_pairs

    if cfg.model_config != DEMO_CONFIG:
        raise ValueError(f"replay needs the data the model was trained on; it is known for the demo model "
                         f"({DEMO_CONFIG}) only, not for {cfg.model_config}")
    return training_pairs()


def write_job(path: Path, cfg: TrainConfig, train_files: list, val_files: list, unlabelled_files=()) -> Path:
    """A job file for `torchrun ... -m medsam2.training.launch --job path`; the errors an earlier job of
    that name recorded are removed. `unlabelled_files`: images for `cfg.keep_start` (keep_start.py)."""
    path = Path(path)
    for old in error_files(path):
        old.unlink(missing_ok=True)
    path.write_text(json.dumps({"config": config_to_json(cfg), "train": [list(map(str, p)) for p in train_files],
                                "val": [list(map(str, p)) for p in val_files],
                                "unlabelled": [str(p) for p in unlabelled_files]}, indent=1))
    return path


def read_pairs(files: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, label) arrays from (image path, label path) pairs, read by MONAI's LoadImage."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    pairs = []
    for image_path, label_path in files:
        image = np.squeeze(np.asarray(load(image_path), dtype=np.float32))
        label = np.squeeze(np.asarray(load(label_path))).astype(np.int64)
        pairs.append((image, label))
    return pairs


def read_images(files: list) -> list[np.ndarray]:
    """Image arrays from paths, read by MONAI's LoadImage."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    return [np.squeeze(np.asarray(load(path), dtype=np.float32)) for path in files]


def result_path(job: Path) -> Path:
    return Path(job).with_suffix(".result.json")


def error_files(job: Path) -> list[Path]:
    return sorted(Path(job).parent.glob(f"{Path(job).stem}.error-*.json"))


def record_error(job: Path, error: BaseException) -> None:
    """What ended this rank, for the launcher to report (torchrun's own report ends with its elastic
    agent's trailer, not the reason): `<job>.error-<rank>.json`."""
    rank = int(os.environ.get("RANK", 0))
    Path(job).with_suffix(f".error-{rank}.json").write_text(json.dumps(
        {"rank": rank, "time": time.time(), "message": f"{type(error).__name__}: {error}"}))


def first_error(job: Path) -> str | None:
    """The message of the exception that ended a rank first (a rank that fails takes the others down
    after it, with a communication error), or None where no rank recorded one."""
    errors = []
    for path in error_files(job):
        try:
            errors.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return min(errors, key=lambda e: e["time"])["message"] if errors else None


def run(job: Path) -> TrainResult | None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    spec = json.loads(Path(job).read_text())
    cfg = config_from_json(spec["config"])
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)  # env:// (torchrun's rendezvous)
    try:
        log = (lambda entry: print(f"medsam2 train: {json.dumps(entry, default=float)}", flush=True)) if rank == 0 \
            else (lambda entry: None)
        result = train(cfg, read_pairs(spec["train"]), read_pairs(spec["val"]), log=log, rank=rank, world_size=world,
                       replay_pairs=replay_pairs(cfg), unlabelled_images=read_images(spec.get("unlabelled", [])))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    if rank == 0:
        out = {**dataclasses.asdict(result), "published": str(result.published) if result.published else None,
               "world_size": world}
        tmp = result_path(job).with_suffix(".tmp")
        tmp.write_text(json.dumps(out, default=float, indent=1))
        os.replace(tmp, result_path(job))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medsam2.training.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", type=Path, required=True, help="the job file (module docstring)")
    args = ap.parse_args(argv)
    try:
        run(args.job)
    except Exception as e:
        record_error(args.job, e)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
