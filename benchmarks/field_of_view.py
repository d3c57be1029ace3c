"""Structure size against the model's input size, on a real MR: what a field of view around the
structure does, in training and at the click.

A demo-model slice is 128 px. Colin27's slices are 181 x 217 at 1 mm, so a caudate about 10 mm across
is about 6 px at the model's input when the whole slice is shown, and about 13 px when the slice is
cropped to the subcortical structures plus 10 mm (the crop the learning curve uses).

Fine-tuning runs from the demo model, each `/train`'s defaults (1000 steps, lr 3e-4, mirror), on
Colin27's left caudate, putamen, thalamus and hippocampus:
- `full`: the whole volume, as an annotator's saved label is;
- `full+window`: the same, as `/train` runs when the server's field of view is on: half the clips
  shown in the window the engine would segment the structure in (`Augment.p_window`);
- `crop`: the volume cropped to the subcortical structures plus 10 mm (the learning curve's crop).

Then every subcortical structure, both sides, is clicked once (the interior point of its largest
slice) on three views:
- `full`: the whole volume, the field of view off;
- `crop`: the cropped volume (the oracle: the crop is made from the ground truth);
- `auto`: the whole volume with the engine's field of view on (settings.EngineSettings.field_of_view).

    python -m benchmarks.field_of_view [--work bench-results/field_of_view] [--steps 1000] [--train full crop]

Prints one table and writes bench-results/field_of_view.json. Each training run is about 10 minutes
on 2 cores; a model already in --work is reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results import write_results  # noqa: E402
from medsam2.evaluation import real_data  # noqa: E402

TRAINED = ("Caudate_L", "Putamen_L", "Thalamus_L", "Hippocampus_L")


def volumes() -> dict[str, real_data.RealVolume]:
    colin = real_data.colin27()
    return {"full": colin, "crop": real_data.crop_to(colin, list(colin.structures.values()), margin_mm=10)}


def trained_label(volume: real_data.RealVolume) -> np.ndarray:
    """`volume`'s label with only the TRAINED structures kept: what an annotator saved."""
    keep = [volume.structures[n] for n in TRAINED]
    return np.where(np.isin(volume.label, keep), volume.label, 0)


def write_trained_volume(volume: real_data.RealVolume, folder: Path) -> list[tuple[Path, Path]]:
    """`volume` and its TRAINED structures as NIfTI files in `folder`: the (image, label) pairs of a
    training job (training/launch.write_job), as `/train` reads saved labels."""
    import nibabel as nib

    image_path, label_path = folder / "image.nii.gz", folder / "label.nii.gz"
    nib.save(nib.Nifti1Image(volume.image.astype(np.float32), np.eye(4)), image_path)
    nib.save(nib.Nifti1Image(trained_label(volume).astype(np.int16), np.eye(4)), label_path)
    return [(image_path, label_path)]


@dataclass
class JobRun:
    """What a run through launch.py gave."""

    result: dict  # the run's result file (launch.result_path): steps, history, chosen settings
    seconds: float  # its wall time, start-up included
    threads_each: int  # OMP_NUM_THREADS of each process


@dataclass
class StartedJob:
    """A run through launch.py, started and not waited for (start_job)."""

    job: Path  # its job file
    proc: subprocess.Popen  # launch.py, or torchrun over it
    threads_each: int  # OMP_NUM_THREADS of each process
    started: float  # time.perf_counter() at its start

    def finished(self) -> JobRun:
        """The run's result once its process has ended; CalledProcessError where it failed."""
        from medsam2.training.launch import result_path

        if self.proc.wait():
            raise subprocess.CalledProcessError(self.proc.returncode, self.proc.args)
        return JobRun(json.loads(result_path(self.job).read_text()), time.perf_counter() - self.started,
                      self.threads_each)


def start_job(cfg, files, folder: Path, processes: int, quiet: bool = False, name: str | None = None,
              threads: int | None = None) -> StartedJob:
    """`cfg` on `files` as `/train` runs it on a machine without GPUs, started: a job in `folder` (named
    `name`, default job_<processes>), then launch.py (under torchrun when `processes` > 1), each process
    with `threads` threads (default: its share of this one's). `quiet`: the run's output is dropped."""
    from medsam2.training.launch import one_machine_command, write_job

    job = write_job(folder / f"{name or f'job_{processes}'}.json", cfg, files, [])
    cmd, env = one_machine_command(job, processes)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.DEVNULL if quiet else None
    return StartedJob(job, subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=out),
                      int(env["OMP_NUM_THREADS"]), time.perf_counter())


def run_job(cfg, files, folder: Path, processes: int, each_second=None, quiet: bool = False) -> JobRun:
    """start_job, then wait for it: `each_second(pid)` is called every second while it runs."""
    started = start_job(cfg, files, folder, processes, quiet)
    while started.proc.poll() is None:
        if each_second:
            each_second(started.proc.pid)
        time.sleep(1.0)
    return started.finished()


def default_config(out: Path, steps: int, field_of_view: str = "off", **overrides):
    """`/train`'s default TrainConfig (medsam2/training/defaults.py) from the demo model, for `steps` steps,
    as `/train` runs it with the server's field of view `field_of_view`, with `overrides` (with_overrides)."""
    from medsam2.checkpoints import resolve_spec
    from medsam2.training.defaults import default_run

    return with_overrides(default_run(resolve_spec("demo", None, None, REPO / "model"), out, field_of_view,
                                      max_steps=steps), overrides)


def with_overrides(cfg, overrides: dict):
    """`cfg` with `overrides`' values, each named as a TrainConfig field (`memory_lr_scale`) or as a field
    of one of its settings (`prompts.p_true_memory`, `weights.iou`): the benchmarks' recipes."""
    from dataclasses import replace

    nested: dict[str, dict] = {}
    for key, value in overrides.items():
        if "." in key:
            outer, inner = key.split(".", 1)
            nested.setdefault(outer, {})[inner] = value
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if "." not in k})
    return replace(cfg, **{outer: replace(getattr(cfg, outer), **values) for outer, values in nested.items()})


def train_model(volume: real_data.RealVolume, out: Path, steps: int, windows: bool, **overrides) -> dict:
    """`/train`'s defaults on the trained structures of `volume`; with `windows`, as `/train` runs when
    the server's field of view is on (half the clips in windows); `overrides`: other TrainConfig fields
    (benchmarks/fine_tune_tracking.py compares recipes)."""
    from medsam2.training.loop import train

    label = trained_label(volume)
    cfg = default_config(out, steps, "auto" if windows else "off", **overrides)

    def log(entry):
        if entry.get("step", 0) % 100 == 0:
            print(entry, flush=True)

    result = train(cfg, [(volume.image, label)], [], log=log)
    return {"steps": result.steps, "seconds": round(result.seconds, 1)}


def segmenter_for(checkpoint: Path, field_of_view: str = "off"):
    """The engine on a demo-model checkpoint (the demo model's config), with the field of view as given."""
    from medsam2.checkpoints import build_model, resolve_spec
    from medsam2.propagation import Segmenter
    from medsam2.settings import EngineSettings

    demo = resolve_spec("demo", None, None, REPO / "model")
    return Segmenter(build_model(resolve_spec(str(checkpoint), demo.model_config, None, REPO / "model")),
                     EngineSettings(field_of_view=field_of_view))


def click_all(checkpoint: Path, volume: real_data.RealVolume, field_of_view: str) -> dict[str, float]:
    """One click per structure of `volume` (demo_breadth's click: the interior of its largest slice)."""
    from benchmarks.demo_breadth import structure_rows
    from medsam2.evaluation.runner import quiet_propagation

    segmenter = segmenter_for(checkpoint, field_of_view)
    structures = {name: [value] for name, value in sorted(volume.structures.items())}
    with quiet_propagation():
        return structure_rows(segmenter, volume.image, structures, volume.label)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "bench-results" / "field_of_view")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--train", nargs="*", default=["full", "full+window", "crop"],
                    help="training runs: on the full or cropped volume, +window: as /train with the field of view on")
    ap.add_argument("--views", nargs="*", default=["full", "crop", "auto"], help="views to click on")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "field_of_view.json")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    vols = volumes()
    models = {"demo": REPO / "model" / "demo" / "medsam2_demo.pt"}
    runs = {}
    for view in args.train:
        out = args.work / f"trained_on_{view}.pt"
        if not out.exists():
            runs[view] = train_model(vols[view.split("+")[0]], out, args.steps, windows=view.endswith("+window"))
        models[f"trained on {view}"] = out
    results = {}
    for name, path in models.items():
        for view in args.views:
            t0 = time.perf_counter()
            volume = vols["full" if view == "auto" else view]
            results[f"{name} / {view}"] = {"dice": click_all(path, volume, "auto" if view == "auto" else "off"),
                                           "seconds": round(time.perf_counter() - t0, 1)}
            print(name, view, f"{results[f'{name} / {view}']['seconds']} s", flush=True)
    names = list(results)
    structures = sorted(next(iter(results.values()))["dice"])
    trained = [s for s in structures if s in TRAINED]
    counterparts = [s.replace("_L", "_R") for s in trained]
    never = [s for s in structures if s not in trained and s not in counterparts]
    rows = [("model / view", "trained (L)", "counterparts (R)", "never labelled")]
    for n in names:
        d = results[n]["dice"]
        rows.append((n, *(f"{np.mean([d[s] for s in group]):.2f}" for group in (trained, counterparts, never))))
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{width}}  " + "  ".join(f"{c:>16}" for c in r[1:]))
    write_results(args.out, {"training_runs": runs, "results": results,
                             "groups": {"trained": trained, "counterparts": counterparts, "never": never}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
