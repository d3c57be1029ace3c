"""A 3D volume becomes a stack of SAM2 input frames, in memory.

SAM2 expects RGB frames in [0, 1], resized to a square `image_size` and normalised with ImageNet
statistics. Stock SAM2 (and MONAI Label's built-in task) gets there by writing JPEGs and reading them
back; here the volume goes straight from the array to a tensor, on the GPU when there is one.

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
from monai.transforms import ScaleIntensityRange, ScaleIntensityRangePercentiles

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

    def scale(self, volume: torch.Tensor) -> torch.Tensor:
        """Map voxel values to [0, 1] with MONAI's intensity transforms."""
        rule = self.resolve(volume)
        if rule.mode == "ct":
            level, width = rule.window
            t = ScaleIntensityRange(a_min=level - width / 2, a_max=level + width / 2, b_min=0.0, b_max=1.0, clip=True)
        else:
            lo, hi = rule.percentiles
            t = ScaleIntensityRangePercentiles(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)
        out = t(volume)
        # MONAI returns a MetaTensor: every later torch op on it (the whole image encoder, training's
        # track steps) would go through its Python-level __torch_function__. Keep a plain tensor.
        return torch.as_tensor(out, dtype=torch.float32).as_subclass(torch.Tensor)


def scale_volume(volume, intensity: Intensity | str | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """(I, J, K) volume -> (I, J, K) float32 in [0, 1] on `device` (the whole volume, so percentiles are global)."""
    vol = volume if torch.is_tensor(volume) else torch.as_tensor(np.asarray(volume))
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume (I, J, K), got shape {tuple(vol.shape)}")
    return Intensity.parse(intensity).scale(vol.to(device=device, dtype=torch.float32))


def frames_from_scaled(scaled: torch.Tensor, ks, image_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Frames `ks` of a scaled (I, J, K) volume -> (len(ks), 3, image_size, image_size), ImageNet-normalised."""
    slab = scaled[:, :, ks]
    frames = slab.permute(2, 1, 0).unsqueeze(1)  # (k, 1, J, I): rows J, columns I
    frames = F.interpolate(frames, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=frames.device).view(1, 3, 1, 1)
    return ((frames.expand(-1, 3, -1, -1) - mean) / std).to(dtype).contiguous()


def volume_to_frames(volume, image_size: int, intensity=None, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """(I, J, K) volume -> (K, 3, image_size, image_size) normalised frames on `device`."""
    scaled = scale_volume(volume, intensity, device)
    return frames_from_scaled(scaled, slice(None), image_size, dtype)
