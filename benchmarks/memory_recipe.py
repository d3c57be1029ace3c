"""Which change makes SAM 2's memory learnable from scratch here: the demo recipe's stage 2, ablated.

Each variant starts from the same stage-1 weights (the decoder already segments the clicked structure
on its slice), trains stage 2 of the demo recipe (medsam2.demo_model) for the same number of steps
with one memory-attention setting changed, and reports what the trainer validates on (one click per
structure on held-out twins and a phantom, through the engine) and how its memory attention looks
(medsam2.training.diagnostics): the logits' spread, entropy, weight on object pointers, and how far
from a query the attended memory lies (about 1 cell = local; 4.1 = uniform on the 8 x 8 grid).

  python -m benchmarks.memory_recipe --steps 500            # about 10 minutes a variant on 2 CPU cores

Prints a table and writes bench-results/memory_recipe.json.
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

from benchmarks.results import write_results  # noqa: E402
from medsam2 import demo_model  # noqa: E402
from medsam2.training.loop import train  # noqa: E402

HALVED = [  # the nano config's channel overrides, without its memory-attention changes
    "model.image_encoder.neck.d_model=128", "model.image_encoder.neck.position_encoding.num_pos_feats=128",
    "model.memory_attention.d_model=128", "model.memory_attention.layer.d_model=128",
    "model.memory_attention.layer.self_attention.embedding_dim=128",
    "model.memory_attention.layer.cross_attention.embedding_dim=128",
    "model.memory_encoder.mask_downsampler.embed_dim=128", "model.memory_encoder.fuser.layer.dim=128",
    "model.memory_encoder.in_dim=128",
]
NORMALIZED = ["model.memory_attention._target_=medsam2.memory_attention.NormalizedMemoryAttention"]
NO_POINTERS = ["model.memory_attention.attend_to_pointers=false"]
ROPE_100 = ["model.memory_attention.layer.self_attention.rope_theta=100.0",
            "model.memory_attention.layer.cross_attention.rope_theta=100.0"]
VARIANTS = {
    "stock SAM 2.1 memory attention": HALVED,
    "+ normalised memory tokens": HALVED + NORMALIZED,
    "+ no object pointers": HALVED + NORMALIZED + NO_POINTERS,
    "+ RoPE base 100 (the demo config)": HALVED + NORMALIZED + NO_POINTERS + ROPE_100,
}


def write_config(folder: Path, name: str, overrides: list[str]) -> Path:
    path = folder / f"variant_{abs(hash(name)) % 10**8}.yaml"
    path.write_text("base: sam2.1_hiera_micro\noverrides:\n" + "".join(f"  - {o}\n" for o in overrides))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=500, help="stage-2 steps per variant")
    ap.add_argument("--prompt-steps", type=int, default=demo_model.PROMPT_STEPS)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help="names from VARIANTS")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "memory_recipe.json")
    args = ap.parse_args(argv)

    from medsam2.evaluation.twins import clicker, twin_results
    from medsam2.memory_phantoms import make_twins
    from medsam2.propagation import Segmenter
    from medsam2.checkpoints import ModelSpec, build_model
    from medsam2.training.clips import ClipSampler, LabelledVolume
    from medsam2.training.diagnostics import memory_attention_stats

    work = Path(tempfile.mkdtemp(prefix="memory-recipe-"))
    pairs, val = demo_model.training_pairs(), demo_model.validation_pairs()
    stage1_only = demo_model.DemoRecipe(prompt_steps=args.prompt_steps)
    prompting, _, _ = demo_model.stage_configs(work / "stage1_base.pt", stage1_only)
    print(f"stage 1 ({args.prompt_steps} steps, shared by every variant) ...", flush=True)
    t0 = time.time()
    train(prompting, pairs, [], log=lambda e: None)
    stage1_s = time.time() - t0
    held_out = [make_twins(seed=s) for s in range(5000, 5008)]
    diag_volumes = [LabelledVolume(p.image, p.label) for p in held_out[:4]]
    rows = []
    for name in args.variants:
        config = write_config(work, name, VARIANTS[name])
        _, tracking, _ = demo_model.stage_configs(work / "variant.pt", demo_model.DemoRecipe(track_steps=args.steps))
        tracking.model_config, tracking.init_checkpoint = str(config), prompting.out_checkpoint
        tracking.val_every = args.steps
        print(f"{name}: {args.steps} steps ...", flush=True)
        result = train(tracking, pairs, val, log=lambda e: None)
        model = build_model(ModelSpec(str(config), checkpoint=result.published))
        sampler = ClipSampler(diag_volumes, model.image_size, clip_len=8, max_objects=2, seed=5, p_exit=0.0)
        attention = memory_attention_stats(model, [sampler.sample() for _ in range(2)])
        segmenter = Segmenter(model)
        passed = total = 0
        for case in held_out:
            results = twin_results(case.label, clicker(segmenter, case.image))
            passed += sum(r.passes() for r in results)
            total += len(results)
        rows.append({"variant": name, "steps": args.steps, "val_dice_initial": round(result.initial_dice, 3),
                     "val_dice": round(result.best_dice, 3), "twin_clicks_passing": f"{passed}/{total}",
                     "minutes": round(result.seconds / 60, 1), **{k: round(v, 3) for k, v in attention.items()}})
        print(json.dumps(rows[-1]), flush=True)
    head = ["variant", "val Dice", "twins passing", "logits std", "entropy", "pointer weight", "distance (uniform)"]
    lines = [head] + [[r["variant"], f"{r['val_dice_initial']:.2f} -> {r['val_dice']:.2f}", r["twin_clicks_passing"],
                       f"{r['logits_std']:.1f}", f"{r['entropy']:.2f}", f"{r['pointer_weight']:.2f}",
                       f"{r['distance']:.2f} ({r['uniform_distance']:.2f})"] for r in rows]
    widths = [max(len(str(line[c])) for line in lines) for c in range(len(head))]
    print("\n" + "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines))
    write_results(args.out, {"stage1_minutes": round(stage1_s / 60, 1), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
