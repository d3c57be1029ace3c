"""Accuracy benchmark: `python -m medsam2.evaluate <command>`.

  run DATA --checkpoint C [--model-config M] [--policy fifo ...] [--protocol click|box] [--corrections N]
           [--tolerance-mm T] [--seed S] [--out DIR]
      a simulated clinician prompts every labelled structure of every image in DATA (a MONAI Label
      datastore folder: images, labels/final/<same name>, optional labels.json) through the same
      engine as the infer task; prints per-structure Dice / NSD and writes summary.json, summary.csv,
      cases.json, cases.csv and dice_vs_interactions.png into DIR
  make-phantoms OUTDIR --count N     synthetic phantoms with labels, as a datastore folder
  make-memory-phantoms OUTDIR --kind twins --count N
                                     phantoms only a memory can segment (identical twins, fades, gaps,
                                     drifting contrast: medsam2.memory_phantoms), as a datastore folder
  make-mni152 OUTDIR                 the MNI152 brain shipped in nilearn, labelled brain / white matter /
                                     lateral ventricles (derivation: medsam2.evaluation.datasets)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent.parent / "model"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m medsam2.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmark on a labelled folder")
    r.add_argument("data", type=Path, help="datastore folder: images + labels/final/<same name>")
    r.add_argument("--checkpoint", required=True, help="manifest name, .pt path, or 'random' (untrained weights)")
    r.add_argument("--model-config", default=None, help="sam2 / project config name or .yaml (default: manifest's)")
    r.add_argument("--image-size", type=int, default=None)
    r.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    r.add_argument("--policy", nargs="+", default=["self_sorting"],
                   help="memory policies to compare (default: self_sorting, the server's)")
    r.add_argument("--protocol", default="click",
                   help="first prompt: click, box, mask (the true mask on the key slice) or scribble (a stroke along "
                        "its medial axis and one around it); 'click+3' adds 3 corrections; cvpr25: the CVPR 2025 "
                        "challenge's box on the middle slice with its slice range, then 5 clicks on the largest "
                        "3D error")
    r.add_argument("--scribble-points", type=int, default=3, help="clicks taken from each scribbled stroke")
    r.add_argument("--key-slice", default="largest", choices=["largest", "end", "middle"],
                   help="prompt the largest slice, one near the structure's end (long-range propagation), or the "
                        "middle of its extent")
    r.add_argument("--corrections", type=int, default=None, help="corrective clicks after the first prompt")
    r.add_argument("--box-jitter", type=float, default=0.0, help="random box error, fraction of its size (seeded)")
    r.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--labels", default=None, help='JSON {"name": value or [values]} (default: DATA/labels.json)')
    r.add_argument("--max-cases", type=int, default=None)
    r.add_argument("--device", default="auto", help="cuda, cpu or auto")
    r.add_argument("--intensity", default="auto", help="as the server's --conf intensity")
    r.add_argument("--directions", default="independent", help="as the server's --conf directions")
    r.add_argument("--settle-slices", type=int, default=0, help="as the server's --conf settle_slices")
    r.add_argument("--precision", default="auto", help="as the server's --conf precision")
    r.add_argument("--stop-after-empty", type=int, default=0, help="as the server's --conf stop_after_empty")
    r.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder (default: ./evaluation)")
    r.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("make-phantoms", help="write synthetic phantoms as a datastore folder")
    p.add_argument("outdir", type=Path)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32], metavar=("I", "J", "K"))
    p.add_argument("--seed", type=int, default=100, help="first seed (default 100: not a demo-model training seed)")
    t = sub.add_parser("make-memory-phantoms", help="write twins / fading / drifting phantoms as a datastore folder")
    t.add_argument("outdir", type=Path)
    t.add_argument("--kind", default="twins", help="twins[+fade][+gap][+drift][+long] or phantom+fade")
    t.add_argument("--count", type=int, default=5)
    t.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32], metavar=("I", "J", "K"))
    t.add_argument("--seed", type=int, default=5000, help="first seed (default 5000: not a demo-model training seed)")
    m = sub.add_parser("make-mni152", help="write the labelled MNI152 brain as a datastore folder")
    m.add_argument("outdir", type=Path)
    m.add_argument("--resolution", type=float, default=2.0, help="voxel size in mm (the template is 1 mm)")
    return ap


def run(args) -> int:
    from .checkpoints import CheckpointError, build_model, resolve_spec
    from .evaluation.datasets import list_cases, read_structures
    from .evaluation.protocols import Protocol
    from .evaluation.report import format_table, summarize, write_report
    from .evaluation.runner import RunSettings, evaluate_cases, memory_policies
    from .propagation import Segmenter, pick_device

    try:
        protocol = Protocol.parse(args.protocol, args.corrections, args.box_jitter, args.key_slice,
                                  args.scribble_points)
    except ValueError as e:
        return _fail(str(e))
    unknown = [p for p in args.policy if p not in memory_policies()]
    if unknown:
        return _fail(f"unknown memory policy {unknown}; available: {sorted(memory_policies())}")
    cases = list_cases(args.data)[: args.max_cases]
    if not cases:
        return _fail(f"no labelled images in {args.data} (images need labels/final/<same file name>)")
    try:
        spec = resolve_spec(args.checkpoint, args.model_config, args.image_size, args.model_dir)
        device = pick_device(args.device)
        segmenter = Segmenter(build_model(spec, device=device), intensity=args.intensity, directions=args.directions,
                              settle_slices=args.settle_slices, precision=args.precision,
                              stop_after_empty=args.stop_after_empty)
    except (CheckpointError, ValueError) as e:
        return _fail(str(e))
    structures = read_structures(args.data, json.loads(args.labels) if args.labels else None)
    settings = RunSettings(protocol, list(args.policy), args.tolerance_mm, args.seed, structures)
    config = {
        "data": str(args.data), "cases": [c.id for c in cases], "checkpoint": str(spec.checkpoint or "random"),
        "model_config": spec.model_config, "image_size": int(segmenter.model.image_size), "device": str(device),
        "policies": settings.policies, "protocol": protocol.name, "corrections": protocol.corrections,
        "box_jitter": protocol.box_jitter, "key_slice": protocol.key_slice, "slice_range": protocol.slice_range,
        "correction_rule": protocol.correction_rule, "scribble_points": protocol.scribble_points,
        "time_limit_s": protocol.time_limit_s, "tolerance_mm": args.tolerance_mm,
        "seed": args.seed, "intensity": args.intensity, "directions": args.directions,
        "settle_slices": args.settle_slices, "precision": args.precision, "stop_after_empty": args.stop_after_empty,
        "structures": structures,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    t0 = time.perf_counter()
    records = evaluate_cases(segmenter, cases, settings, progress=not args.no_progress)
    config["seconds"] = round(time.perf_counter() - t0, 1)
    rows = summarize(records, protocol.interactions, protocol.time_limit_s)
    paths = write_report(args.out, records, rows, config)
    print(f"\n{len(cases)} cases, protocol {protocol.name}, NSD tolerance {args.tolerance_mm} mm, "
          f"{config['device']}, {config['seconds']} s; Dice/NSD after the last interaction")
    print(format_table(rows))
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "run":
        return run(args)
    if args.cmd == "make-phantoms":
        from .evaluation.datasets import make_phantoms

        ids = make_phantoms(args.outdir, args.count, tuple(args.shape), args.seed)
        print(f"{len(ids)} phantoms with labels in {args.outdir}: {', '.join(ids)}")
    elif args.cmd == "make-memory-phantoms":
        from .evaluation.datasets import make_memory_phantoms

        try:
            ids = make_memory_phantoms(args.outdir, args.kind, args.count, tuple(args.shape), args.seed)
        except ValueError as e:
            return _fail(str(e))
        print(f"{len(ids)} {args.kind} phantoms with labels in {args.outdir}: {', '.join(ids)}")
    elif args.cmd == "make-mni152":
        from .evaluation.datasets import make_mni152

        make_mni152(args.outdir, args.resolution)
        print(f"MNI152 ({args.resolution} mm) with labels brain, white_matter, lateral_ventricles in {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
