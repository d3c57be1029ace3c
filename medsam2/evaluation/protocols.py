"""The simulated clinician: where the first box or click goes, and where each correction goes.

A protocol is one first prompt on the slice where the structure is largest (or, with key_slice "end",
its largest slice within the first 10 % of its extent: long-range propagation), one of
  box       its bounding box there (optionally jittered by `box_jitter`, a fraction of the box size),
  click     one foreground click at the interior point farthest from the border there,
  mask      its true mask there, painted by hand (SAM 2's mask prompt), or
  scribble  a foreground stroke along its medial axis there (3 px wide) and a background stroke around
            it, 3-4 px outside its border, each turned into clicks as the server turns Slicer's
            scribbles into clicks (painted.stroke_points, `scribble_points` per stroke),
then up to `corrections` corrective clicks, each in the largest error region of the worst slice
(the slice with the most wrong voxels): a foreground click in a missed region, a background click in
a false-positive one, at that region's most interior pixel. Every prompt is replayed and the volume
re-propagated after each click, as the server does for each request.

The CVPR 2025 challenge's protocol prompts all structures of a case together and scores them as one
case: it has a loop of its own (cvpr25.py). Its corrective click is available here per structure as
`correction_rule="largest_component"` (the centre of the largest 26-connected error component).

Placement uses medsam2.clicks (shared with training) and depends only on the masks; the seed drives
the one random part (box jitter), so the same seed gives the same clicks and, the engine being
deterministic, the same results. Positions are recorded as voxel indices (i, j, k).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from ..clicks import bounding_box, corrective_click, interior_point, largest_slice
from ..painted import POINTS_PER_STROKE, stroke_points
from ..prompts import ObjectPrompt

FIRST_PROMPTS = ("box", "click", "mask", "scribble")
KEY_SLICES = ("largest", "end", "middle")
CORRECTION_RULES = ("worst_slice", "largest_component")


@dataclass(frozen=True)
class Protocol:
    first: str = "click"
    corrections: int = 0
    box_jitter: float = 0.0
    key_slice: str = "largest"  # "end": near the structure's first slice (long range); "middle": of its extent
    slice_range: bool = False  # the box also gives the structure's first and last slice (bounds the result)
    correction_rule: str = "worst_slice"  # or "largest_component": centre of the largest 3D error component
    time_limit_s: float | None = None  # a structure whose inferences take longer in total scores 0
    label: str | None = None  # a name of its own
    scribble_points: int = POINTS_PER_STROKE  # clicks taken from each scribbled stroke

    def __post_init__(self):
        if self.first not in FIRST_PROMPTS:
            raise ValueError(f"unknown first prompt {self.first!r}: use one of {FIRST_PROMPTS}")
        if self.key_slice not in KEY_SLICES:
            raise ValueError(f"unknown key slice {self.key_slice!r}: use one of {KEY_SLICES}")
        if self.correction_rule not in CORRECTION_RULES:
            raise ValueError(f"unknown correction rule {self.correction_rule!r}: use one of {CORRECTION_RULES}")
        if self.corrections < 0:
            raise ValueError("corrections must be >= 0")

    @classmethod
    def parse(cls, spec: str, corrections: int | None = None, box_jitter: float = 0.0,
              key_slice: str = "largest", scribble_points: int = POINTS_PER_STROKE) -> "Protocol":
        """"click", "box", "mask", "scribble", with corrections "click+3" (an explicit `corrections`
        wins). ("cvpr25" is the challenge's own loop: cvpr25.py.)"""
        if str(spec).strip().lower() == "cvpr25":
            raise ValueError("cvpr25 runs the challenge's own loop over whole cases (medsam2.evaluation.cvpr25), "
                             "not a per-structure protocol")
        m = re.fullmatch(r"\s*(box|click|mask|scribble)\s*(?:\+\s*(\d+))?\s*", str(spec).lower())
        if not m:
            raise ValueError(f"unknown protocol {spec!r}: use box, click, mask or scribble, each with +N "
                             "corrections")
        n = corrections if corrections is not None else int(m.group(2) or 0)
        return cls(m.group(1), int(n), float(box_jitter), key_slice, scribble_points=int(scribble_points))

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        first = self.first
        if first == "scribble" and self.scribble_points != POINTS_PER_STROKE:
            first = f"scribble({self.scribble_points})"
        return f"{first}+{self.corrections}" if self.corrections else first

    @property
    def interactions(self) -> int:
        return 1 + self.corrections


@dataclass(frozen=True)
class Interaction:
    """One prompt: kind is box, click (the first foreground click), fg or bg (corrections)."""

    kind: str
    k: int
    i: float | None = None
    j: float | None = None
    box: tuple[float, float, float, float] | None = None  # (i0, j0, i1, j1), i1/j1 exclusive
    slices: tuple[int, int] | None = None  # the box's slice range (first, last), when the protocol gives it
    mask: np.ndarray | None = field(default=None, compare=False)  # mask: the painted (J, I) frame
    points: tuple[tuple[float, float, int], ...] = ()  # scribble: clicks (i, j, 1|0) taken from the strokes

    def as_dict(self) -> dict:
        return {"kind": self.kind, "k": self.k, "i": self.i, "j": self.j,
                "box": list(self.box) if self.box is not None else None,
                "slices": list(self.slices) if self.slices is not None else None,
                "painted_pixels": int(self.mask.sum()) if self.mask is not None else None,
                "points": [list(p) for p in self.points] or None}


def key_slice(truth: np.ndarray, where: str = "largest") -> int | None:
    """The prompted slice: where the structure is largest, ("end") its largest slice within the
    first 10 % of its extent, so that propagation has to cover almost the whole structure one way,
    or ("middle") the middle of its extent (the nearest slice holding it, lower first, if that one
    does not)."""
    if where == "largest":
        return largest_slice(truth)
    areas = truth.reshape(-1, truth.shape[-1]).sum(axis=0)
    ks = np.nonzero(areas)[0]
    if ks.size == 0:
        return None
    if where == "middle":
        mid = (int(ks[0]) + int(ks[-1])) // 2
        return int(ks[np.argmin(np.abs(ks - mid))])
    last = ks[0] + int(round(0.1 * (ks[-1] - ks[0])))
    near = ks[ks <= last]
    return int(near[np.argmax(areas[near])])


def first_interaction(protocol: Protocol, truth: np.ndarray, rng: np.random.Generator) -> Interaction:
    """The first prompt on the key slice of the (I, J, K) truth (see key_slice)."""
    k = key_slice(truth, protocol.key_slice)
    if k is None:
        raise ValueError("the structure is empty: nothing to prompt")
    frame = truth[:, :, k].T  # frame rows are J, columns I (frames.py)
    if protocol.first == "mask":
        return Interaction("mask", k, mask=frame.copy())
    if protocol.first == "scribble":
        inside, outside = scribble_strokes(frame)
        points = [(float(x), float(y), 1) for x, y in stroke_points(inside, protocol.scribble_points)]
        points += [(float(x), float(y), 0) for x, y in stroke_points(outside, protocol.scribble_points)]
        return Interaction("scribble", k, points=tuple(points))
    if protocol.first == "box":
        ks = np.nonzero(truth.any(axis=(0, 1)))[0]
        extent = (int(ks[0]), int(ks[-1])) if protocol.slice_range else None
        return Interaction("box", k, box=bounding_box(frame, rng, protocol.box_jitter), slices=extent)
    x, y = interior_point(frame)
    return Interaction("click", k, i=x, j=y)


def scribble_strokes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A simulated annotator's two strokes on a (J, I) frame mask: one along the structure's medial
    axis (its skeleton, widened to 3 px and kept inside), one around it 3-4 px outside its border."""
    inside = ndimage.binary_dilation(skeletonize(frame), structure=np.ones((3, 3), dtype=bool)) & frame
    outside_dist = ndimage.distance_transform_edt(~frame)
    return inside, (outside_dist > 3) & (outside_dist <= 4)


def worst_slice(pred: np.ndarray, truth: np.ndarray) -> int | None:
    """The slice with the most wrong voxels (lowest k on ties); None when the prediction is exact."""
    errors = (pred != truth).reshape(-1, truth.shape[-1]).sum(axis=0)
    return int(np.argmax(errors)) if errors.max() > 0 else None


def component_correction(pred: np.ndarray, truth: np.ndarray) -> Interaction | None:
    """The CVPR 2025 challenge's click on an (I, J, K) structure (cvpr25.next_click): at the centre of
    the largest 26-connected error component (missed and extra voxels together), foreground where
    the truth is. None when the prediction is exact."""
    from .cvpr25 import next_click

    click = next_click(np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool))
    if click is None:
        return None
    i, j, k = click.zyx  # the engine's (I, J, K) arrays are indexed like any other: (i, j, k)
    return Interaction(click.kind, int(k), i=float(i), j=float(j))


def correction(pred: np.ndarray, truth: np.ndarray, rule: str = "worst_slice") -> Interaction | None:
    """The next corrective click, or None when there is nothing left to correct."""
    if rule == "largest_component":
        return component_correction(pred, truth)
    k = worst_slice(pred, truth)
    if k is None:
        return None
    x, y, positive = corrective_click(pred[:, :, k].T, truth[:, :, k].T)
    return Interaction("fg" if positive else "bg", k, i=x, j=y)


def add_to_prompt(obj: ObjectPrompt, step: Interaction, shape=None) -> None:
    """Add an interaction to the object's prompts (voxel (i, j) is frame point (i + .5, j + .5))."""
    if step.kind == "mask":
        obj.masks[step.k] = step.mask
    elif step.kind == "scribble":
        for x, y, positive in step.points:
            obj.clicks.setdefault(step.k, []).append((x + 0.5, y + 0.5, positive))
    elif step.kind == "box":
        obj.box = (step.k, step.box)
        if step.slices is not None:  # a roi over the whole plane (of `shape`) bounds the result to the slices
            obj.roi = (0, int(shape[0]) - 1, 0, int(shape[1]) - 1, int(step.slices[0]), int(step.slices[1]))
    else:
        obj.clicks.setdefault(step.k, []).append((step.i + 0.5, step.j + 0.5, 0 if step.kind == "bg" else 1))


def simulate(protocol: Protocol, truth: np.ndarray, predict: Callable[[ObjectPrompt], np.ndarray],
             rng: np.random.Generator, label: str = "object", value: int = 1
             ) -> Iterator[tuple[Interaction, np.ndarray, float]]:
    """Run the protocol against `predict` (prompt -> boolean (I, J, K) volume); yields
    (interaction, prediction after it, seconds predict took). Stops early once the prediction is exact."""
    truth = np.asarray(truth, dtype=bool)
    obj = ObjectPrompt(label=label, value=value)
    pred = None
    for n in range(protocol.interactions):
        step = first_interaction(protocol, truth, rng) if n == 0 else correction(pred, truth, protocol.correction_rule)
        if step is None:
            return
        add_to_prompt(obj, step, truth.shape)
        t0 = time.perf_counter()
        pred = np.asarray(predict(obj), dtype=bool)
        yield step, pred, time.perf_counter() - t0
