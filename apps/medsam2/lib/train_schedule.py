"""Fine-tuning runs that start by themselves: after `--conf train_every N` new saved final labels, and
once a day at `--conf train_at HH:MM` when at least one new label exists. Both off by default.

"New" means saved after the start of the last run that finished (DONE, published or not): a run that
fails, is stopped or is killed does not use the labels up, and a restart keeps the count (it is
computed from the label files and `model/train/<model>_last_done.json`, which the trainer writes).
No run starts while one runs (nor within `RETRY_AFTER_S` of a run that did not finish, so a run that
keeps failing does not start again and again). The runs take `--conf auto_train_params` (JSON, the
`/train` params) and go through MONAI Label's own train task, as a press on Train does. A thread
checks every `CHECK_EVERY_S` seconds; `/info` shows, per model, the labels since the last run and the
next scheduled start.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CHECK_EVERY_S = 5.0
RETRY_AFTER_S = 600.0


def last_done_path(train_dir: Path, name: str) -> Path:
    return Path(train_dir) / f"{name}_last_done.json"


def mark_done(train_dir: Path, name: str, started_at: float) -> None:
    """Called by the trainer when a run finishes: labels saved before `started_at` are used up."""
    path = last_done_path(train_dir, name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"started_at": started_at}))
    os.replace(tmp, path)


class TrainSchedule:
    def __init__(self, name: str, train_dir: Path, every: int, at: str, params: dict):
        self.name = name
        self.train_dir = Path(train_dir)
        self.every = int(every)
        self.at = at  # "" or "HH:MM" (checked by ServerSettings)
        self.params = dict(params)
        self._last_attempt = 0.0

    @property
    def enabled(self) -> bool:
        return self.every > 0 or bool(self.at)

    def since(self) -> float:
        try:
            return float(json.loads(last_done_path(self.train_dir, self.name).read_text())["started_at"])
        except (OSError, ValueError, KeyError):
            return 0.0

    def new_labels(self, datastore) -> int:
        since = self.since()
        count = 0
        for item in datastore.datalist():
            try:
                count += os.path.getmtime(item["label"]) > since
            except (OSError, KeyError):
                continue
        return count

    def next_start(self, now: datetime.datetime | None = None) -> str | None:
        if not self.at:
            return None
        now = now or datetime.datetime.now()
        hour, minute = (int(p) for p in self.at.split(":"))
        start = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if start <= now - datetime.timedelta(seconds=CHECK_EVERY_S * 2):
            start += datetime.timedelta(days=1)
        return start.isoformat(timespec="minutes")

    def due(self, datastore, running: bool, now: datetime.datetime | None = None) -> str | None:
        """Why a run should start now (None: it should not)."""
        if not self.enabled or running:
            return None
        if time.time() - self._last_attempt < RETRY_AFTER_S and self.since() < self._last_attempt:
            return None  # the last run started here did not finish: wait before trying again
        new = self.new_labels(datastore)
        if self.every and new >= self.every:
            return f"{new} new labels (train_every {self.every})"
        now = now or datetime.datetime.now()
        if self.at and new and now.strftime("%H:%M") == self.at:
            return f"{self.at} and {new} new labels (train_at)"
        return None

    def describe(self, datastore) -> dict:
        return {"train_every": self.every, "train_at": self.at or None,
                "labels_since_last_run": self.new_labels(datastore) if self.enabled else None,
                "next_scheduled_start": self.next_start()}


def install(app, schedules: dict[str, TrainSchedule]) -> None:
    """Start the checking thread (only when a schedule is on)."""
    active = {name: s for name, s in schedules.items() if s.enabled}
    if not active:
        return

    def check():
        from monailabel.endpoints import train as monailabel_train
        from monailabel.utils.async_tasks.task import AsyncTask

        while True:
            time.sleep(CHECK_EVERY_S)
            try:
                running = AsyncTask.status("train", False, True)[0] is not None
                for name, schedule in active.items():
                    reason = schedule.due(app.datastore(), running)
                    if reason:
                        schedule._last_attempt = time.time()
                        logger.info("starting a fine-tuning run of %s by itself: %s", name, reason)
                        monailabel_train.run_model(name, dict(schedule.params))
                        running = True
            except Exception as e:  # noqa: BLE001 (the next check tries again)
                logger.warning("scheduled training check failed: %s: %s", type(e).__name__, e)

    threading.Thread(target=check, name="train-schedule", daemon=True).start()
    logger.info("fine-tuning starts by itself: %s", {n: s.describe(app.datastore()) for n, s in active.items()})
