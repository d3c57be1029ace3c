"""The local datastore (a folder of images with labels/<tag>/ beside them) that checks what it stores
and never leaves half a file.

MONAI Label 0.8.5's LocalDatastore copies whatever `PUT /datastore/image` and `PUT /datastore/label`
send (seen here: random bytes, a truncated NIfTI and an empty file all answered 200 and the empty file
replaced a good label), builds paths from the client's image id and label tag (`?image=../../x` and
`tag=../../x` wrote outside the datastore, and so did `label_tag` with `save_label` on `/infer`), and
writes the label and its `datastore_v2.json` in place, so a server killed mid-save can leave a partial
label or a JSON the next start refuses to load. Here, before anything is written:

- image ids and label tags must be names, not paths (no `/`, `\\`, leading `.`, control characters);
- the file type must be one the datastore lists (`MONAI_LABEL_DATASTORE_FILE_EXT`);
- an image must be within `max_voxels` (from its header, lib/image_size.py) and readable to the end
  by MONAI's `LoadImage`, as 2D or 3D;
- a label must be as readable, have the image's shape and hold non-negative whole numbers; OHIF's raw
  label buffer (`label.bin`) is turned into NIfTI on the image's grid, as MONAI Label does for DICOMweb.
Refusals are HTTP 4xx with the reason. Files and the JSON are written to a temporary file in the same
folder, fsynced and renamed over the old one: a crash leaves the old file or the new one. Temporary
files a crash left behind are removed when the datastore opens.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict

import numpy as np
from fastapi import HTTPException
from filelock import FileLock
from monai.transforms import LoadImage
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image

from lib.image_size import DEFAULT_MAX_VOXELS, UPLOAD, check_image_size
from lib.infers.out_of_memory import answer_out_of_memory
from lib.params import has_control_characters

logger = logging.getLogger(__name__)

PART_SUFFIX = ".part"  # temporary files: ".<name>.<random>.part", matched by no datastore extension
RAW_LABEL = ".bin"  # OHIF's label buffer: one uint8 per voxel, Fortran order, no header


def check_name(value: str, what: str) -> str:
    """`value` if it can be a file name inside the datastore, else HTTP 400."""
    if (not isinstance(value, str) or not value or len(value) > 200 or value.startswith(".")
            or any(c in value for c in "/\\") or has_control_characters(value)):
        raise HTTPException(status_code=400, detail=f"{what} {value!r} is not allowed: a name (not a path) of 1 to "
                                                    "200 characters, not starting with '.', without / or \\")
    return value


def atomic_write(dest: str, fill: Callable[[BinaryIO], object]) -> None:
    """Write `dest` through `fill(file)` so that it is always either its old content or all of the new."""
    folder, name = os.path.split(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=PART_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(folder)


def atomic_copy(src: str, dest: str) -> None:
    with open(src, "rb") as f:
        atomic_write(dest, lambda out: shutil.copyfileobj(f, out, 1 << 20))


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)


def _spatial(shape, path: str = "") -> tuple[int, ...]:
    """Shape without channels: trailing 1s dropped; the colour axis of a PNG/JPEG dropped."""
    shape = tuple(shape)
    if path.lower().endswith((".png", ".jpg", ".jpeg")):
        shape = shape[:2]
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


class CheckedLocalDatastore(LocalDatastore):
    def __init__(self, datastore_path: str, max_voxels: int = DEFAULT_MAX_VOXELS, **kwargs):
        self.max_voxels = int(max_voxels)
        _remove_partial_files(Path(datastore_path))
        super().__init__(datastore_path, **kwargs)
        if getattr(self, "_handler", None) is not None:  # MONAI Label's file watcher (auto_reload)
            self._handler.on_moved = self._on_moved_event

    def _on_moved_event(self, event) -> None:
        """Atomic saves arrive as renames, which MONAI Label's watcher ignores: without this the server
        never sees what another process (a scoring or training run) wrote to `datastore_v2.json`."""
        if os.path.realpath(os.fsdecode(event.dest_path)) == os.path.realpath(self._datastore_config_path):
            self._init_from_datastore_file()  # a no-op for this process's own writes (same mtime)
        else:
            self._on_any_event(event)  # an image or label renamed into place: rescan, as for a new file

    def _extensions_allowed(self) -> list[str]:
        return [e.replace("*", "") for e in self._extensions]

    def _checked_extension(self, filename: str, what: str) -> str:
        _, ext = self._to_id(os.path.basename(filename))
        allowed = self._extensions_allowed()
        if ext not in allowed:
            raise HTTPException(status_code=415, detail=f"cannot store {what}s of type {ext or '(none)'!r}: "
                                                        f"send one of {allowed}")
        return ext

    def _read(self, path: str, what: str) -> np.ndarray:
        """The whole array (native dtype), after the header check: truncated or corrupt files fail here."""
        check_image_size(path, self.max_voxels, what, name=UPLOAD)
        try:
            with answer_out_of_memory(f"reading the {what}"):
                return np.asarray(LoadImage(image_only=True, dtype=None)(path))
        except HTTPException:
            raise
        except Exception as e:
            reason = str(e).replace(path, UPLOAD)
            raise HTTPException(status_code=422, detail=f"cannot read {what} '{UPLOAD}': {type(e).__name__}: "
                                                        f"{reason}") from e

    def _inside(self, folder: str, name: str) -> str:
        dest = os.path.realpath(os.path.join(folder, name))
        if os.path.dirname(dest) != os.path.realpath(folder):
            raise HTTPException(status_code=400, detail=f"{name!r} would be stored outside the datastore")
        return dest

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        image_id = check_name(image_id or self._to_id(os.path.basename(image_filename))[0], "image id")
        ext = self._checked_extension(image_filename, "image")
        array = self._read(image_filename, "image")
        if len(_spatial(array.shape, image_filename)) not in (2, 3):
            raise HTTPException(status_code=422, detail=f"images must be 2D or 3D; got shape {list(array.shape)}")
        del array
        dest = self._inside(self._datastore.image_path(), self._filename(image_id, ext))
        with FileLock(self._lock_file):
            atomic_copy(image_filename, dest)
            info = dict(image_info or {}, name=os.path.basename(dest))
            info["ts"] = int(os.path.getmtime(dest))
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        logger.info("stored image %s (%s)", image_id, os.path.basename(dest))
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
        check_name(label_tag, "label tag")
        image_path = self.get_image_uri(image_id)
        converted = None
        if self._to_id(os.path.basename(label_filename))[1] == RAW_LABEL:
            label_filename = converted = self._raw_label_to_image(image_path, label_filename)
        try:
            ext = self._checked_extension(label_filename, "label")
            image_shape = _spatial(check_image_size(image_path, self.max_voxels, "image"), image_path)
            label = self._read(label_filename, "label")
            if _spatial(label.shape) != image_shape:
                raise HTTPException(status_code=422,
                                    detail=f"the label's shape {list(label.shape)} is not the image's "
                                           f"{list(image_shape)}: a label must lie on its image's grid")
            if label.dtype.kind == "f" and not (np.isfinite(label).all() and (label == np.round(label)).all()):
                raise HTTPException(status_code=422, detail="the label holds values that are not whole numbers")
            if label.dtype.kind in "if" and label.size and label.min() < 0:
                raise HTTPException(status_code=422, detail="the label holds negative values")
            del label
            folder = self._datastore.label_path(label_tag)
            os.makedirs(folder, exist_ok=True)
            dest = self._inside(folder, self._filename(image_id, ext))
            with FileLock(self._lock_file):
                atomic_copy(label_filename, dest)
                info = dict(label_info or {}, name=os.path.basename(dest))
                info["ts"] = int(os.path.getmtime(dest))
                obj.labels[label_tag] = DataModel(info=info, ext=ext)
                self._update_datastore_file(lock=False)
                for other in self._extensions_allowed():  # the same label saved before in another format
                    stale = os.path.join(folder, self._filename(image_id, other))
                    if other != ext and os.path.exists(stale):
                        os.unlink(stale)
        finally:
            if converted:
                os.unlink(converted)
        logger.info("stored label %s/%s (%s)", label_tag, image_id, os.path.basename(dest))
        return image_id

    def _raw_label_to_image(self, image_path: str, raw: str) -> str:
        voxels = int(np.prod(_spatial(check_image_size(image_path, self.max_voxels, "image"), image_path)))
        size = os.path.getsize(raw)
        if size != voxels:
            raise HTTPException(status_code=422, detail=f"the raw label has {size} bytes; the image has {voxels} "
                                                        "voxels (one uint8 per voxel expected)")
        return binary_to_image(image_path, raw)

    def _update_datastore_file(self, lock=True):
        text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)

        def write():
            atomic_write(self._datastore_config_path, lambda out: out.write(text.encode()))
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()


def _remove_partial_files(root: Path) -> None:
    """Temporary files of saves a crash interrupted (in the image folder and each label folder)."""
    for folder in [root, *(p for p in (root / "labels").glob("*") if p.is_dir())] if root.is_dir() else []:
        for part in folder.glob(f".*{PART_SUFFIX}"):
            logger.warning("removing %s, left by an interrupted save", part)
            part.unlink(missing_ok=True)
