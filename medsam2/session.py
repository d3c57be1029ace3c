"""One client's open image: what SAM 2 calls an inference state, as a typed object with verbs.

An `InteractiveSession` is made by `Segmenter.open` and kept between requests (sessions.py) so that a
corrective click pays only for prompting and propagation. It owns the image's encoded slices
(`features`), the geometry its results are written with (`header`), the weights it was encoded with
(`model_version`), and per label the last prompts, the last track and the painted slices. The verbs:

    session.add_prompts(objects)       # set the prompts of these labels (clients resend all of a label)
    result = session.propagate()       # segment them through the volume (SAM 2's memory, both ways)
    result = session.segment(objects)  # both at once: what an infer request does
    session.reset("liver")             # forget one label (or every label: reset())

`state` says who holds the session: a click (`OPEN`), the encode-ahead worker before any click
(`ENCODING_AHEAD`, encode_ahead.py), or a click that has just taken it over from the worker
(`ADOPTED`, reported once as `encoded_ahead` in that click's response).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .features import FrameFeatures
from .prompts import ObjectPrompt
from .propagators import Track

if TYPE_CHECKING:
    from .field_of_view import Window
    from .propagation import SegmentationResult, Segmenter


class SessionState(enum.Enum):
    OPEN = "open"  # opened by (or for) a click
    ENCODING_AHEAD = "encoding ahead"  # opened by the encode-ahead worker; no click has used it yet
    ADOPTED = "adopted"  # encoded ahead and taken over by a click that has not been answered yet


@dataclass
class ObjectTrack:
    """The last result for one label: what it was prompted with and its per-slice outputs, so the same
    prompts again are answered at once and a correction can re-propagate only as far as the masks
    change (`settle_slices`)."""

    signature: tuple  # Segmenter._signature: the prompts and the settings that shaped the track
    track: Track  # its per-slice outputs
    exact: dict = field(default_factory=dict)  # slice -> (J, I) mask returned as it is (painted slices)


@dataclass(eq=False)  # sessions are compared by identity (the cache holds them)
class InteractiveSession:
    shape: tuple[int, int, int]  # (I, J, K)
    features: FrameFeatures  # the encoder features of its slices, encoded when first needed
    segmenter: "Segmenter"  # the engine (model and settings) that opened it
    opened_s: float = 0.0  # seconds taken to open it (scaling, and encoding when up front)
    header: object = None  # whatever the caller needs to write results (e.g. the image's geometry)
    model_version: str | None = None  # the weights it was encoded with (service.version_id), reported
    state: SessionState = SessionState.OPEN
    prompts: dict[str, ObjectPrompt] = field(default_factory=dict)  # label -> its prompts, as last added
    tracks: dict[str, ObjectTrack] = field(default_factory=dict)  # label -> its last track
    paint: dict[str, object] = field(default_factory=dict)  # label -> painted.PaintHistory (painted prompts)
    # the field of view (field_of_view.py): this session's in-plane window of its parent's volume (None:
    # the whole slice), the windowed sessions opened from it, and the window each label was last segmented in
    window: "Window | None" = None
    windows: "dict[Window, InteractiveSession]" = field(default_factory=dict)
    label_windows: "dict[str, tuple[Window, Window]]" = field(default_factory=dict)  # (first look's, segmented in)
    _pending: list[str] = field(default_factory=list)  # labels added since the last propagate

    def add_prompts(self, objects: list[ObjectPrompt]) -> None:
        """Set the prompts of these labels (each replaces the label's earlier prompts)."""
        for obj in objects:
            self.prompts[obj.label] = obj
        self._pending = [obj.label for obj in objects]

    def propagate(self, memory_policy_factory=None, largest_component: bool | None = None) -> "SegmentationResult":
        """The labels last added, segmented through the volume into one label volume (Segmenter.segment)."""
        objects = [self.prompts[label] for label in self._pending]
        return self.segmenter.segment(self, objects, memory_policy_factory, largest_component)

    def segment(self, objects: list[ObjectPrompt], memory_policy_factory=None,
                largest_component: bool | None = None) -> "SegmentationResult":
        self.add_prompts(objects)
        return self.propagate(memory_policy_factory, largest_component)

    def reset(self, label: str | None = None) -> None:
        """Forget a label's prompts, track and paint (all labels when None); the encoded slices stay."""
        for store in (self.prompts, self.tracks, self.paint, self.label_windows):
            if label is None:
                store.clear()
            else:
                store.pop(label, None)
        self._pending = [p for p in self._pending if label is not None and p != label]

    @property
    def encode_s(self) -> float:
        """Seconds spent encoding this image's slices, its windows' included (field_of_view.py)."""
        return self.features.encode_s + sum(w.features.encode_s for w in list(self.windows.values()))

    @property
    def nbytes(self) -> int:
        tracks = list(self.tracks.values())  # a copy: another request's segment() may add a label meanwhile
        paint = list(self.paint.values())
        windows = list(self.windows.values())
        return (self.features.nbytes + sum(t.track.lowres.numel() * t.track.lowres.element_size() for t in tracks)
                + sum(h.nbytes for h in paint) + sum(w.nbytes for w in windows))
