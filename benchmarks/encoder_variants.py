"""Image-encoder variants on a CPU: is anything faster than bf16 autocast, which the engine offers?

    python -m benchmarks.encoder_variants --threads 2      # sam2.1_hiera_t at 512 px, batches of 8 slices

On a CPU the encoder is most of a propagation's time (benchmarks/speed.py), so this times only
`model.forward_image` on random frames with random weights, per variant, in one process:

    fp32          as the engine runs it by default on a CPU
    bf16          the engine's `--conf precision bf16` (autocast)
    compile-fp32  torch.compile (inductor, C++ kernels) of the image encoder, fp32
    compile-bf16  the same under bf16 autocast
    int8          torch.ao dynamic int8 quantisation of the encoder's Linear layers (fbgemm/oneDNN)

`first_call_s` is the first batch (for the compiled variants: compilation, or inductor's on-disk cache
when an earlier run compiled the same shapes); `ms_per_slice` is the mean of `--reps` batches after a
second untimed one. `rel_diff` compares each variant's lowest-resolution features with fp32's
(relative L2: |features - fp32| / |fp32|).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

from medsam2.checkpoints import ModelSpec, build_model

from benchmarks.results import write_results

VARIANTS = ("fp32", "bf16", "compile-fp32", "compile-bf16", "int8")


def encoder_for(model, variant: str):
    """A `frames -> features` function for `variant`, over its own copy of the model."""
    model = copy.deepcopy(model)
    if variant.startswith("compile"):
        model.image_encoder = torch.compile(model.image_encoder)
    if variant == "int8":
        model.image_encoder = torch.ao.quantization.quantize_dynamic(model.image_encoder, {torch.nn.Linear},
                                                                    dtype=torch.qint8)
    autocast = variant.endswith("bf16")

    def encode(frames):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model.forward_image(frames)["backbone_fpn"][-1].float()

    return encode


@torch.inference_mode()
def time_variant(model, variant: str, frames: torch.Tensor, reps: int, reference) -> dict:
    encode = encoder_for(model, variant)
    t0 = time.perf_counter()
    encode(frames)
    first = time.perf_counter() - t0
    out = encode(frames)
    t0 = time.perf_counter()
    for _ in range(reps):
        encode(frames)
    per_slice = (time.perf_counter() - t0) / reps / frames.shape[0]
    diff = None if reference is None else float((out - reference).norm() / reference.norm())
    return {"variant": variant, "first_call_s": round(first, 2), "ms_per_slice": round(per_slice * 1000, 1),
            "rel_diff": diff, "features": out}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="sam2.1_hiera_t")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="slices per forward_image call")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="bench-results/encoder_variants.json")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {','.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(ModelSpec(args.config, args.image_size)).eval()
    frames = torch.rand(args.batch, 3, args.image_size, args.image_size)

    rows, reference = [], None
    for variant in variants:
        row = time_variant(model, variant, frames, args.reps, reference)
        if variant == "fp32":
            reference = row["features"]
        del row["features"]
        rows.append(row)
        print(f"{variant:13s} first call {row['first_call_s']:6.1f} s   {row['ms_per_slice']:7.1f} ms/slice   "
              f"relative diff vs fp32 {'-' if row['rel_diff'] is None else format(row['rel_diff'], '.1e')}", flush=True)

    result = {"config": args.config, "image_size": args.image_size, "batch": args.batch,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),  # bf16 units: bf16 pays off
              "rows": rows}
    out = Path(args.out)
    write_results(out, result)


if __name__ == "__main__":
    main()
