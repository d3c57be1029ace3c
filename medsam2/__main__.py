"""Command line: `python -m medsam2 <command>`.

  fetch NAME            download a manifest checkpoint into model/ and verify it
  sample DIR            write the bundled synthetic sample study into DIR: phantoms (organ, vessel,
                        lesion) and a pair of identical-looking twins that only memory tells apart
  demo-model OUT.pt     train the demo model (model/demo/, sam2.1_hiera_nano) from scratch on generated
                        phantoms, as shipped (CPU, about an hour; see docs/demo-model.md)
  challenge-predict --inputs DIR --outputs DIR --checkpoint NAME
                        what a CVPR 2025 interactive 3D challenge submission's predict.sh does: every
                        inputs/*.npz (imgs, spacing, boxes, clicks) -> outputs/<same name> with segs
                        (medsam2/challenge.py)
"""

import argparse
import sys
from pathlib import Path

from .settings import add_arguments, from_args

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
    d.add_argument("--prompt-steps", type=int, default=None, help="stage 1 steps (default: the recipe's)")
    d.add_argument("--track-steps", type=int, default=None, help="stage 2 steps (default: the recipe's)")
    d.add_argument("--stage3-steps", type=int, default=None,
                   help="stage 3 steps (default: the recipe's)")
    d.add_argument("--stage3-mix", default=None,
                   help="stage 3's cases and validation: broad (real crops) or twins (default: the recipe's)")
    d.add_argument("--stage1-mix", default=None, help="stage 1's cases: shipped or sized (default: the recipe's)")
    d.add_argument("--stage2-mix", default=None, help="stage 2's cases and validation: shipped, sized or sized+twins (default: the recipe's)")
    d.add_argument("--from-stage1", type=Path, default=None,
                   help="run stage 2 (and 3) from this stage-1 model instead of training stage 1")
    d.add_argument("--from-stage2", type=Path, default=None,
                   help="run stage 3 only, from this stage-2 model (the demo model of commit 2460710 is one)")
    d.add_argument("--seed", type=int, default=None)
    c = sub.add_parser("challenge-predict")
    c.add_argument("--inputs", type=Path, required=True)
    c.add_argument("--outputs", type=Path, required=True)
    add_arguments(c, ("checkpoint", "model_config", "device"), required=("checkpoint",))
    c.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    args = ap.parse_args(argv)

    if args.cmd == "fetch":
        from .checkpoints import CheckpointError, resolve_spec

        try:
            spec = resolve_spec(args.name, None, None, args.model_dir)
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"ready: {spec.checkpoint} ({spec.model_config}, {spec.image_size} px)")
    elif args.cmd == "challenge-predict":
        from .challenge import ChallengePredictor, predict_folder
        from .checkpoints import CheckpointError, build_model, resolve_spec
        from .propagation import Segmenter, pick_device

        try:
            settings = from_args(args)
            spec = resolve_spec(settings.checkpoint, settings.model_config, None, args.model_dir)
            segmenter = Segmenter(build_model(spec, device=pick_device(settings.device)), settings)
        except (CheckpointError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        written = predict_folder(ChallengePredictor(segmenter), args.inputs, args.outputs)
        print(f"{len(written)} predictions in {args.outputs}")
    elif args.cmd == "sample":
        from .memory_phantoms import make_twins
        from .phantoms import SAMPLE_SHAPE, make_phantom, save_nifti

        makers = {f"phantom_{n:03d}": lambda n=n: make_phantom(SAMPLE_SHAPE, seed=n) for n in range(args.count)}
        makers["twins_000"] = lambda: make_twins(SAMPLE_SHAPE, seed=0)
        for image_id, make in makers.items():  # only what is missing: a folder from an older version is completed
            if not (args.dir / f"{image_id}.nii.gz").exists():
                save_nifti(make(), args.dir / f"{image_id}.nii.gz")
        print(f"sample study in {args.dir}: {', '.join(makers)}")
    elif args.cmd == "demo-model":
        from dataclasses import replace

        from .demo_model import DemoRecipe, train_demo_model

        given = {k: v for k, v in vars(args).items() if k in DemoRecipe.__dataclass_fields__ and v is not None}
        recipe = replace(DemoRecipe(), **given)
        try:
            recipe.check()  # a wrong mix or start is said here, before any training, not as a traceback
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        r = train_demo_model(args.out, recipe, log=lambda e: print(e, flush=True)
                             if "val_dice" in e or "val_parts" in e or e["step"] % 50 == 0 else None)
        print(f"demo model: {r.published} (last stage's validation score {r.initial_dice:.2f} -> {r.best_dice:.2f}); "
              f"its sha256 goes into model/manifest.json (entry 'demo') when it replaces the shipped one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
