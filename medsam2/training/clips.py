"""Training samples: short clips of consecutive slices through labelled structures.

SAM2 learns to propagate by seeing a prompt on the first frame(s) of a clip and the true masks on
all of them. A clip here is `clip_len` consecutive slices of one labelled volume, taken towards
increasing or decreasing k (the engine propagates both ways), starting on a slice where the first
chosen structure is visible, with up to `max_objects` structures of that volume as a batch. Half the
clips start near the end of the structure and run past it, so the model learns where to stop.
Which structure a clip follows first is drawn by `DRAWS`: a volume first and then one of its structures
(the default: an image with one label weighs as much as one with six), or each labelled structure of each
volume as often as any other (docs/training.md, "Which structure a clip follows").
2D images are volumes with one slice: their clips have length 1 (prompted frame only).

`Augment` shows each clip as another view of its volume, the same for all of its frames: mirrored
left-right, cropped to a window around its first structure (seen larger, as a small structure in a
large slice otherwise never is at the model's resolution), with another contrast. Without the mirror,
fine-tuning on one hemisphere's structures taught the model that their look-alikes on the other side
are background (docs/training.md, "Learning a real structure").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..field_of_view import Extent, smallest_side, window_around
from ..frames import Intensity, Preprocess, frames_from_scaled, scale_volume


# how a clip's first structure is drawn: "structure", uniformly over every (volume, labelled structure)
# pair; "image", a volume uniformly, then one of its structures uniformly
DRAWS = ("structure", "image")


@dataclass
class Clip:
    frames: torch.Tensor  # (L, 3, S, S) normalised frames
    masks: torch.Tensor  # (L, N, S, S) bool, one channel per object
    slices: list[int]  # source slice index of each frame
    values: list[int]  # label value of each object
    volume: int  # index of the source volume
    num_slices: int = 0  # slices of the source volume (SAM2 scales pointer distances by it)


@dataclass(frozen=True)
class Augment:
    """How a clip may differ from the volume it is cut from (one draw per clip)."""

    p_flip: float = 0.5  # mirrored along I (left-right in radiological volumes)
    p_crop: float = 0.0  # cropped to a window holding the clip's first structure, then resized
    min_crop: float = 0.4  # smallest window, as a fraction of the slice's extent on each axis
    p_gamma: float = 0.0  # grey levels raised to a power in [1 / max_gamma, max_gamma]
    max_gamma: float = 1.5
    # crops and contrast are off by default: with them (0.5, 0.3) four real structures fitted to Dice
    # 0.19-0.57 instead of 0.32-0.77 in a default-length run (docs/training.md)
    # shown in the window the engine's field of view would segment the structure in (field_of_view.py),
    # 2-4 times its extent: a model served with `field_of_view auto` is trained on the views it will get
    p_window: float = 0.0

    @classmethod
    def none(cls) -> "Augment":
        """Every clip exactly as the volume is (draws nothing from the sampler's generator)."""
        return cls(0.0, 0.0, 1.0, 0.0, 1.0, 0.0)

    @property
    def active(self) -> bool:
        return self.p_flip > 0 or self.p_crop > 0 or self.p_gamma > 0 or self.p_window > 0


class LabelledVolume:
    """One (image, label) pair kept scaled to [0, 1] in (I, J, K), ready to cut frames from."""

    def __init__(self, image: np.ndarray, label: np.ndarray, intensity=None, preprocess: Preprocess = Preprocess()):
        if image.ndim == 2:
            image, label = image[..., None], label[..., None]
        if image.shape != label.shape:
            raise ValueError(f"image {image.shape} and label {label.shape} differ in shape")
        self.scaled = scale_volume(image, Intensity.parse(intensity), preprocess=preprocess)
        self.label = np.asarray(label).astype(np.int64)
        self.values = [int(v) for v in np.unique(self.label) if v != 0]
        # per value, the slices where it is visible
        self.present = {v: np.nonzero((self.label == v).reshape(-1, self.label.shape[2]).any(axis=0))[0]
                        for v in self.values}

    @property
    def num_slices(self) -> int:
        return int(self.label.shape[2])


class ClipSampler:
    def __init__(self, volumes: list[LabelledVolume], image_size: int, clip_len: int = 8, max_objects: int = 3,
                 seed: int = 0, p_exit: float = 0.5, preprocess: Preprocess = Preprocess(),
                 augment: Augment = Augment.none(), draw: str = "image"):
        self.volumes = [v for v in volumes if v.values]
        if not self.volumes:
            raise ValueError("no labelled structure in the training volumes")
        if draw not in DRAWS:
            raise ValueError(f"draw must be one of {', '.join(DRAWS)}, got {draw!r}")
        self.draw = draw
        self.structures = [(vi, v) for vi, vol in enumerate(self.volumes) for v in vol.values]
        self.image_size = image_size
        self.preprocess = preprocess  # the checkpoint's own pipeline, as the engine feeds it (frames.py)
        self.augment = augment
        self.clip_len = max(1, int(clip_len))
        self.max_objects = max(1, int(max_objects))
        self.p_exit = p_exit
        self.rng = np.random.default_rng(seed)

    def clip_slices(self, n_slices: int, start: int, reverse: bool) -> list[int]:
        """`clip_len` consecutive slices from `start`, turned around at the volume's end if needed, and
        started nearer that end when there is room neither way (a short volume)."""
        length = min(self.clip_len, n_slices)
        step = -1 if reverse else 1
        end = start + step * (length - 1)
        if end < 0 or end >= n_slices:  # not enough room that way: go the other way
            step = -step
            end = start + step * (length - 1)
        if end < 0 or end >= n_slices:  # nor that way: start as far from the end it runs to as fits
            start = n_slices - length if step == 1 else length - 1
        return [start + step * t for t in range(length)]

    def first_structure(self) -> tuple[int, int]:
        """(volume index, label value) of the structure the next clip follows first (`DRAWS`)."""
        if self.draw == "structure":
            return self.structures[int(self.rng.integers(len(self.structures)))]
        vi = int(self.rng.integers(len(self.volumes)))
        return vi, int(self.rng.choice(self.volumes[vi].values))

    def sample(self) -> Clip:
        vi, first = self.first_structure()
        vol = self.volumes[vi]
        present = vol.present[first]
        reverse = bool(self.rng.integers(2))
        if self.rng.random() < self.p_exit:
            # start near the structure's end so the clip runs past it: the model must learn to stop
            half = self.clip_len // 2
            near_end = present[present <= present.min() + half] if reverse else present[present >= present.max() - half]
            start = int(self.rng.choice(near_end))
        else:
            start = int(self.rng.choice(present))
        slices = self.clip_slices(vol.num_slices, start, reverse)
        others = [v for v in vol.values if v != first and vol.present[v].size and np.isin(start, vol.present[v])]
        self.rng.shuffle(others)
        values = [first] + others[: self.max_objects - 1]
        scaled, label = self._view(vol, first, slices)
        frames = frames_from_scaled(scaled, slices, self.image_size, preprocess=self.preprocess)
        lab = torch.from_numpy(np.ascontiguousarray(label[:, :, slices])).permute(2, 1, 0)  # (L, J, I)
        masks = torch.stack([(lab == v) for v in values], dim=1).float()  # (L, N, J, I)
        masks = F.interpolate(masks, size=(self.image_size, self.image_size), mode="nearest") > 0.5
        return Clip(frames=frames, masks=masks, slices=slices, values=values, volume=vi, num_slices=vol.num_slices)

    def _view(self, vol: LabelledVolume, first: int, slices: list[int]) -> tuple[torch.Tensor, np.ndarray]:
        """(scaled volume, label) as this clip shows them (`Augment`)."""
        scaled, label, a = vol.scaled, vol.label, self.augment
        if not a.active:
            return scaled, label
        if a.p_window > 0 and self.rng.random() < a.p_window:
            extent = Extent.of(label[:, :, slices] == first)
            window = window_around(extent, label.shape, at_least=smallest_side(self.image_size),
                                   context=float(self.rng.uniform(2.0, 4.0))) if extent is not None else None
            if window is not None:  # None: the structure is most of the slice, shown whole as it is segmented
                scaled, label = window.crop(scaled), label[window.i0:window.i1, window.j0:window.j1]
        if self.rng.random() < a.p_crop:
            I, J = label.shape[:2]
            w = [max(2, int(round(n * self.rng.uniform(a.min_crop, 1.0)))) for n in (I, J)]
            extent = Extent.of(label[:, :, slices] == first)  # the structure's extent in the clip
            lo = []
            for a0, a1, n, size in ((extent.i0, extent.i1, I, w[0]), (extent.j0, extent.j1, J, w[1])):
                # a window over as much of the structure as fits, at a random place around it
                low, high = max(0, min(a1 - size, a0)), min(n - size, max(a0, a1 - size))
                lo.append(int(self.rng.integers(low, high + 1)) if high >= low else max(0, min(a0, n - size)))
            box = (slice(lo[0], lo[0] + w[0]), slice(lo[1], lo[1] + w[1]))
            scaled, label = scaled[box], label[box]
        if self.rng.random() < a.p_flip:
            scaled, label = torch.flip(scaled, dims=[0]), label[::-1]
        if self.rng.random() < a.p_gamma:
            gamma = float(np.exp(self.rng.uniform(-np.log(a.max_gamma), np.log(a.max_gamma))))
            scaled = scaled.clamp(0.0, 1.0) ** gamma
            if self.preprocess.uint8:
                scaled = torch.floor(scaled * 255.0) / 255.0
        return scaled, label


class ReplaySampler:
    """Clips from `main`, and with probability `share` from `replay`: what the model already knew, shown
    again while it learns new labels, so that a run on a few structures does not teach it that nothing
    else exists (docs/training.md, "Learning a real structure")."""

    def __init__(self, main: ClipSampler, replay: ClipSampler, share: float, seed: int = 0):
        self.main, self.replay, self.share = main, replay, float(share)
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Clip:
        return self.replay.sample() if self.rng.random() < self.share else self.main.sample()

