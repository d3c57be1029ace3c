"""The `medsam2` train task: fine-tune on the labels clinicians saved, publish, serve without restart.

MONAI Label runs it in a subprocess (`POST /train/medsam2`). It reads every image with a saved
label from the datastore (3D volumes and 2D images), holds out the validation images (chosen by image
id and kept for every later run: medsam2/training/validation.py), trains with the
project's trainer (medsam2/training/loop.py) starting from the weights being served, and publishes
the best weights atomically to the provider's fine-tuned checkpoint; the infer tasks pick them up on
their next request. A stopped or failed run publishes nothing. Progress goes to stdout (shown in
`/train` status), to a stats file (shown in `/info` train_stats) and to TensorBoard under model/runs.

Request params: max_steps (2000), max_minutes (14: a default run ends within 15 minutes on 2 CPU cores; where fewer
steps fit, the schedule is shortened to them: training/schedule.py; 0 = no limit), val_split (0.2), clip_len (6),
max_objects (3), draw (image: which structure a clip follows first, a labelled image and then one of its structures;
structure: each labelled structure of each image as often as any other; training/clips.py), clips_per_step (2: over
all processes), lr, train_modules (auto | all | no_image_encoder), seed, multi_gpu (false: with true, torch DDP
launched by torchrun over all GPUs), cpu_processes (on a machine without GPUs: auto, one gloo process under torchrun
per thread the server may use and at most one per clip of a step, each with its share of the threads; or a number, 1
for one process: medsam2/training/launch.py), replay (0: the share of clips drawn from what the model was trained
on, against forgetting it; only the demo model's training data is known, generated here; docs/training.md), anchor
(0: L2-SP, each weight pulled back toward the served model's, against forgetting without the old data; needs a
checkpoint to start from; docs/training.md), unlabelled_click (0: the share of clips that also get a click outside
the labels whose answer must contain it, so that one labelled structure teaches the click, not the anatomy, to name
the target; docs/training.md, "Which lung: three seeds"), keep_start (0: the share of clips on which random clicks
on up to 8 of the datastore's unlabelled images (without any: outside the labels) must be answered as the served
model answered them, on the clicked slice and the three tracked after it, against forgetting without the old data;
needs a checkpoint to start from; clicks that look like a labelled structure to the served model's image encoder are
left out, so that a structure the unlabelled images also hold is still learned; docs/training.md, "Keeping the
start's answers"), promote_margin (0.01: a candidate is published only if its validation Dice beats the served
model's, measured on the same images at the start of the run, by this much).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from lib.infers.image_io import read_image
from lib.params import flag
from lib.train_schedule import mark_done
from medsam2.service import ModelProvider
from medsam2.training.clips import DRAWS
from medsam2.training.defaults import DEFAULT_RUN, DEFAULT_VAL_SPLIT, default_run
from medsam2.training.launch import (cpu_processes, first_error, one_machine_command, replay_pairs, result_path,
                                     write_job)
from medsam2.training.loop import TrainConfig, train
from medsam2.training.prompt_sim import PromptSettings
from medsam2.training.tracking import RunTracker, default_uri
from medsam2.training.validation import ValidationSet
from medsam2.versions import VersionStore

logger = logging.getLogger(__name__)

MAX_UNLABELLED = 8  # unlabelled images a keep_start run reads (each held in memory for the run)


class MedSam2Trainer(TrainTask):
    def __init__(self, provider: ModelProvider, model_dir: str, name: str = "medsam2",
                 versions: VersionStore | None = None, mlflow_uri: str = ""):
        super().__init__("Fine-tune MedSAM-2 on saved labels (clips through the labelled structures)")
        self.provider = provider
        self.name = name
        self.versions = versions  # each publish kept as a version (medsam2/versions.py)
        self.mlflow_uri = mlflow_uri  # "" : the model folder's own MLflow database (training/tracking.py)
        self.model_dir = Path(model_dir)
        self.stats_path = Path(model_dir) / "train" / f"{name}_stats.json"
        self.runs_dir = Path(model_dir) / "runs" / name

    def config(self):
        shown = ("max_steps", "max_minutes", "clip_len", "max_objects", "clips_per_step")
        return {**{k: DEFAULT_RUN[k] for k in shown}, "val_split": DEFAULT_VAL_SPLIT, "train_modules": "auto",
                "multi_gpu": False}

    def stats(self):
        """The last run's stats for /info; NaN (a Dice without a validation set) becomes null, since
        /info must be valid JSON: a NaN there made every /info an error 500 and no client could connect.
        A run whose process is gone without finishing (Stop training, a kill, a server restart) shows as
        STOPPED, not RUNNING for ever."""
        try:
            stats = json.loads(self.stats_path.read_text(), parse_constant=lambda _: None)
        except (OSError, ValueError):
            return {}
        if stats.get("status") == "RUNNING" and not _still_running(stats.get("process")):
            stats.update(status="STOPPED", error="the training process ended before finishing (stopped, killed "
                                                 "or the server restarted); nothing was published")
        return stats

    def _write_stats(self, stats: dict) -> None:
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats, indent=1, default=float))
        os.replace(tmp, self.stats_path)

    @staticmethod
    def _pairs(datastore: Datastore):
        """(image, label) arrays of every labelled image, their files, and what was skipped and why."""
        pairs, files, skipped = [], [], []
        for item in datastore.datalist():
            try:
                image, _ = read_image(item["image"])
                label, _ = read_image(item["label"])
            except Exception as e:  # one unreadable pair must not stop training on the others
                skipped.append(f"{os.path.basename(item['image'])}: {getattr(e, 'detail', e)}")
                continue
            image, label = np.squeeze(image), np.squeeze(label).astype(np.int64)
            if image.shape != label.shape or image.ndim not in (2, 3):
                skipped.append(f"{os.path.basename(item['image'])}: image {image.shape} vs label {label.shape}")
                continue
            pairs.append((image.astype(np.float32), label))
            files.append((item["image"], item["label"]))
        return pairs, files, skipped

    @staticmethod
    def _unlabelled(datastore: Datastore, seed: int, keep_arrays: bool) -> tuple[list[np.ndarray], list[str]]:
        """Up to MAX_UNLABELLED of the datastore's images without a label (a draw by `seed`), for
        `keep_start`: their files, and their arrays where `keep_arrays` (a run in this process; torchrun's
        ranks read the files themselves). Each is read here, so that one that cannot be read is left out."""
        ids = sorted(datastore.get_unlabeled_images())
        images, files = [], []
        for i in np.random.default_rng(seed).permutation(len(ids)):
            if len(files) == MAX_UNLABELLED:
                break
            try:
                path = datastore.get_image_uri(ids[i])
                image = np.squeeze(read_image(path)[0]).astype(np.float32)
            except Exception as e:  # as in _pairs: one unreadable image must not stop the run
                logger.warning("keep_start: %s left out: %s", ids[i], getattr(e, "detail", e))
                continue
            if image.ndim in (2, 3):
                files.append(path)
                if keep_arrays:
                    images.append(image)
        return images, files

    def __call__(self, request, datastore: Datastore):
        """Train and publish; a failed run publishes nothing and says why in the stats (/info train_stats).
        One run at a time per model folder, across processes: replicas sharing the folder (and so its
        published weights and these stats) never train at once; a second run is refused and leaves the
        running one's stats alone."""
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.stats_path.with_suffix(".lock"), "w")  # held until this run's process ends
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError("a fine-tuning run is already running for this model folder (on this server or "
                               "another replica sharing it); nothing was started") from None
        try:
            return self._run(request, datastore)
        except Exception as e:
            self._write_stats({**self.stats(), "status": "FAILED", "error": f"{type(e).__name__}: {e}"})
            raise
        finally:
            lock.close()

    @staticmethod
    def _processes(request, cfg: TrainConfig) -> int:
        """How many DDP processes the run uses: every GPU with `multi_gpu`, else one; on a machine without
        GPUs `cpu_processes` (auto: launch.cpu_processes)."""
        if torch.cuda.is_available():
            return torch.cuda.device_count() if flag(request.get("multi_gpu", False)) else 1
        asked = str(request.get("cpu_processes", "auto")).strip().lower()
        if asked == "auto":
            return cpu_processes(cfg.clips_per_step)
        if not asked.isdigit() or int(asked) < 1:
            raise ValueError(f"cpu_processes must be auto or a whole number >= 1, got {request.get('cpu_processes')!r}")
        return int(asked)

    @staticmethod
    def _check(cfg: TrainConfig) -> TrainConfig:
        counts = {k: getattr(cfg, k) for k in ("max_steps", "clip_len", "max_objects", "clips_per_step", "val_every")}
        bad = [f"{k}={v}" for k, v in counts.items() if v < 1]
        if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
            bad.append(f"lr={cfg.lr}")
        if not 0 <= cfg.replay_share < 1:
            bad.append(f"replay={cfg.replay_share}")
        if not (math.isfinite(cfg.anchor) and cfg.anchor >= 0):
            bad.append(f"anchor={cfg.anchor}")
        if not 0 <= cfg.prompts.p_unlabelled_click <= 1:
            bad.append(f"unlabelled_click={cfg.prompts.p_unlabelled_click}")
        if not 0 <= cfg.keep_start <= 1:
            bad.append(f"keep_start={cfg.keep_start}")
        if not math.isfinite(cfg.promote_margin):
            bad.append(f"promote_margin={cfg.promote_margin}")
        if cfg.max_minutes is not None and not math.isfinite(cfg.max_minutes):
            bad.append(f"max_minutes={cfg.max_minutes}")
        if cfg.draw not in DRAWS:
            bad.append(f"draw={cfg.draw}")
        if bad:
            raise ValueError(f"training params out of range: {', '.join(bad)} (counts >= 1, lr a positive number, "
                             "replay in [0, 1), anchor a number >= 0, unlabelled_click and keep_start in [0, 1], "
                             f"draw one of {', '.join(DRAWS)})")
        return cfg

    def _run(self, request, datastore: Datastore):
        t0 = time.time()
        pairs, files, skipped = self._pairs(datastore)
        if not pairs:
            raise ValueError("no saved labels to train on: save at least one label first")
        # the validation images: chosen by image id, and kept for every later run (training/validation.py)
        ids = [os.path.basename(image) for image, _ in files]
        val_ids, _ = ValidationSet(self.stats_path.parent / f"{self.name}_validation.json").split(
            ids, float(request.get("val_split", DEFAULT_VAL_SPLIT)))
        val_ids = set(val_ids)
        is_val = [image_id in val_ids for image_id in ids]
        val = [pair for pair, v in zip(pairs, is_val) if v]
        trn = [pair for pair, v in zip(pairs, is_val) if not v]
        val_files = [f for f, v in zip(files, is_val) if v]
        trn_files = [f for f, v in zip(files, is_val) if not v]

        current = self.provider.current_spec()
        # the request's values of DEFAULT_RUN's fields, as the defaults' types (max_minutes 0 or null: no
        # limit); default_run fills in the others
        asked = {k: type(v)(request[k]) for k, v in DEFAULT_RUN.items() if k in request and k != "max_minutes"}
        if "max_minutes" in request:
            asked["max_minutes"] = float(request["max_minutes"] or 0) or None
        # from the weights being served, with the field of view they are served with (training/defaults.py)
        cfg = self._check(default_run(
            current, self.provider.finetuned_path, self.provider.settings.field_of_view, **asked,
            lr=float(request["lr"]) if request.get("lr") else None,
            train_modules=str(request.get("train_modules", "auto")),
            seed=int(request.get("seed", 0)),
            replay_share=float(request.get("replay", 0) or 0),
            anchor=float(request.get("anchor", 0) or 0),
            keep_start=float(request.get("keep_start", 0) or 0),
            prompts=PromptSettings(p_unlabelled_click=float(request.get("unlabelled_click", 0) or 0)),
            promote_margin=float(request.get("promote_margin", TrainConfig.promote_margin)),
        ))
        world = self._processes(request, cfg)
        me = psutil.Process()
        stats = {"status": "RUNNING", "train_images": len(trn), "val_images": len(val), "skipped": skipped,
                 "validation": [i for i, v in zip(ids, is_val) if v],
                 "start_from": str(current.checkpoint or "random weights"), "history": [],
                 "process": {"pid": me.pid, "started": me.create_time()}}
        self._write_stats(stats)
        # after RUNNING is shown: from a DICOMweb datastore each image is a series to fetch first
        unlabelled, unlabelled_files = (self._unlabelled(datastore, cfg.seed, keep_arrays=world == 1)
                                        if cfg.keep_start else ([], []))
        stats["unlabelled_images"] = len(unlabelled_files)
        self._write_stats(stats)
        from torch.utils.tensorboard import SummaryWriter

        run_name = time.strftime("%Y%m%d-%H%M%S")
        writer = SummaryWriter(str(self.runs_dir / run_name))
        tracker = RunTracker(self.mlflow_uri or default_uri(self.model_dir), self.model_dir / "mlflow-artifacts",
                             f"{self.name} {run_name}")

        def log(entry: dict):
            print(f"medsam2 train: {json.dumps(entry, default=float)}", flush=True)
            tracker.metrics(entry)
            for k, v in entry.items():
                if k not in ("step", "elapsed_s") and isinstance(v, (int, float)):
                    writer.add_scalar(f"train/{k}" if k != "val_dice" else "val/dice", v, entry["step"])
            if "val_dice" in entry:
                stats["history"].append({"step": entry["step"], "val_dice": entry["val_dice"],
                                         "elapsed_s": entry.get("elapsed_s")})
                self._write_stats(stats)

        with tracker:  # the MLflow run ends FAILED on any exception below, FINISHED otherwise
            tracker.params({**{k: v for k, v in dataclasses.asdict(cfg).items() if not isinstance(v, dict)},
                            **{f"augment.{k}": v for k, v in dataclasses.asdict(cfg.augment).items()},
                            "train_images": len(trn), "val_images": len(val), "start_from": stats["start_from"],
                            "processes": world})
            try:
                if world > 1:
                    result = self._torchrun(cfg, trn_files, val_files, world, log, unlabelled_files)
                else:
                    result = train(cfg, trn, val, log=log, replay_pairs=replay_pairs(cfg),
                                   unlabelled_images=unlabelled)
            finally:
                writer.close()
            tracker.params({f"chosen.{k}": v for k, v in result.chosen.items()})
            if result.published and self.versions is not None:
                version = self.versions.record(Path(result.published), train_images=len(trn),
                                               val_dice=result.best_dice, parent_val_dice=result.initial_dice,
                                               settings=dict(request))
                stats["version"] = version.id
            tracker.published(result.published, stats.get("version"), {
                "initial_val_dice": result.initial_dice, "best_val_dice": result.best_dice,
                "not_promoted": result.not_promoted or None})
        stats["mlflow_run"] = tracker.run_id
        mark_done(self.stats_path.parent, self.name, t0)  # the labels saved before this run are used up
        stats.update({"status": "DONE", "steps": result.steps, "seconds": round(time.time() - t0, 1),
                      "initial_val_dice": result.initial_dice, "best_val_dice": result.best_dice,
                      "published": str(result.published) if result.published else None,
                      "not_promoted": result.not_promoted})
        self._write_stats(stats)
        return stats


    def _torchrun(self, cfg: TrainConfig, trn_files, val_files, world: int, log,
                  unlabelled_files=()) -> SimpleNamespace:
        """The run as `torchrun --nproc_per_node <world> -m medsam2.training.launch` (NCCL on GPUs, gloo
        on CPUs), its rendezvous on 127.0.0.1; rank 0's log lines are passed on as they come. A stop
        (MONAI Label kills the train process and its children) ends the ranks with it."""
        job = write_job(self.stats_path.parent / "torchrun-job.json", cfg, trn_files, val_files, unlabelled_files)
        cmd, env = one_machine_command(job, world)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        tail = []
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if line.startswith("medsam2 train: "):
                log(json.loads(line[len("medsam2 train: "):]))
        if proc.wait() != 0:
            reason = first_error(job)  # what a rank failed with; else torchrun's own last lines
            raise RuntimeError(f"{reason} (in a training process under torchrun)" if reason else
                               f"torchrun exited with {proc.returncode}: {''.join(tail)[-2000:]}")
        out = json.loads(result_path(job).read_text())
        return SimpleNamespace(steps=out["steps"], initial_dice=out["initial_dice"], best_dice=out["best_dice"],
                               published=out["published"], not_promoted=out.get("not_promoted", ""),
                               chosen=out.get("chosen", {}))


def _still_running(process: dict | None) -> bool:
    """Whether the process a RUNNING stats file names is alive: the same pid, started at the same time
    (pids are reused), and not a zombie."""
    if not isinstance(process, dict):
        return False
    try:
        p = psutil.Process(int(process["pid"]))
        return abs(p.create_time() - float(process["started"])) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
    except (KeyError, TypeError, ValueError, psutil.Error):
        return False
