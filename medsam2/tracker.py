"""Propagation through a volume: every object, both directions, one batched step per slice.

A *lane* is one object tracked in one direction from its key slice (its first prompted slice). The
prompted slices themselves are segmented by SAM2's own prompting code (the plain predictor); then all
lanes advance together, one slice per step: for each lane the memories SAM2 would attend to are
chosen as frame indices (`memory.sam2_memory_plan`, or a memory policy's choice), lanes whose
memories have the same shape are gathered into one batch, and `track_step.GraphedSteps` runs them
(on CUDA as a replayed CUDA graph). Each slice's outputs land in `TrackBanks`, per-object tensors
indexed by slice, from which later steps gather their memories. In SAM2's own rule (`fifo`) which
memories a slice uses is known in advance, so the CPU never waits for the GPU while it queues steps.

Directions: "independent" tracks the two directions of an object as separate lanes that start from
the same prompted slices and never see each other's slices (they run side by side, batched);
"sequential" is stock SAM2's order (forward to the end, then backward from the key slice, the
backward pass also attending to the slices the forward pass tracked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .features import FrameFeatures
from .memory import frame_confidence, sam2_memory_plan
from .track_step import INPUT_NAMES, GraphedSteps, StepShape

UNTRACKED = -1e4  # mask logit of a slice no lane reached (as the plain path leaves it)


@dataclass
class Lane:
    obj: int  # which object (its rows in the banks)
    reverse: bool
    frames: list[int]  # slices to visit, in order (the key slice excluded)
    cond: tuple[int, ...]  # the object's prompted slices
    tracked: dict[int, int]  # non-conditioning slices this lane may attend to (slot -> slice), SAM2's rule
    policy: object | None = None  # a memory policy (memory.py); None = SAM2's rule
    previous: object | None = None  # the object's previous track (.lowres (K, 1, h, w), .scores, .ious)
    pos: int = 0
    empty_run: int = 0
    settled_run: int = 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.frames)

    @property
    def frame(self) -> int:
        return self.frames[self.pos]


class TrackBanks:
    """Per-object outputs of every slice: rows obj * K + k, plus one scratch row."""

    def __init__(self, objects: int, num_frames: int, maskmem_shape, ptr_dim: int, mask_shape, device):
        rows = objects * num_frames + 1
        self.num_frames = num_frames
        self.maskmem = torch.zeros((rows, *maskmem_shape), dtype=torch.bfloat16, device=device)
        self.ptr = torch.zeros((rows, ptr_dim), dtype=torch.float32, device=device)
        self.lowres = torch.full((rows, 1, *mask_shape), UNTRACKED, dtype=torch.float32, device=device)
        self.score = torch.full((rows,), math.nan, dtype=torch.float32, device=device)
        self.iou = torch.full((rows,), math.nan, dtype=torch.float32, device=device)

    def row(self, obj: int, frame: int) -> int:
        return obj * self.num_frames + frame

    def put(self, row: int, out: dict) -> None:
        """Store a SAM2 frame output (a prompted slice's, from the plain predictor)."""
        self.maskmem[row] = out["maskmem_features"][0].to(torch.bfloat16)
        self.ptr[row] = out["obj_ptr"][0].float()
        self.lowres[row] = out["pred_masks"][0].float()
        self.score[row] = out["object_score_logits"].flatten()[0].float()
        if out.get("iou") is not None:
            self.iou[row] = out["iou"].flatten()[0].float()

    def keep_previous(self, obj: int, frames: list[int], previous) -> None:
        """Fill the object's `frames` with their outputs in `previous` (an earlier track of the object)."""
        device = self.lowres.device
        rows = torch.tensor([self.row(obj, f) for f in frames], device=device)
        picked = torch.tensor(frames, device=previous.lowres.device)
        self.lowres.index_copy_(0, rows, previous.lowres[picked].to(device))
        for bank, values in ((self.score, previous.scores), (self.iou, previous.ious)):
            bank.index_copy_(0, rows, torch.as_tensor(values[frames], dtype=bank.dtype, device=device))

    def object_slices(self, obj: int) -> slice:
        return slice(obj * self.num_frames, (obj + 1) * self.num_frames)


@dataclass
class StepRows:
    """Where one batched step reads and writes, as index tensors on the device. `items` are the step's
    (lane, slice, MemoryPlan); every lane has the step's n memories and p pointers. The integers
    travel to the device as one tensor (one copy per step, not five)."""

    frames: torch.Tensor  # (B,) the slices stepped
    memories: torch.Tensor  # (B * n,) bank rows of the spatial memories, lane by lane
    memory_tpos: torch.Tensor  # (B * n,) each memory's temporal-encoding index
    pointers: torch.Tensor  # (B * p,) bank rows of the object pointers
    writes: torch.Tensor  # (B,) bank rows the step's outputs go to
    pointer_tpos: torch.Tensor  # (B * p,) each pointer's distance in slices (float)

    @classmethod
    def of(cls, banks: "TrackBanks", items: list, device) -> "StepRows":
        parts = [
            [frame for _, frame, _ in items],
            [banks.row(lane.obj, src) for lane, _, plan in items for src, _ in plan.memories],
            [t for _, _, plan in items for _, t in plan.memories],
            [banks.row(lane.obj, src) for lane, _, plan in items for src, _ in plan.pointers],
            [banks.row(lane.obj, frame) for lane, frame, _ in items],
        ]
        packed = torch.tensor([v for part in parts for v in part], dtype=torch.long).to(device, non_blocking=True)
        tpos = torch.tensor([float(d) for _, _, plan in items for _, d in plan.pointers], dtype=torch.float32)
        return cls(*torch.split(packed, [len(part) for part in parts]), tpos.to(device, non_blocking=True))


@dataclass
class TrackStats:
    steps: int = 0
    slices: int = 0
    settled: int = 0  # slices given their previous masks because the lane had settled
    shapes: dict = field(default_factory=dict)  # StepShape -> steps run with it


class LaneTracker:
    """Runs lanes over one volume's features (see module docstring)."""

    def __init__(self, model, steps: GraphedSteps, features: FrameFeatures, banks: TrackBanks,
                 video_size: tuple[int, int], stop_after_empty: int = 0, settle_slices: int = 0,
                 settle_tolerance: float = 0.01, overlap_encoding: bool = False, lookahead: int = 16):
        self.model = model
        self.steps = steps
        self.features = features
        self.banks = banks
        self.video_size = video_size  # (H, W) = (J, I)
        self.stop_after_empty = int(stop_after_empty)
        self.settle_slices = int(settle_slices)
        self.settle_tolerance = float(settle_tolerance)
        self.overlap_encoding = overlap_encoding  # encode on the features' own CUDA stream (features.py)
        self.lookahead = lookahead  # slices of encoding queued ahead of the steps that need them
        self.device = banks.lowres.device
        self.stats = TrackStats()

    def run(self, phases: list[list[Lane]]) -> TrackStats:
        for lanes in phases:
            self._run_phase([lane for lane in lanes if not lane.done])
        return self.stats

    # -------------------------------------------------------------------------------- scheduling

    def _encode_ahead(self, lanes: list[Lane]) -> None:
        """Make sure the slices the lanes need now get encoded: at once on the CPU (or when the GPU
        encoded everything up front, a no-op); queued on the encoder stream, a little ahead and in
        full batches, when overlapping encoding with propagation. Slices past a lane that stopped are
        never encoded."""
        now = [lane.frame for lane in lanes]
        encoded = self.features.encoded
        if not self.overlap_encoding:
            self.features.ensure(now)
            return
        window, seen = [], set()
        for i in range(self.lookahead):  # round robin over the lanes' next slices
            for lane in lanes:
                f = lane.frames[lane.pos + i] if lane.pos + i < len(lane.frames) else None
                if f is not None and f not in seen and not encoded[f]:
                    seen.add(f)
                    window.append(f)
        batch = self.features.batch_size
        must = max((window.index(f) + 1 for f in now if f in seen), default=0)
        count = max(must, len(window) // batch * batch)
        if count:
            self.features.schedule(window[:count])

    def _run_phase(self, lanes: list[Lane]) -> None:
        t_diff_max = max(1, min(self.banks.num_frames, self.model.max_obj_ptrs_in_encoder) - 1)
        while lanes:
            self._encode_ahead(lanes)
            groups: dict[tuple[int, int], list] = {}
            for lane in lanes:
                frame = lane.frame
                if frame in lane.cond:  # a prompted slice ahead: its output is the prompt's
                    lane.empty_run = 0
                    lane.pos += 1
                    continue
                plan = self._plan(lane, frame)
                groups.setdefault(plan.shape_key, []).append((lane, frame, plan))
            for (n, p), items in groups.items():
                self._step(StepShape(len(items), n, p, t_diff_max), items)
            lanes = [lane for lane in lanes if not lane.done]

    def _plan(self, lane: Lane, frame: int):
        slots = lane.tracked
        if lane.policy is not None:
            self.features.wait_for([frame])  # the policy reads the slice's embedding
            chosen = lane.policy.choose(lane.tracked, frame, lane.reverse, self.features.embeddings[frame])
            slots = lane.policy.slot_frames(chosen, frame, lane.reverse)
        return sam2_memory_plan(self.model, frame, lane.reverse, lane.cond, slots, self.banks.num_frames)

    # -------------------------------------------------------------------------------- one step

    def _step(self, shape: StepShape, items: list) -> None:
        banks, B, n, p = self.banks, shape.lanes, shape.memories, shape.pointers
        frames = [frame for _, frame, _ in items]
        rows = StepRows.of(banks, items, self.device)

        feats = self.features
        feats.wait_for(frames)
        specs = {f"l{i}": ((B, *feats.levels[i].shape[1:]), feats.levels[i].dtype) for i in range(3)}
        specs.update(mem=((B, n, *banks.maskmem.shape[1:]), banks.maskmem.dtype), mem_tpos=((B, n), torch.long),
                     ptr=((B, p, banks.ptr.shape[1]), banks.ptr.dtype), ptr_tpos=((B, p), torch.float32))
        buf = self.steps.inputs(shape, specs, self.device)
        for i in range(3):
            feats.gather(i, rows.frames, frames, out=buf[f"l{i}"])
        torch.index_select(banks.maskmem, 0, rows.memories, out=buf["mem"].view(B * n, *banks.maskmem.shape[1:]))
        buf["mem_tpos"].copy_(rows.memory_tpos.view(B, n))
        torch.index_select(banks.ptr, 0, rows.pointers, out=buf["ptr"].view(B * p, banks.ptr.shape[1]))
        buf["ptr_tpos"].copy_(rows.pointer_tpos.view(B, p))
        assert set(buf) == set(INPUT_NAMES)

        low_res, iou, score, obj_ptr, maskmem = self.steps.run(shape, buf)
        banks.lowres.index_copy_(0, rows.writes, low_res)
        banks.iou.index_copy_(0, rows.writes, iou)
        banks.score.index_copy_(0, rows.writes, score)
        banks.ptr.index_copy_(0, rows.writes, obj_ptr)
        banks.maskmem.index_copy_(0, rows.writes, maskmem)

        self.stats.steps += 1
        self.stats.slices += B
        self.stats.shapes[shape] = self.stats.shapes.get(shape, 0) + 1
        for lane, frame, _ in items:
            self._after(lane, frame)

    def _after(self, lane: Lane, frame: int) -> None:
        """Record the tracked slice for later memories and decide whether the lane goes on."""
        row = self.banks.row(lane.obj, frame)
        lane.tracked[frame] = frame
        if lane.policy is not None:  # the policy decides on the decoder's confidence: this waits for the GPU
            confidence = frame_confidence({"iou": self.banks.iou[row], "object_score_logits": self.banks.score[row]})
            lane.policy.observe(frame, self.banks.maskmem[row], self.features.embeddings[frame], confidence)
        lane.pos += 1
        ahead = any(f < frame if lane.reverse else f > frame for f in lane.cond)
        if self.settle_slices and lane.previous is not None and not lane.done:  # waits for the GPU too
            new, old = self.banks.lowres[row] > 0, lane.previous.lowres[frame].to(self.device) > 0
            differing, union = int((new != old).sum()), int((new | old).sum())
            lane.settled_run = lane.settled_run + 1 if differing <= self.settle_tolerance * max(union, 1) else 0
            if lane.settled_run >= self.settle_slices and not ahead:
                rest = lane.frames[lane.pos :]
                self.banks.keep_previous(lane.obj, rest, lane.previous)
                self.stats.settled += len(rest)
                lane.pos = len(lane.frames)
                return
        if self.stop_after_empty and not lane.done:  # also waits for the GPU, once per slice
            video = F.interpolate(self.banks.lowres[row : row + 1], size=self.video_size, mode="bilinear",
                                  align_corners=False)
            lane.empty_run = 0 if bool((video > 0).any()) else lane.empty_run + 1
            if lane.empty_run >= self.stop_after_empty and not ahead:
                lane.pos = len(lane.frames)
