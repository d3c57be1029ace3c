"""Memory policies: which past slices a slice attends to while a structure is propagated.

SAM2 (`fifo`) conditions each slice on the prompted slices plus the last few tracked slices. In a
volume the last few are often the least useful (the structure fades, bends, or leaves). MedSAM-2's
self-sorting memory bank keeps memories by confidence and dissimilarity instead, regardless of order:

write  a tracked slice enters the bank only if the decoder is confident (predicted IoU times the
       object-score probability >= `min_confidence`); when the bank is full, with i the stored entry
       least similar to the new memory and j the stored entry most similar to i, the new memory
       replaces j only if sim(new, i) < sim(i, j) (it adds diversity) and conf(new) > conf(j) - margin;
read   the bank entries most similar to the current slice's image embedding (cosine), best first,
       fill SAM2's memory slots; MedSAM-2 samples from a softmax over these similarities, here the
       top entries are taken so results are deterministic;
always the prompted slices stay in memory (SAM2 keeps them as conditioning frames, outside the bank).

`keep_last` (default 1) also keeps the immediately preceding slice in the first slot: neighbouring
slices of a volume are the most informative memory there is, and a bank that rejects them as
redundant would lose them. Set it to 0 for MedSAM-2's pure bank.

A policy object serves one tracked object; VolumePredictor calls `memory_for` before each slice and
`observe` after it (see predictor.py). The bank itself (`MemoryBank`) works on plain tensors so it
can be tested with hand-made vectors and reused by One-Prompt segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(eq=False)  # entries are compared by identity
class MemoryEntry:
    key: int  # frame index (or any id)
    feature: torch.Tensor  # 1D memory feature, for dissimilarity
    embedding: torch.Tensor  # 1D image embedding, for relevance
    confidence: float
    prompted: bool = False
    payload: dict = field(default_factory=dict)  # the SAM2 frame output this memory stands for


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))


class MemoryBank:
    """A bounded, self-sorting set of memories (rules in the module docstring)."""

    def __init__(self, capacity: int = 16, min_confidence: float = 0.5, margin: float = 0.1):
        self.capacity = int(capacity)
        self.min_confidence = float(min_confidence)
        self.margin = float(margin)
        self.entries: list[MemoryEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def write(self, new: MemoryEntry) -> bool:
        """Offer a memory; returns whether it was stored. Prompted memories skip the confidence
        check and can only be replaced by other prompted memories."""
        if not new.prompted and new.confidence < self.min_confidence:
            return False
        if len(self.entries) < self.capacity:
            self.entries.append(new)
            return True
        candidates = [e for e in self.entries if new.prompted or not e.prompted]
        if not candidates:
            return False
        sims_new = [_cos(new.feature, e.feature) for e in self.entries]
        i = min(range(len(self.entries)), key=lambda n: sims_new[n])
        anchor = self.entries[i]
        best_j, best_sim = None, -2.0
        for n, e in enumerate(self.entries):
            if n == i or e not in candidates:
                continue
            s = _cos(anchor.feature, e.feature)
            if s > best_sim:
                best_j, best_sim = n, s
        if best_j is None:
            return False
        redundant = self.entries[best_j]
        if sims_new[i] < best_sim and (new.prompted or new.confidence > redundant.confidence - self.margin):
            self.entries[best_j] = new
            return True
        return False

    def read(self, query: torch.Tensor, k: int, exclude=()) -> list[MemoryEntry]:
        """Up to k entries, most relevant to `query` first (ties: earlier entry first)."""
        scored = [(_cos(query, e.embedding), -n, e) for n, e in enumerate(self.entries) if e.key not in exclude]
        scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
        return [e for _, _, e in scored[:k]]


def frame_confidence(out: dict) -> float:
    """Predicted IoU times the object-score probability of a SAM2 frame output."""
    iou = out.get("iou")
    iou = float(iou.flatten()[0]) if iou is not None else 1.0
    score = float(torch.sigmoid(out["object_score_logits"].float().flatten()[0]))
    return iou * score


class SelfSortingPolicy:
    """MedSAM-2's memory for 3D propagation: one bank per tracked object."""

    def __init__(self, capacity: int = 16, slots: int = 6, keep_last: int = 1, min_confidence: float = 0.5,
                 margin: float = 0.1):
        self.bank = MemoryBank(capacity, min_confidence, margin)
        self.slots = int(slots)
        self.keep_last = int(keep_last)

    def memory_for(self, output_dict: dict, frame_idx: int, reverse: bool, features) -> dict:
        """A view of `output_dict` in which SAM2's recency slots hold the chosen memories."""
        step = -1 if reverse else 1
        chosen: list[dict] = []
        recent = []
        for t in range(1, self.keep_last + 1):
            prev = output_dict["non_cond_frame_outputs"].get(frame_idx - step * t)
            if prev is not None:
                recent.append(frame_idx - step * t)
                chosen.append(prev)
        query = features.embeddings[frame_idx]
        for entry in self.bank.read(query, self.slots - len(chosen), exclude=set(recent)):
            chosen.append(entry.payload)
        slots = {frame_idx - step * (n + 1): out for n, out in enumerate(chosen)}
        return {"cond_frame_outputs": output_dict["cond_frame_outputs"], "non_cond_frame_outputs": slots}

    def observe(self, output_dict: dict, frame_idx: int, out: dict, features) -> None:
        feature = out["maskmem_features"].float().mean(dim=0).flatten()
        self.bank.write(MemoryEntry(key=frame_idx, feature=feature, embedding=features.embeddings[frame_idx],
                                    confidence=frame_confidence(out), payload=out))


POLICIES = {
    "fifo": None,  # SAM2's own rule
    "self_sorting": SelfSortingPolicy,
}
