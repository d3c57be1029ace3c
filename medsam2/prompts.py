"""What the clients send, turned into per-slice prompts, with every bad input refused clearly.

OHIF v3 and 3D Slicer send `foreground` / `background` clicks as voxel indices [i, j, k] (k = slice)
and Slicer may add `roi` = [i0, i1, j0, j1, k0, k1] from its ROI widget. Slicer computes the roi by
mapping the two RAS corners to IJK, so a pair may come reversed (i0 > i1 on an LPS volume) and may
reach one voxel outside the volume: pairs are sorted and clipped; an roi wholly outside is an error.
Several objects can be sent in one request as `objects: [{label, foreground, background, roi}, ...]`.
A structure painted on some slices (Slicer's scribbles, a hand-painted slice) arrives as a labelmap
file instead; painted.py turns it into the same `ObjectPrompt`, with a mask on each painted slice.

Coordinates follow frames.py: click (i, j, k) is the point (x=i+0.5, y=j+0.5) on frame k (pixel
centres), and the roi is the box x0=i0, y0=j0, x1=i1+1, y1=j1+1 on its middle slice.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np


class PromptError(ValueError):
    """The request's prompts cannot be used; the message is for the user."""


@dataclass
class ObjectPrompt:
    """All prompts for one structure: clicks per slice, an optional box on its key slice, and masks
    painted by the user on some slices (SAM 2's strongest prompt: `add_new_mask`)."""

    label: str
    value: int = 1
    clicks: dict[int, list[tuple[float, float, int]]] = field(default_factory=dict)  # k -> [(x, y, 1|0)]
    box: tuple[int, tuple[float, float, float, float]] | None = None  # (k, (x0, y0, x1, y1))
    roi: tuple[int, int, int, int, int, int] | None = None  # clipped, sorted voxel bounds
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # k -> bool (J, I) frame (rows J, columns I)

    @property
    def frames(self) -> list[int]:
        ks = set(self.clicks) | set(self.masks)
        if self.box is not None:
            ks.add(self.box[0])
        return sorted(ks)

    @property
    def initial_frames(self) -> list[int]:
        """Slices prompted with a mask, a box or at least one positive click: SAM's prompts on their own
        (clicks on a painted slice refine the painted mask there)."""
        return [k for k in self.frames
                if k in self.masks or (self.box is not None and self.box[0] == k)
                or any(p for _, _, p in self.clicks.get(k, []))]

    @property
    def correction_frames(self) -> list[int]:
        """Slices with background clicks only: corrections of the mask tracked there (propagation.py)."""
        initial = set(self.initial_frames)
        return [k for k in self.frames if k not in initial]

    def frame_inputs(self, k: int):
        """(points (N, 2) or None, labels (N,) or None, box (4,) or None) for frame k."""
        pts = self.clicks.get(k, [])
        points = np.array([[x, y] for x, y, _ in pts], dtype=np.float32) if pts else None
        labels = np.array([p for _, _, p in pts], dtype=np.int32) if pts else None
        box = np.array(self.box[1], dtype=np.float32) if self.box is not None and self.box[0] == k else None
        return points, labels, box

    def mask_signature(self) -> tuple:
        """The painted masks as something hashable and cheap to compare (a digest per slice)."""
        return tuple((k, hashlib.sha1(np.packbits(m).tobytes()).hexdigest()) for k, m in sorted(self.masks.items()))


def _as_points(value, name: str) -> list[list[float]]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise PromptError(f"'{name}' must be a list of [i, j, k] voxel indices, got {type(value).__name__}")
    out = []
    for p in value:
        if not isinstance(p, (list, tuple)) or len(p) != 3:
            raise PromptError(f"each '{name}' point must be [i, j, k], got {p!r}")
        try:
            q = [float(c) for c in p]
        except (TypeError, ValueError):
            raise PromptError(f"'{name}' point {p!r} holds a non-number") from None
        if not all(math.isfinite(c) for c in q):
            raise PromptError(f"'{name}' point {p!r} is not finite")
        out.append(q)
    return out


def _check_inside(points: list[list[float]], shape, name: str) -> None:
    for p in points:
        idx = [int(round(c)) for c in p]
        if any(c < 0 or c >= n for c, n in zip(idx, shape)):
            raise PromptError(f"'{name}' point {p} lies outside the image (size {list(shape)} in i, j, k)")


def parse_roi(roi, shape) -> tuple[int, int, int, int, int, int] | None:
    """Slicer roi [i0, i1, j0, j1, k0, k1] -> sorted, clipped (i0, i1, j0, j1, k0, k1), inclusive."""
    if roi is None or (isinstance(roi, (list, tuple)) and len(roi) == 0):
        return None
    if not isinstance(roi, (list, tuple)) or len(roi) != 6:
        raise PromptError(f"'roi' must be [i0, i1, j0, j1, k0, k1], got {roi!r}")
    try:
        v = [float(c) for c in roi]
    except (TypeError, ValueError):
        raise PromptError(f"'roi' {roi!r} holds a non-number") from None
    if not all(math.isfinite(c) for c in v):
        raise PromptError(f"'roi' {roi!r} is not finite")
    bounds = []
    for axis, n in enumerate(shape):
        lo, hi = sorted((int(round(v[2 * axis])), int(round(v[2 * axis + 1]))))
        if hi < 0 or lo >= n:
            raise PromptError(f"'roi' {roi} lies outside the image (size {list(shape)} in i, j, k)")
        bounds += [max(lo, 0), min(hi, n - 1)]
    return tuple(bounds)


def add_clicks(obj: ObjectPrompt, params: dict, shape) -> ObjectPrompt:
    """The request's `foreground` / `background` clicks added to `obj` (checked: inside the image)."""
    fg = _as_points(params.get("foreground"), "foreground")
    bg = _as_points(params.get("background"), "background")
    _check_inside(fg, shape, "foreground")
    _check_inside(bg, shape, "background")
    for points, positive in ((fg, 1), (bg, 0)):
        for i, j, k in points:
            obj.clicks.setdefault(int(round(k)), []).append((i + 0.5, j + 0.5, positive))
    return obj


def object_from_params(params: dict, shape, label: str, value: int = 1) -> ObjectPrompt:
    roi = parse_roi(params.get("roi"), shape)
    obj = add_clicks(ObjectPrompt(label=label, value=value, roi=roi), params, shape)
    if not obj.initial_frames and roi is None:
        raise PromptError(
            f"no prompt for '{label}': send at least one foreground click [i, j, k] or an roi box "
            "(background clicks alone say where the structure is not)"
        )
    if roi is not None:
        i0, i1, j0, j1, k0, k1 = roi
        obj.box = ((k0 + k1) // 2, (float(i0), float(j0), float(i1 + 1), float(j1 + 1)))
    return obj


def parse_objects(params: dict, shape, label_values: dict[str, int] | None = None) -> list[ObjectPrompt]:
    """All objects of one request. Top-level clicks/roi make one object named by `label`."""
    if len(shape) != 3:
        raise PromptError(f"this task segments 3D volumes; the image has shape {list(shape)}")
    label_values = label_values or {}
    specs = []
    if params.get("objects"):
        if not isinstance(params["objects"], list):
            raise PromptError("'objects' must be a list of {label, foreground, background, roi}")
        for n, spec in enumerate(params["objects"], start=1):
            if not isinstance(spec, dict):
                raise PromptError(f"each entry of 'objects' must be an object, got {spec!r}")
            specs.append((spec, str(spec.get("label") or f"object_{n}"), n))
    if params.get("foreground") or params.get("roi"):
        specs.append((params, str(params.get("label") or "object"), len(specs) + 1))
    if not specs:
        raise PromptError(
            "no prompt: send 'foreground' clicks [[i, j, k], ...] and/or an 'roi' [i0, i1, j0, j1, k0, k1]"
        )
    objs = []
    for spec, label, n in specs:
        value = label_values.get(label, n if len(specs) > 1 else 1)
        objs.append(object_from_params(spec, shape, label, value))
    names = [o.label for o in objs]
    if len(set(names)) != len(names):
        raise PromptError(f"the same label appears twice in one request: {names}")
    return objs
