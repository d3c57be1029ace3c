"""Load test: simulated annotators against 1 replica and against N replicas behind nginx (127.0.0.1).

    python -m benchmarks.replicas_load                       # 12 annotators on 6 images, 1 vs 2 replicas
    python -m benchmarks.replicas_load --replicas 1,2,3 --out bench-results/replicas_load.json

Each annotator works on `--visits` images one after the other (annotator u starts on image u mod
images): a first click on the organ's middle slice, then `--corrections` corrective clicks (background
clicks in the vessel, then foreground clicks), each request carrying every click so far, as OHIF and
Slicer do. All annotators start at once. For each cluster size the script starts
`scripts/replicas.py` (nginx and the replicas; with 1 replica nginx is still in front), runs the
annotators, and stops it. Reported per cluster size: p50/p95 latency per request, errors (must be 0),
answers equal to the same click sent alone to a lone server (its objects: slices per label), the share
of corrective clicks that found their image's features already encoded (`cached_features`, the
routing working: must be the same for every size), and requests per replica. Bounded: every request
has a timeout and the whole run `--timeout`. On 2 CPU cores this measures correctness and routing,
not throughput: replicas share the same cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from benchmarks.server import launch_replicas, stop_server
from benchmarks.results import write_results

REPO = Path(__file__).resolve().parent.parent


def clicks_for(image_seed: int, corrections: int, shape) -> list[dict]:
    """The requests of one visit: the first click, then each correction added to what was sent before."""
    from medsam2.clicks import interior_point
    from medsam2.phantoms import PHANTOM_LABELS, make_phantom

    ph = make_phantom(tuple(shape), seed=image_seed)
    organ = ph.label == PHANTOM_LABELS["organ"]
    k = int(organ.any(axis=(0, 1)).nonzero()[0].mean())
    x, y = interior_point(organ[:, :, k].T)
    fg, bg = [[x, y, k]], []
    requests_ = [{"foreground": list(fg), "background": [], "label": "organ"}]
    vessel = ph.label == PHANTOM_LABELS["vessel"]
    for n in range(corrections):
        kk = max(0, min(shape[2] - 1, k + (n + 1) * 2 * (-1) ** n))
        if n % 2 == 0 and vessel[:, :, kk].any():
            vx, vy = interior_point(vessel[:, :, kk].T)
            bg.append([vx, vy, kk])
        elif organ[:, :, kk].any():
            ox, oy = interior_point(organ[:, :, kk].T)
            fg.append([ox, oy, kk])
        requests_.append({"foreground": list(fg), "background": list(bg), "label": "organ"})
    return requests_


def infer(url: str, image: str, params: dict, client: str, timeout: float = 300) -> dict:
    t0 = time.perf_counter()
    try:
        r = requests.post(f"{url}/infer/medsam2", params={"image": image, "output": "json"},
                          data={"params": json.dumps({**params, "client_id": client})}, timeout=timeout)
    except requests.RequestException as e:
        return {"ok": False, "error": str(e), "seconds": time.perf_counter() - t0}
    out = {"ok": r.status_code == 200, "status": r.status_code, "seconds": time.perf_counter() - t0,
           "replica": r.headers.get("X-Replica")}
    if r.status_code == 200:
        body = r.json()
        out.update(objects=[(o["label"], o["slices"], o["slice_count"]) for o in body["objects"]],
                   cached=body["engine"]["cached_features"])
    else:
        out["error"] = r.text[:300]
    return out


def run_annotators(url: str, plan: dict, users: int, deadline: float) -> list[dict]:
    records, lock = [], threading.Lock()

    def annotator(u: int):
        for image, visit in plan[u]:
            for n, params in enumerate(visit):
                if time.time() > deadline:
                    return
                out = infer(url, image, params, client=f"user{u}")
                with lock:
                    records.append({"user": u, "image": image, "step": n, **out})

    threads = [threading.Thread(target=annotator, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.replicas_load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--visits", type=int, default=2)
    ap.add_argument("--corrections", type=int, default=2)
    ap.add_argument("--replicas", default="1,2", help="cluster sizes to compare")
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 64, 32))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default="bench-results/replicas_load.json")
    args = ap.parse_args(argv)
    from medsam2.demo_model import DEMO_CONFIG
    from medsam2.phantoms import write_studies

    work = Path(tempfile.mkdtemp(prefix="replicas-load-"))
    studies = work / "studies"
    write_studies(studies, args.images, shape=tuple(args.shape), seed=600)
    images = [f"phantom_{600 + i}" for i in range(args.images)]
    visits = {image: clicks_for(600 + i, args.corrections, args.shape) for i, image in enumerate(images)}
    plan = {u: [(images[(u + v) % len(images)], visits[images[(u + v) % len(images)]]) for v in range(args.visits)]
            for u in range(args.users)}
    demo = REPO / "model" / "demo" / "medsam2_demo.pt"  # a file: each run's fresh model folder has no manifest
    conf = ["--conf", "checkpoint", str(demo), "--conf", "model_config", DEMO_CONFIG, "--conf", "encoder_runtime", "torch",
            "--conf", "precision", "fp32", "--conf", "cache_entries", "16"]
    results = {}
    reference: dict = {}
    for n in [int(v) for v in args.replicas.split(",")]:
        run_dir = work / f"run{n}"
        run_dir.mkdir()
        url, proc = launch_replicas(studies, conf + ["--conf", "model_dir", str(work / f"model{n}")], run_dir, n,
                                    env_extra={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
        try:
            if not reference:  # every distinct request alone, on the lone server: the reference answers
                for image, visit in visits.items():
                    for k, params in enumerate(visit):
                        reference[(image, k)] = infer(url, image, params, client="reference")["objects"]
            t0 = time.time()
            records = run_annotators(url, plan, args.users, t0 + args.timeout)
            wall = time.time() - t0
        finally:
            stop_server(proc)
        ok = [r for r in records if r["ok"]]
        seconds = sorted(r["seconds"] for r in ok)
        corrective = [r for r in ok if r["step"] > 0]
        results[n] = {
            "requests": len(records), "errors": len(records) - len(ok), "wall_s": round(wall, 1),
            "p50_s": round(statistics.median(seconds), 3) if seconds else None,
            "p95_s": round(seconds[int(0.95 * (len(seconds) - 1))], 3) if seconds else None,
            "equal_to_alone": sum(r["objects"] == reference[(r["image"], r["step"])] for r in ok),
            "corrective_found_encoded": round(sum(r["cached"] for r in corrective) / max(1, len(corrective)), 3),
            "per_replica": {name: sum(r["replica"] == name for r in ok) for name in sorted({r["replica"] for r in ok})},
            "image_owners": {image: sorted({r["replica"] for r in ok if r["image"] == image}) for image in images},
        }
    print(f"{args.users} annotators, {args.images} images, {args.visits} visits each, 1 + {args.corrections} "
          f"requests per visit; 2 CPU cores shared by every replica")
    print("| replicas | requests | errors | p50 s | p95 s | equal to alone | corrective clicks on encoded features "
          "| requests per replica | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n} | {r['requests']} | {r['errors']} | {r['p50_s']} | {r['p95_s']} | {r['equal_to_alone']}/"
              f"{r['requests'] - r['errors']} | {r['corrective_found_encoded']:.0%} | {r['per_replica']} | {r['wall_s']} |")
    out = Path(args.out)
    write_results(out, {"args": vars(args), "results": results}, default=str)
    bad = any(r["errors"] or r["equal_to_alone"] != r["requests"] for r in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
