"""The in-plane field of view a structure is segmented in: a window around it when it is small.

SAM 2 sees every slice resized to its input size (1024 px for SAM 2 and Medical SAM 2, 512 for
MedSAM2, 128 for the demo model). A caudate 10 mm across in a whole 1 mm brain slice (181 x 217) is
6 px at the demo model's input; a 10-mm nodule in a 512-px CT slice of 0.8-mm pixels is 12 px at
MedSAM2's input and 3 px at the demo model's. With
`field_of_view = "auto"` the engine first decodes the prompted slices on the whole slice (the
"first look"), then crops every slice of the volume to a square window `CONTEXT` times the
structure's larger extent, centred on it, and propagates there: the model sees the structure
larger, though never larger than `MAGNIFICATION` input pixels per voxel (beyond the scales it was
trained on). A model served this way is fine-tuned on the same windows (`Augment.p_window`).
When the mask reaches an edge of the window that is not the slice's edge, the window is widened
around the mask and the object segmented again (nnInteractive widens its patch the same way).
A structure whose window would cover most of the slice is segmented on the whole slice, as before.

Off by default: on Colin27's subcortical structures (6-13 px at the demo model's input) it did not
help, because a fine-tuned model knows the one view it was trained on; it finds a vessel that the
whole slice shrinks to 3.5 px (docs/training.md, "Structure size against the model's input size").

Each window's slices are encoded once and kept in the session (`InteractiveSession.windows`). A
correction (background clicks) leaves the first look as it was, so it lands in the same window,
widenings included, and reuses its encoded slices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from .prompts import ObjectPrompt
from .session import InteractiveSession

if TYPE_CHECKING:
    from .propagation import SegmentationResult, Segmenter

CONTEXT = 3.0  # the window's side: the structure's larger in-plane extent times this
MAGNIFICATION = 2.0  # at most this many model-input pixels per voxel: no window is smaller than input size / this
WHOLE = 0.75  # a window of at least this share of the slice's smaller side: the whole slice instead
GROWTH = 2.0  # a window whose edge the mask reaches is widened to this many times the mask's extent
MAX_WIDENINGS = 3


@dataclass(frozen=True)
class Extent:
    """Voxel bounds of a structure in the slice plane, half-open: i0 <= i < i1, j0 <= j < j1."""

    i0: int
    i1: int
    j0: int
    j1: int

    @classmethod
    def of(cls, mask_ij: np.ndarray) -> "Extent | None":
        """The bounds of an (I, J, ...) boolean array's True voxels; None when there are none."""
        ii, jj = np.nonzero(mask_ij.reshape(mask_ij.shape[0], mask_ij.shape[1], -1).any(axis=2))
        if ii.size == 0:
            return None
        return cls(int(ii.min()), int(ii.max()) + 1, int(jj.min()), int(jj.max()) + 1)

    def union(self, other: "Extent | None") -> "Extent":
        if other is None:
            return self
        return Extent(min(self.i0, other.i0), max(self.i1, other.i1), min(self.j0, other.j0), max(self.j1, other.j1))


@dataclass(frozen=True)
class Window(Extent):
    """A square window of the slice plane (clipped where the slice is narrower), the same on every slice."""

    def crop(self, volume: torch.Tensor) -> torch.Tensor:
        return volume[self.i0:self.i1, self.j0:self.j1].contiguous()

    def contains(self, extent: Extent) -> bool:
        return self.i0 <= extent.i0 and extent.i1 <= self.i1 and self.j0 <= extent.j0 and extent.j1 <= self.j1

    def reaches_edge(self, mask: np.ndarray, shape: tuple[int, ...]) -> bool:
        """Whether a window-sized (I', J', K) mask touches an edge of the window that is not the slice's."""
        I, J = shape[:2]
        return bool((self.i0 > 0 and mask[0].any()) or (self.i1 < I and mask[-1].any())
                    or (self.j0 > 0 and mask[:, 0].any()) or (self.j1 < J and mask[:, -1].any()))

    def shift(self, obj: ObjectPrompt) -> ObjectPrompt:
        """The object's prompts in the window's coordinates. Its positive prompts lie inside the window
        (it was made around them); a background click outside it is dropped, as the window leaves out
        what it marks."""
        clicks = {}
        for k, pts in obj.clicks.items():
            inside = [(x - self.i0, y - self.j0, p) for x, y, p in pts
                      if self.i0 <= x < self.i1 and self.j0 <= y < self.j1]
            if inside:
                clicks[k] = inside
        box = None
        if obj.box is not None:
            k, (x0, y0, x1, y1) = obj.box
            box = (k, (x0 - self.i0, y0 - self.j0, x1 - self.i0, y1 - self.j0))
        roi = None
        if obj.roi is not None:
            i0, i1, j0, j1, k0, k1 = obj.roi
            roi = (i0 - self.i0, i1 - self.i0, j0 - self.j0, j1 - self.j0, k0, k1)
        masks = {k: np.ascontiguousarray(m[self.j0:self.j1, self.i0:self.i1]) for k, m in obj.masks.items()}
        return replace(obj, clicks=clicks, box=box, roi=roi, masks=masks)


def smallest_side(image_size: int) -> int:
    """Voxels: a window's side is never below this, so the model never sees a voxel larger than
    `MAGNIFICATION` of its input pixels (the demo model, 128 px, was trained on 64-voxel slices: 2)."""
    return int(np.ceil(image_size / MAGNIFICATION))


def window_around(extent: Extent, shape: tuple[int, ...], at_least: int, context: float = CONTEXT) -> Window | None:
    """A square window `context` times the extent's larger side (at least `at_least`), centred on it and
    moved inside the slice; None when it would cover most of the slice (the whole slice is the view then)."""
    I, J = shape[:2]
    side = max(at_least, int(np.ceil(context * max(extent.i1 - extent.i0, extent.j1 - extent.j0))))
    if side >= WHOLE * min(I, J):
        return None
    lo = []
    for a0, a1, n in ((extent.i0, extent.i1, I), (extent.j0, extent.j1, J)):
        start = int(round((a0 + a1) / 2 - side / 2))
        lo.append(min(max(start, 0), max(n - side, 0)))
    return Window(lo[0], min(I, lo[0] + side), lo[1], min(J, lo[1] + side))


def prompt_extent(obj: ObjectPrompt, looked: dict[int, np.ndarray]) -> Extent | None:
    """Where the structure is in the plane: its first-look masks ((J, I) per prompted slice), its painted
    masks, its box, its roi and its clicks. When the first look found nothing, the clicks alone say
    where: a structure the model cannot see on the whole slice is likely a small one."""
    extent = None
    for m in list(looked.values()) + list(obj.masks.values()):
        found = Extent.of(np.asarray(m).T)
        if found is not None:
            extent = found.union(extent)
    if obj.box is not None:
        x0, y0, x1, y1 = obj.box[1]
        extent = Extent(int(np.floor(x0)), int(np.ceil(x1)), int(np.floor(y0)), int(np.ceil(y1))).union(extent)
    if obj.roi is not None:
        i0, i1, j0, j1 = obj.roi[:4]
        extent = Extent(i0, i1 + 1, j0, j1 + 1).union(extent)
    for pts in obj.clicks.values():
        for x, y, positive in pts:
            if positive:
                extent = Extent(int(x), int(x) + 1, int(y), int(y) + 1).union(extent)
    return extent


def widened(window: Window, mask: np.ndarray, shape: tuple[int, ...]) -> Window | None:
    """The next window for a (window-sized) mask that reached the window's edge: `GROWTH` times as wide,
    and at least `CONTEXT` times the mask's extent, centred on the mask; None: the whole slice."""
    found = Extent.of(mask)
    if found is None:
        return None
    found = Extent(found.i0 + window.i0, found.i1 + window.i0, found.j0 + window.j0, found.j1 + window.j0)
    side = max(window.i1 - window.i0, window.j1 - window.j0)
    return window_around(found, shape, at_least=int(np.ceil(GROWTH * side)))


# ------------------------------------------------------------------------------------ segmenting


def first_look(segmenter: "Segmenter", session: InteractiveSession, obj: ObjectPrompt) -> dict[int, np.ndarray]:
    """The prompted slices decoded on the whole slice, as SAM decodes a prompt: (J, I) bool per slice
    (painted slices are their own answer and are not decoded)."""
    I, J, _ = session.shape
    state = segmenter.model.init_volume_state(session.features, height=J, width=I)
    looked = {}
    with segmenter.autocast():
        for k in obj.initial_frames:
            if k in obj.masks:
                continue
            points, labels, box = obj.frame_inputs(k)
            if labels is not None:  # positive clicks only: a correction's background clicks leave it as it was
                points, labels = (points[labels == 1], labels[labels == 1]) if (labels == 1).any() else (None, None)
            _, _, res = segmenter.model.add_new_points_or_box(state, frame_idx=k, obj_id=1, points=points,
                                                              labels=labels, box=box)
            looked[k] = (res[0, 0] > 0).cpu().numpy()
    return looked


def choose_window(segmenter: "Segmenter", session: InteractiveSession,
                  obj: ObjectPrompt) -> tuple[Window | None, Window | None]:
    """(the window around what the first look found, the window to segment in; None: the whole slice).
    The same first look as the label's last one (a correction adds background clicks only) starts
    in the window that one ended in, widenings included."""
    extent = prompt_extent(obj, first_look(segmenter, session, obj))
    first = window_around(extent, session.shape, smallest_side(segmenter.model.image_size)) if extent else None
    remembered = session.label_windows.get(obj.label)
    if first is not None and remembered is not None and remembered[0] == first:
        return first, remembered[1]
    return first, first


def window_session(segmenter: "Segmenter", session: InteractiveSession, window: Window) -> InteractiveSession:
    """The session of the volume cropped to `window`, kept in `session` (its slices encoded once)."""
    sub = session.windows.get(window)
    if sub is None:
        scaled = window.crop(session.features.scaled)
        sub = InteractiveSession(shape=tuple(int(s) for s in scaled.shape), features=segmenter.features_of(scaled),
                                 segmenter=segmenter,
                                 model_version=session.model_version, window=window)
        session.windows[window] = sub
    return sub


def segment_in_windows(segmenter: "Segmenter", session: InteractiveSession, objects: list[ObjectPrompt],
                       memory_policy_factory=None, largest_component: bool | None = None) -> "SegmentationResult":
    """`Segmenter.segment` with the field of view on: small structures in windows around them, the
    others on the whole slice. Where two objects claim a voxel, the one segmented first keeps it
    (those on the whole slice, then the windowed ones in request order)."""
    from .propagation import SegmentationResult

    windows = {obj.label: choose_window(segmenter, session, obj) for obj in objects}
    whole = [obj for obj in objects if windows[obj.label][1] is None]
    dtype = np.uint8 if max(obj.value for obj in objects) < 256 else np.int32
    label = np.zeros(session.shape, dtype=dtype)
    results, timings = {}, {"windows": 0}
    if whole:
        r = segmenter.segment_whole(session, whole, memory_policy_factory, largest_component)
        label, timings = r.label.astype(dtype, copy=False), {**r.timings, "windows": 0}
        results.update((o.label, o) for o in r.objects)
    for obj in objects:
        first, window = windows[obj.label]
        if window is None:
            session.label_windows.pop(obj.label, None)
            continue
        for widenings in range(MAX_WIDENINGS + 1):
            r = segmenter.segment(window_session(segmenter, session, window), [window.shift(obj)],
                                  memory_policy_factory, largest_component)
            mask = r.label == obj.value
            if widenings == MAX_WIDENINGS or not window.reaches_edge(mask, session.shape):
                break  # kept as segmented in this window
            window = widened(window, mask, session.shape)
            if window is None:  # the structure is most of the slice after all
                break
        if window is None:
            session.label_windows.pop(obj.label, None)
            r = segmenter.segment_whole(session, [obj], memory_policy_factory, largest_component)
            region, mask = label, r.label == obj.value
        else:
            session.label_windows[obj.label] = (first, window)
            region = label[window.i0:window.i1, window.j0:window.j1]
            timings["windows"] += 1
        region[mask & ((region == 0) | (region == obj.value))] = obj.value
        results[obj.label] = r.objects[0]
        for key, value in r.timings.items():
            timings[key] = timings.get(key, 0) + value if isinstance(value, (int, float)) else value
    return SegmentationResult(label=label, objects=[results[obj.label] for obj in objects], timings=timings)
