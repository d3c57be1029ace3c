"""How the prompted slices' masks are carried through the volume: one interface, two implementations.

`Segmenter` (propagation.py) prompts each object's slices with SAM 2's own code, hands the objects to
a `Propagator`, and turns the tracks it gets back into the label. `BatchedPropagator` is the product:
every object and both directions advance together, one batched step per slice (tracker.py).
`PlainPropagator` is the reference: SAM 2's own `propagate_in_video`, one object and one direction
at a time; the tests and benchmarks use it to show that the batched one gives the same masks
(tests/test_speed_equivalence.py). Which one runs is `EngineSettings.engine`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from .prompts import ObjectPrompt
from .settings import EngineSettings
from .track_step import GraphedSteps, SliceStep
from .tracker import UNTRACKED, Lane, LaneTracker, TrackBanks


@dataclass
class Track:
    """One object's outputs on every slice of the volume."""

    lowres: torch.Tensor  # (K, 1, h, w) low-resolution mask logits; UNTRACKED where nothing reached
    scores: np.ndarray  # (K,) object-score logits (nan where not tracked)
    ious: np.ndarray  # (K,) predicted IoU (nan where not tracked)


@dataclass
class TrackRequest:
    """One object to propagate: its prompts, the SAM 2 state holding its prompted slices (segmented and
    memory-encoded), and its previous track on this session when a correction may settle early."""

    obj: ObjectPrompt
    state: dict
    previous: Track | None = None


@dataclass
class PropagationStats:
    """What a propagation did (reported in the response's `engine`); the batched propagator fills all."""

    steps: int = 0  # batched steps run
    slices: int = 0  # slices tracked, all lanes together
    step_shapes: int = 0  # distinct step shapes (one CUDA graph each, when graphed)
    settled: int = 0  # slices given their previous masks because a correction settled (settle_slices)

    def as_dict(self) -> dict:
        return dict(steps=self.steps, slices=self.slices, step_shapes=self.step_shapes, settled=self.settled)


@dataclass
class PropagationContext:
    """What a propagator needs of the engine that owns it."""

    model: object  # the VolumePredictor
    settings: EngineSettings
    autocast: Callable[[], contextlib.AbstractContextManager]  # the engine's precision for the model
    prompt: Callable[[object, ObjectPrompt, object], dict]  # (session, obj, policy factory) -> a fresh state
    dtype: torch.dtype | None = None  # bf16 autocast or None (fp32)
    use_graphs: bool = False  # CUDA graphs (GPU only)
    overlap_encoding: bool = False  # encode on a second CUDA stream during propagation (GPU only)


class Propagator(Protocol):
    def track(self, session, requests: list[TrackRequest],
              memory_policy_factory=None) -> tuple[list[Track], PropagationStats]:
        """Each request's object tracked both ways from its first prompted slice through `session`."""


class PlainPropagator:
    """SAM 2's own propagate_in_video, per object, forward then backward (the reference)."""

    def __init__(self, context: PropagationContext):
        self.context = context

    def track(self, session, requests, memory_policy_factory=None):
        return [self._track_one(session, r.obj, r.state, memory_policy_factory) for r in requests], PropagationStats()

    def _track_one(self, session, obj: ObjectPrompt, state: dict, memory_policy_factory) -> Track:
        ctx, settings = self.context, self.context.settings
        start, K = obj.frames[0], session.shape[2]
        outputs = []
        for reverse in (False, True):
            if reverse and settings.directions == "independent":  # a fresh state: the backward pass starts afresh
                with ctx.autocast():
                    state = ctx.prompt(session, obj, memory_policy_factory)
            empty_run = 0
            with ctx.autocast():
                for k, _, video_res in ctx.model.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
                    empty_run = 0 if bool((video_res > 0).any()) or k in obj.frames else empty_run + 1
                    prompted_ahead = any(f < k if reverse else f > k for f in obj.frames)
                    if settings.stop_after_empty and empty_run >= settings.stop_after_empty and not prompted_ahead:
                        break
            outputs.append(state["output_dict_per_obj"][0])
        device = ctx.model.device
        h, w = next(iter(outputs[0]["cond_frame_outputs"].values()))["pred_masks"].shape[-2:]
        track = Track(torch.full((K, 1, h, w), UNTRACKED, dtype=torch.float32, device=device),
                      np.full(K, np.nan, dtype=np.float32), np.full(K, np.nan, dtype=np.float32))
        for out_dict in outputs:
            for frames in (out_dict["non_cond_frame_outputs"], out_dict["cond_frame_outputs"]):
                for k, out in frames.items():
                    track.lowres[k] = out["pred_masks"][0].to(device).float()
                    track.scores[k] = float(out["object_score_logits"].flatten()[0])
                    if out.get("iou") is not None:
                        track.ious[k] = float(out["iou"].flatten()[0])
        return track


@dataclass
class BatchedPropagator:
    """All objects and both directions, one batched step per slice (tracker.py): the product."""

    context: PropagationContext
    _steps: GraphedSteps | None = field(default=None, init=False)
    # graphed steps share static buffers: one propagation at a time (eager steps share nothing)
    _steps_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _make_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def _graphed_steps(self, session, cond_out: dict) -> GraphedSteps:
        """The step runner, made once (its positional encodings are the same for every volume)."""
        with self._make_lock:
            if self._steps is None:
                step = SliceStep(self.context.model, session.features.pos[-1].clone(),
                                 cond_out["maskmem_pos_enc"][-1].clone())
                self._steps = GraphedSteps(step, self.context.use_graphs, self.context.dtype)
        return self._steps

    def lanes(self, requests: list[TrackRequest], conds: list[dict], num_frames: int,
              memory_policy_factory=None) -> list[list[Lane]]:
        """The phases of lanes to run: each object forward and backward from its first prompted slice,
        side by side ("independent"), or all forward, then all backward on what forward tracked
        ("sequential", stock SAM 2's order)."""
        sequential = self.context.settings.directions == "sequential"
        forward, backward = [], []
        for n, (request, cond) in enumerate(zip(requests, conds)):
            start, prompted = request.obj.frames[0], tuple(sorted(cond))
            fwd = Lane(obj=n, reverse=False, frames=list(range(start + 1, num_frames)), cond=prompted, tracked={},
                       policy=request.state.get("memory_policy"), previous=request.previous)
            # sequential: backward attends to the slices forward tracked, with the same memory policy
            bwd = Lane(obj=n, reverse=True, frames=list(range(start - 1, -1, -1)), cond=prompted,
                       tracked=fwd.tracked if sequential else {},
                       policy=fwd.policy if sequential else memory_policy_factory() if memory_policy_factory else None,
                       previous=request.previous)
            forward.append(fwd)
            backward.append(bwd)
        return [forward, backward] if sequential else [forward + backward]

    def track(self, session, requests, memory_policy_factory=None):
        ctx, settings = self.context, self.context.settings
        I, J, K = session.shape
        conds = [r.state["output_dict_per_obj"][0]["cond_frame_outputs"] for r in requests]
        first = next(iter(conds[0].values()))
        banks = TrackBanks(len(requests), K, first["maskmem_features"].shape[1:], first["obj_ptr"].shape[-1],
                           first["pred_masks"].shape[-2:], ctx.model.device)
        for n, cond in enumerate(conds):
            for k, out in cond.items():
                banks.put(banks.row(n, k), out)
        phases = self.lanes(requests, conds, K, memory_policy_factory)
        with self._steps_lock if ctx.use_graphs else contextlib.nullcontext(), ctx.autocast():
            steps = self._graphed_steps(session, first)
            tracker = LaneTracker(ctx.model, steps, session.features, banks, (J, I), settings.stop_after_empty,
                                  settings.settle_slices, settings.settle_tolerance,
                                  overlap_encoding=ctx.overlap_encoding)
            stats = tracker.run(phases)
        scores, ious = banks.score.cpu().numpy(), banks.iou.cpu().numpy()
        rows = [banks.object_slices(n) for n in range(len(requests))]
        # copies: a view would keep the whole banks (memories of every slice) alive in the session's tracks
        tracks = [Track(banks.lowres[r].clone(), scores[r], ious[r]) for r in rows]
        return tracks, PropagationStats(stats.steps, stats.slices, len(stats.shapes), stats.settled)


def make_propagator(context: PropagationContext) -> Propagator:
    return BatchedPropagator(context) if context.settings.engine == "batched" else PlainPropagator(context)
