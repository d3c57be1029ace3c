"""fifo (SAM 2's memory) against self_sorting (MedSAM-2's bank), where memory matters.

Writes the evaluation sets the project generates (phantoms; twins; fading, gap and drifting twins,
whose fade or gap lasts 2-4 slices, or with +long 7-10, longer than SAM 2's 6 recent memories;
fading phantoms; MNI152), runs `python -m medsam2.evaluate run` on each with both policies, with one
click on the slice where the structure is largest (`click`) and on one near its end (`click, end`:
propagation must carry it almost all the way one way), and prints one table: mean Dice per policy,
the difference, Dice before/after the click and the share of other structures covered. The
evaluation's own outputs (per case, per structure, plots) stay in the work folder.

  python -m benchmarks.memory_policies                       # the demo model, about 3 minutes on 2 cores
  python -m benchmarks.memory_policies --checkpoint medsam2  # any checkpoint the evaluation takes

Writes bench-results/memory_policies.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.evaluation_runs import SETS, add_common_arguments, report, run_on_set  # noqa: E402

PROTOCOLS = {"click": ["--protocol", "click"], "click, end": ["--protocol", "click", "--key-slice", "end"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", nargs="+", default=["fifo", "self_sorting"])
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    add_common_arguments(ap, REPO / "bench-results" / "memory_policies.json")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="memory-policies-"))
    rows = []
    for name in args.sets:
        for protocol in args.protocols:
            done = run_on_set(work, name, protocol, ["--policy", *args.policies, *PROTOCOLS[protocol]],
                              args.checkpoint, args.model_config)
            if done is None:
                return 1
            summary = {r["policy"]: r for r in done[0] if r["structure"] == "all"}
            rows.append({"set": name, "protocol": protocol, "cases": summary[args.policies[0]]["cases"],
                         "seconds": done[1],
                         **{p: {k: summary[p][k] for k in ("dice_mean", "nsd_mean", "dice_before_mean",
                                                           "dice_after_mean", "other_covered_mean")}
                            for p in args.policies}})
    a, b = args.policies[0], args.policies[-1]
    head = ["set", "protocol", "n", f"{a} Dice", f"{b} Dice", f"{b} - {a}", f"{a} / {b} before|after",
            f"{a} / {b} other covered"]
    lines = [head]
    for r in rows:
        def f(p, k):
            v = r[p][k]
            return "-" if v is None or v != v else f"{v:.3f}"
        lines.append([r["set"], r["protocol"], str(r["cases"]), f(a, "dice_mean"), f(b, "dice_mean"),
                      f"{r[b]['dice_mean'] - r[a]['dice_mean']:+.3f}",
                      f"{f(a, 'dice_before_mean')}|{f(a, 'dice_after_mean')} / "
                      f"{f(b, 'dice_before_mean')}|{f(b, 'dice_after_mean')}",
                      f"{f(a, 'other_covered_mean')} / {f(b, 'other_covered_mean')}"])
    report(lines, rows, args.out, args.checkpoint, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
