"""Labelled volumes to evaluate on: any MONAI Label datastore folder, bundled phantoms, MNI152.

Layout (MONAI Label's datastore): images in the folder, each label map in
`<folder>/labels/final/<same file name>`. An optional `<folder>/labels.json` names the structures,
`{"name": value}` or `{"name": [values]}` where a structure is the union of several values (needed
when structures nest, as brain / white matter do: one label map holds one value per voxel). Without
it each nonzero value present is a structure called `label_<value>`.

Images are read with MONAI's LoadImage, as the infer task reads them, so voxel order and spacing are
what the server sees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class Case:
    id: str
    image: Path
    label: Path


def _stem(path: Path) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def list_cases(folder: Path) -> list[Case]:
    """Images of the folder that have a final label with the same file name, sorted by id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    cases = []
    for image in sorted(folder.iterdir()):
        stem = _stem(image)
        label = folder / "labels" / "final" / image.name
        if image.is_file() and stem is not None and label.is_file():
            cases.append(Case(stem, image, label))
    return cases


def read_structures(folder: Path, override: dict | None = None) -> dict[str, list[int]] | None:
    """Structure name -> label values, from `override`, else `<folder>/labels.json`, else None."""
    spec = override
    if spec is None and (Path(folder) / LABELS_FILE).is_file():
        spec = json.loads((Path(folder) / LABELS_FILE).read_text())
    if spec is None:
        return None
    return {str(k): [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])] for k, v in spec.items()}


def structures_in(label: np.ndarray, structures: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """The structures present in this label map (every nonzero value when none are named)."""
    present = {int(v) for v in np.unique(label) if v != 0}
    if structures is None:
        return {f"label_{v}": [v] for v in sorted(present)}
    return {name: values for name, values in structures.items() if present & set(values)}


def load_case(case: Case) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(image (I, J, K), integer label map (I, J, K), spacing in mm)."""
    from monai.transforms import LoadImage

    loader = LoadImage(image_only=True)
    image, label = loader(str(case.image)), loader(str(case.label))
    spacing = tuple(float(s) for s in image.pixdim[:3])
    image, label = np.asarray(image.array).squeeze(), np.asarray(label.array).squeeze()
    if image.ndim != 3 or label.shape != image.shape:
        raise ValueError(f"{case.id}: need a 3D image and a label of the same shape, "
                         f"got {image.shape} and {label.shape}")
    return image, np.rint(label).astype(np.int32), spacing


def make_phantoms(outdir: Path, count: int, shape=(64, 64, 32), seed: int = 100) -> list[str]:
    """Write `count` phantoms (seeds seed..seed+count-1, spacing 1 x 1 x 2.5 mm) with final labels
    and labels.json. Seeds from 100 up avoid the demo model's training seeds (10-17) and validation (900)."""
    from ..phantoms import PHANTOM_LABELS, write_studies

    outdir = Path(outdir)
    ids = write_studies(outdir, count, shape=tuple(shape), seed=seed, with_labels=count)
    (outdir / LABELS_FILE).write_text(json.dumps(PHANTOM_LABELS, indent=2) + "\n")
    return ids


def make_memory_phantoms(outdir: Path, kind: str = "twins", count: int = 5, shape=(64, 64, 32),
                         seed: int = 5000) -> list[str]:
    """Write `count` memory phantoms of one kind (medsam2.memory_phantoms) with final labels and
    labels.json. Seeds from 5000 up are never used by the demo model (training 1000-1031, validation 9000+)."""
    from ..memory_phantoms import make_memory_phantom
    from ..phantoms import save_nifti

    outdir = Path(outdir)
    ids, labels = [], None
    for n in range(count):
        p = make_memory_phantom(kind, tuple(shape), seed=seed + n)
        image_id = f"{kind.replace('+', '_')}_{seed + n:04d}"
        save_nifti(p, outdir / f"{image_id}.nii.gz", outdir / "labels" / "final" / f"{image_id}.nii.gz")
        ids.append(image_id)
        labels = p.labels
    (outdir / LABELS_FILE).write_text(json.dumps(labels, indent=2) + "\n")
    return ids


# ---- MNI152 -----------------------------------------------------------------------------------

MNI_VALUES = {"other_brain": 1, "white_matter": 2, "lateral_ventricles": 3}
MNI_STRUCTURES = {"brain": [1, 2, 3], "white_matter": [2], "lateral_ventricles": [3]}
# Box around the lateral ventricles in MNI millimetres (x: left-right, y: back-front, z: down-up).
VENTRICLE_BOX_MM = {"abs_x": (2.0, 35.0), "y": (-55.0, 35.0), "z": (-5.0, 40.0)}


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def mni152_label_map(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Labels of the MNI152 2009a template derived from its T1 and tissue probability maps (all in [0, 1]).

    brain               nilearn's brain-mask rule (T1 > 0.2), largest connected component, holes filled
                        in 3D and then per axial slice, so the ventricles and enclosed CSF are inside;
    white matter        white-matter probability >= 0.5 inside the brain, largest connected component
                        (drops a few hundred voxels of isolated specks);
    lateral ventricles  CSF-like voxels (grey + white probability < 0.5) inside the brain, within
                        2-35 mm of the midline, y -55..35 mm, z -5..40 mm; in each hemisphere the
                        largest connected component. The 2 mm midline gap keeps the septum side of the
                        third ventricle and the interhemispheric fissure out, the box keeps sulcal
                        and cisternal CSF out; temporal horns (below z = -5 mm) are left out.
    The map holds 1 = brain not otherwise labelled, 2 = white matter, 3 = lateral ventricles; "brain"
    is the union 1-3 (MNI_STRUCTURES).
    """
    from scipy import ndimage

    brain = ndimage.binary_fill_holes(_largest_component(t1 > 0.2))
    for k in range(brain.shape[2]):
        brain[:, :, k] = ndimage.binary_fill_holes(brain[:, :, k])
    white = _largest_component((wm >= 0.5) & brain)
    idx = np.indices(t1.shape).reshape(3, -1)
    xyz = (affine[:3, :3] @ idx + affine[:3, 3:4]).reshape(3, *t1.shape)
    x, y, z = xyz
    (x0, x1), (y0, y1), (z0, z1) = VENTRICLE_BOX_MM["abs_x"], VENTRICLE_BOX_MM["y"], VENTRICLE_BOX_MM["z"]
    box = (np.abs(x) >= x0) & (np.abs(x) <= x1) & (y >= y0) & (y <= y1) & (z >= z0) & (z <= z1)
    csf = brain & ((gm + wm) < 0.5) & box
    ventricles = _largest_component(csf & (x > 0)) | _largest_component(csf & (x < 0))
    label = np.zeros(t1.shape, dtype=np.uint8)
    label[brain] = MNI_VALUES["other_brain"]
    label[white] = MNI_VALUES["white_matter"]
    label[ventricles] = MNI_VALUES["lateral_ventricles"]
    return label


def make_mni152(outdir: Path, resolution: float = 2.0, margin_mm: float = 4.0) -> str:
    """Write the MNI152 T1 template that ships inside nilearn's wheel (no download) with the labels of
    `mni152_label_map`, cropped to the brain plus `margin_mm` and resampled to `resolution` mm."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template
    from nilearn.image import resample_img

    t1_img = load_mni152_template(resolution=1)
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32)
    gm = np.asarray(load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    affine = t1_img.affine
    label = mni152_label_map(t1, gm, wm, affine)

    nz = np.nonzero(label)
    m = int(np.ceil(margin_mm / abs(affine[0, 0])))
    lo = [max(int(a.min()) - m, 0) for a in nz]
    hi = [min(int(a.max()) + m + 1, n) for a, n in zip(nz, label.shape)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ np.array(lo) + affine[:3, 3]
    image_img = nib.Nifti1Image((t1[crop] * 255.0).astype(np.float32), crop_affine)
    label_img = nib.Nifti1Image(label[crop], crop_affine)
    if resolution and float(resolution) != abs(affine[0, 0]):
        target = crop_affine.copy()
        target[:3, :3] = np.diag(np.sign(np.diag(affine[:3, :3])) * float(resolution))
        shape = [int(np.ceil(n * abs(affine[0, 0]) / float(resolution))) for n in label[crop].shape]
        image_img = resample_img(image_img, target, shape, interpolation="continuous", force_resample=True,
                                 copy_header=True)
        label_img = resample_img(label_img, target, shape, interpolation="nearest", force_resample=True,
                                 copy_header=True)
    outdir = Path(outdir)
    (outdir / "labels" / "final").mkdir(parents=True, exist_ok=True)
    name = "mni152.nii.gz"
    image = np.asarray(image_img.get_fdata(), dtype=np.float32)
    nib.save(nib.Nifti1Image(image, image_img.affine), str(outdir / name))
    nib.save(nib.Nifti1Image(np.asarray(label_img.get_fdata()).round().astype(np.uint8), label_img.affine),
             str(outdir / "labels" / "final" / name))
    (outdir / LABELS_FILE).write_text(json.dumps(MNI_STRUCTURES, indent=2) + "\n")
    return "mni152"
