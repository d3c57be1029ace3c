"""How big an image is, read from its header before any voxel is: a limit instead of running out of memory.

A 4 MB gzip-compressed NIfTI can declare 1024 x 1024 x 4000 voxels; reading it would take 16 GB as
float32 before anything could refuse it. The shape comes from the header with the library MONAI's
`LoadImage` itself picks for the file (nibabel for NIfTI, pynrrd for NRRD, Pillow for PNG/JPEG, ITK for
DICOM files, DICOM folders and anything else), so nothing is refused that MONAI would read and nothing
is read that the limit refuses. `--conf max_voxels` sets the limit (default: a 1024 x 1024 x 2000 CT).
"""

from __future__ import annotations

import math
import os

from fastapi import HTTPException

from medsam2.settings import ServerSettings

DEFAULT_MAX_VOXELS = ServerSettings.__dataclass_fields__["max_voxels"].default  # --conf max_voxels
UPLOAD = "the uploaded file"  # how messages name a file the client sent (its temporary path means nothing)


def header_shape(path: str) -> tuple[int, ...]:
    """The image's array shape from its header (channels included); raises on an unreadable header."""
    name = path.lower()
    if os.path.isdir(path):
        import SimpleITK

        files = SimpleITK.ImageSeriesReader.GetGDCMSeriesFileNames(path)
        if not files:
            raise ValueError("the folder holds no DICOM series")
        rows_cols = _itk_shape(files[0])
        return (*rows_cols[:2], len(files))
    if name.endswith((".nii", ".nii.gz")):
        import nibabel

        return tuple(int(n) for n in nibabel.load(path).shape)
    if name.endswith(".nrrd"):
        import nrrd

        return tuple(int(n) for n in nrrd.read_header(path)["sizes"])
    if name.endswith((".png", ".jpg", ".jpeg")):
        from PIL import Image

        with Image.open(path) as image:
            return (*image.size, len(image.getbands()))
    return _itk_shape(path)


def _itk_shape(path: str) -> tuple[int, ...]:
    import SimpleITK

    reader = SimpleITK.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return (*reader.GetSize(), reader.GetNumberOfComponents())


def check_image_size(path: str, max_voxels: int = DEFAULT_MAX_VOXELS, what: str = "image",
                     name: str | None = None) -> tuple[int, ...]:
    """The header shape; HTTP 422 for an unreadable header or an empty image, 413 above `max_voxels`.
    `name` stands for the file in messages (an upload's temporary path means nothing to the user)."""
    name = name or os.path.basename(path)
    try:
        shape = header_shape(path)
    except Exception as e:
        reason = str(e).replace(path, name)
        raise HTTPException(status_code=422, detail=f"cannot read {what} '{name}': {reason}") from e
    if not shape or min(shape) < 1:
        raise HTTPException(status_code=422, detail=f"the {what} is empty (shape {list(shape)})")
    voxels = math.prod(shape)
    if voxels > max_voxels:
        raise HTTPException(status_code=413,
                            detail=f"the {what} has {voxels:,} voxels (shape {list(shape)}), more than "
                                   f"this server's limit of {max_voxels:,} (--conf max_voxels)")
    return shape
