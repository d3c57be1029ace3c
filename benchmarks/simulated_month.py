"""A month of periodic fine-tuning through the real server, compressed: labels arrive every day, runs
start by themselves, each candidate is promoted or refused, and the served model's held-out Dice is
measured every day.

    python -m benchmarks.simulated_month                 # 30 days, 2 labels a day, about 15 minutes on 2 cores
    python -m benchmarks.simulated_month --days 10 --out bench-results/month.json

Setup: a studies folder of generated phantoms (`--per-day` new ones a day, `--shape`) plus 3 held-out
phantoms never labelled; `monailabel start_server` on 127.0.0.1 with the demo model, `--conf
train_every` and `--conf auto_train_params` (short runs: `--steps`, validation 25 %). Each simulated
day: the day's labels (the phantoms' true labels) are saved over REST as final labels, the server is
given two schedule checks, a run it started is waited for, and one click on each held-out phantom's
organ measures the served model (Dice). On `--bad-day` a run with a learning rate that diverges is
started by hand (`POST /train`, lr 1.0): it must be refused (never served). Prints one row per day and
writes JSON and a plot (PNG) of the held-out Dice with the promotions and refusals.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from benchmarks.server import launch_server, stop_server, wait_for_task

REPO = Path(__file__).resolve().parent.parent
HELD_OUT_SEEDS = (990, 991, 992)


def held_out_dice(url: str, shape) -> float:
    from medsam2.clicks import interior_point, largest_slice
    from medsam2.phantoms import PHANTOM_LABELS, make_phantom

    scores = []
    for seed in HELD_OUT_SEEDS:
        truth = make_phantom(tuple(shape), seed=seed).label == PHANTOM_LABELS["organ"]
        k = largest_slice(truth)
        x, y = interior_point(truth[:, :, k].T)
        r = requests.post(f"{url}/infer/medsam2", params={"image": f"phantom_{seed}", "output": "image"},
                          data={"params": json.dumps({"foreground": [[x, y, k]], "result_extension": ".nii.gz",
                                                      "client_id": f"month-{time.time()}"})}, timeout=300)
        r.raise_for_status()
        import nibabel as nib

        path = Path(tempfile.mkstemp(suffix=".nii.gz")[1])
        path.write_bytes(r.content)
        pred = np.asarray(nib.load(str(path)).dataobj) > 0
        path.unlink()
        scores.append(2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum()))
    return float(np.mean(scores))


def save_label(url: str, image: str, seed: int, shape, folder: Path) -> None:
    import nibabel as nib

    from medsam2.phantoms import make_phantom

    path = folder / f"{image}.label.nii.gz"
    nib.save(nib.Nifti1Image(make_phantom(tuple(shape), seed=seed).label.astype(np.uint8), np.eye(4)), str(path))
    with open(path, "rb") as f:
        requests.put(f"{url}/datastore/label", params={"image": image, "tag": "final"},
                     files={"label": (path.name, f)}, timeout=60).raise_for_status()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.simulated_month", description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--per-day", type=int, default=2, help="labels saved each day")
    ap.add_argument("--train-every", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60, help="max_steps of each scheduled run")
    ap.add_argument("--bad-day", type=int, default=15, help="the day a diverging run is forced (0: none)")
    ap.add_argument("--shape", type=int, nargs=3, default=(48, 48, 24))
    ap.add_argument("--out", default="bench-results/simulated_month.json")
    args = ap.parse_args(argv)
    from medsam2.demo_model import DEMO_CONFIG
    from medsam2.phantoms import make_phantom, save_nifti

    work = Path(tempfile.mkdtemp(prefix="simulated-month-"))
    studies, labels = work / "studies", work / "labels"
    labels.mkdir(parents=True)
    seeds = [2000 + n for n in range(args.days * args.per_day)]
    for seed in [*seeds, *HELD_OUT_SEEDS]:
        save_nifti(make_phantom(tuple(args.shape), seed=seed), studies / f"phantom_{seed}.nii.gz")
    conf = {"checkpoint": REPO / "model" / "demo" / "medsam2_demo.pt", "model_config": DEMO_CONFIG,
            "model_dir": work / "model", "train_every": args.train_every, "encoder_runtime": "torch",
            "auto_train_params": json.dumps({"max_steps": args.steps, "clip_len": 6, "val_split": 0.25,
                                             "val_every": max(1, args.steps // 3)},
                                            separators=(",", ":"))}  # no spaces: the monailabel script splits on them
    url, proc = launch_server(studies, conf, work / "server.log", {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    rows = []
    try:
        rows.append({"day": 0, "labels": 0, "dice": round(held_out_dice(url, args.shape), 4), "served": "base",
                     "event": ""})
        for day in range(1, args.days + 1):
            for seed in seeds[(day - 1) * args.per_day: day * args.per_day]:
                save_label(url, f"phantom_{seed}", seed, args.shape, labels)
            before = requests.get(f"{url}/model/medsam2/versions", timeout=30).json()
            event = ""
            if day == args.bad_day:
                requests.post(f"{url}/train/medsam2", json={"max_steps": 20, "lr": 1.0, "val_split": 0.25},
                              timeout=60).raise_for_status()
                event = "forced lr 1.0: "
            time.sleep(12)  # the schedule's checks (every 5 s)
            status = wait_for_task(url, "train", 1800)
            stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["medsam2"]
            after = requests.get(f"{url}/model/medsam2/versions", timeout=30).json()
            ran = status.get("start_ts") and status.get("start_ts") != (rows[-1].get("run_ts") or "")
            if ran:
                event += (f"promoted {after['served']} (Dice {stats.get('best_val_dice'):.3f} vs served "
                          f"{stats.get('initial_val_dice'):.3f})" if after["served"] != before["served"]
                          else f"refused: {stats.get('not_promoted') or stats.get('error') or stats.get('status')}")
            rows.append({"day": day, "labels": day * args.per_day, "dice": round(held_out_dice(url, args.shape), 4),
                         "served": after["served"], "event": event, "run_ts": status.get("start_ts")})
            print(f"day {day:2d}: {day * args.per_day:3d} labels, held-out Dice {rows[-1]['dice']:.3f}, "
                  f"served {after['served']} {event}", flush=True)
        versions = requests.get(f"{url}/model/medsam2/versions", timeout=30).json()
    finally:
        stop_server(proc)
    promoted = [r for r in rows if r["event"].startswith("promoted") or " promoted" in r["event"]]
    refused = [r for r in rows if "refused" in r["event"]]
    print(f"\n{len(promoted)} versions promoted, {len(refused)} candidates refused; "
          f"held-out Dice {rows[0]['dice']:.3f} on day 0, {rows[-1]['dice']:.3f} on day {rows[-1]['day']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "days": rows, "versions": versions}, indent=1, default=str))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot([r["day"] for r in rows], [r["dice"] for r in rows], "-", color="grey", label="served model")
        ax.plot([r["day"] for r in promoted], [r["dice"] for r in promoted], "o", color="green", label="promoted")
        ax.plot([r["day"] for r in refused], [r["dice"] for r in refused], "x", color="red", label="refused")
        ax.set_xlabel("day")
        ax.set_ylabel("held-out one-click Dice (organ)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
    except Exception as e:  # noqa: BLE001 (the table and JSON are the result)
        print(f"no plot: {e}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
