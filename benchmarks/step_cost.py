"""Where a `/train` step's time goes on a CPU, and what shorter clips or bf16 would save.

One rank's view of `/train`'s default run (benchmarks/train_speed.py times whole runs): the demo model,
Colin27 with the left caudate, putamen, thalamus and hippocampus labelled, the tracking recipe, the
mirror, one clip at a time on one thread (each of `/train`'s two gloo ranks on 2 cores runs one clip a
step on one thread). For each clip length, the mean seconds per clip of:
- `sample`: cutting the clip from the volume (ClipSampler);
- `forward`, and within it the image encoder, SAM 2's mask decoder, memory encoder and memory
  attention (their forward passes, timed by module hooks; the rest of `track_step` is the prompt
  encoder, feature reshaping and Python), and the loss terms (`ClipObjective.frame_loss`);
- `backward`, `optimizer` (AdamW's step).
`--bf16` adds the default clip length under `torch.autocast("cpu", bfloat16)`; `--max-objects 4` adds it
tracking up to 4 structures a clip (/train's `max_objects` is 3); `--profile` adds it under torch.profiler
and prints the operations that take the time (the profiler slows that row's parts).

    python -m benchmarks.step_cost [--clip-lens 4 6 8] [--clips 20] [--bf16] [--max-objects 4] [--profile]

About 2 minutes on 2 cores (`--profile`: 2 more, most of them reading the profile). Prints a table and writes bench-results/step_cost.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.demo_breadth import markdown_table  # noqa: E402
from benchmarks.field_of_view import default_config, trained_label  # noqa: E402
from benchmarks.results import write_results  # noqa: E402
from medsam2.evaluation import real_data  # noqa: E402

MODULES = {"image encoder": "image_encoder", "mask decoder": "sam_mask_decoder",
           "memory encoder": "memory_encoder", "memory attention": "memory_attention"}
WARMUP_CLIPS = 3  # the first clips carry one-off costs (allocations, oneDNN's kernel choices)


def time_modules(model, seconds: dict) -> None:
    """Add each MODULES' forward time to `seconds` on every call."""
    for name, attr in MODULES.items():
        module, started = getattr(model, attr), []
        module.register_forward_pre_hook(lambda *_, s=started: s.append(time.perf_counter()))
        module.register_forward_hook(lambda *_, s=started, n=name: seconds.__setitem__(
            n, seconds[n] + time.perf_counter() - s.pop()))


def top_operations(profiler, clips: int, count: int = 8) -> list[dict]:
    """The `count` PyTorch operations that took the most CPU time themselves (not counting what they
    called), over the profiled clips: share of all, calls a clip, microseconds a call."""
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"operation": e.key, "share": round(e.self_cpu_time_total / total, 3),
             "calls_a_clip": round(e.count / clips), "us_a_call": round(e.self_cpu_time_total / e.count, 1)}
            for e in events[:count]]


def measure(clip_len: int, clips: int, bf16: bool, volume, max_objects: int | None = None,
            profile: bool = False) -> dict:
    """Mean seconds per clip of each part, for clips of `clip_len` slices tracking up to `max_objects`
    structures (None: /train's); `profile`: also the operations that take the time (top_operations),
    under torch.profiler, which slows every part."""
    import torch

    from medsam2.training.loop import setup_rank

    # /train's rank, at a learning rate too small to change the clips' cost over the timed steps
    cfg = default_config(Path("unused.pt"), 1, clip_len=clip_len, lr=1e-6, device="cpu",
                         **({"max_objects": max_objects} if max_objects else {}))
    run = setup_rank(cfg, [(volume.image, trained_label(volume))])
    model, objective, sampler, opt, rng = run.model, run.objective, run.sampler, run.opt, run.rng
    seconds: dict[str, float] = defaultdict(float)
    time_modules(model, seconds)
    frame_loss = objective.frame_loss

    def timed_loss(*args):
        t0 = time.perf_counter()
        out = frame_loss(*args)
        seconds["losses"] += time.perf_counter() - t0
        return out

    objective.frame_loss = timed_loss
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else None
    structures = 0  # structures tracked, over the timed clips
    for i in range(WARMUP_CLIPS + clips):
        if i == WARMUP_CLIPS:
            seconds.clear()
            structures = 0
            if profiler is not None:
                profiler.start()
        t0 = time.perf_counter()
        clip = sampler.sample()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            parts = objective(clip, rng)
        t2 = time.perf_counter()
        parts["loss"].backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        for name, s in (("sample", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2), ("optimizer", t4 - t3)):
            seconds[name] += s
        structures += clip.masks.shape[1]
    per_clip = {name: round(s / clips, 4) for name, s in seconds.items()}
    per_clip["total"] = round(sum(per_clip[k] for k in ("sample", "forward", "backward", "optimizer")), 4)
    per_clip["structures"] = round(structures / clips, 3)  # not seconds: the mean structures a clip tracks
    if profiler is not None:
        profiler.stop()
        per_clip["top_operations"] = top_operations(profiler, clips)
    return per_clip


def main(argv=None) -> int:
    import torch

    from medsam2.encoder_runtime import cpu_name
    from medsam2.training.defaults import DEFAULT_RUN

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip-lens", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--clips", type=int, default=20, help="clips timed per row, after 3 untimed")
    ap.add_argument("--bf16", action="store_true", help="also the default clip length under bf16 autocast")
    ap.add_argument("--profile", action="store_true",
                    help="also the default clip length under torch.profiler: which operations take the time")
    ap.add_argument("--max-objects", type=int, nargs="*", default=[],
                    help="also the default clip length tracking up to this many structures a clip (/train's: 3)")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "step_cost.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    volume = real_data.colin27()
    default_len = DEFAULT_RUN["clip_len"]
    rows = {f"clips of {n}": measure(n, args.clips, False, volume) for n in args.clip_lens}
    if args.bf16:
        rows[f"clips of {default_len}, bf16 autocast"] = measure(default_len, args.clips, True, volume)
    for n in args.max_objects:
        rows[f"clips of {default_len}, up to {n} structures"] = measure(default_len, args.clips, False, volume, n)
    if args.profile:
        rows[f"clips of {default_len}, profiled"] = measure(default_len, args.clips, False, volume, profile=True)
    columns = ["total", "sample", "forward", *MODULES, "losses", "backward", "optimizer", "structures"]
    header = [c if c != "structures" else "structures a clip (mean)" for c in columns]
    print(markdown_table([["seconds a clip, one thread", *header],
                          *[[name, *(f"{row.get(c, 0.0):.3f}" for c in columns)] for name, row in rows.items()]]))
    for name, row in rows.items():
        if "top_operations" in row:
            print(f"\n{name}: the operations that take the time (self CPU time)")
            print(markdown_table([["operation", "share", "calls a clip", "us a call"],
                                  *[[op["operation"], f"{op['share']:.1%}", str(op["calls_a_clip"]), f"{op['us_a_call']:.0f}"]
                                    for op in row["top_operations"]]]))
    write_results(args.out, {"threads": 1, "clips": args.clips, "cpu": cpu_name(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
