"""`/train`'s default run, in one place.

The train task (apps/medsam2/lib/trainers/medsam2.py) builds its TrainConfig with `default_run`, from
the request's values over `DEFAULT_RUN`; the benchmarks that measure what `/train` does
(benchmarks/field_of_view.py, fine_tune_tracking.py, train_speed.py) build theirs the same way, so that
a change of default reaches both. TrainConfig's own defaults (200 steps, no limit) are the library's,
for short runs such as the tests'.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoints import ModelSpec
from .clips import Augment
from .loop import TrainConfig

# 2000 steps: what reached the targets on Colin27 in three seeds (trained structures 0.86-0.87,
# their unlabelled counterparts 0.73-0.79; docs/training.md, "How many steps the targets take"), bounded
# so that a run ends within 15 minutes: where fewer steps fit, the schedule is shortened to them (schedule.py).
DEFAULT_RUN = {
    "max_steps": 2000,
    "max_minutes": 14.0,
    # slices a clip runs through SAM 2's memory: 6, not SAM 2's 8. A step costs in proportion to its clips'
    # slices, so 14 minutes hold a third more steps of 6; on Colin27 on 2 cores the trained structures
    # came out at 0.84, 0.72, 0.73 over three seeds, against 0.80, 0.55, 0.68 with 8 (docs/training.md,
    # "Shorter clips"); 2000 steps of 6 gave what 2000 of 8 gave (0.86). A request can ask for SAM 2's 8.
    "clip_len": 6,
    "max_objects": 3,  # structures tracked together in one clip
    # which structure a clip follows first: an image, then one of its structures. By structure (each labelled
    # structure of each image as often as any other) the six MR structures of the learning curve's N = 8 were
    # learned better (0.42-0.47 against 0.28-0.35, three seeds) but the lone lung was lost in two seeds of
    # three (0.00); the mean of all eight was the same (docs/training.md, "Which structure a clip follows")
    "draw": "image",
    "clips_per_step": 2,  # over all processes (launch.py shares them among the ranks)
    "val_every": 200,  # steps between validations
}
DEFAULT_VAL_SPLIT = 0.2  # share of the labelled images held out to validate (validation.py)


def default_run(spec: ModelSpec, out_checkpoint: Path, field_of_view: str = "off", **overrides) -> TrainConfig:
    """`/train`'s TrainConfig for the model `spec` describes (its weights are the start), publishing to
    `out_checkpoint`. A model served with the field of view on ("auto") is validated with it and sees
    half its clips in windows. `overrides`: any other TrainConfig field, or one of DEFAULT_RUN's."""
    settings = {"field_of_view": field_of_view,
                "augment": Augment(p_window=0.5) if field_of_view == "auto" else Augment(),
                **DEFAULT_RUN, **overrides}
    return TrainConfig(model_config=spec.model_config, image_size=spec.image_size, init_checkpoint=spec.checkpoint,
                       preprocess=spec.preprocess, postprocess=spec.postprocess, out_checkpoint=Path(out_checkpoint),
                       **settings)
