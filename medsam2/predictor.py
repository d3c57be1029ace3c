"""SAM2's video predictor, fed from a volume in memory instead of a JPEG folder.

`VolumePredictor` subclasses `sam2.SAM2VideoPredictor` and changes three things only:
- the inference state is built from `FrameFeatures` (features.py: backbone features of every slice,
  computed in batches once per image and reused by every later click) instead of from decoded JPEGs;
- a memory policy, when the state names one, chooses which past frames each slice attends to
  (see `memory.py`); without one, SAM2's own rule (prompted frames + most recent frames) applies;
- the decoder's predicted IoU is kept in each frame's output, as a confidence for memory policies
  and active-learning scores;
- inside `corrections_as_conditioning()` a click on a tracked slice makes that slice a conditioning
  slice (SAM2's `add_all_frames_to_correct_as_cond`, for this thread only), so that a correction
  survives the next propagation (propagation.py replays every prompt on a fresh state).
Everything else (prompt encoding, memory attention, the memory encoder) is SAM2's code. This is the
plain, one-slice-at-a-time path; tracker.py runs the same model batched and, on CUDA, graphed.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict

from sam2.sam2_video_predictor import SAM2VideoPredictor

from .features import FrameFeatures
from .frames import Preprocess
from .memory import frame_confidence, recency_view
from .postprocess import Postprocess

_captured = threading.local()  # decoder outputs of the frame just processed, per thread
_corrections = threading.local()  # .as_cond: corrections become conditioning slices (this thread)


@contextlib.contextmanager
def corrections_as_conditioning():
    """While active (in this thread), clicks added on a tracked slice make it a conditioning slice."""
    _corrections.as_cond = True
    try:
        yield
    finally:
        _corrections.as_cond = False


def last_decoder_outputs():
    """(low_res_multimasks, high_res_multimasks, ious, low_res, high_res, obj_ptr, object_score_logits)
    of the latest track step in this thread: SAM2's track_step returns masks but drops IoUs."""
    return getattr(_captured, "sam_outputs", None)


class VolumePredictor(SAM2VideoPredictor):
    """SAM2VideoPredictor over precomputed per-slice features (see module docstring)."""

    # What the weights expect around them, as `image_size` is: set from the checkpoint by
    # checkpoints.build_model (manifest `preprocess` / `postprocess`); these defaults are the project's own.
    preprocess: Preprocess = Preprocess()
    postprocess: Postprocess = Postprocess()

    @property
    def add_all_frames_to_correct_as_cond(self) -> bool:
        """SAM2's setting from the config, or True inside `corrections_as_conditioning()`. A property
        and a thread-local, not a flipped attribute: one model serves concurrent requests."""
        return getattr(_corrections, "as_cond", False) or self.__dict__.get("_correct_as_cond", False)

    @add_all_frames_to_correct_as_cond.setter
    def add_all_frames_to_correct_as_cond(self, value) -> None:
        self.__dict__["_correct_as_cond"] = bool(value)

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
            inference_state["features"].ensure([frame_idx])  # the policy reads the slice's embedding
            memory = recency_view(policy, output_dict, frame_idx, reverse, inference_state["features"])
        _captured.iou = None
        out, pred_masks = super()._run_single_frame_inference(
            inference_state, memory, frame_idx, batch_size, is_init_cond_frame, point_inputs, mask_inputs,
            reverse, run_mem_encoder, prev_sam_mask_logits,
        )
        out["iou"] = _captured.iou
        if policy is not None and run_mem_encoder and out["maskmem_features"] is not None:
            features = inference_state["features"]
            policy.observe(frame_idx, out["maskmem_features"][0], features.embeddings[frame_idx], frame_confidence(out))
        return out, pred_masks
