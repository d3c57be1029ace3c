"""One-Prompt segmentation: one prompted 2D image drives the segmentation of other images.

Each label has a self-sorting `MemoryBank` (memory.py). Prompting an image for a label segments it
with SAM2's decoder, encodes the result with SAM2's memory encoder and writes that memory to the
label's bank as a prompted entry. An image sent later without prompts is segmented by SAM2's memory
attention over the bank entries most relevant to it (cosine similarity of image embeddings), used as
conditioning memories, exactly as a video frame is conditioned on prompted frames; if the decoder
is confident, that memory is offered to the bank too (and may replace a redundant one).

Banks live on disk, one file per label, written atomically and loaded weights-only; each records the
model version it was built with, since memories from other weights mean nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .checkpoints import atomic_torch_save
from .memory import MemoryBank, MemoryEntry, frame_confidence
from .postprocess import fill_holes
from .predictor import last_decoder_outputs
from .prompts import ObjectPrompt
from .propagation import Segmenter

LABEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")
PAYLOAD_KEYS = ("maskmem_features", "maskmem_pos_enc", "obj_ptr", "object_score_logits")


class BankError(ValueError):
    """A One-Prompt request that cannot be served; the message is for the user."""


def check_label(label: str) -> str:
    if not isinstance(label, str) or not LABEL_NAME.match(label) or ".." in label:
        raise BankError(f"label name {label!r} is not allowed: use letters, digits, space, _ . + - (max 64)")
    return label


class BankStore:
    """Per-label banks on disk under `folder`."""

    def __init__(self, folder: Path, capacity: int = 16, min_confidence: float = 0.8):
        self.folder = Path(folder)
        self.capacity = capacity
        self.min_confidence = min_confidence

    def path(self, label: str) -> Path:
        return self.folder / f"{check_label(label)}.pt"

    def load(self, label: str, version: str) -> tuple[MemoryBank, bool]:
        """(bank, stale): a bank built with other weights is returned empty with stale=True."""
        bank = MemoryBank(self.capacity, self.min_confidence)
        path = self.path(label)
        if not path.exists():
            return bank, False
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("model_version") != version:
            return bank, True
        for e in blob["entries"]:
            bank.entries.append(MemoryEntry(key=e["key"], feature=e["feature"], embedding=e["embedding"],
                                            confidence=float(e["confidence"]), prompted=bool(e["prompted"]),
                                            payload=e["payload"]))
        return bank, False

    def save(self, label: str, bank: MemoryBank, version: str) -> None:
        entries = [{"key": e.key, "feature": e.feature.cpu(), "embedding": e.embedding.cpu(),
                    "confidence": e.confidence, "prompted": e.prompted,
                    "payload": {k: _to_cpu(e.payload[k]) for k in PAYLOAD_KEYS}} for e in bank.entries]
        atomic_torch_save({"model_version": version, "label": label, "entries": entries}, self.path(label))

    def clear(self, label: str) -> bool:
        path = self.path(label)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed


def _to_cpu(value):
    if isinstance(value, list):
        return [v.detach().float().cpu() for v in value]
    return value.detach().float().cpu()


def _to_device(payload: dict, device) -> dict:
    return {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device) for k, v in payload.items()}


class OnePromptSegmenter:
    def __init__(self, segmenter: Segmenter, store: BankStore, slots: int = 6):
        self.segmenter = segmenter
        self.model = segmenter.model
        self.store = store
        self.slots = slots

    @torch.inference_mode()
    def segment(self, image: np.ndarray, label: str, prompt: ObjectPrompt | None, version: str,
                add_to_bank: bool = True) -> tuple[np.ndarray, dict]:
        """image (I, J) -> (mask (I, J) bool, info). With `prompt`, the prompted image joins the bank."""
        bank, stale = self.store.load(label, version)
        if prompt is None and not bank.entries:
            raise BankError(f"no example of '{label}' yet" + (" for the current model weights" if stale else "") +
                            ": prompt one image (clicks or a box) for this label first")
        I, J = image.shape
        session = self.segmenter.open(image[:, :, None], encode=True)  # embeddings are read below
        features = session.features
        with self.segmenter.autocast():
            if prompt is not None:
                out, logits = prompted_memory(self.model, session, prompt)
                used = 0
            else:
                chosen = bank.read(features.embeddings[0], self.slots)
                out, logits = segment_from_memories(self.model, session, chosen)
                used = len(chosen)
        entry = MemoryEntry(key=f"{label}:{len(bank.entries)}",
                            feature=out["maskmem_features"].float().mean(0).flatten(),
                            embedding=features.embeddings[0].clone(), confidence=frame_confidence(out),
                            prompted=prompt is not None, payload={k: out[k] for k in PAYLOAD_KEYS})
        stored = add_to_bank and bank.write(entry)
        if stored:
            self.store.save(label, bank, version)
        mask = (logits[0, 0] > 0).T.cpu().numpy()  # (J, I) -> (I, J)
        return mask, {"bank_size": len(bank.entries), "memories_used": used, "stored": bool(stored),
                      "confidence": round(entry.confidence, 4), "bank_was_stale": stale}


def prompted_memory(model, session, prompt: ObjectPrompt | None = None, mask: np.ndarray | None = None):
    """Segment slice 0 of `session` from a prompt (or take `mask` (J, I) as given) and encode its
    memory: (SAM2 frame output with maskmem_features, (1, 1, J, I) logits)."""
    I, J, _ = session.shape
    state = model.init_volume_state(session.features, height=J, width=I)
    if mask is not None:
        model.add_new_mask(state, frame_idx=0, obj_id=1, mask=torch.as_tensor(mask, dtype=torch.bool))
    else:
        points, labels, box = prompt.frame_inputs(0)
        model.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=points, labels=labels, box=box)
    model.propagate_in_video_preflight(state)  # runs the memory encoder on the prompted mask
    out = state["output_dict_per_obj"][0]["cond_frame_outputs"][0]
    filled = fill_holes(out["pred_masks"], model.postprocess.fill_hole_area)  # SAM 2's, as in 3D
    _, video_res = model._get_orig_video_res_output(state, filled)
    return out, video_res


def segment_from_memories(model, session, entries: list[MemoryEntry], frame: int = 0):
    """Segment slice `frame` of `session` with `entries` as conditioning memories (no prompt):
    (SAM2 frame output with its memory and IoU, (1, 1, J, I) logits)."""
    I, J, _ = session.shape
    device = model.device
    _, _, feats, pos, sizes = model._get_image_feature({"features": session.features}, frame, 1)
    n = len(entries)
    memory = {"cond_frame_outputs": {t: _to_device(e.payload, device) for t, e in enumerate(entries)},
              "non_cond_frame_outputs": {}}
    out = model.track_step(frame_idx=n, is_init_cond_frame=False, current_vision_feats=feats,
                           current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=None, mask_inputs=None,
                           output_dict=memory, num_frames=n + 1, run_mem_encoder=True)
    ious = last_decoder_outputs()[2]
    out["iou"] = ious.max(dim=-1).values.float() if ious is not None else None
    filled = fill_holes(out["pred_masks"].float(), model.postprocess.fill_hole_area)  # SAM 2's, as in 3D
    video_res = torch.nn.functional.interpolate(filled, size=(J, I), mode="bilinear", align_corners=False)
    return out, video_res
