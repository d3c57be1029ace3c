"""SAM2's video predictor, fed from a volume in memory instead of a JPEG folder.

`VolumePredictor` subclasses `sam2.SAM2VideoPredictor` and changes three things only:
- the inference state is built from `FrameFeatures` (backbone features of every slice, computed in
  batches once per image and reused by every later click) instead of from decoded JPEGs;
- a memory policy, when the state names one, chooses which past frames each slice attends to
  (see `memory.py`); without one, SAM2's own rule (prompted frames + most recent frames) applies;
- the decoder's predicted IoU is kept in each frame's output, as a confidence for memory policies
  and active-learning scores.
Everything else (prompt encoding, memory attention, the memory encoder) is SAM2's code.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import torch
from sam2.sam2_video_predictor import SAM2VideoPredictor

from .frames import frames_from_scaled

_captured = threading.local()  # decoder outputs of the frame just processed, per thread


def last_decoder_outputs():
    """(low_res_multimasks, high_res_multimasks, ious, low_res, high_res, obj_ptr, object_score_logits)
    of the latest track step in this thread: SAM2's track_step returns masks but drops IoUs."""
    return getattr(_captured, "sam_outputs", None)


class FrameFeatures:
    """Image-encoder features of all slices of one volume, computed in batches and kept.

    Only the feature pyramid is stored per slice; the positional encodings are the same for every
    slice and kept once. The normalised frames are built chunk by chunk and dropped after encoding,
    so a 300-slice volume never holds all its 1024 px frames at once.
    """

    def __init__(self, model, scaled_volume: torch.Tensor, batch_size: int = 8):
        self.model = model
        self.scaled = scaled_volume  # (I, J, K) in [0, 1], on the compute device
        self.num_frames = int(scaled_volume.shape[2])
        self.batch_size = max(1, int(batch_size))
        self.levels: list[torch.Tensor] | None = None  # per level: (K, C, H, W)
        self.pos: list[torch.Tensor] | None = None  # per level: (1, C, H, W)
        self.encoded = torch.zeros(self.num_frames, dtype=torch.bool)
        self.embeddings: torch.Tensor | None = None  # (K, C) pooled lowest-resolution features
        self.encode_s = 0.0  # seconds spent in the image encoder so far
        self._lock = threading.Lock()

    @torch.inference_mode()
    def ensure(self, frame_indices=None) -> None:
        """Encode the given frames (all when None) that are not encoded yet, in batches."""
        wanted = range(self.num_frames) if frame_indices is None else sorted(set(int(k) for k in frame_indices))
        with self._lock:
            t0 = time.perf_counter()
            todo = [k for k in wanted if not self.encoded[k]]
            for start in range(0, len(todo), self.batch_size):
                ks = todo[start : start + self.batch_size]
                frames = frames_from_scaled(self.scaled, ks, self.model.image_size)
                out = self.model.forward_image(frames)
                fpn = out["backbone_fpn"]
                if self.levels is None:
                    self.levels = [
                        torch.empty((self.num_frames, *f.shape[1:]), dtype=f.dtype, device=f.device) for f in fpn
                    ]
                    self.pos = [p[:1].clone() for p in out["vision_pos_enc"]]
                    self.embeddings = torch.zeros(
                        (self.num_frames, fpn[-1].shape[1]), dtype=torch.float32, device=fpn[-1].device
                    )
                idx = torch.tensor(ks, device=fpn[0].device)
                for level, f in zip(self.levels, fpn):
                    level[idx] = f
                self.embeddings[idx] = fpn[-1].float().mean(dim=(2, 3))
                self.encoded[ks] = True
            self.encode_s += time.perf_counter() - t0
            if frame_indices is None and self.encoded.all():
                self.scaled = None  # not needed any more: free it

    def backbone_out(self, frame_idx: int) -> dict:
        if not self.encoded[frame_idx]:
            self.ensure([frame_idx])
        return {
            "backbone_fpn": [level[frame_idx : frame_idx + 1] for level in self.levels],
            "vision_pos_enc": list(self.pos),
        }

    @property
    def nbytes(self) -> int:
        n = sum(t.numel() * t.element_size() for t in (self.levels or []) + (self.pos or []))
        if self.scaled is not None:
            n += self.scaled.numel() * self.scaled.element_size()
        return n


class VolumePredictor(SAM2VideoPredictor):
    """SAM2VideoPredictor over precomputed per-slice features (see module docstring)."""

    def init_volume_state(self, features: FrameFeatures, height: int, width: int, memory_policy=None) -> dict:
        """A fresh tracking state for one object set over `features`; (height, width) = (J, I)."""
        device = self.device
        return {
            "features": features,
            "images": None,
            "num_frames": features.num_frames,
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            "video_height": int(height),
            "video_width": int(width),
            "device": device,
            "storage_device": device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
            "memory_policy": memory_policy,
        }

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        backbone_out = inference_state["features"].backbone_out(frame_idx)
        expanded = {
            "backbone_fpn": [f.expand(batch_size, -1, -1, -1) for f in backbone_out["backbone_fpn"]],
            "vision_pos_enc": [p.expand(batch_size, -1, -1, -1) for p in backbone_out["vision_pos_enc"]],
        }
        return (None,) + self._prepare_backbone_features(expanded)

    def _track_step(self, *args, **kwargs):
        current_out, sam_outputs, high_res_features, pix_feat = super()._track_step(*args, **kwargs)
        ious = sam_outputs[2]
        _captured.iou = ious.max(dim=-1).values.float() if ious is not None else None
        _captured.sam_outputs = sam_outputs  # read by training for its IoU and object-score losses
        return current_out, sam_outputs, high_res_features, pix_feat

    def _run_single_frame_inference(self, inference_state, output_dict, frame_idx, batch_size, is_init_cond_frame,
                                    point_inputs, mask_inputs, reverse, run_mem_encoder, prev_sam_mask_logits=None):
        policy = inference_state.get("memory_policy")
        memory = output_dict
        if policy is not None and not is_init_cond_frame:
            memory = policy.memory_for(output_dict, frame_idx, reverse, inference_state["features"])
        _captured.iou = None
        out, pred_masks = super()._run_single_frame_inference(
            inference_state, memory, frame_idx, batch_size, is_init_cond_frame, point_inputs, mask_inputs,
            reverse, run_mem_encoder, prev_sam_mask_logits,
        )
        out["iou"] = _captured.iou
        if policy is not None and run_mem_encoder and out["maskmem_features"] is not None:
            policy.observe(output_dict, frame_idx, out, inference_state["features"])
        return out, pred_masks
