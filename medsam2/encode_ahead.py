"""Encoding an image's slices while the user looks at it, before the first click.

A clinician opens an image (Slicer downloads it, OHIF reads the series through the app's DICOMweb
proxy, "next sample" names it) and looks for seconds before clicking. On a CPU the image encoder is
most of a first click, so `EncodeAhead` spends that time encoding the image's slices in one
background thread, from the middle slice outwards, into a session the first click on that image then
adopts: the click finds those slices encoded and encodes only the rest.

The rules, each one a test in tests/test_encode_ahead.py:
- one image ahead per user: a user's new image cancels their previous job, and its session is dropped
  unless a click adopted it;
- low priority: the worker pauses while any inference runs (`inference()`), between two slices; a click
  on the image being encoded uses the slices done and encodes the ones it needs itself, first;
- within the cache budget: a job's session goes into the cache only if it fits without evicting
  anything (never another user's open image), features of all its slices included (the first slice
  allocates them all), else the job ends at once;
- a job for an image that is already open, or being encoded for someone else, is not started.

The worker only encodes; what a click does with the session is `service.InteractiveSegmenter`'s.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

import torch

logger = logging.getLogger(__name__)


def centre_out(num_frames: int) -> list[int]:
    """Slice order from the middle outwards: a click lands near the middle more often than at an end,
    and propagation then needs its neighbours on both sides first."""
    mid = num_frames // 2
    order = [mid]
    for d in range(1, num_frames):
        order += [k for k in (mid + d, mid - d) if 0 <= k < num_frames]
    return order


def features_nbytes_bound(model, num_frames: int) -> int:
    """An upper bound of the bytes FrameFeatures holds for `num_frames` encoded slices: three pyramid
    levels per slice in fp32 (strides 4, 8, 16; the first two after SAM 2's conv_s0 / conv_s1, which
    give the mask decoder's width / 8 and / 4 channels), the pooled embedding per slice, and the
    positional encodings once. Known before the first slice is encoded, which allocates them all."""
    size, d = int(model.image_size), int(model.hidden_dim)
    t = int(model.sam_mask_decoder.transformer_dim)
    channels = (t // 8, t // 4, d) if model.use_high_res_features_in_sam else (d, d, d)
    pixels = [(size // s) ** 2 for s in (4, 8, 16)]
    per_slice = sum(c * p for c, p in zip(channels, pixels)) + d
    return 4 * (num_frames * per_slice + d * sum(pixels))


@dataclass
class Job:
    """Encoding one image for one user."""

    user: str
    name: str  # the image as the client named it (an image id)
    locate: Callable[[], Hashable]  # -> the image as cache keys name it (service.OpenedImage); in the worker
    open: Callable[[Hashable], tuple]  # image -> (session, cache key); in the worker
    image: Hashable = None  # what locate() returned
    key: Hashable = None  # the cache key its session is stored under (service.SessionKey), until a click adopts it
    cancelled: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)  # set when opened, or ended
    session: object = None
    adopted: bool = False
    encoded: int = 0  # slices this job encoded
    ended: str | None = None  # why the job ended: done, cancelled, budget, evicted, no room, error: ...
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0  # from the request to the end


class EncodeAhead:
    """One background worker encoding, per user, the image that user opened last (module docstring)."""

    def __init__(self, cache, is_open: Callable[[Hashable], bool], enabled: bool = True):
        self.cache = cache  # sessions.SessionCache: the budget and the open images
        self.is_open = is_open  # image -> whether the cache holds a session of it already
        self.enabled = bool(enabled)
        self._cond = threading.Condition()
        self._jobs: dict[str, Job] = {}  # user -> their latest job (running, waiting or ended)
        self._queue: list[Job] = []
        self._inferences = 0
        self._worker: threading.Thread | None = None
        self._fetch_locks: dict[str, threading.Lock] = {}  # image name -> held while it is fetched

    # ----------------------------------------------------------------------------- what callers use

    def request(self, user: str, name: str, locate: Callable[[], Hashable],
                open_fn: Callable[[Hashable], tuple]) -> Job | None:
        """Encode image `name` for `user` ahead of their first click; cancels the user's previous job.
        None when nothing is started: disabled, the same image again, or someone else's job has it.
        (An image that turns out to be open already ends its job at once, as "open".)"""
        if not self.enabled:
            return None
        with self._cond:
            previous = self._jobs.get(user)
            if previous is not None and previous.name == name and not previous.cancelled.is_set():
                return None
            if previous is not None:
                self._cancel(previous)
            if any(j.name == name and not j.cancelled.is_set() and j.ended is None for j in self._jobs.values()):
                return None  # someone else's job is encoding it: the first click adopts that one
            job = Job(user=user, name=name, locate=locate, open=open_fn)
            self._jobs[user] = job
            self._queue.append(job)
            self._start_worker()
            self._cond.notify_all()
            return job

    def claim(self, image: Hashable, accept: Callable[[Hashable], bool] = lambda key: True,
              timeout: float = 600.0) -> tuple[object, Hashable] | None:
        """For a click on `image` that found no session of its own: (session, cache key) of a job's
        session for that image, waiting while the job is still opening it; None when there is none, or
        when `accept(key)` refuses the key it was opened under (another model version)."""
        with self._cond:
            job = next((j for j in self._jobs.values() if j.image == image and not j.adopted
                        and not j.cancelled.is_set()), None)
        if job is None or not job.opened.wait(timeout) or job.session is None:
            return None
        with self._cond:
            if job.adopted or job.cancelled.is_set() or not self.cache.holds(job.session) or not accept(job.key):
                return None
            job.adopted = True  # from now on the session is the click's: never dropped by a cancel
            return job.session, job.key

    @contextlib.contextmanager
    def fetching(self, name: str):
        """Held while image `name` is fetched (a DICOMweb series downloaded into the datastore): by a job
        and by a click that fetches the image itself, so that the two never write the same files at once
        (a click then waits for the download under way, which it needs anyway)."""
        with self._cond:
            lock = self._fetch_locks.setdefault(name, threading.Lock())
        with lock:
            yield

    @contextlib.contextmanager
    def inference(self):
        """While any inference runs, the worker waits (between two slices)."""
        with self._cond:
            self._inferences += 1
        try:
            yield
        finally:
            with self._cond:
                self._inferences -= 1
                self._cond.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no job is queued or running (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(j.ended is None for j in self._jobs.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def job_of(self, user: str) -> Job | None:
        with self._cond:
            return self._jobs.get(user)

    def close(self) -> None:
        with self._cond:
            for job in list(self._jobs.values()):
                self._cancel(job)
            self._queue.clear()
            self._cond.notify_all()

    # ----------------------------------------------------------------------------- the worker

    def _cancel(self, job: Job) -> None:
        job.cancelled.set()
        if job in self._queue:
            self._queue.remove(job)
            self._end(job, "cancelled")
        self._drop_guess(job)  # speculative work: free its budget for the next
        self._cond.notify_all()

    def _drop_guess(self, job: Job) -> None:
        """Take the job's session out of the cache, unless a click adopted it."""
        if job.session is not None and not job.adopted:
            self.cache.discard(job.key, job.session)

    def _end(self, job: Job, why: str) -> None:
        with self._cond:  # a re-entrant lock: callers may hold it already
            if job.ended is not None:
                return
            job.ended = why
            job.seconds = time.perf_counter() - job.started
            job.opened.set()
            self._cond.notify_all()
        logger.info("encode ahead of %s for %s: %s after %d slices in %.1fs", job.name, job.user, why, job.encoded,
                    job.seconds)

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="encode-ahead", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if not self._cond.wait(timeout=30):
                        self._worker = None  # idle: the next request starts a new one
                        return
                job = self._queue.pop(0)
            try:
                self._run(job)
            except Exception as e:  # noqa: BLE001 (a failed prefetch must never reach a user: log it)
                logger.warning("encode ahead for %s failed: %s: %s", job.user, type(e).__name__, e)
                with self._cond:
                    self._drop_guess(job)
                    self._end(job, f"error: {type(e).__name__}")

    def _paused(self, job: Job) -> bool:
        """Wait while inferences run; True when the job must end."""
        with self._cond:
            while self._inferences and not job.cancelled.is_set():
                self._cond.wait()
            return job.cancelled.is_set()

    @torch.inference_mode()
    def _run(self, job: Job) -> None:
        if self._paused(job):
            return self._end(job, "cancelled")
        with self.fetching(job.name):
            image = job.locate()
        with self._cond:
            job.image = image
            if self.is_open(image):
                return self._end(job, "open")
        session, key = job.open(image)
        segmenter = session.segmenter
        features = session.features
        with self._cond:
            if job.cancelled.is_set():
                return self._end(job, "cancelled")
            if not self.cache.put_if_room(key, session):
                return self._end(job, "no room")
            # the first slice allocates the features of every slice (features.py): all must fit
            if features.levels is None and self.cache.nbytes + features_nbytes_bound(
                    segmenter.model, features.num_frames) > self.cache.max_bytes:
                self.cache.discard(key, session)
                return self._end(job, "budget")
            job.session, job.key = session, key
            job.opened.set()
        step = max(1, segmenter.encode_batch_size)
        todo = [k for k in centre_out(features.num_frames) if not features.encoded[k]]
        for start in range(0, len(todo), step):
            if self._paused(job):
                return self._end(job, "cancelled")
            chunk = [k for k in todo[start : start + step] if not features.encoded[k]]
            if not chunk:
                continue
            if not self.cache.holds(session):
                return self._end(job, "evicted")
            with segmenter.autocast():
                features.ensure(chunk)
            job.encoded += len(chunk)
        self._end(job, "done")
