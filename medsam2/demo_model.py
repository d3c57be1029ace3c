"""The demo model: a small SAM 2 trained from scratch here that follows a clicked structure by memory.

No SAM2 or MedSAM2 weights can be downloaded where this project is built and tested, yet what the
product does (a click on one slice gives that structure through the volume, carried by SAM 2's
memory) must be shown and tested with a model. This trains the `sam2.1_hiera_nano` config (3.6 M
parameters, 128 px) with the project's own trainer on generated data where only memory can tell
structures apart (memory_phantoms: identical twins that move and turn, fading structures, gaps,
drifting contrast) plus the organ/vessel/lesion phantoms, in two stages: first single prompted
slices (the decoder learns to segment the structure under the click, not every structure of its
look: cheap, and without it the memory has nothing right to remember), then clips of 8 slices
prompted on their first slice (the memory learns to carry that structure on). The result ships in the repository (model/demo/, fp16, its sha256 in the manifest):
`python -m medsam2 fetch demo` verifies it, `--conf checkpoint demo` serves it, and
`python -m medsam2 demo-model model/demo/medsam2_demo.pt` makes it again (README: "Demo model").
It knows phantoms only: never use it on patient images.

Why this recipe, and what it does on held-out cases, is in docs/demo-model.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import atomic_torch_save
from .memory_phantoms import make_memory_phantom
from .phantoms import make_phantom
from .training.clips import Augment
from .training.loop import TrainConfig, TrainResult, train
from .training.objective import LossWeights
from .training.prompt_sim import PromptSettings

DEMO_CONFIG = "sam2.1_hiera_nano"
PROMPT_STEPS = 1200  # stage 1: single prompted slices
TRACK_STEPS = 2400  # stage 2: clips of 8 slices
SHAPE = (64, 64, 32)
TWIN_KINDS = ("twins", "twins", "twins+fade", "twins+gap", "twins+drift", "twins+fade+drift", "twins+gap+drift")
# seeds: training twins 1000.., training phantoms 10.. (the bundled sample study uses 0-2, the tests and
# the accuracy benchmark 100+ for phantoms and 5000+ for memory phantoms: kept apart from validation)
TRAIN_TWINS = range(1000, 1032)
TRAIN_PHANTOMS = range(10, 18)
VALIDATION = (("twins", 9000), ("twins+drift", 9001), ("twins+gap", 9002), ("phantom", 900))


def training_pairs():
    pairs = [make_memory_phantom(TWIN_KINDS[n % len(TWIN_KINDS)], SHAPE, seed=s) for n, s in enumerate(TRAIN_TWINS)]
    pairs += [make_memory_phantom("phantom+fade", SHAPE, seed=s) if n % 4 == 0 else make_phantom(SHAPE, seed=s)
              for n, s in enumerate(TRAIN_PHANTOMS)]
    return [(p.image, p.label) for p in pairs]


def validation_pairs():
    cases = [make_phantom(SHAPE, seed=s) if kind == "phantom" else make_memory_phantom(kind, SHAPE, seed=s)
             for kind, s in VALIDATION]
    return [(p.image, p.label) for p in cases]


def stage_configs(out: Path, seed: int = 0, prompt_steps: int = PROMPT_STEPS, track_steps: int = TRACK_STEPS,
                  minutes: float | None = None) -> tuple[TrainConfig, TrainConfig]:
    """The two stages' settings (why each value: docs/demo-model.md). Stage 2 starts from stage 1's
    weights, written next to `out`."""
    out = Path(out)
    common = dict(model_config=DEMO_CONFIG, image_encoder_lr_scale=0.6, weight_decay=0.1, grad_clip=1.0,
                  warmup_steps=30, max_objects=2, p_exit=0.3, train_modules="all", seed=seed, weights=LossWeights(),
                  augment=Augment.none())
    prompting = TrainConfig(out_checkpoint=out.with_name(out.stem + "_stage1.pt"), max_steps=prompt_steps, lr=5e-4,
                            clip_len=1, clips_per_step=4, val_every=prompt_steps, max_minutes=minutes,
                            prompts=PromptSettings(max_corrections=3), **common)
    tracking = TrainConfig(out_checkpoint=out, init_checkpoint=prompting.out_checkpoint, max_steps=track_steps,
                           lr=3e-4, memory_lr_scale=3.0, clip_len=8, clips_per_step=2, val_every=250, max_minutes=minutes,
                           prompts=PromptSettings(p_true_memory=0.5, p_two_cond_frames=0.1, max_corrections=2),
                           **common)
    return prompting, tracking


def train_demo_model(out: Path, seed: int = 0, log=print, prompt_steps: int = PROMPT_STEPS,
                     track_steps: int = TRACK_STEPS, minutes: float | None = None) -> TrainResult:
    """Train both stages and write the best weights of stage 2 to `out` in fp16 (see `compact`).
    `minutes` bounds each stage's time (for smoke runs)."""
    prompting, tracking = stage_configs(out, seed, prompt_steps, track_steps, minutes)
    pairs = training_pairs()
    train(prompting, pairs, [], log=lambda e: log({"stage": 1, **e}))  # no validation: the last weights
    result = train(tracking, pairs, validation_pairs(), log=lambda e: log({"stage": 2, **e}))
    prompting.out_checkpoint.unlink(missing_ok=True)
    if result.published is not None:
        compact(result.published)
    return result


def compact(path: Path) -> Path:
    """Rewrite a checkpoint with its floating-point tensors in fp16 (half the size; they load into the
    fp32 model unchanged apart from rounding, and every figure of the demo model is measured on this file)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    blob["model"] = {k: v.half() if v.is_floating_point() else v for k, v in blob["model"].items()}
    blob.setdefault("meta", {})["stored_as"] = "float16"
    return atomic_torch_save(blob, path)
