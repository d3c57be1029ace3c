"""One propagation step (one slice of each lane) as a function of tensors, batched and CUDA-graphed.

SAM2's `track_step` finds its memories in Python dicts, so it segments one slice of one object at a
time and launches a few hundred small kernels per slice: on a GPU, propagation is bound by launch
overhead, not arithmetic. `SliceStep` takes the memories already gathered into tensors (tracker.py
does that) for a batch of lanes (an object tracked in one direction) and calls SAM2's own modules in
the order `track_step` does: memory attention over the spatial memories and object pointers, the
SAM heads, then the memory encoder on the new mask. For a given number of lanes, memories and
pointers every shape is fixed, so on CUDA each such shape is captured once as a CUDA graph and
replayed: one launch per step. The numbers are SAM2's (same modules, same dtypes); only the batching
and the order of float operations can differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sam2.modeling.sam2_utils import get_1d_sine_pe

INPUT_NAMES = ("l0", "l1", "l2", "mem", "mem_tpos", "ptr", "ptr_tpos")


@dataclass(frozen=True)
class StepShape:
    """What fixes a step's graph: lanes, spatial memories and object pointers per lane, and the
    normaliser of pointer distances (min(slices, max_obj_ptrs_in_encoder) - 1, 15 for 16+ slices)."""

    lanes: int
    memories: int
    pointers: int
    t_diff_max: int


class SliceStep:
    """The memory-conditioned SAM2 step for B lanes (see module docstring).

    Inputs (per lane b): `l0`, `l1`, `l2` the slice's feature pyramid (B, C_l, H_l, W_l); `mem`
    (B, n, C_mem, H, W) the spatial memories as SAM2 stores them (bf16); `mem_tpos` (B, n) the index of
    each memory's temporal encoding in `maskmem_tpos_enc`; `ptr` (B, p, C) object pointers; `ptr_tpos`
    (B, p) their temporal distances. Outputs: low-resolution mask logits (B, 1, h, w), the decoder's best
    predicted IoU (B,), object-score logits (B,), object pointers (B, C) and the new memory (B, C_mem, H, W),
    in the dtypes SAM2's video predictor keeps them.
    """

    def __init__(self, model, pos2: torch.Tensor, maskmem_pos: torch.Tensor):
        if getattr(model, "non_overlap_masks_for_mem_enc", False):
            raise ValueError("lanes cannot be batched when non_overlap_masks_for_mem_enc is set")
        self.model = model
        self.pos2 = pos2  # (1, C, H, W): the level-2 positional encoding, the same for every slice
        self.maskmem_pos = maskmem_pos  # (1, C_mem, H, W): the memories' spatial encoding, likewise
        self.multimask = model._use_multimask(is_init_cond_frame=False, point_inputs=None)

    def __call__(self, t_diff_max: int, l0, l1, l2, mem, mem_tpos, ptr, ptr_tpos):
        m = self.model
        B, C, H, W = l2.shape
        n, p = mem.shape[1], ptr.shape[1]
        curr = l2.flatten(2).permute(2, 0, 1)  # (HW, B, C), as SAM2 flattens features
        curr_pos = self.pos2.flatten(2).permute(2, 0, 1).expand(-1, B, -1)

        # spatial memories: (n*HW, B, C_mem) in memory order, each with its spatial + temporal encoding
        mem_dim = mem.shape[2]
        tokens = [mem.permute(1, 3, 4, 0, 2).reshape(n * H * W, B, mem_dim)]
        space = self.maskmem_pos.flatten(2).permute(2, 0, 1)  # (HW, 1, C_mem)
        tpos = m.maskmem_tpos_enc[mem_tpos.flatten()].view(B, n, mem_dim)  # (B, n, C_mem)
        token_pos = [(space.unsqueeze(0) + tpos.permute(1, 0, 2).unsqueeze(1)).reshape(n * H * W, B, mem_dim)]
        num_ptr_tokens = 0
        if p:
            ptrs = ptr.permute(1, 0, 2)  # (p, B, C)
            if m.add_tpos_enc_to_obj_ptrs:
                tpos_dim = C if m.proj_tpos_enc_in_obj_ptrs else mem_dim
                pe = get_1d_sine_pe(ptr_tpos.permute(1, 0) / t_diff_max, dim=tpos_dim)  # (p, B, dim)
                ptr_pos = m.obj_ptr_tpos_proj(pe)
            else:
                ptr_pos = ptrs.new_zeros(p, B, mem_dim)
            if mem_dim < C:  # a pointer becomes C // mem_dim tokens
                ptrs = ptrs.reshape(p, B, C // mem_dim, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
                ptr_pos = ptr_pos.repeat_interleave(C // mem_dim, dim=0)
            tokens.append(ptrs)
            token_pos.append(ptr_pos)
            num_ptr_tokens = ptrs.shape[0]
        memory = torch.cat(tokens, dim=0)
        memory_pos = torch.cat(token_pos, dim=0)

        pix = m.memory_attention(curr=[curr], curr_pos=[curr_pos], memory=memory, memory_pos=memory_pos,
                                 num_obj_ptr_tokens=num_ptr_tokens)
        pix = pix.permute(1, 2, 0).view(B, C, H, W)
        _, _, ious, low_res, high_res, obj_ptr, score = m._forward_sam_heads(
            backbone_features=pix, point_inputs=None, mask_inputs=None, high_res_features=[l0, l1],
            multimask_output=self.multimask,
        )
        maskmem, _ = m._encode_new_memory(current_vision_feats=[curr], feat_sizes=[(H, W)],
                                          pred_masks_high_res=high_res, object_score_logits=score,
                                          is_mask_from_pts=False)
        return (low_res, ious.max(dim=-1).values.float(), score.flatten().float(), obj_ptr.float(),
                maskmem.to(torch.bfloat16))


class GraphedSteps:
    """Runs a `SliceStep` eagerly, or on CUDA as one captured graph per `StepShape`.

    The caller fills the static input buffers of a shape (`inputs(shape)`), then calls `run(shape)`
    and copies what it needs out of the returned static outputs before the next `run`. All graphs
    share one memory pool; they run one at a time on one stream, and their outputs are consumed before
    another graph runs, so sharing is safe. A shape that cannot be captured runs eagerly from then on.
    """

    def __init__(self, step: SliceStep, use_graphs: bool, dtype: torch.dtype | None):
        self.step = step
        self.use_graphs = use_graphs
        self.dtype = dtype  # autocast dtype (None: none)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph | None, dict, tuple | None]] = {}
        self._pool = torch.cuda.graph_pool_handle() if use_graphs else None
        self._eager_only: set[tuple] = set()
        self.captured = 0
        self.capture_failures: list[str] = []

    def _autocast(self, device_type: str):
        if self.dtype is None:
            return torch.autocast(device_type, enabled=False)
        # no weight-cast cache when graphed: cached casts would be freed while the graph still reads them
        return torch.autocast(device_type, dtype=self.dtype, cache_enabled=not self.use_graphs)

    def inputs(self, shape: StepShape, specs: dict[str, tuple[tuple, torch.dtype]], device) -> dict[str, torch.Tensor]:
        """Buffers to fill for `shape`: the static ones of its graph, or fresh ones when eager.
        `specs` gives each input's (shape, dtype)."""
        if not self.use_graphs:
            return {n: torch.empty(specs[n][0], dtype=specs[n][1], device=device) for n in INPUT_NAMES}
        entry = self._graphs.get(shape)
        if entry is None:
            entry = (None, {n: torch.empty(specs[n][0], dtype=specs[n][1], device=device) for n in INPUT_NAMES}, None)
            self._graphs[shape] = entry
        return entry[1]

    def run(self, shape: StepShape, buffers: dict[str, torch.Tensor]):
        """The step's outputs for the filled `buffers` (static outputs when graphed: read them before
        the next run)."""
        args = [shape.t_diff_max] + [buffers[n] for n in INPUT_NAMES]
        if not self.use_graphs or shape in self._eager_only:
            with self._autocast(buffers["l2"].device.type):
                return self.step(*args)
        graph, _, outputs = self._graphs[shape]
        if graph is None:
            return self._capture(shape, buffers, args)
        graph.replay()
        return outputs

    def _capture(self, shape: StepShape, buffers: dict, args: list):
        """Warm up on a side stream, capture, replay once (the inputs are already in `buffers`)."""
        device = buffers["l2"].device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(side), self._autocast("cuda"):
                for _ in range(2):
                    self.step(*args)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool), self._autocast("cuda"):
                outputs = self.step(*args)
        except Exception as e:  # noqa: BLE001 - an op that cannot be captured: run this shape eagerly
            torch.cuda.synchronize(device)
            self.capture_failures.append(f"{shape}: {type(e).__name__}: {e}")
            self._eager_only.add(shape)
            with self._autocast(device.type):
                return self.step(*args)
        self._graphs[shape] = (graph, buffers, outputs)
        self.captured += 1
        graph.replay()
        return outputs
