"""Tables and a plot from the benchmark's records: what a paper's per-structure Dice table shows.

Final values are those after a structure's last interaction. A structure whose prediction became
exact before the protocol's last correction keeps its last value for the remaining interactions
(the clinician stops), which is how the Dice-vs-interactions curve is filled.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

ALL = "all"
SUMMARY_FIELDS = ["policy", "structure", "cases", "interactions", "dice_first_mean", "dice_mean", "dice_median",
                  "nsd_mean", "nsd_median", "seconds_per_interaction", "slices_before_mean", "slices_after_mean",
                  "truth_slices_before_mean", "truth_slices_after_mean"]
CASE_FIELDS = ["case", "structure", "policy", "interaction", "kind", "k", "i", "j", "box", "dice", "nsd", "seconds",
               "encode_s", "slices_before", "slices_after", "truth_slices_before", "truth_slices_after",
               "truth_voxels", "pred_voxels", "spacing"]


def _runs(records: list[dict]) -> dict[tuple, list[dict]]:
    """(policy, structure, case) -> that run's records in interaction order."""
    runs: dict[tuple, list[dict]] = {}
    for r in records:
        runs.setdefault((r["policy"], r["structure"], r["case"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["interaction"]) for k, v in runs.items()}


def dice_curve(run: list[dict], n: int) -> list[float]:
    """Dice after 1..n interactions, the last value carried forward."""
    values = [r["dice"] for r in run][:n]
    return values + [values[-1]] * (n - len(values))


def _mean(xs) -> float:
    return round(float(np.mean(xs)), 4) if len(xs) else float("nan")


def _median(xs) -> float:
    return round(float(np.median(xs)), 4) if len(xs) else float("nan")


def summarize(records: list[dict], interactions: int) -> list[dict]:
    """One row per (policy, structure) and per (policy, "all"), in first-seen order."""
    runs = _runs(records)
    policies = list(dict.fromkeys(p for p, _, _ in runs))
    structures = list(dict.fromkeys(s for _, s, _ in runs))
    rows = []
    for policy in policies:
        for structure in structures + [ALL]:
            group = [run for (p, s, _), run in runs.items() if p == policy and structure in (s, ALL)]
            if group:
                rows.append(_summary_row(policy, structure, group, interactions))
    return rows


def _summary_row(policy: str, structure: str, group: list[list[dict]], interactions: int) -> dict:
    final = [run[-1] for run in group]
    every = [r for run in group for r in run]
    curves = np.array([dice_curve(run, interactions) for run in group])
    return {
        "policy": policy, "structure": structure, "cases": len(group),
        "interactions": _mean([len(run) for run in group]),
        "dice_first_mean": _mean([run[0]["dice"] for run in group]),
        "dice_mean": _mean([r["dice"] for r in final]), "dice_median": _median([r["dice"] for r in final]),
        "nsd_mean": _mean([r["nsd"] for r in final]), "nsd_median": _median([r["nsd"] for r in final]),
        "seconds_per_interaction": _mean([r["seconds"] for r in every]),
        **{f"{k}_mean": _mean([r[k] for r in final])
           for k in ("slices_before", "slices_after", "truth_slices_before", "truth_slices_after")},
        "dice_by_interaction": [round(float(v), 4) for v in curves.mean(axis=0)],
    }


def format_table(rows: list[dict]) -> str:
    """The summary as a fixed-width text table (Dice/NSD after the last interaction)."""
    head = ["policy", "structure", "n", "Dice@1", "Dice mean", "Dice med", "NSD mean", "NSD med", "s/interaction",
            "slices before/after (truth)"]
    lines = [[r["policy"], r["structure"], str(r["cases"]), f"{r['dice_first_mean']:.3f}", f"{r['dice_mean']:.3f}",
              f"{r['dice_median']:.3f}", f"{r['nsd_mean']:.3f}", f"{r['nsd_median']:.3f}",
              f"{r['seconds_per_interaction']:.2f}",
              f"{r['slices_before_mean']:.1f}/{r['slices_after_mean']:.1f} "
              f"({r['truth_slices_before_mean']:.1f}/{r['truth_slices_after_mean']:.1f})"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if n < 2 else c.rjust(w) for n, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in r.items()})
    return Path(path)


def plot_dice_curves(path: Path, rows: list[dict], title: str = "") -> Path:
    """Mean Dice against number of interactions: one panel per structure, one line per memory policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    structures = list(dict.fromkeys(r["structure"] for r in rows))
    fig, axes = plt.subplots(1, len(structures), figsize=(3.6 * len(structures), 3.4), squeeze=False, sharey=True)
    for ax, structure in zip(axes[0], structures):
        for r in (r for r in rows if r["structure"] == structure):
            ys = r["dice_by_interaction"]
            ax.plot(range(1, len(ys) + 1), ys, marker="o", label=r["policy"])
        ax.set_title(f"{structure} (n={next(r['cases'] for r in rows if r['structure'] == structure)})")
        ax.set_xlabel("interactions")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel("mean Dice")
    axes[0][-1].legend(title="memory policy", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_report(outdir: Path, records: list[dict], rows: list[dict], config: dict) -> dict[str, Path]:
    """summary.json (config + summary), summary.csv, cases.json, cases.csv, dice_vs_interactions.png."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {name: outdir / name for name in
             ("summary.json", "summary.csv", "cases.json", "cases.csv", "dice_vs_interactions.png")}
    paths["summary.json"].write_text(json.dumps({"config": config, "summary": rows}, indent=2) + "\n")
    paths["cases.json"].write_text(json.dumps({"config": config, "records": records}, indent=1) + "\n")
    write_csv(paths["summary.csv"], rows, SUMMARY_FIELDS + ["dice_by_interaction"])
    write_csv(paths["cases.csv"], records, CASE_FIELDS)
    plot_dice_curves(paths["dice_vs_interactions.png"], rows, config.get("protocol", ""))
    return paths
