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
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medsam2 import evaluate  # noqa: E402

SETS = {  # name -> the evaluate command that writes it
    "phantoms": ["make-phantoms", "--count", "10"],
    "twins": ["make-memory-phantoms", "--kind", "twins", "--count", "8"],
    "twins+fade": ["make-memory-phantoms", "--kind", "twins+fade", "--count", "8"],
    "twins+gap": ["make-memory-phantoms", "--kind", "twins+gap", "--count", "8"],
    "twins+drift": ["make-memory-phantoms", "--kind", "twins+drift", "--count", "8"],
    "twins+fade+long": ["make-memory-phantoms", "--kind", "twins+fade+long", "--count", "8"],
    "twins+gap+long": ["make-memory-phantoms", "--kind", "twins+gap+long", "--count", "8"],
    "phantom+fade": ["make-memory-phantoms", "--kind", "phantom+fade", "--count", "8"],
    "mni152": ["make-mni152"],
}
PROTOCOLS = {"click": ["--protocol", "click"], "click, end": ["--protocol", "click", "--key-slice", "end"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="demo")
    ap.add_argument("--model-config", default=None)
    ap.add_argument("--policies", nargs="+", default=["fifo", "self_sorting"])
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "memory_policies.json")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="memory-policies-"))
    rows = []
    for name in args.sets:
        data = work / "data" / name.replace("+", "_")
        if not data.exists():
            evaluate.main([SETS[name][0], str(data), *SETS[name][1:]])
        for protocol in args.protocols:
            out = work / "results" / f"{name.replace('+', '_')}__{protocol.replace(', ', '_')}"
            run = ["run", str(data), "--checkpoint", args.checkpoint, "--policy", *args.policies,
                   "--no-progress", "--out", str(out), *PROTOCOLS[protocol]]
            if args.model_config:
                run += ["--model-config", args.model_config]
            t0 = time.time()
            if evaluate.main(run) != 0:
                return 1
            summary = {r["policy"]: r for r in json.loads((out / "summary.json").read_text())["summary"]
                       if r["structure"] == "all"}
            rows.append({"set": name, "protocol": protocol, "cases": summary[args.policies[0]]["cases"],
                         "seconds": round(time.time() - t0, 1),
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
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    print("\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": args.checkpoint, "workdir": str(work), "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {args.out} (per-case results in {work / 'results'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
