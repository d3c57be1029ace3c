"""The generated evaluation sets and one `python -m medsam2.evaluate run` on one of them: shared by the
benchmarks that compare settings set by set (memory_policies, prompt_kinds)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from medsam2 import evaluate

from benchmarks.results import write_results

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


def add_common_arguments(ap, default_out: Path) -> None:
    """The arguments these benchmarks share: the model, the work folder, the JSON written."""
    ap.add_argument("--checkpoint", default="demo")
    ap.add_argument("--model-config", default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    ap.add_argument("--out", type=Path, default=default_out)


def run_on_set(work: Path, name: str, tag: str, run_args: list[str], checkpoint: str,
               model_config: str | None = None) -> tuple[list[dict], float, Path] | None:
    """Write set `name` under work/data (once), run the evaluation with `run_args` into
    work/results/<set>__<tag>; the rows of its summary.json, the seconds it took and that folder (None
    if it failed)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    data = work / "data" / slug
    if not data.exists():
        evaluate.main([SETS[name][0], str(data), *SETS[name][1:]])
    out = work / "results" / f"{slug}__{re.sub(r'[^A-Za-z0-9_.-]+', '_', tag)}"
    run = ["run", str(data), "--checkpoint", checkpoint, "--no-progress", "--out", str(out), *run_args]
    if model_config:
        run += ["--model-config", model_config]
    t0 = time.time()
    if evaluate.main(run) != 0:
        return None
    return json.loads((out / "summary.json").read_text())["summary"], round(time.time() - t0, 1), out


def report(lines: list[list[str]], rows: list[dict], out: Path, checkpoint: str, work: Path) -> None:
    """Print the table (`lines`, the head first) and write the rows as JSON to `out`."""
    widths = [max(len(line[c]) for line in lines) for c in range(len(lines[0]))]
    print("\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines))
    write_results(out, {"checkpoint": checkpoint, "workdir": str(work), "rows": rows},
                  note=f" (per-case results in {work / 'results'})")
