"""Many users at once: OHIF and Slicer users clicking, correcting and saving labels on several images
of one real MONAI Label server while a training run goes on in the background.

    python -m benchmarks.concurrency                          # 8 users on 4 images, the demo model if cached
    python -m benchmarks.concurrency --users 12 --images 6 --infer-concurrency 1 --out bench-results/c1.json

Setup: `--images` phantoms (`medsam2.phantoms`, `--shape`) to annotate plus `--train-images` phantoms with
their true labels (what the background training starts from) are written into a fresh studies folder, and
`monailabel start_server --app apps/medsam2 --host 127.0.0.1` is started on it with `--checkpoint`
(default: the demo model shipped in model/demo/, as the tests use it), a fresh model folder,
a small cache (`--cache-mb`, `--cache-entries`: eviction happens) and `--infer-concurrency`. The users
and their requests are those of `benchmarks/annotators.py` (what OHIF v3 and Slicer send).

1. alone: every click request of the scenario, one at a time: the reference results. Before it, and
   before each later phase, `cache_entries + 1` clicks of other clients evict every session of the
   scenario, so that each phase computes its results afresh (the first also warms the engine up).
2. together: `POST /train/medsam2` (`--train-steps`) starts a training run; once it has read its data,
   all users start at once (a thread each). A poller asks `GET /train/?check_if_running=true` every
   second, as OHIF's panel does. The resident memory of the server process and of its subprocesses
   (training, scoring) is sampled from /proc.
3. after: once training is done, the requests that may have been served by the weights it published
   are run alone again against those weights.

Weights published mid-run: the trainer publishes at the end of a successful run and the server serves
the new weights from the next request, so results of the together phase can come from either model. A
Slicer answer says which (`engine.model_version` in its params) and is compared with the alone result
of that version. OHIF asks for `output=image`, whose answer carries no params: its result is compared
with the old model's alone result if it was answered before the new weights were written, with the
new one's if it was sent more than a second after, and with either in between. With one
`--train-images` (the default) the trainer has no validation split and always publishes, so the
switch really happens (unless the users finish first).

Checks (exit status 1 if one fails):
- no request failed: every answer 200 (status polls: 200 or 404, MONAI Label's "not running"), no user
  left hanging;
- every click result has the voxels and geometry of its alone result;
- every label read back is the bytes its user submitted, right after the save and at the very end;
- training finished (DONE);
- cache bounded: the cache sizes the server reports stay within `--cache-entries` and `--cache-mb` plus
  one session per inference allowed at once (the budget is applied when a session is opened and again
  after each request; on a CPU the slices of a new session are encoded while it is in use);
- server memory bounded: its resident memory stays within what it held after the alone phase (model
  loaded, cache full) plus, per inference allowed at once, one session beyond the cache (evicted or not
  yet trimmed while in use) and its working memory, plus the new model's weights when training published,
  plus `--rss-slack-mb` (per-thread allocator arenas and thread pools of the inference threads).

Figures: latency percentiles per request kind (together, and alone for the clicks), throughput, the
most requests in flight at once (client side) and inferences executing at once (server side, from the
infer task's log line), cache sizes reported, memory over time. Printed as a table, written to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `benchmarks` is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.annotators import (INFER_KINDS, InFlight, Outcome, evict_sessions, make_scenario,  # noqa: E402
                                   run_alone, run_together)
from benchmarks.results import write_results  # noqa: E402
from benchmarks.server import launch_server, stop_server, wait_for_task  # noqa: E402
from medsam2.checkpoints import resolve_spec  # noqa: E402

INFER_LOG = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].*medsam2: \d+ objects on \S+ in ([\d.]+)s")
PUBLISH_MARGIN_S = 1.0  # the trainer writes its checkpoint, then renames it into place


# ------------------------------------------------------------------------------------------- server


def wait_training_started(url: str, timeout: float) -> bool:
    """Wait until the training subprocess has read its data and logs its first step (MONAI Label shows
    the task's output in `GET /train/`): labels saved after that do not change what it trains on."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = requests.get(f"{url}/train/", timeout=60).json()
        if any("medsam2 train:" in line for line in status.get("details", [])):
            return True
        if status.get("status") not in ("RUNNING", "QUEUED", "SUBMITTED"):
            return False
        time.sleep(0.5)
    return False


def probe_version(url: str, image: str, click: list[int]) -> str:
    """The model version the server serves now (one click as its own client, params only)."""
    r = requests.post(f"{url}/infer/medsam2", params={"image": image, "output": "json"},
                      files={"params": (None, json.dumps({"foreground": [click], "client_id": "probe"}))},
                      timeout=900)
    r.raise_for_status()
    return r.json()["engine"]["model_version"]


# ------------------------------------------------------------------------------------------- watchers


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _load1() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return 0.0


def _descendants(pid: int) -> list[int]:
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


class MemorySampler(threading.Thread):
    """Resident memory (MiB) of the server process and of its subprocesses (training, scoring), the
    server's CPU seconds (less sensitive than wall time to other work on the machine) and the load."""

    def __init__(self, pid: int, every: float = 0.25):
        super().__init__(daemon=True, name="memory")
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float, float, float, float]] = []  # (time, server, subprocesses MiB,
        # server CPU s, 1-minute load average)
        self._halt = threading.Event()

    def sample(self) -> tuple[float, float, float, float, float]:
        s = (time.time(), _rss_mb(self.pid), sum(_rss_mb(p) for p in _descendants(self.pid)), _cpu_s(self.pid),
             _load1())
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def peak(self, t0: float, t1: float, column: int = 1) -> float:
        return max((s[column] for s in self.samples if t0 <= s[0] <= t1), default=0.0)

    def cpu_between(self, t0: float, t1: float) -> float:
        inside = [s[3] for s in self.samples if t0 <= s[0] <= t1]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0

    def mean_load(self, t0: float, t1: float) -> float:
        inside = [s[4] for s in self.samples if t0 <= s[0] <= t1]
        return float(np.mean(inside)) if inside else 0.0


class StatusPoller(threading.Thread):
    """`GET /train/?check_if_running=true` every second, as OHIF's panel asks whether training runs; MONAI
    Label answers 200 (running) or 404 (not running). Latencies recorded."""

    def __init__(self, url: str, every: float = 1.0):
        super().__init__(daemon=True, name="train-status")
        self.url, self.every = url, every
        self.polls: list[dict] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t0 = time.perf_counter()
            try:
                r = requests.get(f"{self.url}/train/", params={"check_if_running": "true"}, timeout=300)
                status, ok = r.status_code, r.status_code in (200, 404) and isinstance(r.json(), dict)
            except (requests.RequestException, ValueError) as e:
                status, ok = str(e), False
            self.polls.append({"seconds": time.perf_counter() - t0, "ok": ok, "status": status})
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ------------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything one benchmark run measured."""

    annotators: list = field(default_factory=list)
    alone: dict[str, Outcome] = field(default_factory=dict)
    together: list[Outcome] = field(default_factory=list)
    after: dict[str, Outcome] = field(default_factory=dict)
    submitted: dict[str, bytes] = field(default_factory=dict)
    final_reads: dict[str, bool] = field(default_factory=dict)
    hung: list[str] = field(default_factory=list)
    polls: list[dict] = field(default_factory=list)
    inflight: InFlight = field(default_factory=InFlight)
    versions: dict = field(default_factory=dict)  # before, after, still (after the reruns)
    candidates: dict[str, set] = field(default_factory=dict)  # click key -> versions that may have served it
    train: dict = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    rss_ready: float = 0.0
    infer_spans: list[tuple[float, float]] = field(default_factory=list)


def write_studies_for(args, work: Path):
    """(studies folder, {image to annotate: its true label}, probe): the images to annotate, and
    `--train-images` more with their true labels saved; the probe is (image, click) for asking which
    model version is served, on a training image when there is one (no user works on it)."""
    from medsam2.clicks import interior_point, largest_slice
    from medsam2.phantoms import make_phantom, write_studies

    studies = work / "studies"
    shape = tuple(args.shape)
    images = write_studies(studies, args.images, shape=shape, seed=700)
    truths = {image: make_phantom(shape, seed=700 + n).label for n, image in enumerate(images)}
    probe_image, probe_truth = images[0], truths[images[0]]
    if args.train_images:
        probe_image = write_studies(studies, args.train_images, shape=shape, seed=800, with_labels=args.train_images)[0]
        probe_truth = make_phantom(shape, seed=800).label
    organ = probe_truth == 1
    k = largest_slice(organ)
    return studies, truths, (probe_image, [*interior_point(organ[:, :, k].T), k])


def served_by(outcome: Outcome, v0: str, v1: str, publish_time: float | None) -> set:
    """The model versions that may have served a together click (module docstring)."""
    if outcome.model_version:
        return {outcome.model_version}
    if publish_time is None or outcome.ended < publish_time:
        return {v0}
    if outcome.started > publish_time + PUBLISH_MARGIN_S:
        return {v1}
    return {v0, v1}


def run_benchmark(args, work: Path, url: str, memory: MemorySampler, truths: dict, probe: tuple) -> Run:
    run = Run()
    info = requests.get(f"{url}/info/", timeout=60).json()
    options = dict(info["models"]["medsam2"]["config"])
    wait_for_task(url, "scoring", 1800)  # MONAI Label scores the unlabelled images at start-up
    t = time.perf_counter()
    v0 = probe_version(url, *probe)  # loads the model
    print(f"model loaded and first click in {time.perf_counter() - t:.1f} s (version {v0})", flush=True)
    run.rss_ready = memory.sample()[1]
    annotators = make_scenario(truths, options, users=args.users, visits=args.visits, corrections=args.corrections)
    run.annotators = annotators
    evict = (url, *probe, args.cache_entries + 1)
    evict_sessions(*evict)  # also warms the engine up: its first requests after a start cost more

    print(f"alone: {sum(s.kind in INFER_KINDS for a in annotators for s in a.steps)} clicks one at a time ...",
          flush=True)
    run.times["alone"] = time.time()
    run.alone = run_alone(url, annotators, work / "alone")
    run.times["alone_end"] = time.time()

    evict_sessions(*evict)  # nothing the alone phase computed is still cached
    print(f"together: {len(annotators)} users, training {args.train_steps} steps in the background ...", flush=True)
    poller = StatusPoller(url)
    run.times["together"] = time.time()
    if args.train_steps:
        body = {"max_steps": args.train_steps, "val_every": args.train_steps}
        r = requests.post(f"{url}/train/medsam2", json=body, timeout=120)
        run.train = {"answer": r.status_code, "started": wait_training_started(url, 900)}
    poller.start()
    run.times["users"] = time.time()
    run.together, run.submitted, run.hung = run_together(url, annotators, work / "together", run.inflight,
                                                         join_timeout=args.timeout)
    run.times["users_end"] = time.time()
    run.train["status"] = wait_for_task(url, "train", 3600).get("status") if args.train_steps else None
    poller.stop()
    run.polls = poller.polls
    wait_for_task(url, "scoring", 1800)  # MONAI Label scores again after training

    published = next(iter((work / "model" / "finetuned").glob("*.pt")), None)
    publish_time = published.stat().st_mtime if published else None
    run.train.update(published=published is not None, publish_time=publish_time,
                     model_mb=published.stat().st_size / 2**20 if published else 0.0)
    v1 = probe_version(url, *probe)
    run.candidates = {o.key: served_by(o, v0, v1, publish_time) for o in run.together if o.kind in INFER_KINDS}
    rerun = {k for k, c in run.candidates.items() if v1 in c and v1 != v0}
    if rerun:
        print(f"after: {len(rerun)} clicks the new weights may have served, alone again ...", flush=True)
        evict_sessions(*evict)
        run.after = run_alone(url, annotators, work / "after", keys=rerun)
    run.versions = {"before": v0, "after": v1, "still": probe_version(url, *probe)}
    for image, data in run.submitted.items():
        r = requests.get(f"{url}/datastore/label", params={"label": image, "tag": "final"}, timeout=120)
        run.final_reads[image] = r.status_code == 200 and r.content == data
    run.times["end"] = time.time()
    return run


# ------------------------------------------------------------------------------------------- figures


def percentiles(values) -> dict:
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "max": float(v.max()), "mean": float(v.mean())}


def most_at_once(intervals) -> int:
    """The largest number of (start, end) intervals that overlap at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    now = most = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def server_infer_spans(log: Path, t0: float, t1: float) -> list[tuple[float, float]]:
    """(start, end) of each 3D inference the server ran between t0 and t1, from the infer task's log
    line (written when it ends, with its duration rounded to 10 ms: the start is moved 20 ms later so
    that two inferences one after the other do not look overlapping)."""
    spans = []
    for line in log.read_text(errors="replace").splitlines():
        m = INFER_LOG.match(line)
        if m:
            end = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if t0 <= end <= t1 + 1:
                spans.append((min(end, end - float(m.group(2)) + 0.02), end))
    return spans


def judge(args, run: Run, memory: MemorySampler) -> tuple[dict, dict]:
    """(checks, figures) of a run."""
    infers = [o for o in run.together if o.kind in INFER_KINDS]
    references = {run.versions["before"]: run.alone}
    if run.versions["after"] != run.versions["before"]:
        references[run.versions["after"]] = run.after
    identical, byte_identical, by_version, mismatches = 0, 0, {}, []
    for o in infers:
        refs = {v: references.get(v, {}).get(o.key) for v in run.candidates[o.key]}
        match = next((v for v, r in refs.items() if o.ok and r is not None and r.ok and r.voxels == o.voxels), None)
        if match is None:
            mismatches.append({"key": o.key, "ok": o.ok, "candidates": sorted(run.candidates[o.key])})
            continue
        identical += 1
        byte_identical += refs[match].file_sha == o.file_sha
        by_version[match] = by_version.get(match, 0) + 1

    everything = list(run.alone.values()) + run.together + list(run.after.values())
    failed = [o for o in everything if not o.ok]
    polls_failed = [p for p in run.polls if not p["ok"]]
    saves = [o for o in run.together if o.kind == "save_label"]
    reads = [o for o in run.together if o.kind == "read_label"]
    engines = [o.engine for o in everything if o.engine and o.engine.get("cache_mb") is not None]
    cache_mb = max((e["cache_mb"] for e in engines), default=0.0)
    cache_entries = max((e["cache_entries"] for e in engines), default=0)
    session_mb = max((e["cache_mb"] / e["cache_entries"] for e in engines if e["cache_entries"]), default=0.0)
    cache_bound = args.cache_mb + args.infer_concurrency * session_mb
    misses = sum(1 for o in infers if o.engine and o.engine.get("cached_features") is False)

    t = run.times
    rss_after_alone = memory.peak(t["alone"], t["alone_end"])
    rss_peak = memory.peak(t["together"], t["end"])
    work_mb = 4 * 4 * int(np.prod(args.shape)) / 2**20  # one request's logits and masks, float32, a few copies
    model_mb = run.train.get("model_mb", 0.0)
    rss_bound = rss_after_alone + args.infer_concurrency * (session_mb + work_mb) + model_mb + args.rss_slack_mb
    run.infer_spans = server_infer_spans(args.log, t["users"], t["users_end"])

    checks = {
        "no request failed": (
            not failed and not run.hung and not polls_failed and run.train.get("answer", 200) == 200,
            f"{len(failed)} failed of {len(everything)} requests, {len(run.hung)} users hung, {len(polls_failed)} "
            f"of {len(run.polls)} status polls failed"
            + (f"; first: {failed[0].key} {failed[0].error}" if failed else "")),
        "results identical to alone": (
            identical == len(infers) > 0,
            f"{identical} of {len(infers)} click results voxel-identical to the same request alone "
            f"({byte_identical} byte-identical files); by model version: {by_version}"),
        "labels read back intact": (
            all(o.ok for o in saves + reads) and all(run.final_reads.values()) and len(run.final_reads) > 0,
            f"{sum(o.ok for o in saves)} of {len(saves)} saves; {sum(o.ok for o in reads)} of {len(reads)} "
            f"read-backs equal to the bytes submitted; at the end {sum(run.final_reads.values())} of "
            f"{len(run.final_reads)} images"),
        "training ran": (
            not args.train_steps or run.train.get("status") == "DONE",
            f"status {run.train.get('status')}; new weights published: {run.train.get('published')}; model "
            f"version {run.versions['before']} -> {run.versions['after']}"),
        "cache bounded": (
            cache_mb <= cache_bound and cache_entries <= args.cache_entries,
            f"reported up to {cache_mb:.1f} MB (budget {args.cache_mb} MB; bound {cache_bound:.1f} MB = budget + "
            f"{args.infer_concurrency} x {session_mb:.1f} MB session) and {cache_entries} entries (budget "
            f"{args.cache_entries}); {misses} of {len(infers)} clicks together found no cached features"),
        "server memory bounded": (
            rss_peak <= rss_bound,
            f"RSS {run.rss_ready:.0f} MB ready, {rss_after_alone:.0f} MB after alone, peak {rss_peak:.0f} MB "
            f"together (bound {rss_bound:.0f} MB = after alone + {args.infer_concurrency} x ({session_mb:.1f} "
            f"session + {work_mb:.1f} work) + {model_mb:.0f} new model + {args.rss_slack_mb:.0f} slack)"),
    }
    checks = {name: {"ok": bool(ok), "detail": detail} for name, (ok, detail) in checks.items()}

    def by_kind(outcomes):
        kinds: dict[str, list] = {}
        for o in outcomes:
            kinds.setdefault(o.kind, []).append(o.seconds)
        return {k: percentiles(v) for k, v in kinds.items()}

    wall = t["users_end"] - t["users"]
    together_latency = by_kind(o for o in run.together if o.ok)
    together_latency["train_status"] = percentiles(p["seconds"] for p in run.polls if p["ok"])
    figures = {
        "latency": {"together": together_latency, "alone": by_kind(o for o in run.alone.values() if o.ok)},
        "together": {"requests": len(run.together), "clicks": len(infers), "seconds": wall,
                     "requests_per_s": len(run.together) / wall, "clicks_per_min": 60 * len(infers) / wall,
                     "most_in_flight": run.inflight.most, "most_clicks_in_flight": run.inflight.most_infers,
                     "most_infers_executing": most_at_once(run.infer_spans) if run.infer_spans else None},
        "alone": {"clicks": len(run.alone), "seconds": t["alone_end"] - t["alone"]},
        "server_cpu_s_per_click": {
            "alone": memory.cpu_between(t["alone"], t["alone_end"]) / max(1, len(run.alone)),
            "together": memory.cpu_between(t["users"], t["users_end"]) / max(1, len(infers))},
        "machine_load": {"alone": memory.mean_load(t["alone"], t["alone_end"]),
                         "together": memory.mean_load(t["users"], t["users_end"])},
        "train": run.train,
        "model_versions": run.versions,
        "cache": {"max_mb": cache_mb, "max_entries": cache_entries, "session_mb": session_mb,
                  "bound_mb": cache_bound, "misses_together": misses},
        "memory": {"ready_mb": run.rss_ready, "after_alone_mb": rss_after_alone, "peak_together_mb": rss_peak,
                   "bound_mb": rss_bound, "subprocess_peak_mb": memory.peak(t["together"], t["end"], column=2),
                   "samples_s_server_sub_cpu_load": [[round(s[0] - t["alone"], 2), *(round(v, 2) for v in s[1:])]
                                                     for s in memory.samples]},
        "mismatches": mismatches,
    }
    return checks, figures


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(report: dict) -> str:
    s, f = report["setup"], report["figures"]
    lines = [f"{s['users']} users ({s['slicer_users']} Slicer, {s['ohif_users']} OHIF) on {s['images']} images "
             f"{tuple(s['shape'])}, {s['visits']} visits x (1 + {s['corrections']} clicks) each; infer_concurrency "
             f"{s['infer_concurrency']}; cache {s['cache_mb']} MB / {s['cache_entries']} entries; training "
             f"{s['train_steps']} steps in the background; {s['device']}, {s['cpus']} CPUs", "",
             f"{'request (together)':<20}{'n':>5}{'p50 s':>9}{'p90 s':>9}{'p99 s':>9}{'max s':>9}{'alone p50':>11}"]
    for kind, st in f["latency"]["together"].items():
        alone = f["latency"]["alone"].get(kind, {})
        lines.append(f"{kind:<20}{st['n']:>5}{fmt(st.get('p50')):>9}{fmt(st.get('p90')):>9}{fmt(st.get('p99')):>9}"
                     f"{fmt(st.get('max')):>9}{fmt(alone.get('p50')):>11}")
    t, a, cpu, load = f["together"], f["alone"], f["server_cpu_s_per_click"], f["machine_load"]
    lines += ["", f"together: {t['requests']} requests in {t['seconds']:.1f} s = {t['requests_per_s']:.2f} req/s, "
                  f"{t['clicks_per_min']:.1f} clicks/min (alone: {a['clicks']} clicks in {a['seconds']:.1f} s = "
                  f"{60 * a['clicks'] / a['seconds']:.1f} clicks/min)",
              f"held at once: {t['most_in_flight']} requests in flight ({t['most_clicks_in_flight']} clicks); the "
              f"server ran up to {fmt(t['most_infers_executing'], 'd')} inferences at once",
              f"server CPU per click: {cpu['together']:.2f} s together, {cpu['alone']:.2f} s alone (machine load "
              f"average {load['together']:.1f} together, {load['alone']:.1f} alone, on {s['cpus']} CPUs)", ""]
    lines += [f"[{'PASS' if c['ok'] else 'FAIL'}] {name}: {c['detail']}" for name, c in report["checks"].items()]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=8, help="simulated annotators (even: Slicer, odd: OHIF)")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--visits", type=int, default=3, help="images each user works on, one after the other")
    p.add_argument("--corrections", type=int, default=2, help="corrective clicks after each first click")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 32))
    p.add_argument("--checkpoint", default="demo", help="a manifest name or a .pt file (default: the demo model)")
    p.add_argument("--model-config", default=None, help="default: the manifest's (sam2.1_hiera_nano for demo)")
    p.add_argument("--infer-concurrency", type=int, default=2, help="--conf infer_concurrency (app default 2)")
    p.add_argument("--cache-mb", type=int, default=24)
    p.add_argument("--cache-entries", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=2,
                   help="0: no background training; few, so that its weights are published while users work")
    p.add_argument("--train-images", type=int, default=1)
    p.add_argument("--rss-slack-mb", type=float, default=128)
    p.add_argument("--timeout", type=float, default=3600, help="seconds the users may take together")
    p.add_argument("--workdir", default=None, help="default: a temporary folder, removed at the end")
    p.add_argument("--out", default="bench-results/concurrency.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="concurrency-") if args.workdir is None else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    studies, truths, probe = write_studies_for(args, work)
    spec = resolve_spec(args.checkpoint, args.model_config, None, REPO / "model")
    checkpoint, args.model_config = spec.checkpoint, spec.model_config
    conf = {"checkpoint": checkpoint, "model_config": spec.model_config, "model_dir": work / "model",
            "cache_mb": args.cache_mb, "cache_entries": args.cache_entries,
            "infer_concurrency": args.infer_concurrency}
    args.log = work / "server.log"
    print(f"work folder {work}; checkpoint {checkpoint}; server log {args.log}", flush=True)
    url, proc = launch_server(studies, conf, args.log, timeout=300)
    memory = MemorySampler(proc.pid)
    memory.start()
    try:
        run = run_benchmark(args, work, url, memory, truths, probe)
    finally:
        stop_server(proc)
        memory.stop()
    checks, figures = judge(args, run, memory)
    device = next((o.engine.get("device") for o in run.alone.values() if o.engine), None)
    report = {
        "setup": {"users": args.users, "slicer_users": sum(a.app == "slicer" for a in run.annotators),
                  "ohif_users": sum(a.app == "ohif" for a in run.annotators), "images": args.images,
                  "visits": args.visits, "corrections": args.corrections, "shape": list(args.shape),
                  "checkpoint": str(checkpoint), "model_config": args.model_config,
                  "infer_concurrency": args.infer_concurrency, "cache_mb": args.cache_mb,
                  "cache_entries": args.cache_entries, "train_steps": args.train_steps,
                  "train_images": args.train_images, "device": device, "cpus": os.cpu_count(),
                  "platform": platform.platform(), "python": sys.version.split()[0]},
        "ok": all(c["ok"] for c in checks.values()),
        "checks": checks,
        "figures": figures,
        "requests": {"alone": [o.as_dict() for o in run.alone.values()],
                     "together": [o.as_dict() for o in run.together],
                     "after": [o.as_dict() for o in run.after.values()]},
    }
    print(table(report))
    out = Path(args.out)
    write_results(out, report, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
    if tmp is not None:
        tmp.cleanup()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
