"""Does a model learn to track by memory? Gradient per module from tracked frames, feature scales.

A slice segmented from memory alone (no prompt on it) can only be right if the memory attention, the
memory encoder and the object pointers carry the prompted structure to it; their parameters learn
only from the loss on such slices. `tracked_gradient_norms` measures how much gradient each module
gets from those slices alone (the prompted slices' terms weighted 0), so "memory is not learned"
can be told apart from "memory gets no gradient". `feature_scales` reports the size of what memory
attention reads (backbone features, memories, object pointers): memories far larger than their
positional encodings make the attention logits huge, its softmax one-hot and its gradient vanish;
`memory_attention_stats` measures exactly that on the model's own cross-attention (how peaked, how
local, how much weight the object pointers get).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from .clips import Clip
from .objective import ClipObjective, LossWeights
from .prompt_sim import PromptSettings, initial_points

# parameter-name prefixes of SAM2Base's parts, by what they do
MODULE_GROUPS = {
    "image_encoder": ("image_encoder.",),
    "memory_attention": ("memory_attention.",),
    "memory_encoder": ("memory_encoder.",),
    "object_pointers": ("obj_ptr_proj.", "obj_ptr_tpos_proj.", "no_obj_ptr"),
    "memory_embeddings": ("maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_embed_spatial"),
    "mask_decoder": ("sam_mask_decoder.",),
    "prompt_encoder": ("sam_prompt_encoder.",),
}
MEMORY_GROUPS = ("memory_attention", "memory_encoder", "object_pointers")


def group_of(name: str) -> str:
    for group, prefixes in MODULE_GROUPS.items():
        if name.startswith(prefixes):
            return group
    return "other"


def gradient_norms(model) -> dict[str, float]:
    """L2 norm of the current gradients, per module group (0 where a group got none)."""
    squares: dict[str, float] = {g: 0.0 for g in MODULE_GROUPS}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = group_of(name)
            squares[g] = squares.get(g, 0.0) + float(p.grad.detach().float().pow(2).sum())
    return {g: float(np.sqrt(v)) for g, v in squares.items()}


def tracked_gradient_norms(model, clips: list[Clip], rng: np.random.Generator,
                           prompts: PromptSettings | None = None) -> dict[str, float]:
    """Gradient norm per module group from the loss on tracked (unprompted) frames only."""
    objective = ClipObjective(model, LossWeights(prompted=0.0), prompts)
    model.zero_grad(set_to_none=True)
    for clip in clips:
        loss = objective(clip, rng)["loss"]
        if loss.requires_grad:
            (loss / len(clips)).backward()
    norms = gradient_norms(model)
    model.zero_grad(set_to_none=True)
    return norms


@torch.no_grad()
def feature_scales(model, clip: Clip, rng: np.random.Generator | None = None) -> dict[str, float]:
    """Standard deviations of what memory attention reads on a clip's first two frames: backbone
    features (lowest resolution), the spatial memory of the prompted frame (one click), its object
    pointer, the memory's positional encoding, and the memory-conditioned features of the next frame."""
    rng = rng or np.random.default_rng(0)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        n = clip.masks.shape[1]
        backbone = model.forward_image(clip.frames[:2].to(device))
        memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        outs = []
        for t in range(min(2, clip.frames.shape[0])):
            frame_out = {k: [f[t : t + 1].expand(n, -1, -1, -1) for f in backbone[k]]
                         for k in ("backbone_fpn", "vision_pos_enc")}
            _, feats, pos, sizes = model._prepare_backbone_features(frame_out)
            points = None
            if t == 0:
                points = {k: v.to(device) for k, v in
                          initial_points(clip.masks[0].numpy(), "click", rng, PromptSettings()).items()}
            out = model.track_step(frame_idx=t, is_init_cond_frame=t == 0, current_vision_feats=feats,
                                   current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=points,
                                   mask_inputs=None, output_dict=memory, num_frames=clip.frames.shape[0])
            memory["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = out
            outs.append((feats, pos, sizes, out))
        feats, pos, sizes, first = outs[0]
        scales = {
            "backbone_features": float(feats[-1].std()),
            "memory_features": float(first["maskmem_features"].std()),
            "memory_pos_enc": float(first["maskmem_pos_enc"][-1].std()),
            "object_pointer": float(first["obj_ptr"].std()),
        }
        if len(outs) > 1:
            f2, p2, s2, _ = outs[1]
            conditioned = model._prepare_memory_conditioned_features(
                frame_idx=1, is_init_cond_frame=False, current_vision_feats=f2[-1:], current_vision_pos_embeds=p2[-1:],
                feat_sizes=s2[-1:], output_dict={"cond_frame_outputs": {0: first}, "non_cond_frame_outputs": {}},
                num_frames=clip.frames.shape[0])
            scales["memory_conditioned_features"] = float(conditioned.std())
        return scales
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _recording_cross_attention(model, records: list):
    """While active, each memory cross-attention call of `model` appends its attention weights
    (softmax(q k^T / sqrt(d)) of SAM2's own projected, rotated q and k) and its pointer-token count."""
    state = {"on": False, "pointers": 0}
    original = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        if state["on"]:
            logits = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])
            records.append((torch.softmax(logits, dim=-1).detach(), state["pointers"], float(logits.std())))
        return original(q, k, v, *args, **kwargs)

    hooks = []
    for layer in model.memory_attention.layers:
        attn = layer.cross_attn_image
        hooks.append(attn.register_forward_pre_hook(
            lambda mod, args, kwargs: state.update(on=True, pointers=int(kwargs.get("num_k_exclude_rope", 0))),
            with_kwargs=True))
        hooks.append(attn.register_forward_hook(lambda *a: state.update(on=False)))
    F.scaled_dot_product_attention = spy
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        for h in hooks:
            h.remove()


@torch.no_grad()
def memory_attention_stats(model, clips: list[Clip], rng: np.random.Generator | None = None) -> dict[str, float]:
    """How SAM2's memory cross-attention looks on tracked frames of `clips` (no dropout, no grad):
    logits_std (of q k / sqrt(d)), entropy (normalised: 1 = uniform, 0 = one key), max_weight, the
    weight on object-pointer tokens, and locality: the expected grid distance from a query to the
    spatial memory tokens it attends to, next to that distance under uniform attention."""
    rng = rng or np.random.default_rng(0)
    records: list = []
    objective = ClipObjective(model, prompts=PromptSettings(p_mask=0.0, max_corrections=0))
    was_training = model.training
    model.eval()
    try:
        with _recording_cross_attention(model, records):
            for clip in clips:
                objective(clip, rng)
    finally:
        model.train(was_training)
    stats = {k: [] for k in ("logits_std", "entropy", "max_weight", "pointer_weight", "distance", "uniform_distance")}
    for weights, pointers, logits_std in records:
        queries, keys = weights.shape[-2:]
        side = int(round(math.sqrt(queries)))
        spatial = weights[..., : keys - pointers]
        grid = spatial.reshape(*spatial.shape[:-1], -1, side * side).sum(-2)  # (..., queries, side*side)
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], -1).float()
        dist = torch.cdist(pos, pos)  # query position -> key position
        mass = grid.sum(-1).clamp(min=1e-12)
        stats["logits_std"].append(logits_std)
        stats["entropy"].append(float((-(weights * torch.log(weights + 1e-12)).sum(-1)).mean() / math.log(keys)))
        stats["max_weight"].append(float(weights.max(-1).values.mean()))
        stats["pointer_weight"].append(float(weights[..., keys - pointers:].sum(-1).mean()) if pointers else 0.0)
        stats["distance"].append(float(((grid * dist).sum(-1) / mass).mean()))
        stats["uniform_distance"].append(float(dist.mean()))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in stats.items()}


@contextlib.contextmanager
def memory_cut(model):
    """While active, the model remembers nothing: every new memory (spatial features) and every object
    pointer is zero, so memory attention sees only positional encodings. Whatever the model then
    segments away from the prompted slices, it found by appearance alone. For tests that must be
    able to fail when tracking by memory breaks; both the plain and the batched engine go through
    these two methods."""
    encode, heads = model._encode_new_memory, model._forward_sam_heads

    def no_memory(*args, **kwargs):
        features, pos = encode(*args, **kwargs)
        return torch.zeros_like(features), pos

    def no_pointer(*args, **kwargs):
        out = heads(*args, **kwargs)
        return (*out[:5], torch.zeros_like(out[5]), out[6])

    model._encode_new_memory, model._forward_sam_heads = no_memory, no_pointer
    try:
        yield model
    finally:
        del model._encode_new_memory, model._forward_sam_heads


def report(checkpoint: str | None, model_config: str, clips: int = 4, seed: int = 0) -> dict:
    """All three diagnostics for one model on clips of 8 slices from held-out twins (prompt on the
    first slice, both twins as objects): what the figures in docs/demo-model.md come from."""
    from ..checkpoints import ModelSpec, build_model
    from ..memory_phantoms import make_twins
    from .clips import ClipSampler, LabelledVolume

    torch.manual_seed(seed)
    model = build_model(ModelSpec(model_config, checkpoint=checkpoint), for_training=True)
    volumes = [LabelledVolume(p.image, p.label) for p in (make_twins(seed=s) for s in range(5000, 5004))]
    sampler = ClipSampler(volumes, model.image_size, clip_len=8, max_objects=2, seed=seed, p_exit=0.0)
    batch = [sampler.sample() for _ in range(clips)]
    return {
        "gradient_norms_tracked_frames": tracked_gradient_norms(model, batch, np.random.default_rng(seed)),
        "feature_scales": feature_scales(model, batch[0]),
        "memory_attention": memory_attention_stats(model, batch[:2]),
    }


def main(argv=None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m medsam2.training.diagnostics",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a .pt file, or 'random' for untrained weights")
    ap.add_argument("--model-config", required=True)
    ap.add_argument("--clips", type=int, default=4)
    args = ap.parse_args(argv)
    out = report(None if args.checkpoint == "random" else args.checkpoint, args.model_config, args.clips)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
