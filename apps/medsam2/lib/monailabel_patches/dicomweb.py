"""DICOMweb (Orthanc, dcm4chee, a cloud PACS): saving labels as DICOM-SEG without dcmqi.

MONAI Label 0.8.5 writes DICOM-SEG with dcmqi's `itkimage2segimage`, which it downloads from GitHub
while the app starts on a DICOMweb URL: without internet access the server does not start at all, and
neither Debian nor PyPI ships the tool. Here nothing is downloaded at startup. A saved label is
written as DICOM-SEG by dcmqi when `itkimage2segimage` is installed (on PATH or in
`apps/medsam2/bin/`), otherwise by pydicom-seg, MONAI Label's own alternative writer
(`nifti_to_dicom_seg(..., use_itk=False)`, installed with monailabel). pydicom-seg gives the SEG a
new Frame of Reference UID; it is set back to the image series' own, since the SEG lies on its grid.
Label values are renumbered 1..n in order before writing, as DICOM-SEG segment numbers must be.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np
import pydicom
import SimpleITK
from fastapi import HTTPException
from cachetools import TTLCache, cached
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.utils.convert import binary_to_image, nifti_to_dicom_seg
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.monailabel_patches.datastore import check_name
from lib.params import label_name
from medsam2.settings import ServerSettings

logger = logging.getLogger(__name__)

DCMQI_TOOL = "itkimage2segimage"
DEFAULT_MODALITIES = ServerSettings.__dataclass_fields__["dicomweb_modalities"].default  # --conf dicomweb_modalities


def dcmqi_available(app_dir: str) -> bool:
    return bool(shutil.which(DCMQI_TOOL)) or os.path.isfile(os.path.join(app_dir, "bin", DCMQI_TOOL))


def consecutive_values(label_file: str) -> str:
    """`label_file`, or a copy whose nonzero values are 1, 2, ... n in the same order (DICOM-SEG segment
    numbers must start at 1 and go up by one; a label of organ=1 and lesion=3 would break that)."""
    image = SimpleITK.ReadImage(label_file)
    array = SimpleITK.GetArrayFromImage(image)
    values = [int(v) for v in np.unique(array) if v != 0]
    if values == list(range(1, len(values) + 1)):
        return label_file
    lut = np.zeros(max(values) + 1, dtype=np.uint16)
    lut[values] = np.arange(1, len(values) + 1)
    out = SimpleITK.GetImageFromArray(lut[array.astype(np.int64).clip(0, max(values))])
    out.CopyInformation(image)
    path = tempfile.NamedTemporaryFile(suffix=".nrrd", delete=False).name
    SimpleITK.WriteImage(out, path, True)
    return path


def write_dicom_seg(series_dir: str, label_file: str, label_info, use_dcmqi: bool) -> str:
    """The label as a DICOM-SEG file referencing the series in `series_dir`; "" if the label is empty.

    `label_info` is the clients' list of segments, the i-th describing the i-th smallest label value
    (MONAI Label's convention): its `name` becomes the SegmentLabel."""
    if use_dcmqi:
        return nifti_to_dicom_seg(series_dir, label_file, label_info, use_itk=True)
    consecutive = consecutive_values(label_file)
    try:
        seg_file = nifti_to_dicom_seg(series_dir, consecutive, label_info, use_itk=False)
    finally:
        if consecutive != label_file:
            os.unlink(consecutive)
    if seg_file:
        seg = pydicom.dcmread(seg_file)
        sources = {d.SOPInstanceUID: d for d in (pydicom.dcmread(p, stop_before_pixels=True)
                                                 for p in sorted(pathlib.Path(series_dir).iterdir()) if p.is_file())}
        source = next(iter(sources.values()))
        for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
            if keyword in source:
                setattr(seg, keyword, source[keyword].value)
        place_frames_on_their_sources(seg, sources)
        seg.save_as(seg_file)
    return seg_file


def place_frames_on_their_sources(seg: pydicom.Dataset, sources: dict) -> None:
    """Each frame's position set to that of the image it references. pydicom-seg computes positions from
    ITK's geometry, which steps along the planes' normal: on a real GE MR series whose slices lean
    0.2 degrees off it, frames were up to 0.06 mm away from their images, more than viewers that match
    frames to images by position allow."""
    for group in seg.PerFrameFunctionalGroupsSequence:
        try:
            uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            position = sources[uid].ImagePositionPatient
        except (AttributeError, IndexError, KeyError):
            continue
        group.PlanePositionSequence[0].ImagePositionPatient = list(position)


class SegDICOMWebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore; the DICOM-SEG writer of `save_label` differs, the images are
    the series of every modality the app segments (`list_images`), and which images are labelled is
    asked of the PACS each time (`get_labeled_images`)."""

    use_dcmqi = False
    modalities: tuple[str, ...] = DEFAULT_MODALITIES

    def series_filters(self) -> list[dict]:
        """The QIDO searches that list the images: MONAI Label's search filter once per modality. QIDO
        matches one value per key, and MONAI Label's default filter, {"Modality": "CT"}, hid every MR
        series of the PACS (a real GE MR series answered 404). A filter that names a modality itself
        (MONAI_LABEL_DICOMWEB_SEARCH_FILTER) is kept as it is."""
        if self._search_filter.get("Modality") and self._search_filter != {"Modality": "CT"}:
            return [dict(self._search_filter)]
        return [{**self._search_filter, "Modality": m} for m in self.modalities]

    def has_series(self, uid: str) -> bool:
        """Whether the PACS holds series `uid` among the images (asked now, not from the cached list)."""
        for search in self.series_filters():
            found = self._client.search_for_series(search_filters={**search, "SeriesInstanceUID": uid})
            if any(item.get("0020000E", {}).get("Value") == [uid] for item in found):
                return True
        return False

    @cached(cache=TTLCache(maxsize=16, ttl=settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY))
    def list_images(self) -> List[str]:
        series: List[str] = []
        for search in self.series_filters():
            for item in self._client.search_for_series(search_filters=search):
                uid = str(pydicom.Dataset.from_json(item)["SeriesInstanceUID"].value)
                if uid not in series:
                    series.append(uid)
        return series

    def get_image_uri(self, image_id: str) -> str:
        """The series' NIfTI file in the datastore, the same path on every call. MONAI Label converts a
        series it has just downloaded into a temporary file, answers with that file and stores a copy;
        later calls answer with the copy. One image with two paths was two images to the session cache:
        the click after the first one on a new series encoded it all again, and a series encoded ahead
        of its first click was not found by it."""
        path = super().get_image_uri(image_id)
        if os.path.dirname(os.path.realpath(path)) != os.path.realpath(tempfile.gettempdir()):
            return path
        stored = super().get_image_uri(image_id)  # the copy, now that it is in the datastore
        if stored != path:
            pathlib.Path(path).unlink(missing_ok=True)
        return stored

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        """Image series that a DICOM-SEG in the PACS references. MONAI Label caches this answer for
        MONAI_LABEL_DICOMWEB_CACHE_EXPIRY (two hours by default), so a SEG that OHIF stores in the PACS
        itself (STOW, not through this app) did not count: "next sample" handed the image just
        labelled over again, and the datastore's counts stayed as they were. Here the SEG series are
        listed on every call; each SEG's metadata is read once (what a SEG references never changes)."""
        refs = self.__dict__.setdefault("_seg_references", {})
        images = set(self.list_images())
        labelled: List[str] = []
        for item in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            seg = pydicom.Dataset.from_json(item)
            uid = str(seg["SeriesInstanceUID"].value)
            if uid not in refs:
                meta = self._client.retrieve_series_metadata(str(seg["StudyInstanceUID"].value), uid)
                referenced = pydicom.Dataset.from_json(meta[0]).get("ReferencedSeriesSequence") if meta else None
                refs[uid] = str(referenced[0].SeriesInstanceUID) if referenced else None
            if refs[uid] in images and refs[uid] not in labelled:
                labelled.append(refs[uid])
        return labelled

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any],
                   label_id: str = "") -> str:
        logger.info(f"Save label for {image_id}: {label_filename} ({label_tag}) {label_info}")
        check_name(label_tag, "label tag")  # a folder of the local cache
        segments = label_info.get("label_info")
        params = label_info.get("params")
        names = params.get("label_names") if isinstance(params, dict) else None
        if segments is None and isinstance(names, dict):  # an infer answer saved with save_label: its names
            segments = label_info["label_info"] = [{"name": n} for n, _ in sorted(names.items(), key=lambda kv: kv[1])]
        for n, segment in enumerate(segments if isinstance(segments, list) else []):
            if isinstance(segment, dict) and segment.get("name") is not None:
                label_name(segment["name"], f"label_info[{n}].name")  # a SegmentLabel: DICOM LO, 64 characters
        image_uri = self.get_image_uri(image_id)
        output_file = ""
        if "".join(pathlib.Path(label_filename).suffixes) == ".bin":  # OHIF's raw label buffer
            output_file = label_filename = binary_to_image(image_uri, label_filename)
        try:
            if label_tag == DefaultLabelTag.FINAL:
                image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
                seg_file = write_dicom_seg(image_dir, label_filename, label_info.get("label_info"), self.use_dcmqi)
                if not seg_file:
                    raise HTTPException(status_code=422, detail="the label is empty: there is no segment to "
                                                                "store as DICOM-SEG")
                try:
                    label_series_id = dicom_web_upload_dcm(seg_file, self._client)
                finally:
                    os.unlink(seg_file)
                if not label_series_id:
                    raise HTTPException(status_code=502, detail="the DICOMweb server did not confirm storing "
                                                                "the DICOM-SEG")
                image_info = self.get_image_info(image_id)
                label_info.update({
                    "SeriesInstanceUID": label_series_id,
                    "Modality": image_info.get("Modality"),
                    "PatientID": image_info.get("PatientID"),
                    "StudyInstanceUID": image_info.get("StudyInstanceUID"),
                })
                if image_id not in self._datastore.objects:
                    # MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI=false: the series is only a folder of DICOM files,
                    # unknown to the local cache, which MONAI Label would answer with a 500 after storing the SEG
                    return image_id
            # the local copy MONAI Label keeps in its cache, as upstream does
            return super(DICOMWebDatastore, self).save_label(image_id, label_filename, label_tag, label_info)
        finally:
            if output_file and os.path.exists(output_file):
                os.unlink(output_file)


def with_seg_writer(datastore, app_dir: str, modalities=DEFAULT_MODALITIES):
    """MONAI Label's DICOMweb datastore, built by MONAI Label from its settings, with the writer above
    and the series of `modalities` as its images."""
    if isinstance(datastore, DICOMWebDatastore):
        datastore.__class__ = SegDICOMWebDatastore
        datastore.modalities = tuple(modalities)
        datastore.use_dcmqi = dcmqi_available(app_dir)
        logger.info("DICOM-SEG writer: %s", "dcmqi (itkimage2segimage)" if datastore.use_dcmqi else "pydicom-seg")
    return datastore
