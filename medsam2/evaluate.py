"""Accuracy benchmark: `python -m medsam2.evaluate <command>`.

  --protocol cvpr25 --npz DIR [--gts DIR] --checkpoint C --out DIR
      the CVPR 2025 interactive 3D challenge's own loop (evaluation/cvpr25.py) over its .npz cases
      (ground truth in each case's `gts` or in DIR/<same name>), this engine as the submission
      (medsam2/challenge.py); writes metrics.csv with the official script's columns, per_class.csv
      and summary.json into --out

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
  make-real NAME OUTDIR              a real labelled volume from the package registries (colin27: T1 MR
                                     with AAL's subcortical structures; cranium: head CT, skull and head;
                                     chest_ct: the lungs), cropped to its structures + 10 mm (--full: not),
                                     as a datastore folder (medsam2.evaluation.real_data, docs/data.md)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from .settings import add_arguments, from_args

MODEL_DIR = Path(__file__).resolve().parent.parent / "model"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m medsam2.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmark on a labelled folder")
    r.add_argument("data", type=Path, help="datastore folder: images + labels/final/<same name>")
    _engine_arguments(r)
    r.add_argument("--policy", nargs="+", default=["self_sorting"],
                   help="memory policies to compare (default: self_sorting, the server's)")
    r.add_argument("--protocol", default="click",
                   help="first prompt: click, box, mask (the true mask on the key slice) or scribble (a stroke along "
                        "its medial axis and one around it); 'click+3' adds 3 corrections; cvpr25: the CVPR 2025 "
                        "challenge's own loop (all structures of a case together, its boxes, clicks and scores) on "
                        "the cases converted to its format")
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
    real = sub.add_parser("make-real", help="write a real labelled volume (registry packages) as a datastore folder")
    real.add_argument("name", choices=["colin27", "cranium", "chest_ct"])
    real.add_argument("outdir", type=Path)
    real.add_argument("--full", action="store_true", help="the whole volume, not cropped to its structures")
    m = sub.add_parser("make-mni152", help="write the labelled MNI152 brain as a datastore folder")
    m.add_argument("outdir", type=Path)
    m.add_argument("--resolution", type=float, default=2.0, help="voxel size in mm (the template is 1 mm)")
    return ap


def _segmenter(args):
    """The engine as the server builds it from these settings (raises CheckpointError, ValueError)."""
    from .checkpoints import build_model, resolve_spec
    from .propagation import Segmenter, pick_device

    settings = from_args(args)
    spec = resolve_spec(settings.checkpoint, settings.model_config, settings.image_size, args.model_dir)
    if args.fill_hole_area is not None or settings.largest_component != "auto":  # the checkpoint's, overridden
        post = spec.postprocess
        spec = dataclasses.replace(spec, postprocess=dataclasses.replace(
            post, fill_hole_area=post.fill_hole_area if args.fill_hole_area is None else args.fill_hole_area,
            largest_component=post.largest_component if settings.largest_component == "auto"
            else settings.largest_component == "true"))
    return spec, Segmenter(build_model(spec, device=pick_device(settings.device)), settings)


def run(args) -> int:
    from .checkpoints import CheckpointError
    from .evaluation.datasets import list_cases, read_structures
    from .evaluation.protocols import Protocol
    from .evaluation.report import format_table, summarize, write_report
    from .evaluation.runner import RunSettings, evaluate_cases, memory_policies

    unknown = [p for p in args.policy if p not in memory_policies()]
    if unknown:
        return _fail(f"unknown memory policy {unknown}; available: {sorted(memory_policies())}")
    cases = list_cases(args.data)[: args.max_cases]
    if not cases:
        return _fail(f"no labelled images in {args.data} (images need labels/final/<same file name>)")
    structures = read_structures(args.data, json.loads(args.labels) if args.labels else None)
    if str(args.protocol).strip().lower() == "cvpr25":
        from .evaluation.cvpr25 import BOX_SEED, case_from_volume
        from .evaluation.datasets import load_case

        def converted():  # one at a time: a folder of large volumes is never held in memory at once
            rng = __import__("numpy").random.RandomState(BOX_SEED + args.seed)
            for case in cases:
                image, label, spacing = load_case(case)
                yield case_from_volume(f"{case.id}.npz", image, label, spacing, from_args(args).intensity, rng), \
                    _class_names(label, structures)

        return _challenge_loop(args, converted(), str(args.data))
    try:
        protocol = Protocol.parse(args.protocol, args.corrections, args.box_jitter, args.key_slice,
                                  args.scribble_points)
    except ValueError as e:
        return _fail(str(e))
    try:
        spec, segmenter = _segmenter(args)
        device = segmenter.device
    except (CheckpointError, ValueError) as e:
        return _fail(str(e))
    settings = RunSettings(protocol, list(args.policy), args.tolerance_mm, args.seed, structures)
    config = {
        "postprocess": segmenter.model.postprocess.as_dict(), "preprocess": segmenter.model.preprocess.as_dict(),
        "data": str(args.data), "cases": [c.id for c in cases], "checkpoint": str(spec.checkpoint or "random"),
        "model_config": spec.model_config, "image_size": int(segmenter.model.image_size), "device": str(device),
        "policies": settings.policies, "protocol": protocol.name, "corrections": protocol.corrections,
        "box_jitter": protocol.box_jitter, "key_slice": protocol.key_slice, "slice_range": protocol.slice_range,
        "correction_rule": protocol.correction_rule, "scribble_points": protocol.scribble_points,
        "time_limit_s": protocol.time_limit_s, "tolerance_mm": args.tolerance_mm,
        "seed": args.seed, **{name: getattr(segmenter.settings, name) for name in ENGINE_ARGUMENTS[4:]},
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


def _class_names(label, structures) -> dict[int, str]:
    """Challenge class (1..C, the label map's values in order) -> structure name (a structure of one
    value names it; otherwise label_<value>)."""
    import numpy as np

    single = {vs[0]: name for name, vs in (structures or {}).items() if len(vs) == 1}
    values = [int(v) for v in np.unique(label) if v != 0]
    return {n: single.get(v, f"label_{v}") for n, v in enumerate(values, 1)}


def challenge(args) -> int:
    """`--protocol cvpr25 --npz DIR`: the challenge's own cases and loop."""
    from .evaluation.cvpr25 import load_cases

    if str(args.protocol).lower() != "cvpr25":
        return _fail("--npz cases run with --protocol cvpr25 only")
    try:
        cases = load_cases(args.npz, args.gts)
    except (OSError, ValueError, KeyError) as e:
        return _fail(f"cannot read the cases in {args.npz}: {e}")
    if not cases:
        return _fail(f"no .npz cases in {args.npz}")
    return _challenge_loop(args, ((c, None) for c in cases), str(args.npz))


def _challenge_loop(args, cases, source: str) -> int:
    """Run the official loop over (case, class names) with this engine as the submission, for each
    memory policy; write the official CSV, a per-class CSV and a summary."""
    from .challenge import ChallengePredictor
    from .checkpoints import CheckpointError
    from .evaluation.cvpr25 import run_case, summary, write_csv
    from .evaluation.report import write_csv as write_rows
    from .evaluation.runner import memory_policies, quiet_propagation

    try:
        spec, segmenter = _segmenter(args)
    except (CheckpointError, ValueError) as e:
        return _fail(str(e))
    policies = list(getattr(args, "policy", None) or ["self_sorting"])
    registry = memory_policies()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, per_class = {p: [] for p in policies}, []
    t0 = time.perf_counter()
    with quiet_propagation():
        for case, names in cases:
            for policy in policies:
                predictor = ChallengePredictor(segmenter, registry[policy])
                result = run_case(case, predictor.predict_file, args.out / "work" / policy)
                rows[policy].append({**result.row})
                per_class += [{**r, "policy": policy, "structure": (names or {}).get(r["class"], f"class_{r['class']}")}
                              for r in result.per_class]
                print(f"{case.name} ({policy}): DSC_AUC {result.row['DSC_AUC']:.3f} NSD_AUC {result.row['NSD_AUC']:.3f} "
                      f"DSC_Final {result.row['DSC_Final']:.3f} NSD_Final {result.row['NSD_Final']:.3f} "
                      f"({result.row['TotalRunningTime']:.1f} s, {result.row['num_class']} classes)", flush=True)
    report = {"source": source, "checkpoint": str(spec.checkpoint or "random"), "model_config": spec.model_config,
              "image_size": int(segmenter.model.image_size), "device": str(segmenter.device),
              "seconds": round(time.perf_counter() - t0, 1), "policies": {}, "structures": {}}
    for policy in policies:
        name = "metrics.csv" if len(policies) == 1 else f"metrics_{policy}.csv"
        write_csv(args.out / name, rows[policy])
        report["policies"][policy] = summary(rows[policy])
        report["structures"][policy] = _per_structure(per_class, policy)
    write_rows(args.out / "per_class.csv", per_class, ["case", "policy", "class", "structure", "step", "dice", "nsd"])
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    print(f"\ncvpr25 on {source}: {report['seconds']} s, {report['device']}; means over cases (a case over its "
          "90 s per class budget scores 0)")
    print(_challenge_table(report))
    print(f"\nwrote {args.out / 'summary.json'}, the official columns in {args.out}/metrics*.csv, per_class.csv")
    return 0


def _per_structure(per_class: list[dict], policy: str) -> dict:
    """Per structure: the official areas and finals of its own curve (the structure scored as a
    one-class case: NSD counted 0 where its DSC is 0.2 or less)."""
    from .evaluation.cvpr25 import NSD_NEEDS_DSC_ABOVE, auc

    runs: dict[tuple, list[dict]] = {}
    for r in per_class:
        if r["policy"] == policy:
            runs.setdefault((r["structure"], r["case"]), []).append(r)
    out: dict[str, dict] = {}
    for (structure, _), run in runs.items():
        run.sort(key=lambda r: r["step"])
        dsc = [r["dice"] for r in run]
        if len(dsc) < 6:
            dsc = [0.0] * (6 - len(dsc)) + dsc  # a case without boxes: step 1 scores 0
        nsd = [r["nsd"] if r["dice"] > NSD_NEEDS_DSC_ABOVE else 0.0 for r in run]
        nsd = [0.0] * (6 - len(nsd)) + nsd
        out.setdefault(structure, []).append((auc(dsc), auc(nsd), dsc[-1], nsd[-1], dsc[0]))
    import numpy as np

    return {s: dict(zip(("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final", "DSC_box"),
                        (round(float(v), 4) for v in np.mean(values, axis=0))), cases=len(values))
            for s, values in out.items()}


def _challenge_table(report: dict) -> str:
    lines = [f"{'policy':<14}{'structure':<22}{'cases':>6}{'DSC_AUC':>9}{'NSD_AUC':>9}{'DSC_Final':>11}"
             f"{'NSD_Final':>11}{'over time':>11}"]
    for policy, s in report["policies"].items():
        lines.append(f"{policy:<14}{'(case mean)':<22}{s['cases']:>6}{s['DSC_AUC']:>9.3f}{s['NSD_AUC']:>9.3f}"
                     f"{s['DSC_Final']:>11.3f}{s['NSD_Final']:>11.3f}{s['over_time']:>11}")
        for name, v in report["structures"][policy].items():
            lines.append(f"{'':<14}{name:<22}{v['cases']:>6}{v['DSC_AUC']:>9.3f}{v['NSD_AUC']:>9.3f}"
                         f"{v['DSC_Final']:>11.3f}{v['NSD_Final']:>11.3f}")
    return "\n".join(lines)


def _challenge_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m medsam2.evaluate",
                                 description="the CVPR 2025 interactive 3D challenge's loop over its .npz cases")
    ap.add_argument("--protocol", required=True, help="cvpr25")
    ap.add_argument("--npz", type=Path, required=True, help="folder of the challenge's .npz cases")
    ap.add_argument("--gts", type=Path, default=None, help="folder of .npz files with 'gts' (default: in each case)")
    _engine_arguments(ap)
    ap.add_argument("--policy", nargs="+", default=["self_sorting"], help="memory policies to compare")
    ap.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder (default: ./evaluation)")
    return ap


# the engine settings the evaluation takes, as the server's --conf of the same name (settings.py)
ENGINE_ARGUMENTS = ("checkpoint", "model_config", "image_size", "device", "intensity", "directions", "settle_slices",
                    "precision", "stop_after_empty", "largest_component")


def _engine_arguments(ap: argparse.ArgumentParser) -> None:
    """The model and engine settings, shared by `run` and the challenge form."""
    add_arguments(ap, ENGINE_ARGUMENTS, required=("checkpoint",))
    ap.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    ap.add_argument("--fill-hole-area", type=int, default=None, help="holes filled up to this many low-resolution "
                    "pixels (default: the checkpoint's postprocess; 0 = none)")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("-h", "--help"):
        return challenge(_challenge_parser().parse_args(argv))
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
    elif args.cmd == "make-real":
        from .evaluation import real_data

        try:
            volume = real_data.SETS[args.name]()
        except real_data.DataUnavailable as e:
            return _fail(str(e))
        if not args.full:
            volume = real_data.crop_to(volume, list(volume.structures.values()))
        image_id = real_data.write_datastore(volume, args.outdir)
        print(f"{image_id} {volume.image.shape} with {', '.join(volume.structures)} in {args.outdir}")
    elif args.cmd == "make-mni152":
        from .evaluation.datasets import make_mni152

        make_mni152(args.outdir, args.resolution)
        print(f"MNI152 ({args.resolution} mm) with labels brain, white_matter, lateral_ventricles in {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
