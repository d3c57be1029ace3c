"""Command line: `python -m medsam2 <command>`.

  fetch NAME            download a manifest checkpoint into model/ and verify it
  sample DIR            write the bundled synthetic sample study (phantoms) into DIR
  demo-model OUT.pt     train the small demo model on phantoms (CPU, a few minutes)
"""

import argparse
import sys
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent.parent / "model"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medsam2", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("name")
    f.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    s = sub.add_parser("sample")
    s.add_argument("dir", type=Path)
    s.add_argument("--count", type=int, default=3)
    d = sub.add_parser("demo-model")
    d.add_argument("out", type=Path)
    d.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's)")
    args = ap.parse_args(argv)

    if args.cmd == "fetch":
        from .checkpoints import CheckpointError, resolve_spec

        try:
            spec = resolve_spec(args.name, None, None, args.model_dir)
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"ready: {spec.checkpoint} ({spec.model_config}, {spec.image_size} px)")
    elif args.cmd == "sample":
        from .phantoms import write_studies

        existing = sorted(args.dir.glob("*.nii.gz"))
        ids = [p.name[:-7] for p in existing] or write_studies(args.dir, args.count, shape=(128, 128, 48))
        print(f"sample study in {args.dir}: {', '.join(ids)}")
    elif args.cmd == "demo-model":
        from .demo_model import DEMO_STEPS, train_demo_model

        r = train_demo_model(args.out, steps=args.steps or DEMO_STEPS,
                             log=lambda e: print(e, flush=True) if "val_dice" in e or e["step"] % 25 == 0 else None)
        print(f"demo model: {r.published} "
              f"(one-click Dice on a held-out phantom {r.initial_dice:.2f} -> {r.best_dice:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
