"""Learning curve on real anatomy, through the server: held-out one-click Dice against the number of
labelled structures.

`python -m benchmarks.learning_curve [--counts 0 1 2 4 8] [--train-params '{"draw": "image"}'] [--out FILE]`

For each count N a fresh server starts from the demo model on a datastore of three real volumes
(medsam2/evaluation/real_data.py, each cropped to its structures plus 10 mm):
- the chest CT's lungs;
- Colin27's subcortical structures;
- the head CT's skull and head.

The first N structures of POOL are saved as final labels over REST, one label file per image, as a
client saves them. Then `POST /train/medsam2` runs with its defaults, except `val_split` 0 (with so
few images a validation image would hold labelled structures out of training). After it, every
structure is clicked once: the interior point of its largest slice, `POST /infer/medsam2`, 3D Dice.

Three groups of structures are reported:
- the labelled ones;
- their held-out counterparts on the other side (COUNTERPARTS);
- those never labelled at any N (NEVER).

The benchmark prints a table (with each training run's seconds and steps: fewer steps than `/train`'s
default where its 14 minutes could not hold them) and writes JSON. Each run is one default-length training run, up to
14 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests

from benchmarks.results import write_results
from benchmarks.server import launch_server, stop_server, wait_for_task
from medsam2.clicks import interior_point, largest_slice
from medsam2.evaluation import real_data

REPO = Path(__file__).resolve().parent.parent
POOL = [("chest", "lung_left"), ("colin27", "Caudate_L"), ("colin27", "Thalamus_L"), ("colin27", "Putamen_L"),
        ("colin27", "Hippocampus_L"), ("colin27", "Pallidum_L"), ("colin27", "Amygdala_L"), ("cranium", "skull")]
COUNTERPARTS = [("chest", "lung_right"), ("colin27", "Caudate_R"), ("colin27", "Thalamus_R"),
                ("colin27", "Putamen_R"), ("colin27", "Hippocampus_R"), ("colin27", "Pallidum_R"),
                ("colin27", "Amygdala_R")]
NEVER = [("cranium", "head")]


def volumes() -> dict[str, real_data.RealVolume]:
    chest = real_data.chest_ct()
    colin = real_data.colin27()
    cranium = real_data.cranium()
    return {"chest": real_data.crop_to(chest, list(chest.structures.values())),
            "colin27": real_data.crop_to(colin, list(colin.structures.values())),
            "cranium": cranium}


def one_click_dice(url: str, image: str, truth: np.ndarray, folder: Path) -> float:
    k = largest_slice(truth)
    x, y = interior_point(truth[:, :, k].T)
    r = requests.post(f"{url}/infer/medsam2", params={"image": image, "output": "image"},
                      files={"params": (None, json.dumps({"foreground": [[x, y, k]], "result_extension": ".nii.gz"}))},
                      timeout=600)
    r.raise_for_status()
    (folder / "answer.nii.gz").write_bytes(r.content)
    pred = np.asarray(nib.load(str(folder / "answer.nii.gz")).dataobj) > 0
    return float(2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum()))


def run_count(n: int, vols: dict, workdir: Path, steps: int | None, params: dict | None = None,
              keep: Path | None = None) -> dict:
    studies, model_dir = workdir / "studies", workdir / "model"
    studies.mkdir(parents=True)
    for name, v in vols.items():
        nib.save(nib.Nifti1Image(v.image.astype(np.int16), v.affine), str(studies / f"{name}.nii.gz"))
    demo = REPO / "model" / "demo" / "medsam2_demo.pt"  # by path: the model folder is a fresh one
    url, proc = launch_server(studies, {"checkpoint": demo, "model_dir": model_dir}, workdir / "server.log",
                              {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    result = {"labelled": POOL[:n], "train_seconds": 0.0, "train_params": params or {}}
    try:
        for image in sorted({img for img, _ in POOL[:n]}):
            names = [s for img, s in POOL[:n] if img == image]
            v = vols[image]
            label = np.zeros(v.label.shape, np.uint8)
            for m, s in enumerate(names, 1):
                label[v.label == v.structures[s]] = m
            path = workdir / f"{image}_label.nii.gz"
            nib.save(nib.Nifti1Image(label, v.affine), str(path))
            r = requests.put(f"{url}/datastore/label", params={"image": image, "tag": "final"},
                             files={"params": (None, json.dumps({"label_info": [{"name": s} for s in names]})),
                                    "label": (path.name, path.read_bytes())}, timeout=300)
            r.raise_for_status()
        if n:
            t0 = time.time()
            body = {"val_split": 0, "seed": 0, **({"max_steps": steps} if steps else {}), **(params or {})}
            requests.post(f"{url}/train/medsam2", json=body, timeout=60).raise_for_status()
            status = wait_for_task(url, "train", 3600, every=5)
            result["train_seconds"] = round(time.time() - t0, 1)
            result["train_status"] = status.get("status")
            # the steps the run made: fewer than /train's default where its time limit could not hold them
            stats = requests.get(f"{url}/info/", timeout=60).json()["train_stats"]["medsam2"]
            result["train_steps"] = stats.get("steps")
            if keep:  # the published weights, for a closer look (benchmarks.fine_tune_tracking.breakdown)
                keep.mkdir(parents=True, exist_ok=True)
                for published in (model_dir / "finetuned").glob("*.pt"):
                    shutil.copy(published, keep / f"{n}_{published.name}")
        result["dice"] = {f"{image}/{s}": round(one_click_dice(url, image, vols[image].label == vols[image].structures[s],
                                                               workdir), 3)
                          for image, s in POOL + COUNTERPARTS + NEVER}
    finally:
        stop_server(proc)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: /train's own default)")
    ap.add_argument("--train-params", type=json.loads, default={},
                    help='other /train request params, as JSON: \'{"draw": "structure"}\'')
    ap.add_argument("--keep", type=Path, help="a folder to keep each run's published weights in (N_<name>.pt)")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "learning_curve.json")
    args = ap.parse_args(argv)
    vols = volumes()
    runs = {}
    for n in args.counts:
        with tempfile.TemporaryDirectory(prefix=f"learning-{n}-") as tmp:
            runs[n] = run_count(n, vols, Path(tmp), args.steps, args.train_params, args.keep)
        print(json.dumps({"count": n, **runs[n]}), flush=True)
    write_results(args.out, {str(n): r for n, r in runs.items()})
    print(table(runs))
    return 0


def table(runs: dict) -> str:
    groups = {"labelled so far": None, "counterparts (never labelled)": COUNTERPARTS, "never labelled": NEVER}
    lines = [f"{'labelled':>9} {'train s':>8} {'steps':>6}  " + "  ".join(f"{g:>30}" for g in groups)]
    for n, r in runs.items():
        cells = []
        for g, members in groups.items():
            keys = [f"{i}/{s}" for i, s in (POOL[:n] if members is None else members)]
            if members is COUNTERPARTS:  # counterparts of what was labelled
                keys = [f"{i}/{s}" for (i, s) in COUNTERPARTS[:min(n, len(COUNTERPARTS))]] or keys
            vals = [r["dice"][k] for k in keys]
            cells.append(f"{np.mean(vals):30.3f}" if vals else f"{'-':>30}")
        lines.append(f"{n:>9} {r['train_seconds']:>8} {str(r.get('train_steps') or '-'):>6}  " + "  ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
