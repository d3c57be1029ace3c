"""A 3D volume becomes a stack of SAM2 input frames, in memory.

SAM2 expects RGB frames in [0, 1], resized to a square `image_size` and normalised with ImageNet
statistics. Stock SAM2 (and MONAI Label's built-in task) gets there by writing JPEGs and reading them
back; here the volume goes straight from the array to a tensor, on the GPU when there is one.

Two settings decide the frames: `Intensity` (which window or percentiles map voxel values to grey
levels: a choice of the user, per request) and `Preprocess` (how the checkpoint's own pipeline made
its inputs from those grey levels: whole grey levels or floats, PIL's bicubic filter or bilinear, and
where percentiles are taken; declared per checkpoint in model/manifest.json, because a model only
sees well what it was trained on).

Axis convention used everywhere in the engine: the volume is indexed (I, J, K) as MONAI/ITK/nibabel
load it and as both clients send clicks; frame k is `volume[:, :, k].T`, i.e. rows are J and columns
are I, so a click (i, j, k) is the point x=i, y=j on frame k. Slicer's roi [i0,i1,j0,j1,k0,k1] is then
the box x0=i0, y0=j0, x1=i1, y1=j1 without any swapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import ScaleIntensityRange
from monai.transforms.utils_pytorch_numpy_unification import percentile

# CT windows as (level, width) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 360.0),
    "liver": (80.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_FILTERS = ("bilinear", "pil_bicubic")
PERCENTILES_OF = ("volume", "nonzero")
NORMALIZATIONS = ("imagenet", "none")


@dataclass(frozen=True)
class Preprocess:
    """How a checkpoint's own training/inference pipeline made its input frames (manifest `preprocess`).

    The default is what this project's trainer feeds (float grey levels, bilinear resize, percentiles
    of the whole volume): the demo model's pipeline. The public checkpoints' pipelines differ; each
    manifest entry names the code its steps follow (`reference`).
    """

    percentiles_of: str = "volume"  # "nonzero": percentiles of voxels > 0 only; zero background stays 0
    stretch: bool = False  # after clipping to the window, min-max of the clipped volume to [0, 1]
    uint8: bool = False  # truncated to whole grey levels 0-255 (np.uint8) before resizing, like a JPEG
    resize: str = "bilinear"  # or "pil_bicubic": PIL's default filter on uint8 (rounded after each pass)
    normalize: str = "imagenet"  # "imagenet" mean/std, or "none" ([0, 1])
    reference: str = ""  # the code these steps follow: repository and file

    def __post_init__(self):
        for name, value, allowed in (("percentiles_of", self.percentiles_of, PERCENTILES_OF),
                                     ("resize", self.resize, RESIZE_FILTERS),
                                     ("normalize", self.normalize, NORMALIZATIONS)):
            if value not in allowed:
                raise ValueError(f"preprocess {name} {value!r}: use one of {allowed}")
        if self.resize == "pil_bicubic" and not self.uint8:
            raise ValueError("preprocess resize pil_bicubic works on whole grey levels: set uint8 true")

    @classmethod
    def parse(cls, spec) -> "Preprocess":
        """From a manifest entry's `preprocess` object (None: the default)."""
        if spec is None or isinstance(spec, Preprocess):
            return spec or cls()
        if not isinstance(spec, dict):
            raise ValueError(f"preprocess must be an object, got {spec!r}")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown preprocess fields {sorted(unknown)}: use {sorted(cls.__dataclass_fields__)}")
        return cls(**spec)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Intensity:
    """How voxel values map to [0, 1].

    mode "ct": fixed window (level, width) in HU; mode "percentile": clip at the volume's (lower,
    upper) percentiles, for MR and anything without calibrated units; mode "auto": CT soft-tissue
    window when the volume looks like HU (air around -1000), percentiles otherwise.
    """

    mode: str = "auto"
    window: tuple[float, float] = CT_WINDOWS["soft_tissue"]
    percentiles: tuple[float, float] = (0.5, 99.5)

    @classmethod
    def parse(cls, spec) -> "Intensity":
        """Accept "auto", "percentile", a CT preset name, "ct:<level>,<width>" or [level, width]."""
        if spec is None or isinstance(spec, Intensity):
            return spec or cls()
        if isinstance(spec, (list, tuple)) and len(spec) == 2:
            return cls.ct_window(float(spec[0]), float(spec[1]))
        s = str(spec).strip().lower()
        if s in ("auto", ""):
            return cls()
        if s in ("percentile", "mr", "mri"):
            return cls(mode="percentile")
        if s in CT_WINDOWS:
            return cls(mode="ct", window=CT_WINDOWS[s])
        if s.startswith("ct:"):
            level, width = (float(v) for v in s[3:].split(","))
            return cls.ct_window(level, width)
        raise ValueError(
            f"unknown intensity setting {spec!r}: use auto, percentile, one of {sorted(CT_WINDOWS)}, "
            "'ct:<level>,<width>' or [level, width]"
        )

    @classmethod
    def ct_window(cls, level: float, width: float) -> "Intensity":
        if not (math.isfinite(level) and math.isfinite(width) and width > 0):
            raise ValueError(f"intensity window {[level, width]} needs a finite level and a width > 0")
        return cls(mode="ct", window=(level, width))

    def resolve(self, volume: torch.Tensor) -> "Intensity":
        if self.mode != "auto":
            return self
        looks_like_hu = float(volume.min()) <= -500.0 and float(volume.max()) >= 0.0
        return Intensity(mode="ct", window=self.window) if looks_like_hu else Intensity(mode="percentile")

    def bounds(self, volume: torch.Tensor, preprocess: Preprocess = Preprocess()) -> tuple[float, float]:
        """The voxel values mapped to 0 and 1: the CT window, or the percentiles (of the nonzero voxels
        where the checkpoint's pipeline takes them there), narrowed to the volume's own range when the
        pipeline stretches the clipped volume (clip, then min-max)."""
        rule = self.resolve(volume)
        if rule.mode == "ct":
            level, width = rule.window
            lo, hi = level - width / 2, level + width / 2
        else:
            values = volume[volume > 0] if preprocess.percentiles_of == "nonzero" else volume
            if values.numel() == 0:
                values = volume
            lo, hi = (float(percentile(values, q)) for q in rule.percentiles)  # MONAI's, as its transforms
        if preprocess.stretch:
            lo, hi = max(lo, float(volume.min())), min(hi, float(volume.max()))
        return lo, hi

    def scale(self, volume: torch.Tensor, preprocess: Preprocess = Preprocess()) -> torch.Tensor:
        """Map voxel values to [0, 1] (MONAI's ScaleIntensityRange between `bounds`), then to whole grey
        levels where the checkpoint's pipeline has them."""
        lo, hi = self.bounds(volume, preprocess)
        out = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(volume)
        # MONAI returns a MetaTensor: every later torch op on it (the whole image encoder, training's
        # track steps) would go through its Python-level __torch_function__. Keep a plain tensor.
        out = torch.as_tensor(out, dtype=torch.float32).as_subclass(torch.Tensor)
        if preprocess.percentiles_of == "nonzero" and self.resolve(volume).mode == "percentile":
            out = torch.where(volume == 0, torch.zeros_like(out), out)  # the background stays black
        if preprocess.uint8:
            out = torch.floor(out * 255.0) / 255.0  # np.uint8 truncates
        return out


def scale_volume(volume, intensity: Intensity | str | None = None, device: torch.device | str = "cpu",
                 preprocess: Preprocess = Preprocess()) -> torch.Tensor:
    """(I, J, K) volume -> (I, J, K) float32 in [0, 1] on `device` (the whole volume, so percentiles are global)."""
    vol = volume if torch.is_tensor(volume) else torch.as_tensor(np.asarray(volume))
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume (I, J, K), got shape {tuple(vol.shape)}")
    return Intensity.parse(intensity).scale(vol.to(device=device, dtype=torch.float32), preprocess)


def _pil_bicubic(frames: torch.Tensor, size: int) -> torch.Tensor:
    """PIL's `Image.resize` with its default (bicubic, antialiased) filter on uint8 frames in [0, 1]:
    horizontal pass, then vertical, each rounded to a whole grey level as PIL stores it (within one
    grey level of PIL; tests/test_preprocess.py)."""
    x = frames * 255.0
    x = F.interpolate(x, size=(x.shape[-2], size), mode="bicubic", antialias=True, align_corners=False)
    x = F.interpolate(x.round().clamp(0, 255), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.round().clamp(0, 255) / 255.0


def frames_from_scaled(scaled: torch.Tensor, ks, image_size: int, dtype: torch.dtype = torch.float32,
                       preprocess: Preprocess = Preprocess()) -> torch.Tensor:
    """Frames `ks` of a scaled (I, J, K) volume -> (len(ks), 3, image_size, image_size), resized and
    normalised as the checkpoint's pipeline does (`preprocess`)."""
    slab = scaled[:, :, ks]
    frames = slab.permute(2, 1, 0).unsqueeze(1)  # (k, 1, J, I): rows J, columns I
    if preprocess.resize == "pil_bicubic":
        frames = _pil_bicubic(frames, image_size)
    else:
        frames = F.interpolate(frames, size=(image_size, image_size), mode="bilinear", align_corners=False)
    frames = frames.expand(-1, 3, -1, -1)
    if preprocess.normalize == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=frames.device).view(1, 3, 1, 1)
        frames = (frames - mean) / std
    return frames.to(dtype).contiguous()


def volume_to_frames(volume, image_size: int, intensity=None, device="cpu", dtype=torch.float32,
                     preprocess: Preprocess = Preprocess()) -> torch.Tensor:
    """(I, J, K) volume -> (K, 3, image_size, image_size) model input frames on `device`."""
    scaled = scale_volume(volume, intensity, device, preprocess)
    return frames_from_scaled(scaled, slice(None), image_size, dtype, preprocess)
