"""How sure the current model is about an unlabelled volume, for active learning.

The labels clinicians saved are turned into memories: for each labelled volume and structure, the
slice where the structure is largest, with its true mask, goes through SAM2's memory encoder. An
unlabelled volume is then probed on a few evenly spaced slices: for each structure, the slice is
segmented from the most relevant memories of that structure (as One-Prompt does), and the decoder
reports its predicted IoU and object score. A structure's confidence is the best IoU x P(object)
over the probed slices (how clearly the model finds it somewhere); the volume's confidence is the
mean over structures. Low confidence = the model is unsure = worth annotating next.
"""

from __future__ import annotations

import numpy as np
import torch

from .clicks import largest_slice
from .memory import MemoryBank, MemoryEntry, frame_confidence
from .oneprompt import prompted_memory, segment_from_memories
from .propagation import Segmenter


@torch.inference_mode()
def reference_memories(segmenter: Segmenter, pairs, max_per_label: int = 8) -> dict[int, list[MemoryEntry]]:
    """Memories of each label value from labelled (image, label) volumes."""
    memories: dict[int, list[MemoryEntry]] = {}
    with segmenter.autocast():
        for image, label in pairs:
            image, label = (image[..., None], label[..., None]) if image.ndim == 2 else (image, label)
            for value in (int(v) for v in np.unique(label) if v != 0):
                if len(memories.get(value, [])) >= max_per_label:
                    continue
                truth = label == value
                k = largest_slice(truth)
                session = segmenter.open(image[:, :, k : k + 1], encode=True)  # embeddings are read below
                out, _ = prompted_memory(segmenter.model, session, mask=truth[:, :, k].T)
                memories.setdefault(value, []).append(MemoryEntry(
                    key=len(memories.get(value, [])), feature=out["maskmem_features"].float().mean(0).flatten(),
                    embedding=session.features.embeddings[0].clone(), confidence=1.0, prompted=True,
                    payload=out))
    return memories


@torch.inference_mode()
def volume_confidence(segmenter: Segmenter, volume: np.ndarray, memories: dict[int, list[MemoryEntry]],
                      probes: int = 5, slots: int = 6) -> dict:
    """{"confidence": mean over labels, "per_label": {value: best IoU x P(object)}}."""
    volume = volume[..., None] if volume.ndim == 2 else volume
    ks = sorted(set(np.linspace(0, volume.shape[2] - 1, num=min(probes, volume.shape[2])).round().astype(int)))
    session = segmenter.open(volume, encode=False)
    session.features.ensure(ks)
    per_label = {}
    with segmenter.autocast():
        for value, entries in memories.items():
            bank = MemoryBank(capacity=len(entries))
            bank.entries = list(entries)
            best = 0.0
            for k in ks:
                chosen = bank.read(session.features.embeddings[k], slots)
                out, _ = segment_from_memories(segmenter.model, session, chosen, frame=k)
                best = max(best, frame_confidence(out))
            per_label[value] = round(best, 4)
    return {"confidence": float(np.mean(list(per_label.values()))) if per_label else float("nan"),
            "per_label": per_label, "probed_slices": [int(k) for k in ks]}
