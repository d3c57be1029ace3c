"""Malformed and oversized image files, written the way real ones are, for the bad-input tests.

A "bomb" is a valid file whose header declares a huge volume: the NIfTI one holds every voxel (zeros,
as concatenated gzip members, 2 MB on disk for 2 GB of voxels), so only a size check made before
reading stops the server from inflating it; the NRRD and DICOM ones declare their size and stop.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

BOMB_SHAPE = (1024, 1024, 2001)  # one slice more than the default --conf max_voxels (1024 * 1024 * 2000)


def nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.0, 1.0])), str(path))
    return path


def nifti_bomb(path: Path, shape=BOMB_SHAPE, dtype=np.uint8) -> Path:
    """A complete .nii.gz of zeros with `shape`, written without ever holding the voxels."""
    image = nib.Nifti1Image(np.zeros((1, 1, 1), dtype), np.eye(4))
    image.header.set_data_shape(shape)
    header = io.BytesIO()
    image.header.write_to(header)
    head = header.getvalue().ljust(352, b"\0")  # 348-byte header, 4 extension bytes, then the voxels
    block = gzip.compress(b"\0" * (1 << 20))
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(nbytes >> 20):
            f.write(block)
        f.write(gzip.compress(b"\0" * (nbytes & ((1 << 20) - 1))))
    return path


def nrrd_bomb(path: Path, shape=BOMB_SHAPE) -> Path:
    sizes = " ".join(str(n) for n in shape)
    header = (f"NRRD0004\ntype: uint8\ndimension: {len(shape)}\nsizes: {sizes}\nspace: left-posterior-superior\n"
              f"space directions: (1,0,0) (0,1,0) (0,0,1)\nencoding: gzip\n\n")
    path.write_bytes(header.encode() + gzip.compress(b"\0" * 64))
    return path


def nrrd_volume(path: Path, array: np.ndarray) -> Path:
    nrrd.write(str(path), array, {"space": "left-posterior-superior",
                                  "space directions": np.eye(array.ndim), "space origin": np.zeros(array.ndim)})
    return path


def dicom(path: Path, rows: int, cols: int, frames: int = 1, with_pixels: bool = True) -> Path:
    """A CT image (multi-frame when frames > 1); without pixels it only declares its size."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", "bad-input"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelData = np.zeros((frames, rows, cols), np.int16).tobytes() if with_pixels else b"\0" * 64
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(str(path), write_like_original=False)
    return path


def truncated(src: Path, dest: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest
