"""How fast `/train` steps on this machine's CPUs: one process against `cpu_processes` auto.

Each run is `/train`'s default run from the demo model (clips of 6 slices, 3 objects, 2 clips a step,
the tracking recipe, the mirror) on Colin27's whole volume with the left caudate, putamen, thalamus and
hippocampus labelled, without validation or time limit, for `--steps` steps. Both go through
`python -m medsam2.training.launch` as the train task runs them:
- `one process`: the stock path, one process with every thread this machine gives (`OMP_NUM_THREADS`);
- `cpu_processes auto`: torchrun with `launch.cpu_processes` gloo ranks, each with its share of the
  threads and its share of the step's clips, as `/train` runs by default without GPUs;
- `the same ranks, unsynchronised`: as many independent one-process runs side by side, each with a
  rank's threads and clips, nothing averaged between them; its `s a step` is the slower run's. No
  synchronised run can step faster, so the gap to `cpu_processes auto` is all DDP costs: averaging the
  gradients over gloo, and each step waiting for the slower rank.

Seconds a step are timed from the history between step 5 and the last (the first steps carry one-off
costs); `steps in 14 min` is what `/train`'s time limit holds at that rate. Peak memory is the most the
run's processes used together (their PSS, sampled each second: shared pages counted once).

    python -m benchmarks.train_speed [--steps 60] [--repeats 3]

About 4 minutes a repeat on 2 cores. Prints a table and writes bench-results/train_speed.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.demo_breadth import markdown_table  # noqa: E402
from benchmarks.field_of_view import default_config, run_job, start_job, write_trained_volume  # noqa: E402
from benchmarks.results import write_results  # noqa: E402
from medsam2.evaluation import real_data  # noqa: E402

FIRST_TIMED_STEP = 5
LIMIT_MINUTES = 14


def tree_pss(pid: int) -> int:
    """Bytes of memory the process and its descendants use (their PSS: pages shared between the ranks,
    such as torch's libraries, counted once over all of them, not once per process)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def seconds_a_step(history: list[dict], steps: int) -> float:
    """Mean seconds a step from step FIRST_TIMED_STEP to `steps`, from a run's history."""
    at = {entry["step"]: entry["elapsed_s"] for entry in history}
    return (at[steps] - at[FIRST_TIMED_STEP]) / (steps - FIRST_TIMED_STEP)


def row(processes: int, threads_each: int, per_step: float, wall_s: float, peak: int) -> dict:
    """One row of the table (and of the JSON): a run's speed, what 14 minutes hold at it, its memory."""
    return {"processes": processes, "threads_each": threads_each, "s_per_step": round(per_step, 3),
            "steps_in_limit": int(LIMIT_MINUTES * 60 / per_step), "wall_s": round(wall_s, 1),
            "peak_memory_gib": round(peak / 2**30, 2)}


def run(folder: Path, files, steps: int, processes: int) -> dict:
    """One run through launch.py (under torchrun when `processes` > 1): its history's step times."""
    peak = 0

    def sample(pid: int):
        nonlocal peak
        peak = max(peak, tree_pss(pid))

    cfg = default_config(folder / f"out_{processes}.pt", steps, max_minutes=None)
    run = run_job(cfg, files, folder, processes, each_second=sample, quiet=True)
    return row(processes, run.threads_each, seconds_a_step(run.result["history"], steps), run.seconds, peak)


def unsynchronised(folder: Path, files, steps: int, processes: int) -> dict:
    """What `processes` ranks would step at if nothing tied them together: as many independent
    one-process runs side by side, each with its share of the threads and of a step's clips, as each
    rank has. Against `cpu_processes auto`, the difference is what DDP's gradient averaging, and
    waiting for the slower rank, cost a step."""
    import torch

    from medsam2.training.defaults import DEFAULT_RUN

    threads = max(1, torch.get_num_threads() // processes)
    clips = max(1, DEFAULT_RUN["clips_per_step"] // processes)
    started = [start_job(default_config(folder / f"alone_{i}.pt", steps, max_minutes=None, clips_per_step=clips,
                                        seed=i), files, folder, 1, quiet=True, name=f"alone_{i}", threads=threads)
               for i in range(processes)]
    peak = 0
    while any(s.proc.poll() is None for s in started):
        peak = max(peak, sum(tree_pss(s.proc.pid) for s in started))
        time.sleep(1.0)
    runs = [s.finished() for s in started]
    per_step = max(seconds_a_step(r.result["history"], steps) for r in runs)
    return row(processes, threads, per_step, max(r.seconds for r in runs), peak)


def main(argv=None) -> int:
    import torch

    from medsam2.training.launch import cpu_processes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "train_speed.json")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every row this many times, in turn, and report each row's median: this virtual "
                         "machine's cores change speed by a fifth within minutes")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    auto = cpu_processes(2, threads)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_trained_volume(real_data.colin27(), folder)
        for _ in range(max(1, args.repeats)):
            runs.setdefault("one process", []).append(run(folder, files, args.steps, 1))
            if auto > 1:
                runs.setdefault("cpu_processes auto", []).append(run(folder, files, args.steps, auto))
                runs.setdefault("the same ranks, unsynchronised", []).append(
                    unsynchronised(folder, files, args.steps, auto))
    rows = {name: {**sorted(each, key=lambda r: r["s_per_step"])[len(each) // 2],
                   "s_per_step_each": [r["s_per_step"] for r in each]} for name, each in runs.items()}
    base = rows["one process"]["s_per_step"]
    print(f"{threads} threads; {args.steps} steps a run, timed from step {FIRST_TIMED_STEP}; "
          f"each row the median of {max(1, args.repeats)} run(s)")
    lines = [["run", "processes", "threads each", "s a step", "each run", "steps in 14 min", "speed-up",
              "peak memory (GiB)"]]
    lines += [[name, str(r["processes"]), str(r["threads_each"]), f"{r['s_per_step']:.2f}",
               " ".join(f"{x:.2f}" for x in r["s_per_step_each"]), str(r["steps_in_limit"]),
               f"{base / r['s_per_step']:.2f}x", f"{r['peak_memory_gib']:.2f}"] for name, r in rows.items()]
    print(markdown_table(lines))
    write_results(args.out, {"threads": threads, "steps": args.steps, "repeats": args.repeats, "runs": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
