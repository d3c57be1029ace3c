"""Simulated annotators: the requests OHIF v3 and 3D Slicer users send, in the order they send them.

Shared by the concurrency benchmark (benchmarks/concurrency.py) and its end-to-end test. Nothing
is faked on the server side: every step is an HTTP request to a real MONAI Label server.

- A Slicer user goes through `monailabel.client.MONAILabelClient` (the client Slicer's module is
  built on) with its own `client_id`: `POST /infer/medsam2?image=<id>` with `label`, all clicks of the
  segment so far, sometimes the ROI box, `.nrrd`/`uint8`, the model's options from /info/ and
  `reset_state` on a new segment; the multipart answer carries the label and the params (which model
  version served it). It submits labels like Slicer's "Submit Label": `PUT /datastore/label` with the
  label file and `{"label_info": [...]}`, and reads them back with `GET /datastore/label` (what Slicer
  does when it opens an image that has one).
- An OHIF v3 user sends what its MONAI Label panel sends for a deepgrow model: the options, all
  `foreground`/`background` clicks, `.nrrd`, `uint8`, `result_compress: false`,
  `restore_label_idx: false`, `output=image`; no `client_id` (the panel sends none, so the server keys
  OHIF sessions as "default") and no label saves (the panel never calls save_label).

Each user visits `visits` images; on each it clicks once in one structure (first click: the image's
features are not cached for it yet), then adds `corrections` clicks, each request resending every
click (corrective clicks: the features are cached unless the cache evicted them). One Slicer user per
image is that image's submitter: it saves after its first click and after its last correction, so a
read-back can be checked against exactly the bytes that user sent. Clicks come from the phantom's
true label (`medsam2.clicks`), so the scenario is the same on every run; each user's first click goes on
a different slice, so no two users send the same prompts (the server would answer a repeated prompt on
the same session from its previous result instead of computing it). `evict_sessions` empties the
session cache of the scenario's sessions between runs, for the same reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nrrd
import numpy as np
import requests
from monailabel.client import MONAILabelClient

from medsam2.clicks import interior_point

STRUCTURES = {"organ": 1, "vessel": 2, "lesion": 3}  # medsam2.phantoms.PHANTOM_LABELS
INFER_KINDS = ("first_click", "correction")
TIMEOUT_S = 900


@dataclass(frozen=True)
class Step:
    key: str  # unique in the scenario: "<user>/v<visit>/<n>"
    kind: str  # first_click | correction | save_label | read_label
    image: str
    params: dict = field(default_factory=dict)  # infer params as the client sends them; label_info for saves


@dataclass
class Annotator:
    name: str  # e.g. "slicer-0", "ohif-1"
    app: str  # "slicer" | "ohif"
    client_id: str | None
    steps: list[Step]


@dataclass
class Outcome:
    key: str
    kind: str
    user: str
    image: str
    ok: bool
    status: int | None = None
    error: str | None = None
    started: float = 0.0  # time.time() when the request was sent
    ended: float = 0.0
    seconds: float = 0.0
    voxels: str | None = None  # digest of the label's voxels, dtype, shape and geometry
    nonzero: int | None = None  # labelled voxels in the result
    file_sha: str | None = None  # digest of the file bytes as received
    model_version: str | None = None  # from the response params (Slicer's multipart answer only)
    engine: dict | None = None
    server_seconds: float | None = None  # latencies.total reported by the server

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ scenario


def _click(mask3d: np.ndarray, k: int) -> list[int] | None:
    p = interior_point(mask3d[:, :, k].T)
    return None if p is None else [p[0], p[1], int(k)]


def _roi(mask3d: np.ndarray, k: int) -> list[int]:
    ii, jj = np.nonzero(mask3d[:, :, k])
    return [int(ii.min()), int(ii.max()), int(jj.min()), int(jj.max()), int(k), int(k)]


def _visit_clicks(truth: np.ndarray, structure: str, corrections: int, rank: int):
    """(first foreground click, its slice, [(foreground, background) lists after each correction]).
    The first click goes on the structure's `rank`-th largest slice, so that users on the same image
    send different prompts (the server answers a repeated prompt from its last result)."""
    mask = truth == STRUCTURES[structure]
    areas = mask.reshape(-1, mask.shape[2]).sum(axis=0)
    present = [k for k in range(mask.shape[2]) if areas[k] > 0]
    k0 = sorted(present, key=lambda k: (-areas[k], k))[rank % len(present)]
    first = _click(mask, k0)
    fg, bg, rounds = [first], [], []
    for n in range(corrections):
        if n % 2 == 0:  # a background click as far from the structure as the slice allows
            p = interior_point(~mask[:, :, k0].T)
            bg = bg + [[p[0], p[1], int(k0)]]
        else:  # one more foreground click on another slice of the structure
            k = present[(len(present) * (n + 1)) // (corrections + 2)]
            fg = fg + [_click(mask, k)]
        rounds.append((list(fg), list(bg)))
    return first, k0, rounds


def make_scenario(truths: dict[str, np.ndarray], options: dict, users: int = 8, visits: int = 2,
                  corrections: int = 2) -> list[Annotator]:
    """`users` annotators (even: Slicer, odd: OHIF) on the images of `truths` ({image id: label}).

    User u visits image (u + v) mod n on visit v, so with 8 users on 4 images two users work on each
    image at once, Slicer and OHIF users alternate over the images, and two OHIF users share the
    server's "default" session of an image. `options` are the model's config from /info/."""
    images = sorted(truths)
    submitter: dict[str, tuple[int, int]] = {}
    for v in range(visits):
        for u in range(0, users, 2):
            submitter.setdefault(images[(u + v) % len(images)], (u, v))
    annotators = []
    for u in range(users):
        app = "slicer" if u % 2 == 0 else "ohif"
        name = f"{app}-{u}"
        steps: list[Step] = []
        for v in range(visits):
            image = images[(u + v) % len(images)]
            truth = truths[image]
            names = [s for s in STRUCTURES if (truth == STRUCTURES[s]).any()]
            structure = names[(u // 2 + v) % len(names)]
            first, k0, rounds = _visit_clicks(truth, structure, corrections, rank=u + v)
            saves = submitter.get(image) == (u, v)
            for n, (fg, bg) in enumerate([([first], [])] + rounds):
                if app == "slicer":
                    params = {**options, "label": structure, "foreground": fg, "background": bg,
                              "result_extension": ".nrrd", "result_dtype": "uint8", "reset_state": n == 0}
                    if v % 2 == 1:  # every other visit, the user also draws Slicer's ROI box
                        params["roi"] = _roi(truth == STRUCTURES[structure], k0)
                else:
                    params = {**options, "foreground": fg, "background": bg, "result_extension": ".nrrd",
                              "result_dtype": "uint8", "result_compress": False, "restore_label_idx": False}
                kind = "first_click" if n == 0 else "correction"
                steps.append(Step(f"{name}/v{v}/{n}", kind, image, params))
                if saves and n in (0, len(rounds)):
                    info = {"label_info": [{"name": structure, "idx": STRUCTURES[structure]}]}
                    steps.append(Step(f"{name}/v{v}/{n}/save", "save_label", image, info))
                    steps.append(Step(f"{name}/v{v}/{n}/read", "read_label", image))
        annotators.append(Annotator(name, app, f"user-{u}" if app == "slicer" else None, steps))
    return annotators


# ------------------------------------------------------------------------------------------ results


def label_digest(data: bytes) -> tuple[str, int]:
    """(digest of an NRRD label's voxels, dtype, shape and geometry, number of nonzero voxels); the
    header's wording does not count."""
    fh = io.BytesIO(data)
    header = nrrd.read_header(fh)
    array = np.ascontiguousarray(nrrd.read_data(header, fh, index_order="F"))
    h = hashlib.sha256()
    h.update(f"{array.dtype.str}{array.shape}".encode())
    for k in ("space directions", "space origin"):
        h.update(np.asarray(header.get(k, []), dtype=np.float64).round(6).tobytes())
    h.update(array.tobytes())
    return h.hexdigest(), int(np.count_nonzero(array))


class InFlight:
    """Requests sent and not yet answered, across all users: the most at once, and when."""

    def __init__(self):
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.infers_now = 0
        self.most_infers = 0

    def enter(self, kind: str) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
            if kind in INFER_KINDS:
                self.infers_now += 1
                self.most_infers = max(self.most_infers, self.infers_now)

    def leave(self, kind: str) -> None:
        with self._lock:
            self.now -= 1
            if kind in INFER_KINDS:
                self.infers_now -= 1


class UserSession:
    """One annotator's connection: runs its steps against `url`, keeps the last label it got per image
    (what it submits), and keeps the bytes it submitted (what a read-back must return)."""

    def __init__(self, url: str, annotator: Annotator, workdir: Path, inflight: InFlight | None = None):
        self.url = url.rstrip("/")
        self.annotator = annotator
        self.tmpdir = Path(workdir) / annotator.name
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.inflight = inflight or InFlight()
        self.client = MONAILabelClient(self.url, tmpdir=str(self.tmpdir), client_id=annotator.client_id)
        self.http = requests.Session()
        self.last_label: dict[str, bytes] = {}
        self.submitted: dict[str, bytes] = {}

    def run(self, start: threading.Barrier | None = None) -> list[Outcome]:
        if start is not None:
            start.wait()
        return [self.step(s) for s in self.annotator.steps]

    def step(self, step: Step) -> Outcome:
        out = Outcome(step.key, step.kind, self.annotator.name, step.image, ok=False)
        self.inflight.enter(step.kind)
        out.started = time.time()
        t0 = time.perf_counter()
        try:
            if step.kind in INFER_KINDS:
                data = self._infer(step, out)
                (out.voxels, out.nonzero), out.file_sha = label_digest(data), hashlib.sha256(data).hexdigest()
                self.last_label[step.image] = data
                out.ok = True
            elif step.kind == "save_label":
                self._save(step, out)
            elif step.kind == "read_label":
                self._read(step, out)
            else:
                raise ValueError(f"unknown step kind {step.kind}")
        except Exception as e:  # every failure is recorded and counted, none stops the user
            out.ok, out.error = False, f"{type(e).__name__}: {e}"[:500]
            out.status = out.status or getattr(e, "status_code", None)
        finally:
            out.seconds = time.perf_counter() - t0
            out.ended = time.time()
            self.inflight.leave(step.kind)
        return out

    def _infer(self, step: Step, out: Outcome) -> bytes:
        params = json.loads(json.dumps(step.params))  # the client library adds client_id in place
        if self.annotator.app == "slicer":
            path, res = self.client.infer("medsam2", step.image, params)
            out.status = 200
            data = Path(path).read_bytes()
            Path(path).unlink(missing_ok=True)
            engine = (res or {}).get("engine") or {}
            out.model_version = engine.get("model_version")
            out.engine = {k: engine.get(k) for k in ("cached_features", "cache_mb", "cache_entries", "encode_s",
                                                     "device")}
            out.server_seconds = ((res or {}).get("latencies") or {}).get("total")
            return data
        r = self.http.post(f"{self.url}/infer/medsam2", params={"image": step.image, "output": "image"},
                           files={"params": (None, json.dumps(params))}, timeout=TIMEOUT_S)
        out.status = r.status_code
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        return r.content

    def _save(self, step: Step, out: Outcome) -> None:
        data = self.last_label[step.image]
        path = self.tmpdir / f"{step.image}-submit.nrrd"
        path.write_bytes(data)
        res = self.client.save_label(step.image, str(path), params=json.loads(json.dumps(step.params)))
        out.status = 200
        if res.get("label") != step.image:
            raise RuntimeError(f"saved as {res.get('label')!r}, not {step.image!r}")
        self.submitted[step.image] = data
        out.file_sha = hashlib.sha256(data).hexdigest()
        out.ok = True

    def _read(self, step: Step, out: Outcome) -> None:
        path = Path(self.client.download_label(step.image, "final"))
        out.status = 200
        data = path.read_bytes()
        path.unlink(missing_ok=True)
        out.file_sha = hashlib.sha256(data).hexdigest()
        if data != self.submitted[step.image]:
            raise RuntimeError(f"read back {len(data)} bytes that differ from the {len(self.submitted[step.image])} "
                               "submitted")
        out.ok = True

    def close(self) -> None:
        self.http.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def evict_sessions(url: str, image: str, click: list[int], count: int) -> None:
    """One click on `image` from each of `count` other clients: with `count` above the cache's entries,
    the session cache (least recently used first) then holds none of the scenario's sessions, and every
    later request computes its result afresh instead of finding it cached."""
    for n in range(count):
        r = requests.post(f"{url}/infer/medsam2", params={"image": image, "output": "json"},
                          files={"params": (None, json.dumps({"foreground": [click], "client_id": f"evict-{n}"}))},
                          timeout=TIMEOUT_S)
        r.raise_for_status()


def run_alone(url: str, annotators: list[Annotator], workdir: Path, keys=None) -> dict[str, Outcome]:
    """Every infer step (or those in `keys`), one request at a time: the reference results."""
    results = {}
    for a in annotators:
        user = UserSession(url, a, workdir)
        try:
            for s in a.steps:
                if s.kind in INFER_KINDS and (keys is None or s.key in keys):
                    results[s.key] = user.step(s)
        finally:
            user.close()
    return results


def run_together(url: str, annotators: list[Annotator], workdir: Path, inflight: InFlight,
                 join_timeout: float | None = None) -> tuple[list[Outcome], dict[str, bytes], list[str]]:
    """All annotators at once, one thread each, released together. Returns the outcomes, the bytes each
    image's submitter sent last, and the names of users still running after `join_timeout`."""
    start = threading.Barrier(len(annotators))
    sessions = [UserSession(url, a, workdir, inflight) for a in annotators]
    outcomes: list[list[Outcome]] = [[] for _ in sessions]

    def work(n: int) -> None:
        outcomes[n] = sessions[n].run(start=start)

    threads = [threading.Thread(target=work, args=(n,), name=s.annotator.name, daemon=True)
               for n, s in enumerate(sessions)]
    for t in threads:
        t.start()
    deadline = None if join_timeout is None else time.time() + join_timeout
    for t in threads:
        t.join(None if deadline is None else max(0.0, deadline - time.time()))
    hung = [t.name for t in threads if t.is_alive()]
    submitted = {image: data for s in sessions for image, data in s.submitted.items()}
    for s in sessions:
        s.close()
    return [o for per_user in outcomes for o in per_user], submitted, hung
