"""Synthetic CT-like phantoms with labelled 3D structures.

The project cannot ship patient data or download any, yet tests, the bundled sample study, the
trainer's smoke runs and the accuracy benchmark all need volumes with known ground truth. A phantom
is a body ellipse in air (HU-like values) holding a few structures of different shape, contrast and
size, with noise and a mild smooth bias field. Everything is deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# label value -> name; values are stable so labels from different phantoms agree.
PHANTOM_LABELS = {"organ": 1, "vessel": 2, "lesion": 3}
SAMPLE_SHAPE = (128, 128, 48)  # the bundled sample study (`python -m medsam2 sample`)


@dataclass
class Phantom:
    """A generated volume in (I, J, K) voxel order with its label map and voxel spacing (mm)."""

    image: np.ndarray  # float32, HU-like
    label: np.ndarray  # uint8, values from `labels`
    spacing: tuple[float, float, float]
    labels: dict[str, int] = field(default_factory=lambda: dict(PHANTOM_LABELS))
    notes: dict = field(default_factory=dict)  # what a generator drew (memory_phantoms.py: fades, gaps)

    @property
    def affine(self) -> np.ndarray:
        return np.diag([*self.spacing, 1.0]).astype(np.float64)


def _grid(shape):
    i, j, k = np.meshgrid(*(np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape), indexing="ij")
    return i, j, k


def make_phantom(
    shape: tuple[int, int, int] = (64, 64, 32),
    seed: int = 0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.5),
    noise_hu: float | None = None,
) -> Phantom:
    """Make one phantom; `seed` varies positions, sizes, contrasts and noise."""
    rng = np.random.default_rng(seed)
    i, j, k = _grid(shape)
    image = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    body = (i / 0.92) ** 2 + (j / 0.8) ** 2 <= 1.0
    image[body] = rng.uniform(-20, 30)

    # organ: a tilted ellipsoid covering most slices
    ci, cj, ck = rng.uniform(-0.3, 0.1), rng.uniform(-0.2, 0.2), rng.uniform(-0.15, 0.15)
    ri, rj, rk = rng.uniform(0.25, 0.4), rng.uniform(0.2, 0.32), rng.uniform(0.55, 0.8)
    tilt = rng.uniform(-0.4, 0.4)
    di, dj = i - ci - tilt * (k - ck) * 0.3, j - cj
    organ = (di / ri) ** 2 + (dj / rj) ** 2 + ((k - ck) / rk) ** 2 <= 1.0
    image[organ] = rng.uniform(60, 140)
    label[organ & body] = PHANTOM_LABELS["organ"]

    # vessel: a tube whose centre bends along k, spanning the whole volume
    a1, a2 = rng.uniform(0.1, 0.25), rng.uniform(-0.25, 0.25)
    vi = 0.45 + a1 * np.sin(np.pi * (k + rng.uniform(-0.5, 0.5)))
    vj = a2 + 0.15 * k
    rv = rng.uniform(0.07, 0.12)
    vessel = ((i - vi) ** 2 + (j - vj) ** 2 <= rv**2) & ~organ
    image[vessel] = rng.uniform(180, 300)
    label[vessel & body] = PHANTOM_LABELS["vessel"]

    # lesion: a lumpy low-contrast blob inside the organ (sum of Gaussians, thresholded)
    field_ = np.zeros(shape, dtype=np.float32)
    for _ in range(3):
        gi = ci + rng.uniform(-0.4, 0.4) * ri
        gj = cj + rng.uniform(-0.4, 0.4) * rj
        gk = ck + rng.uniform(-0.3, 0.3) * rk
        s = rng.uniform(0.06, 0.1)
        field_ += np.exp(-((i - gi) ** 2 + (j - gj) ** 2 + ((k - gk) * 0.6) ** 2) / (2 * s**2))
    lesion = (field_ > 0.5) & organ
    image[lesion] -= rng.uniform(40, 70)
    label[lesion] = PHANTOM_LABELS["lesion"]

    bias = 1.0 + 0.05 * np.sin(2.0 * i + rng.uniform(0, 3)) * np.cos(1.5 * j)
    image = np.where(body, image * bias, image)
    sigma = noise_hu if noise_hu is not None else rng.uniform(8, 20)
    image = image + rng.normal(0.0, sigma, size=shape).astype(np.float32)
    return Phantom(image=image.astype(np.float32), label=label, spacing=tuple(float(s) for s in spacing))


def save_nifti(phantom: Phantom, image_path: Path, label_path: Path | None = None) -> None:
    """Write the phantom (and optionally its label) as NIfTI with its spacing in the affine."""
    import nibabel as nib

    image_path = Path(image_path)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(phantom.image.astype(np.int16), phantom.affine), str(image_path))
    if label_path is not None:
        label_path = Path(label_path)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(phantom.label, phantom.affine), str(label_path))


def write_studies(folder: Path, count: int, shape=(64, 64, 32), seed: int = 0, with_labels: int = 0) -> list[str]:
    """Write `count` phantoms into a MONAI Label studies folder; the first `with_labels` also get a
    final label under `labels/final/`. Returns the image ids."""
    folder = Path(folder)
    ids = []
    for n in range(count):
        image_id = f"phantom_{seed + n:03d}"
        p = make_phantom(shape=shape, seed=seed + n)
        label_path = folder / "labels" / "final" / f"{image_id}.nii.gz" if n < with_labels else None
        save_nifti(p, folder / f"{image_id}.nii.gz", label_path)
        ids.append(image_id)
    return ids
