"""Which `image` values an infer request may name.

MONAI Label treats an image id that happens to be an existing path as that file, so
`/infer/medsam2?image=/etc/shadow` (or `?image=README.md`) would read any file the server can. Only
ids the datastore knows are accepted, plus the temporary file MONAI Label itself writes when a client
uploads an image with the request. With a DICOMweb datastore the ids are SeriesInstanceUIDs.
"""

import os
import re
import tempfile

from fastapi import HTTPException

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # a DICOM UID: digits and dots only


def is_upload(path: str) -> bool:
    return (os.path.isabs(path) and os.path.dirname(path) == tempfile.gettempdir()
            and os.path.basename(path).startswith("tmp") and os.path.isfile(path))


def _new_dicomweb_series(image: str, datastore) -> bool:
    """A series stored in the PACS after MONAI Label cached its series list (for
    MONAI_LABEL_DICOMWEB_CACHE_EXPIRY seconds, 2 hours by default): asked for by its UID, uncached."""
    from lib.monailabel_patches.dicomweb import SegDICOMWebDatastore

    return isinstance(datastore, SegDICOMWebDatastore) and bool(_UID.fullmatch(image)) and datastore.has_series(image)


def check_image_id(request: dict, datastore) -> None:
    image = request.get("image")
    if not isinstance(image, str) or not image:
        raise HTTPException(status_code=400, detail="no image id given")
    if is_upload(image) or image in set(datastore.list_images()) or _new_dicomweb_series(image, datastore):
        return
    raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
