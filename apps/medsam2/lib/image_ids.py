"""Which `image` values an infer request may name.

MONAI Label treats an image id that happens to be an existing path as that file, so
`/infer/medsam2?image=/etc/shadow` (or `?image=README.md`) would read any file the server can. Only
ids the datastore knows are accepted, plus the temporary file MONAI Label itself writes when a client
uploads an image with the request.
"""

import os
import tempfile

from fastapi import HTTPException


def _is_upload(path: str) -> bool:
    return (os.path.isabs(path) and os.path.dirname(path) == tempfile.gettempdir()
            and os.path.basename(path).startswith("tmp") and os.path.isfile(path))


def check_image_id(request: dict, datastore) -> None:
    image = request.get("image")
    if not isinstance(image, str) or not image:
        raise HTTPException(status_code=400, detail="no image id given")
    if _is_upload(image) or image in set(datastore.list_images()):
        return
    raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
