"""Fine-tuning (or training from scratch) on labelled volumes, on one process or as one DDP rank of
several (launched by torchrun: launch.py).

One step = `clips_per_step` clips through `ClipObjective` (shared among the DDP ranks), AdamW with
linear warm-up then cosine decay (shortened to what a time limit allows: schedule.py), gradient
clipping, bf16 autocast on CUDA. Validation runs the engine exactly as the infer task does (one click
at the most interior point of each structure's largest slice, propagated both ways) and reports Dice. The best weights are published atomically at the end of a successful run only, so
a failed or stopped run never changes what the server serves.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checkpoints import ModelSpec, build_model, save_checkpoint
from ..clicks import interior_point, largest_slice
from ..frames import Preprocess
from ..postprocess import Postprocess
from ..propagation import Segmenter, pick_device
from ..settings import EngineSettings
from ..prompts import ObjectPrompt
from .clips import Augment, ClipSampler, LabelledVolume, ReplaySampler
from .keep_start import StartAnswers, UnlabelledFrames
from .objective import ClipObjective, LossWeights
from .prompt_sim import PromptSettings
from .schedule import StepPlan

clock = time.monotonic  # a run's durations (its time limit, its plan); tests give it a clock of their own


@dataclass
class TrainConfig:
    model_config: str
    out_checkpoint: Path
    init_checkpoint: Path | None = None
    image_size: int | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)  # the checkpoint's input pipeline (frames.py)
    postprocess: Postprocess = field(default_factory=Postprocess)  # kept in the published file's meta
    augment: Augment = field(default_factory=Augment)  # how clips differ from their volumes (clips.py)
    field_of_view: str = "off"  # the engine's field of view validation segments with (settings.EngineSettings)
    replay_share: float = 0.0  # share of clips drawn from the replay pairs given to train() (clips.ReplaySampler)
    # L2-SP (Li et al. 2018), against forgetting without the old data: after each step every trainable
    # weight is pulled back toward its value at the start by lr x anchor x (w - w_start), AdamW's
    # decoupled decay aimed at the starting weights instead of zero. A weight then drifts at most about
    # 1/anchor from where it started (Adam moves it about lr a step). 0: off; needs an init_checkpoint
    anchor: float = 0.0
    # learning without forgetting (keep_start.py): the share of clips on which the model also answers random
    # clicks (on the unlabelled images given to train(), else outside the labels) as the weights it started
    # from answer them. 0: off; needs an init_checkpoint
    keep_start: float = 0.0
    # slices each keep_start draw is answered on: the clicked one, then those tracked after it by memory. 4:
    # a run forgets tracking more than the clicked slice, and the clicked slice alone kept less (keep_start.py)
    keep_start_slices: int = 4
    # leave out keep_start clicks on something that looks like a labelled structure to the start's image
    # encoder (keep_start.LabelledLook): keeping the start's answers there keeps the run from learning them
    keep_start_spares_labelled: bool = True
    promote_margin: float = 0.01  # a candidate is published only if its validation Dice beats the served model's by this
    max_steps: int = 200
    max_minutes: float | None = None
    lr: float | None = None  # default: default_lr (3e-4 from scratch or for a small model, 5e-5 for a large one)
    image_encoder_lr_scale: float = 1.0  # the image encoder's lr relative to `lr` (SAM 2 fine-tuning: 0.6)
    memory_lr_scale: float | None = None  # memory attention's and memory encoder's lr relative to `lr`; None: TrackingRecipe
    weight_decay: float = 0.01  # on weights; biases, norms and embeddings get none (SAM 2's groups)
    warmup_steps: int = 20
    grad_clip: float = 1.0
    clip_len: int = 8
    max_objects: int = 3
    clips_per_step: int = 2  # a step's clips, over all DDP ranks: each rank runs its share, at least one
    p_exit: float = 0.5  # clips that start near a structure's end and run past it (learning to stop)
    draw: str = "image"  # how a clip's first structure is drawn: "structure" or "image" (clips.DRAWS)
    val_every: int = 50
    train_modules: str = "auto"  # auto | all | no_image_encoder
    # only the parameters whose names start with one of these train (with train_modules' image-encoder
    # rule on top): for diagnostics such as benchmarks/demo_clicked_slice (the mask decoder alone, say)
    train_only: tuple[str, ...] = ()
    seed: int = 0
    device: str | None = None
    intensity: str | None = None
    weights: LossWeights = field(default_factory=LossWeights)
    prompts: PromptSettings = field(default_factory=PromptSettings)


@dataclass
class TrainResult:
    history: list[dict]
    best_dice: float
    initial_dice: float
    published: Path | None
    steps: int
    seconds: float
    stopped: bool = False
    not_promoted: str = ""  # why a finished run published nothing ("" when it published or was stopped)
    rank_digests: list[str] = field(default_factory=list)  # sha256 of each rank's weights after the last step
    # what the run chose where its settings left it to the model (default_lr, configure_trainable,
    # TrackingRecipe), so that a run's record says how it trained
    chosen: dict = field(default_factory=dict)


def weights_digest(model) -> str:
    """sha256 of the model's weights (parameters and buffers, in order): equal on every DDP rank."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _from_rank0(value: int, world_size: int) -> int:
    """Rank 0's value, for every rank (ranks must run the same number of steps: DDP)."""
    if world_size <= 1:
        return value
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"  # NCCL moves GPU tensors only
    flag = torch.tensor([int(value)], dtype=torch.int64, device=device)
    torch.distributed.broadcast(flag, src=0)
    return int(flag.item())


def _agree(stop: bool, world_size: int) -> bool:
    """Rank 0's decision to stop, for every rank."""
    return bool(_from_rank0(int(stop), world_size))


# A model this small (this project's own configs, the demo model) trains like one trained from scratch:
# every module at 3e-4. From a fine-tuned demo model's start, the image encoder frozen at 5e-5 (the
# defaults for a large pretrained SAM 2) fitted none of four real structures in 300 steps (Dice
# 0.00-0.38); all modules at 3e-4 fitted them (0.82-0.90 in 1000 steps): docs/training.md.
SMALL_MODEL_PARAMETERS = 10_000_000


def is_small(model) -> bool:
    return sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS


def keeps_sam2_recipe(model, from_checkpoint: bool) -> bool:
    """A large pretrained SAM 2 / MedSAM2 fine-tunes as SAM 2 does (lr, frozen encoder, memory); a small
    model, or one from scratch, as the demo model was trained."""
    return from_checkpoint and not is_small(model)


def default_lr(model, from_checkpoint: bool) -> float:
    """3e-4 from scratch or for a small model; 5e-5 for a large pretrained one (SAM 2 / MedSAM2 fine-tuning)."""
    return 5e-5 if keeps_sam2_recipe(model, from_checkpoint) else 3e-4


@dataclass(frozen=True)
class TrackingRecipe:
    """How SAM 2's memory learns in a run, unless the run's settings say otherwise.

    A small model (the demo model) fine-tuned on real structures tracked them badly: from a slice
    prompted with its true mask, the left putamen's next slice was already the caudate beside it. It
    learns as the demo model's own stage 2 learned to track: half the clips remember their tracked
    slices from the true masks (clean memories to learn from), and memory attention and the memory
    encoder train at 3 times the lr. A large pretrained SAM 2 or MedSAM2 keeps SAM 2's own recipe.
    Measured: benchmarks/fine_tune_tracking.py, docs/training.md."""

    p_true_memory: float  # PromptSettings.p_true_memory
    memory_lr_scale: float  # TrainConfig.memory_lr_scale

    @classmethod
    def for_model(cls, model, from_checkpoint: bool) -> "TrackingRecipe":
        return cls(0.0, 1.0) if keeps_sam2_recipe(model, from_checkpoint) else cls(0.5, 3.0)


def configure_trainable(model, train_modules: str, from_checkpoint: bool, train_only: tuple[str, ...] = ()) -> bool:
    """Freeze parts per `train_modules`; returns whether the image encoder trains. `auto`: all modules
    from scratch or for a small model; a large pretrained model keeps its image encoder (as Medical
    SAM 2 trains; its backward pass is also most of a step's cost on a CPU). `train_only`: name
    prefixes; every other parameter is frozen too."""
    mode = train_modules
    if mode == "auto":
        mode = "no_image_encoder" if keeps_sam2_recipe(model, from_checkpoint) else "all"
    if mode not in ("all", "no_image_encoder"):
        raise ValueError(f"train_modules must be auto, all or no_image_encoder, got {train_modules!r}")
    for name, p in model.named_parameters():
        p.requires_grad_((mode == "all" or not name.startswith("image_encoder."))
                         and (not train_only or name.startswith(train_only)))
    return any(p.requires_grad for p in model.image_encoder.parameters())


NO_DECAY = ("bias", "norm", "pos_embed", "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr",
            "no_obj_embed_spatial", "rel_pos")


MEMORY_MODULES = ("memory_attention.", "memory_encoder.")


def param_groups(model, lr: float, weight_decay: float, image_encoder_lr_scale: float = 1.0,
                 memory_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups as SAM 2's training sets them: weight decay on weights only (not on biases, norm
    layers, positional or learned embeddings), the image encoder and the memory modules each at a
    learning rate of their own (SAM 2's vision_lr; MedSAM-2 trains its memory at another rate too)."""
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and not any(t in name for t in NO_DECAY)
        scale = (image_encoder_lr_scale if name.startswith("image_encoder.")
                 else memory_lr_scale if name.startswith(MEMORY_MODULES) else 1.0)
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0}
            for (scale, decay), ps in groups.items()]


class StartAnchor:
    """TrainConfig.anchor: the trainable weights as the run found them, and the pull back toward them."""

    def __init__(self, opt: torch.optim.Optimizer, strength: float):
        self.opt, self.strength = opt, float(strength)
        self.start = {p: p.detach().clone() for group in opt.param_groups for p in group["params"]}

    @torch.no_grad()
    def pull(self) -> None:
        """After `opt.step()`, at the lr that step used: w -= lr x strength x (w - w_start)."""
        for group in self.opt.param_groups:
            rate = group["lr"] * self.strength
            for p in group["params"]:
                p.sub_(rate * (p - self.start[p]))


def one_click_dice(model, volumes: list[tuple[np.ndarray, np.ndarray]], intensity=None,
                   field_of_view: str = "off") -> float:
    """Mean Dice over every structure of every volume, one click each, through the engine."""
    seg = Segmenter(model, EngineSettings(intensity=intensity or "auto", field_of_view=field_of_view))
    was_training = model.training
    model.eval()
    scores = []
    try:
        for image, label in volumes:
            session = seg.open(image)
            for value in (int(v) for v in np.unique(label) if v != 0):
                truth = label == value
                k = largest_slice(truth)
                x, y = interior_point(truth[:, :, k].T)  # frame rows are J, columns I
                obj = ObjectPrompt(label=str(value), clicks={k: [(x + 0.5, y + 0.5, 1)]})
                pred = seg.segment(session, [obj]).label > 0
                denom = pred.sum() + truth.sum()
                scores.append(2.0 * (pred & truth).sum() / denom if denom else 1.0)
    finally:
        model.train(was_training)
    return float(np.mean(scores)) if scores else float("nan")


def train_step(objective: ClipObjective, sampler: ClipSampler, rng: np.random.Generator, n_clips: int, autocast):
    """Mean loss over `n_clips` clips, back-propagated; returns the loss parts as floats."""
    parts_sum: dict[str, float] = {}
    for _ in range(n_clips):
        clip = sampler.sample()
        with autocast():
            parts = objective(clip, rng)
        if parts["loss"].requires_grad:  # a clip prompted only with true masks has nothing to learn from
            (parts["loss"] / n_clips).backward()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + float(v.detach()) / n_clips
    return parts_sum


@dataclass
class RankSetup:
    """What one rank of a run trains with, built from its TrainConfig by `setup_rank`: `train` steps it,
    and benchmarks/step_cost.py times its parts one by one."""

    model: torch.nn.Module
    objective: ClipObjective
    wrapped: torch.nn.Module  # the objective, in DistributedDataParallel where the run has several ranks
    opt: torch.optim.Optimizer
    params: list  # the trainable parameters (their gradients are clipped together)
    sampler: ClipSampler | ReplaySampler
    rng: np.random.Generator  # the prompts' and corrections' draws
    device: torch.device
    anchor: StartAnchor | None
    chosen: dict  # what the run chose where cfg left it to the model (TrainResult.chosen)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()


def setup_rank(cfg: TrainConfig, train_pairs, rank: int = 0, world_size: int = 1, replay_pairs=None,
               unlabelled_images=None) -> RankSetup:
    """The model from `cfg.init_checkpoint` with the modules that train, its objective, AdamW's groups and
    the clips of `train_pairs` (and of `replay_pairs`, `unlabelled_images`: see `train`) for rank `rank`."""
    if cfg.anchor and cfg.init_checkpoint is None:
        raise ValueError("anchor pulls the weights back toward a checkpoint's: it needs one to start from")
    if cfg.keep_start and cfg.init_checkpoint is None:
        raise ValueError("keep_start keeps a checkpoint's answers: it needs one to start from")
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    spec = ModelSpec(cfg.model_config, cfg.image_size, cfg.init_checkpoint, cfg.preprocess, cfg.postprocess)
    model = build_model(spec, device=device, for_training=True)
    encoder_trains = configure_trainable(model, cfg.train_modules, cfg.init_checkpoint is not None, cfg.train_only)
    recipe = TrackingRecipe.for_model(model, cfg.init_checkpoint is not None)
    prompts = cfg.prompts if cfg.prompts.p_true_memory is not None else \
        replace(cfg.prompts, p_true_memory=recipe.p_true_memory)
    memory_lr_scale = recipe.memory_lr_scale if cfg.memory_lr_scale is None else cfg.memory_lr_scale
    volumes = [LabelledVolume(img, lab, cfg.intensity, model.preprocess) for img, lab in train_pairs]
    unlabelled = UnlabelledFrames(unlabelled_images, model.image_size, cfg.intensity, model.preprocess) \
        if cfg.keep_start and unlabelled_images else None
    start = StartAnswers(model, cfg.keep_start, unlabelled, slices=cfg.keep_start_slices,
                         labelled=volumes if cfg.keep_start_spares_labelled else None) if cfg.keep_start else None
    objective = ClipObjective(model, cfg.weights, prompts, train_image_encoder=encoder_trains, start=start)
    wrapped = objective
    if world_size > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    lr = cfg.lr or default_lr(model, cfg.init_checkpoint is not None)
    opt = torch.optim.AdamW(param_groups(model, lr, cfg.weight_decay, cfg.image_encoder_lr_scale, memory_lr_scale))
    sampler = ClipSampler(volumes, model.image_size, cfg.clip_len, cfg.max_objects, seed=cfg.seed + 1000 * rank,
                          p_exit=cfg.p_exit, preprocess=model.preprocess, augment=cfg.augment, draw=cfg.draw)
    if replay_pairs and cfg.replay_share > 0:
        replay = ClipSampler([LabelledVolume(img, lab, cfg.intensity, model.preprocess) for img, lab in replay_pairs],
                             model.image_size, cfg.clip_len, cfg.max_objects, seed=cfg.seed + 1000 * rank + 7,
                             p_exit=cfg.p_exit, preprocess=model.preprocess, augment=cfg.augment)
        sampler = ReplaySampler(sampler, replay, cfg.replay_share, seed=cfg.seed + 1000 * rank + 11)
    chosen = {"lr": lr, "image_encoder_trains": encoder_trains, "memory_lr_scale": memory_lr_scale,
              "p_true_memory": prompts.p_true_memory}
    return RankSetup(model, objective, wrapped, opt, [p for p in model.parameters() if p.requires_grad], sampler,
                     np.random.default_rng(cfg.seed + 1000 * rank), device,
                     StartAnchor(opt, cfg.anchor) if cfg.anchor else None, chosen)


def train(cfg: TrainConfig, train_pairs, val_pairs, log: Callable[[dict], None] = print,
          should_stop: Callable[[], bool] = lambda: False, rank: int = 0, world_size: int = 1,
          replay_pairs=None, score: Callable[[torch.nn.Module], float] | None = None,
          unlabelled_images=None) -> TrainResult:
    """Train on (image, label) pairs; with world_size > 1 this is one DDP rank (process group set up).
    `replay_pairs`: what the model was trained on before, drawn for `cfg.replay_share` of the clips.
    `unlabelled_images`: images no one labelled, whose answers `cfg.keep_start` keeps (keep_start.py).
    `score(model)`: how the weights are judged at each validation, higher is better (default: the
    one-click Dice over `val_pairs`); it runs with the model in eval mode, only when `val_pairs` is given."""
    t0 = clock()
    run = setup_rank(cfg, train_pairs, rank, world_size, replay_pairs, unlabelled_images)
    model, opt = run.model, run.opt
    plan = StepPlan(cfg.max_steps, cfg.max_minutes, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, plan.factor)
    is_main = rank == 0

    def validate() -> float:
        if score is None:
            return one_click_dice(model, val_pairs, cfg.intensity, cfg.field_of_view)
        was_training = model.training
        model.eval()
        try:
            return float(score(model))
        finally:
            model.train(was_training)

    history: list[dict] = []
    t_val = clock()
    initial = validate() if is_main and val_pairs else float("nan")
    validation_s = clock() - t_val
    best, best_state = initial, None
    if is_main:
        log({"step": 0, "val_dice": initial, "elapsed_s": round(clock() - t0, 1)})
    clips_per_rank = -(-cfg.clips_per_step // world_size)  # DDP averages the ranks' gradients: the step's mean
    step, stopped, t_first, validating_s = 0, False, clock(), 0.0
    for step in range(1, cfg.max_steps + 1):
        opt.zero_grad(set_to_none=True)
        parts = train_step(run.wrapped, run.sampler, run.rng, clips_per_rank, run.autocast)
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
        opt.step()
        if run.anchor is not None:
            run.anchor.pull()
        entry = {"step": step}
        if step == 1:
            t_first = clock()  # the first step's one-off costs are not timed
        if plan.due(step):  # before sched.step(), so that the next lr follows the plan
            step_s = (clock() - t_first - validating_s) / (step - 1)  # validations are counted apart
            planned = plan.fit(step, step_s, 60 * cfg.max_minutes - (clock() - t0),
                               validation_s if is_main and val_pairs else 0.0, cfg.val_every)
            plan.total = _from_rank0(planned, world_size)
            entry["planned_steps"] = plan.total
        sched.step()
        entry.update({"lr": sched.get_last_lr()[0], **{k: round(v, 5) for k, v in parts.items()}})
        out_of_time = _agree(cfg.max_minutes is not None and clock() - t0 > 60 * cfg.max_minutes, world_size)
        stop = _agree(should_stop(), world_size)
        last = step >= plan.total
        if is_main and val_pairs and (step % cfg.val_every == 0 or last or out_of_time):
            t_val = clock()
            entry["val_dice"] = validate()
            validating_s += clock() - t_val
            if not (entry["val_dice"] <= best):  # also true when best is nan
                best, best_state = entry["val_dice"], copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
        entry["elapsed_s"] = round(clock() - t0, 1)
        history.append(entry)
        if is_main:
            log(entry)
        if stop:
            stopped = True
            break
        if out_of_time or last:
            break

    digests = []
    if world_size > 1:  # DDP averages the gradients: every rank must hold the very same weights
        digests = [None] * world_size
        torch.distributed.all_gather_object(digests, weights_digest(model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"the ranks' weights differ after {step} steps ({digests}); nothing was published")
    published, not_promoted = None, ""
    # the served model's score on the validation images is `initial` (measured before the first step)
    beats = best_state is not None and (not math.isfinite(initial) or best >= initial + cfg.promote_margin)
    if is_main and not stopped and val_pairs and not beats:
        not_promoted = (f"the best candidate (validation Dice {best:.3f}) does not beat the served model "
                        f"({initial:.3f}) by {cfg.promote_margin}: nothing was published")
    if is_main and not stopped:
        if beats:
            model.load_state_dict(best_state)
        if beats or not val_pairs:
            if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
                raise FloatingPointError("training diverged: the weights are no longer finite numbers; nothing was "
                                         "published (try a lower lr)")
            published = save_checkpoint(model, cfg.out_checkpoint, meta={
                "model_config": cfg.model_config, "image_size": int(model.image_size), "steps": step,
                "val_dice": best, "initial_val_dice": initial, "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            })
    chosen = {**run.chosen, "planned_steps": plan.total, "clips_per_rank": clips_per_rank}
    return TrainResult(history, best, initial, published, step, clock() - t0, stopped, not_promoted, digests, chosen)
