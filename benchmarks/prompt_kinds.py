"""Click vs box vs painted mask vs scribbles as the first prompt, on the same cases.

Runs `python -m medsam2.evaluate run` on the project's generated sets (the sets of
benchmarks.memory_policies) with each first prompt on the structure's largest slice, alone and
followed by 3 corrective clicks (medsam2.evaluation.protocols: `mask` paints the true mask of that
slice, `scribble` draws a stroke along its medial axis and one around it, turned into clicks as the
server turns Slicer's scribbles into clicks; `scribble(N)` takes N clicks per stroke instead of 3).
Prints one table of mean Dice and NSD per set and protocol and the Dice on slices away from the
prompted one, and writes bench-results/prompt_kinds.json.

  python -m benchmarks.prompt_kinds                       # the demo model, about 6 minutes on 2 cores
  python -m benchmarks.prompt_kinds --checkpoint medsam2  # any checkpoint the evaluation takes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.evaluation_runs import SETS, add_common_arguments, report, run_on_set  # noqa: E402

PROTOCOLS = {  # name -> evaluate run arguments
    "click": ["--protocol", "click"],
    "box": ["--protocol", "box"],
    "mask": ["--protocol", "mask"],
    "scribble": ["--protocol", "scribble"],
    "scribble(1)": ["--protocol", "scribble", "--scribble-points", "1"],
    "scribble(5)": ["--protocol", "scribble", "--scribble-points", "5"],
    "click+3": ["--protocol", "click+3"],
    "box+3": ["--protocol", "box+3"],
    "mask+3": ["--protocol", "mask+3"],
    "scribble+3": ["--protocol", "scribble+3"],
}
DEFAULT_SETS = ["phantoms", "twins", "twins+fade+long", "mni152"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=DEFAULT_SETS, choices=list(SETS))
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    add_common_arguments(ap, REPO / "bench-results" / "prompt_kinds.json")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="prompt-kinds-"))
    rows = []
    for name in args.sets:
        for protocol in args.protocols:
            done = run_on_set(work, name, protocol, PROTOCOLS[protocol], args.checkpoint, args.model_config)
            if done is None:
                return 1
            summary = next(r for r in done[0] if r["structure"] == "all")
            rows.append({"set": name, "protocol": protocol, "cases": summary["cases"], "seconds": done[1],
                         **{k: summary[k] for k in ("dice_mean", "nsd_mean", "dice_before_mean", "dice_after_mean",
                                                    "other_covered_mean")}})

    def f(v):
        return "-" if v is None or v != v else f"{v:.3f}"

    head = ["set", "protocol", "n", "Dice", "NSD", "Dice before | after the prompted slice", "other covered", "s"]
    lines = [head] + [[r["set"], r["protocol"], str(r["cases"]), f(r["dice_mean"]), f(r["nsd_mean"]),
                       f"{f(r['dice_before_mean'])} | {f(r['dice_after_mean'])}", f(r["other_covered_mean"]),
                       str(r["seconds"])] for r in rows]
    report(lines, rows, args.out, args.checkpoint, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
