"""How often `stop_after_empty N` cuts a structure short, and what it saves, with the demo model.

A direction stops after N consecutive slices without the structure (`--conf stop_after_empty`); a
structure that fades or leaves for N slices and comes back is then lost beyond the gap. Runs
`python -m medsam2.evaluate run` on the generated sets (phantoms; twins with gaps of 2-4 and of 7-10
slices; fading phantoms; the MNI152 brain) with one click on the largest slice and one near the
structure's end, for each N, and compares every structure with its N = 0 result: "cut short" counts
structures whose prediction covers fewer slices on a side where the truth goes on, with their mean
Dice loss; the time is the inference time summed over the structures (encoding included where a
stop spares it).

  python -m benchmarks.stop_after_empty              # about 8 minutes on 2 cores
  python -m benchmarks.stop_after_empty --n 0 3 5

Writes bench-results/stop_after_empty.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.evaluation_runs import SETS, add_common_arguments, report, run_on_set  # noqa: E402

PROTOCOLS = {"click": ["--protocol", "click"], "click, end": ["--protocol", "click", "--key-slice", "end"]}
DEFAULT_SETS = ["phantoms", "twins+gap", "twins+gap+long", "phantom+fade", "mni152"]


def cut_short(record: dict, base: dict) -> bool:
    """Fewer slices than without stopping on a side where the truth goes on past the prediction."""
    return any(record[f"slices_{side}"] < base[f"slices_{side}"]
               and record[f"slices_{side}"] < record[f"truth_slices_{side}"] for side in ("before", "after"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[0, 2, 3, 5, 8], help="values of stop_after_empty (0 first)")
    ap.add_argument("--sets", nargs="+", default=DEFAULT_SETS, choices=list(SETS))
    add_common_arguments(ap, REPO / "bench-results" / "stop_after_empty.json")
    args = ap.parse_args(argv)
    ns = [0] + [n for n in args.n if n != 0]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stop-after-empty-"))
    rows = []
    for name in args.sets:
        for protocol, protocol_args in PROTOCOLS.items():
            base = None
            for n in ns:
                tag = f"{protocol}_stop{n}"
                done = run_on_set(work, name, tag, [*protocol_args, "--stop-after-empty", str(n)], args.checkpoint,
                                  args.model_config)
                if done is None:
                    return 1
                records = {(r["case"], r["structure"]): r
                           for r in json.loads((done[2] / "cases.json").read_text())["records"]}
                base = base or records
                short = [k for k, r in records.items() if cut_short(r, base[k])]
                summary = next(r for r in done[0] if r["structure"] == "all")
                rows.append({"set": name, "protocol": protocol, "n": n, "structures": len(records),
                             "dice_mean": summary["dice_mean"], "cut_short": len(short),
                             "dice_loss_cut": (sum(base[k]["dice"] - records[k]["dice"] for k in short) / len(short)
                                               if short else 0.0),
                             "seconds": round(sum(r["seconds"] for r in records.values()), 1),
                             "base_seconds": round(sum(r["seconds"] for r in base.values()), 1)})
    head = ["set", "protocol", "N", "structures", "Dice", "cut short", "Dice lost (cut)", "inference s (N=0)"]
    lines = [head] + [[r["set"], r["protocol"], str(r["n"]), str(r["structures"]), f"{r['dice_mean']:.3f}",
                       str(r["cut_short"]), f"{r['dice_loss_cut']:.3f}", f"{r['seconds']} ({r['base_seconds']})"]
                      for r in rows]
    report(lines, rows, args.out, args.checkpoint, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
