"""Tables and a plot from the benchmark's records: what a paper's per-structure Dice table shows.

Final values are those after a structure's last interaction. A structure whose prediction became
exact before the protocol's last correction keeps its last value for the remaining interactions
(the clinician stops), which is how the Dice-vs-interactions curve is filled. DSC_AUC and NSD_AUC
are the areas under those curves (trapezoid rule, one unit per interaction: at most interactions - 1),
as the CVPR 2025 interactive 3D challenge reports them. With a time limit (cvpr25: 90 s), a structure
whose inferences took longer in total scores 0 on every metric and is counted in `over_time`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

ALL = "all"
SUMMARY_FIELDS = ["policy", "structure", "cases", "interactions", "dice_first_mean", "dice_mean", "dice_median",
                  "nsd_mean", "nsd_median", "dice_auc_mean", "nsd_auc_mean", "over_time", "seconds_per_interaction",
                  "dice_before_mean", "dice_after_mean", "other_covered_mean", "slices_before_mean", "slices_after_mean",
                  "truth_slices_before_mean", "truth_slices_after_mean"]
CASE_FIELDS = ["case", "structure", "policy", "interaction", "kind", "k", "i", "j", "box", "slices", "dice", "nsd",
               "dice_before", "dice_after", "other_covered", "seconds", "encode_s", "slices_before", "slices_after", "truth_slices_before", "truth_slices_after",
               "truth_voxels", "pred_voxels", "spacing"]


def _runs(records: list[dict]) -> dict[tuple, list[dict]]:
    """(policy, structure, case) -> that run's records in interaction order."""
    runs: dict[tuple, list[dict]] = {}
    for r in records:
        runs.setdefault((r["policy"], r["structure"], r["case"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["interaction"]) for k, v in runs.items()}


def dice_curve(run: list[dict], n: int, metric: str = "dice") -> list[float]:
    """Dice (or another metric) after 1..n interactions, the last value carried forward."""
    values = [r[metric] for r in run][:n]
    return values + [values[-1]] * (n - len(values))


def over_time(run: list[dict], time_limit_s: float | None) -> bool:
    return time_limit_s is not None and sum(r["seconds"] for r in run) > time_limit_s


def auc(curve) -> float:
    """Area under a per-interaction curve, trapezoid rule with unit steps."""
    ys = np.asarray(curve, dtype=float)
    return float(((ys[1:] + ys[:-1]) / 2).sum()) if len(ys) > 1 else float("nan")


def _mean(xs) -> float:
    return round(float(np.mean(xs)), 4) if len(xs) else float("nan")


def _median(xs) -> float:
    return round(float(np.median(xs)), 4) if len(xs) else float("nan")


def summarize(records: list[dict], interactions: int, time_limit_s: float | None = None) -> list[dict]:
    """One row per (policy, structure) and per (policy, "all"), in first-seen order."""
    runs = _runs(records)
    policies = list(dict.fromkeys(p for p, _, _ in runs))
    structures = list(dict.fromkeys(s for _, s, _ in runs))
    rows = []
    for policy in policies:
        for structure in structures + [ALL]:
            group = [run for (p, s, _), run in runs.items() if p == policy and structure in (s, ALL)]
            if group:
                rows.append(_summary_row(policy, structure, group, interactions, time_limit_s))
    return rows


def _summary_row(policy: str, structure: str, group: list[list[dict]], interactions: int,
                 time_limit_s: float | None = None) -> dict:
    late = [over_time(run, time_limit_s) for run in group]
    final = [run[-1] for run in group]
    every = [r for run in group for r in run]

    def scored(metric):  # the final value, 0 for a structure over the time limit
        return [0.0 if lt else r.get(metric, float("nan")) for lt, r in zip(late, final)]

    def curves(metric):  # per interaction, all 0 for a structure over the time limit
        return np.array([[0.0] * interactions if lt else dice_curve(run, interactions, metric)
                         for lt, run in zip(late, group)])

    dice_curves, nsd_curves = curves("dice"), curves("nsd")
    return {
        "policy": policy, "structure": structure, "cases": len(group),
        "interactions": _mean([len(run) for run in group]),
        "dice_first_mean": _mean([0.0 if lt else run[0]["dice"] for lt, run in zip(late, group)]),
        "dice_mean": _mean(scored("dice")), "dice_median": _median(scored("dice")),
        "nsd_mean": _mean(scored("nsd")), "nsd_median": _median(scored("nsd")),
        "dice_auc_mean": _mean([auc(c) for c in dice_curves]) if interactions > 1 else None,
        "nsd_auc_mean": _mean([auc(c) for c in nsd_curves]) if interactions > 1 else None,
        "over_time": int(sum(late)),
        "seconds_per_interaction": _mean([r["seconds"] for r in every]),
        **{f"{k}_mean": _mean([r[k] for r in final])
           for k in ("slices_before", "slices_after", "truth_slices_before", "truth_slices_after")},
        **{f"{k}_mean": _mean([v for v in scored(k) if v == v]) for k in ("dice_before", "dice_after", "other_covered")},
        "dice_by_interaction": [round(float(v), 4) for v in dice_curves.mean(axis=0)],
        "nsd_by_interaction": [round(float(v), 4) for v in nsd_curves.mean(axis=0)],
    }


def _cell(value, fmt="{:.3f}") -> str:
    return "-" if value is None or value != value else fmt.format(value)


def format_table(rows: list[dict]) -> str:
    """The summary as a fixed-width text table (Dice/NSD after the last interaction; AUC columns and
    the count over the time limit when the protocol has corrections / a limit)."""
    aucs = any(r.get("dice_auc_mean") is not None for r in rows)
    limited = any(r.get("over_time") for r in rows)
    head = ["policy", "structure", "n", "Dice@1", "Dice mean", "Dice med", "NSD mean", "NSD med"]
    head += ["DSC_AUC", "NSD_AUC"] if aucs else []
    head += ["over time"] if limited else []
    head += ["Dice before/after", "other covered", "s/interaction", "slices before/after (truth)"]
    lines = []
    for r in rows:
        cells = [r["policy"], r["structure"], str(r["cases"]), _cell(r["dice_first_mean"]), _cell(r["dice_mean"]),
                 _cell(r["dice_median"]), _cell(r["nsd_mean"]), _cell(r["nsd_median"])]
        cells += [_cell(r.get("dice_auc_mean")), _cell(r.get("nsd_auc_mean"))] if aucs else []
        cells += [str(r.get("over_time", 0))] if limited else []
        cells += [f"{_cell(r.get('dice_before_mean'))}/{_cell(r.get('dice_after_mean'))}",
                  _cell(r.get("other_covered_mean")), _cell(r["seconds_per_interaction"], "{:.2f}"),
                  f"{r['slices_before_mean']:.1f}/{r['slices_after_mean']:.1f} "
                  f"({r['truth_slices_before_mean']:.1f}/{r['truth_slices_after_mean']:.1f})"]
        lines.append(cells)
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
