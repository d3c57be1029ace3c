"""A labelmap painted by the user, turned into prompts: Slicer's scribbles and "fill the volume from my slice".

3D Slicer's MONAI Label module (Scribbles section, Update) exports every segment of the user's
segmentation, the `foreground_scribbles` and `background_scribbles` layers included, into one labelmap
on the image's grid and sends it as the `label` file of `POST /infer/<model>`, with `label_info`
([{name, id}], the value of each segment in the file) and `selected_label_name` (the segment to fill).
On each slice k:
- the selected segment's voxels are a painted mask, SAM 2's mask prompt (`add_new_mask`): the user's
  truth on that slice;
- foreground scribbles become positive clicks and background scribbles negative ones, a few points
  spread along each stroke (`stroke_points`): as masks they would be taken for the structure itself.
Any client can send a painted slice this way; a label file without `label_info` means "every nonzero
voxel is the structure" (docs/requests.md).

After the first Update, Slicer's segment holds the server's answer on every slice, and the next Update
sends it back. `PaintHistory` tells those slices (identical to what was answered, and not painted
before) from slices the user painted or repainted, so that only the latter are prompts; a slice painted
earlier stays a prompt, since it was answered exactly as painted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .prompts import ObjectPrompt, PromptError

FOREGROUND_SCRIBBLES = "foreground_scribbles"
BACKGROUND_SCRIBBLES = "background_scribbles"
SCRIBBLE_LAYERS = (FOREGROUND_SCRIBBLES, BACKGROUND_SCRIBBLES)
POINTS_PER_STROKE = 3  # the scribble protocol of docs/accuracy.md compares 1, 3 and 5
POINT_SPACING = 6.0  # pixels between the points taken from one stroke, at least


def slice_digest(mask2d: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(np.ascontiguousarray(mask2d, dtype=bool)).tobytes()).hexdigest()


@dataclass
class PaintHistory:
    """What was answered for one label on one opened image: a digest of each slice of the answer, and
    the painted masks that were prompts (frame orientation, as sent)."""

    digests: list[str]
    painted: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, answer: np.ndarray, painted: dict[int, np.ndarray]) -> "PaintHistory":
        """answer: the (I, J, K) boolean volume returned for the label; painted: the prompt's masks."""
        return cls([slice_digest(answer[:, :, k]) for k in range(answer.shape[2])], dict(painted))

    def prompt_mask(self, k: int, frame_mask: np.ndarray) -> np.ndarray | None:
        """The mask prompt for slice k given what the segment holds there now (frame orientation):
        a slice identical to the answer is the answer sent back, a prompt only if it was painted
        (then as painted, not as refined by scribbles there); any other slice is a new painting."""
        if k < len(self.digests) and self.digests[k] == slice_digest(frame_mask.T):
            return self.painted.get(k)
        return frame_mask

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.painted.values()) + 48 * len(self.digests)


def stroke_points(stroke: np.ndarray, per_stroke: int = POINTS_PER_STROKE, spacing: float = POINT_SPACING
                  ) -> list[tuple[int, int]]:
    """Points (x, y) spread along each stroke of a 2D boolean mask (rows y, columns x): per
    8-connected stroke, the pixel farthest from its border, then repeatedly the centre-line pixel
    farthest from the points taken, while it is at least `spacing` away, up to `per_stroke` points."""
    labels, n = ndimage.label(stroke, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    dist = ndimage.distance_transform_edt(np.pad(stroke, 1))[1:-1, 1:-1]
    points = []
    for c in range(1, n + 1):
        part = labels == c
        centre = part & (dist >= 0.5 * dist[part].max())  # the middle of the brush's width
        ys, xs = np.nonzero(centre)
        first = int(np.argmax(dist[ys, xs]))
        chosen = [first]
        gap = np.hypot(xs - xs[first], ys - ys[first])
        while len(chosen) < per_stroke:
            nxt = int(np.argmax(gap))
            if gap[nxt] < spacing:
                break
            chosen.append(nxt)
            gap = np.minimum(gap, np.hypot(xs - xs[nxt], ys - ys[nxt]))
        points += [(int(xs[m]), int(ys[m])) for m in chosen]
    return points


def _segment_values(label_info, selected: str | None, label: str | None
                    ) -> tuple[str, int, int | None, int | None, set]:
    """(name, value of the selected segment, of the foreground and background scribbles, all known values)."""
    if label_info in (None, "", []):
        return (label or "object"), -1, None, None, set()
    if not isinstance(label_info, list):
        raise PromptError("'label_info' must be a list of {\"name\": ..., \"id\": ...}, as Slicer sends it")
    values = {}
    for entry in label_info:
        if not isinstance(entry, dict) or "name" not in entry or "id" not in entry:
            raise PromptError(f"each 'label_info' entry must be {{\"name\": ..., \"id\": ...}}, got {entry!r}")
        try:
            value = int(entry["id"])
        except (TypeError, ValueError):
            raise PromptError(f"'label_info' id {entry['id']!r} of {entry['name']!r} is not a number") from None
        if value < 1:
            raise PromptError(f"'label_info' id {value} of {entry['name']!r}: ids start at 1 (0 is background)")
        if str(entry["name"]) in values:
            raise PromptError(f"'label_info' names {entry['name']!r} twice")
        values[str(entry["name"])] = value
    if not selected:
        raise PromptError("'selected_label_name' is missing: name the segment to fill, one of "
                          f"{sorted(n for n in values if n not in SCRIBBLE_LAYERS)}")
    if selected not in values or selected in SCRIBBLE_LAYERS:
        raise PromptError(f"'selected_label_name' {selected!r} is not a segment of 'label_info' "
                          f"({sorted(n for n in values if n not in SCRIBBLE_LAYERS)})")
    return (selected, values[selected], values.get(FOREGROUND_SCRIBBLES), values.get(BACKGROUND_SCRIBBLES),
            set(values.values()))


def labelmap_prompt(labelmap: np.ndarray, label_info=None, selected: str | None = None, label: str | None = None,
                    value: int = 1, history: PaintHistory | None = None, per_stroke: int = POINTS_PER_STROKE
                    ) -> ObjectPrompt:
    """The prompts painted in an (I, J, K) labelmap for the selected segment (module docstring).

    Without `label_info` every nonzero voxel is the structure (named `label`). Raises PromptError for
    a labelmap that is not whole numbers, holds values `label_info` does not name, or paints nothing."""
    if labelmap.ndim != 3:
        raise PromptError(f"the label file must be a 3D labelmap; got shape {list(labelmap.shape)}")
    if labelmap.dtype.kind == "f":  # MONAI's readers give float32
        if not np.isfinite(labelmap).all():
            raise PromptError("the label file must hold whole-number segment ids (it holds NaN or infinity)")
        ints = labelmap.astype(np.int64)
        if (ints != labelmap).any():
            raise PromptError("the label file must hold whole-number segment ids (it holds fractions)")
        labelmap = ints
    if labelmap.size and labelmap.min() < 0:
        raise PromptError("the label file holds negative values; segment ids are 0 (background) and up")
    name, segment, fg_value, bg_value, known = _segment_values(label_info, selected, label)
    if known:
        top = int(labelmap.max(initial=0))
        values = np.nonzero(np.bincount(labelmap.ravel()))[0] if top < 1 << 16 else np.unique(labelmap)
        unknown = [int(v) for v in values if v != 0 and int(v) not in known]
        if unknown:
            raise PromptError(f"the label file holds values {unknown[:10]} that 'label_info' does not name "
                              f"(it names {sorted(known)})")
    obj = ObjectPrompt(label=name, value=value)
    structure = labelmap != 0 if segment == -1 else labelmap == segment
    for k in np.nonzero(structure.any(axis=(0, 1)))[0].tolist():
        mask = np.ascontiguousarray(structure[:, :, k].T)  # frame orientation: rows J, columns I
        if history is not None:
            mask = history.prompt_mask(k, mask)
        if mask is not None:
            obj.masks[k] = mask
    for layer, positive in ((fg_value, 1), (bg_value, 0)):
        if layer is None:
            continue
        strokes = labelmap == layer
        for k in np.nonzero(strokes.any(axis=(0, 1)))[0].tolist():
            for x, y in stroke_points(strokes[:, :, k].T, per_stroke):
                obj.clicks.setdefault(k, []).append((x + 0.5, y + 0.5, positive))
    if not obj.initial_frames:
        what = f"segment {name!r}" if segment != -1 else "structure"
        raise PromptError(
            f"nothing painted: the label file holds no voxel of the {what} (on a slice not already answered) and "
            "no foreground scribble; paint the structure on a slice, or scribble inside it"
            + (" (background scribbles alone say where it is not)" if obj.clicks else ""))
    return obj
