"""Reading images and writing labels for the infer tasks, with the HTTP errors users see."""

from __future__ import annotations

import os

import numpy as np
import torch
from fastapi import HTTPException
from monai.data import MetaTensor
from monai.transforms import LoadImage
from monailabel.transform.writer import Writer

from lib.image_ids import is_upload
from lib.image_size import DEFAULT_MAX_VOXELS, UPLOAD, check_image_size
from lib.infers.out_of_memory import is_out_of_memory

RESULT_EXTENSIONS = (".nrrd", ".nii.gz", ".nii")
RESULT_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")


def read_image(path: str, max_voxels: int = DEFAULT_MAX_VOXELS):
    """Read an image with MONAI's readers (NIfTI, NRRD, DICOM series, PNG...); HTTP 422 if unreadable,
    413 if its header declares more than `max_voxels` voxels (checked before reading them)."""
    name = UPLOAD if is_upload(path) else os.path.basename(path)
    check_image_size(path, max_voxels, name=name)
    try:
        image = LoadImage(image_only=True)(path)
    except Exception as e:
        if is_out_of_memory(e):
            raise
        raise HTTPException(status_code=422, detail=f"cannot read image '{name}': {str(e).replace(path, name)}") from e
    if min(image.shape, default=0) < 1:
        raise HTTPException(status_code=422, detail=f"the image is empty (shape {list(image.shape)})")
    affine = image.affine.clone() if isinstance(image, MetaTensor) else torch.eye(4, dtype=torch.float64)
    return np.asarray(image.array if isinstance(image, MetaTensor) else image), {"affine": affine}


def without_channel(array: np.ndarray) -> np.ndarray:
    """A 3D image written with one trailing channel (I, J, K, 1) as (I, J, K); anything else as it is."""
    return array[..., 0] if array.ndim == 4 and array.shape[-1] == 1 else array


def load_volume(path: str, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[np.ndarray, dict]:
    """A 3D image -> (array (I, J, K), geometry); HTTP 422 for anything else."""
    array, header = read_image(path, max_voxels)
    array = without_channel(array)
    if array.ndim != 3:
        kind = "a 2D image" if array.ndim == 2 else f"a {array.ndim}D image"
        raise HTTPException(status_code=422, detail=f"medsam2 segments 3D volumes; got {kind} of shape "
                                                    f"{list(array.shape)}")
    return array, header


def load_labelmap(path: str, shape, affine, max_voxels: int = DEFAULT_MAX_VOXELS) -> np.ndarray:
    """A label file sent with a request (Slicer's scribbles, a painted slice) on the image's grid:
    HTTP 422 if unreadable, of another shape, or placed elsewhere in space than the image."""
    try:
        array, header = read_image(path, max_voxels)
    except HTTPException as e:
        raise HTTPException(status_code=e.status_code, detail=f"the label file: {e.detail}") from e
    array = without_channel(array)
    if tuple(array.shape) != tuple(shape):
        raise HTTPException(status_code=422, detail=f"the label file has shape {list(array.shape)}, the image "
                                                    f"{list(shape)}: export the labelmap on the image's grid")
    ours, theirs = np.asarray(affine, dtype=np.float64), np.asarray(header["affine"], dtype=np.float64)
    if not np.allclose(ours, theirs, rtol=1e-3, atol=1e-2):
        raise HTTPException(status_code=422, detail="the label file lies elsewhere in space than the image (its "
                                                    "origin, spacing or orientation differ): export the labelmap "
                                                    "on the image's grid")
    return array


def image_identity(path: str) -> tuple[str, int]:
    """(real path, modification time): an image's name in the session cache, so that a file replaced
    under the same name is opened afresh."""
    return os.path.realpath(path), os.stat(path).st_mtime_ns


def image_path_or_404(request) -> str:
    path = request.get("image")
    if not isinstance(path, str) or not path or not (os.path.isfile(path) or os.path.isdir(path)):
        raise HTTPException(status_code=404, detail=f"image {request.get('image')!r} is not in the datastore")
    return path


def result_format(request, default_ext: str = ".nrrd", extensions=RESULT_EXTENSIONS) -> tuple[str, str]:
    ext = request.get("result_extension") or default_ext
    dtype = request.get("result_dtype") or "uint8"
    if ext not in extensions:
        raise HTTPException(status_code=400, detail=f"result_extension must be one of {extensions}")
    if dtype not in RESULT_DTYPES:
        raise HTTPException(status_code=400, detail=f"result_dtype must be one of {RESULT_DTYPES}")
    return ext, dtype


def write_label(label: np.ndarray, image_path: str, affine, ext: str, dtype: str, compress=False) -> str:
    """The label file, written by MONAI Label's Writer with the image's geometry."""
    data = {"image_path": image_path, "pred": label, "image_meta_dict": {"affine": affine}, "image": None,
            "result_extension": ext, "result_dtype": dtype, "result_compress": bool(compress)}
    label_file, _ = Writer(label="pred", ref_image="image")(data)
    return label_file
