"""Simulated prompts for training, the way SAM2/MedSAM2 fine-tuning draws them.

On each conditioning frame every object gets a box (jittered bounding box), one click (a random
pixel of the structure) or its true mask, then up to `max_corrections` corrective clicks, each in the
largest error region of the current prediction (see clicks.py). Coordinates are SAM2 input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..clicks import bounding_box, corrective_click, random_point

BOX_LABELS = (2, 3)  # SAM2's point labels for the two box corners
PAD_LABEL = -1  # SAM2's label for "no point" (padding)


@dataclass
class PromptSettings:
    p_box: float = 0.5
    p_mask: float = 0.1
    p_two_cond_frames: float = 0.3
    box_jitter: float = 0.05
    max_corrections: int = 3
    # clips whose tracked frames are remembered from their true masks (teacher forcing of the memory);
    # None: the model's own recipe, loop.TrackingRecipe (0.5 for a small model, SAM 2's 0 for a large one)
    p_true_memory: float | None = None
    # clips that also get one click outside every labelled structure of their first frame, whose answer
    # must contain the clicked pixel and say "object": with one structure labelled, nothing else tells
    # the model that the click, not the anatomy, names the target. 0: off; measured on one lung with three
    # seeds and left off (docs/training.md, "Which lung: three seeds")
    p_unlabelled_click: float = 0.0


def choose_kind(rng: np.random.Generator, s: PromptSettings) -> str:
    r = rng.random()
    return "mask" if r < s.p_mask else "box" if r < s.p_mask + s.p_box else "click"


def initial_points(truth: np.ndarray, kind: str, rng: np.random.Generator, s: PromptSettings):
    """truth (N, S, S) bool -> point_inputs dict with (N, P, 2) coords and (N, P) labels."""
    coords, labels = [], []
    for m in truth:
        if kind == "box":
            box = bounding_box(m, rng, s.box_jitter)
            if box is None:
                coords.append([[0.0, 0.0], [0.0, 0.0]])
                labels.append([PAD_LABEL, PAD_LABEL])
            else:
                coords.append([[box[0], box[1]], [box[2], box[3]]])
                labels.append(list(BOX_LABELS))
        else:
            p = random_point(m, rng)
            coords.append([[p[0] + 0.5, p[1] + 0.5]] if p else [[0.0, 0.0]])
            labels.append([1] if p else [PAD_LABEL])
    return {"point_coords": torch.tensor(coords, dtype=torch.float32),
            "point_labels": torch.tensor(labels, dtype=torch.int32)}


def add_corrections(point_inputs: dict, pred: np.ndarray, truth: np.ndarray) -> dict:
    """One corrective click per object from its error region (padding where already exact)."""
    coords, labels = [], []
    for p, t in zip(pred, truth):
        c = corrective_click(p, t)
        coords.append([[c[0] + 0.5, c[1] + 0.5]] if c else [[0.0, 0.0]])
        labels.append([c[2]] if c else [PAD_LABEL])
    dev = point_inputs["point_coords"].device
    return {
        "point_coords": torch.cat([point_inputs["point_coords"], torch.tensor(coords, device=dev)], dim=1),
        "point_labels": torch.cat([point_inputs["point_labels"],
                                   torch.tensor(labels, dtype=torch.int32, device=dev)], dim=1),
    }


def unlabelled_click(truth: np.ndarray, rng: np.random.Generator, count: int = 1):
    """`count` positive clicks, each at a random pixel outside every structure of `truth` (N, S, S)
    bool, as point_inputs for `count` objects of one click each; None where the labelled structures
    cover the whole frame."""
    free = ~truth.any(axis=0)
    points = [random_point(free, rng) for _ in range(count)]
    if points[0] is None:
        return None
    return {"point_coords": torch.tensor([[[p[0] + 0.5, p[1] + 0.5]] for p in points], dtype=torch.float32),
            "point_labels": torch.ones((count, 1), dtype=torch.int32)}
