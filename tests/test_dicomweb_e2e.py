"""End to end against a real PACS: Orthanc with its DICOMweb plugin, the real MONAI Label server on it.

A CT series written with pydicom is stored in Orthanc; the app is started with
`--studies http://127.0.0.1:<port>/dicom-web`; a click is sent the way OHIF v3 sends it (the image id is
the SeriesInstanceUID); the result is saved the way the OHIF plugin saves a label (`PUT /datastore/label`
with the raw label buffer `label.bin` and `label_info`), and the DICOM-SEG that lands in Orthanc is read
back: its references, geometry and every frame against the mask that was saved. Random weights: this
checks plumbing, not accuracy.

Orthanc comes from Debian (`apt-get install orthanc orthanc-dicomweb`, done here when missing and running
as root; otherwise the module is skipped). Orthanc 1.10 has no setting for the address it binds (only
`HttpPort`; `RemoteAccessAllowed: false` refuses remote clients but still listens on every interface),
so it runs with a tiny LD_PRELOAD shim, compiled here, that turns its bind to 0.0.0.0 into 127.0.0.1;
the first test checks that from /proc. dciodvfy (Debian's dicom3tools) validates the CT and the SEG
against the DICOM standard when it can be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import nrrd
import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import free_port, start_server, stop_server
from debian import apt_install, can_install
from medsam2.clicks import interior_point
from medsam2.phantoms import make_phantom

pytestmark = pytest.mark.e2e

SHAPE = (64, 56, 32)  # (I, J, K) = (Columns, Rows, slices): not square, so a transposition shows
SPACING = (0.8, 0.9, 2.5)  # column step (x), row step (y), slice step (z), mm
ORIGIN = (-40.0, -30.0, -100.0)  # ImagePositionPatient of the first slice (LPS, mm)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

BIND_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
/* bind(2) to the wildcard address becomes bind to loopback (IPv4 and IPv6); anything else unchanged */
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real;
    if (!real) real = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof a);
        if (a.sin_addr.s_addr == htonl(INADDR_ANY)) {
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real(fd, (const struct sockaddr *)&a, sizeof a);
        }
    }
    if (addr && addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, addr, sizeof a);
        if (IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) {
            a.sin6_addr = in6addr_loopback;
            return real(fd, (const struct sockaddr *)&a, sizeof a);
        }
    }
    return real(fd, addr, len);
}
"""


# --------------------------------------------------------------------------------------------- Orthanc


def _dicomweb_plugin() -> str | None:
    r = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True)
    libs = [p for p in r.stdout.split() if "DicomWeb" in os.path.basename(p) and ".so" in p and os.path.isfile(p)]
    return min(libs, key=len) if libs else None  # the plugins/ link, else the versioned library


@pytest.fixture(scope="session")
def orthanc_install() -> dict:
    if not (shutil.which("Orthanc") and _dicomweb_plugin()):
        if not can_install():
            pytest.skip("Orthanc with its DICOMweb plugin is not installed and cannot be installed here "
                        "(needs root and apt-get: apt-get install orthanc orthanc-dicomweb)")
        r = apt_install("orthanc", "orthanc-dicomweb")
        if r.returncode != 0 or not (shutil.which("Orthanc") and _dicomweb_plugin()):
            pytest.skip(f"apt-get install orthanc orthanc-dicomweb failed: {(r.stderr or r.stdout)[-800:]}")
    if not shutil.which("dciodvfy") and os.geteuid() == 0 and shutil.which("apt-get"):
        apt_install("dicom3tools")  # optional: the DICOM validator
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.skip("no C compiler for the loopback bind shim (Orthanc 1.10 cannot be told to bind 127.0.0.1)")
    return {"orthanc": shutil.which("Orthanc"), "plugin": _dicomweb_plugin(), "cc": compiler}


@dataclass
class Orthanc:
    url: str
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"


def _listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path(f"/proc/{pid}/net/{table}")
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_addr)
            if width == 8:
                address = ".".join(str(b) for b in raw[::-1])
            else:  # four little-endian 32-bit words
                address = ":".join(raw[i:i + 4][::-1].hex() for i in range(0, 16, 4))
            found.append((address, int(hex_port, 16)))
    return found


@pytest.fixture(scope="module")
def orthanc(orthanc_install, tmp_path_factory) -> Orthanc:
    yield from run_orthanc(orthanc_install, tmp_path_factory.mktemp("orthanc"))


def run_orthanc(orthanc_install, folder: Path, users: dict | None = None):
    """Orthanc on 127.0.0.1 (with `users`: a password required, {name: password})."""
    shim_c, shim = folder / "bind_loopback.c", folder / "bind_loopback.so"
    shim_c.write_text(BIND_SHIM)
    subprocess.run([orthanc_install["cc"], "-shared", "-fPIC", "-O2", "-o", str(shim), str(shim_c), "-ldl"],
                   check=True, capture_output=True)
    port = free_port()
    config = {
        "Name": "medsam2-test",
        "HttpPort": port,
        "HttpServerEnabled": True,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users or {},
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "Plugins": [orthanc_install["plugin"]],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "HttpThreadsCount": 8,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([orthanc_install["orthanc"], str(folder / "orthanc.json")], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "LD_PRELOAD": str(shim)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"Orthanc exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/system", timeout=2, auth=next(iter(users.items())) if users else None
                            ).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"Orthanc did not answer within 60 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    try:
        yield Orthanc(url, proc, port, log)
    finally:
        stop_server(proc)  # the same process-group stop as for the MONAI Label server


# ---------------------------------------------------------------------------------------- the CT series


@dataclass
class Series:
    study: str
    series: str
    frame_of_reference: str
    patient_id: str
    sop_uids: list[str]  # by slice index k
    files: list[Path]
    truth: np.ndarray  # phantom label (I, J, K)


def write_ct_series(folder: Path, seed: int = 700) -> Series:
    """A CT series as a scanner writes it: one file per slice, 16-bit stored values, HU by rescale."""
    phantom = make_phantom(SHAPE, seed=seed, spacing=SPACING)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    sop_uids, files = [], []
    for k in range(SHAPE[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^DICOMweb", "MEDSAM2-DW", "", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study, "1", ""
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20240101", "120000", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series, 1
        ds.PatientPosition, ds.BodyPartExamined, ds.Manufacturer = "HFS", "ABDOMEN", "medsam2-tests"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.InstanceNumber, ds.AcquisitionNumber, ds.KVP = k + 1, 1, 120
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # row spacing (y), column spacing (x)
        ds.SliceThickness = SPACING[2]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = SHAPE[1], SHAPE[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        stored = np.clip(np.round(phantom.image[:, :, k].T + 1024), 0, 65535).astype(np.uint16)  # (rows, cols)
        ds.PixelData = stored.tobytes()
        path = folder / f"CT{k + 1:03d}.dcm"
        ds.save_as(path, write_like_original=False)
        sop_uids.append(sop)
        files.append(path)
    return Series(study, series, frame_of_reference, "MEDSAM2-DW", sop_uids, files, phantom.label)


def store(orthanc: Orthanc, series: Series) -> Series:
    """Upload every file with Orthanc's REST API (POST /instances), as `curl --data-binary @file` does."""
    for path in series.files:
        r = requests.post(f"{orthanc.url}/instances", data=path.read_bytes(), timeout=30)
        assert r.status_code == 200, r.text
    return series


@pytest.fixture(scope="module")
def ct(orthanc, tmp_path_factory) -> Series:
    return store(orthanc, write_ct_series(tmp_path_factory.mktemp("ct")))


def seg_series(orthanc: Orthanc, study: str) -> set[str]:
    r = requests.get(f"{orthanc.dicomweb}/studies/{study}/series", params={"Modality": "SEG"}, timeout=30)
    assert r.status_code in (200, 204), r.text
    return {item["0020000E"]["Value"][0] for item in (r.json() if r.status_code == 200 else [])}


def fetch_seg(orthanc: Orthanc, study: str, series: str, folder: Path) -> tuple[pydicom.Dataset, Path]:
    """The one instance of a SEG series, by WADO-RS as any DICOMweb client would get it."""
    from dicomweb_client import DICOMwebClient

    instances = DICOMwebClient(orthanc.dicomweb).retrieve_series(study, series)
    assert len(instances) == 1
    path = folder / f"{series}.dcm"
    instances[0].save_as(path, write_like_original=False)
    return pydicom.dcmread(path), path


def validate(path: Path, known: tuple[str, ...] = ()) -> None:
    """No errors from dciodvfy (dicom3tools), the standard's IOD checker, but those naming a `known`
    attribute (and its summary line); skip if it is not installed."""
    if not shutil.which("dciodvfy"):
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True).stderr
    errors = [line for line in out.splitlines() if line.startswith("Error") and not any(k in line for k in known)]
    if known and errors == ["Error - Dicom dataset contains invalid data values for Value Representations"]:
        errors = []
    assert not errors, out


def seg_masks(seg: pydicom.Dataset, ct: Series) -> dict[str, np.ndarray]:
    """Each segment of a SEG as an (I, J, K) mask on the CT grid, placed by each frame's own references."""
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    masks = {name: np.zeros(SHAPE, dtype=bool) for name in names.values()}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = ct.sop_uids.index(source)
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[2]], atol=1e-3)
        masks[names[number]][:, :, k] = frame.T.astype(bool)
    return masks


# ------------------------------------------------------------------------------------------ the server


def app_conf(random_checkpoint, tmp_path_factory) -> dict:
    return {"checkpoint": random_checkpoint, "model_config": "sam2.1_hiera_micro",
            "model_dir": tmp_path_factory.mktemp("dicomweb_model")}


def app_env(tmp_path_factory, **extra) -> dict:
    return {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp_path_factory.mktemp("dicomweb_cache")),
            "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",  # no background scoring run competing for the CPU
            **extra}


@pytest.fixture(scope="module")
def app(orthanc, ct, random_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("dicomweb_logs") / "server.log"
    server = start_server(orthanc.dicomweb, app_conf(random_checkpoint, tmp_path_factory), log,
                          app_env(tmp_path_factory))
    yield server
    stop_server(server.proc)


def ohif_click(ct: Series) -> tuple[list[int], dict]:
    """OHIF v3's PointPrompts body: one foreground click inside the organ on the middle slice."""
    k = SHAPE[2] // 2
    x, y = interior_point(ct.truth[:, :, k].T == 1)
    params = {"foreground": [[x, y, k]], "background": [], "result_extension": ".nrrd", "result_dtype": "uint8",
              "result_compress": False, "restore_label_idx": False}
    return [x, y, k], params


def assert_series_geometry(header) -> None:
    """NRRD space is LPS, as DICOM's patient coordinates: the label must sit exactly on the CT grid."""
    np.testing.assert_allclose(np.asarray(header["space directions"], float), np.diag(SPACING), atol=1e-4)
    np.testing.assert_allclose(np.asarray(header["space origin"], float), ORIGIN, atol=1e-4)


@pytest.fixture(scope="module")
def ohif_response(app, ct, tmp_path_factory) -> Path:
    _, params = ohif_click(ct)
    r = app.post_infer(ct.series, params)
    assert r.status_code == 200, r.text
    path = tmp_path_factory.mktemp("dicomweb_results") / "ohif.nrrd"
    path.write_bytes(r.content)
    return path


@pytest.fixture(scope="module")
def ohif_result(ohif_response) -> np.ndarray:
    label, header = nrrd.read(str(ohif_response))
    assert_series_geometry(header)
    return label


# --------------------------------------------------------------------------------------------- tests


def test_orthanc_listens_on_loopback_only(orthanc):
    sockets = _listening_sockets(orthanc.proc.pid)
    assert (("127.0.0.1", orthanc.port) in sockets), sockets
    loopback = {"127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001"}
    assert all(address in loopback for address, _ in sockets), sockets


def test_the_ct_series_is_valid_dicom(ct):
    validate(ct.files[0])


def test_the_app_lists_the_series_and_refuses_unknown_uids(app, ct):
    stats = requests.get(f"{app.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["total"] == 1
    _, params = ohif_click(ct)
    r = app.post_infer(ct.series + ".9", params)
    assert r.status_code == 404, r.text


def test_ohif_click_on_the_series_gives_a_label_on_the_ct_grid(ohif_result, ct):
    label = ohif_result
    assert label.shape == SHAPE and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1}, "random weights found nothing: a SEG needs a non-empty mask"
    k = ohif_click(ct)[0][2]
    assert label[:, :, k].any()


def test_ohif_save_label_stores_a_dicom_seg_in_orthanc(app, orthanc, ct, ohif_result, tmp_path):
    before = seg_series(orthanc, ct.study)
    # the OHIF plugin's save_label: the labelmap's raw buffer as label.bin, the segments as label_info
    label_info = [{"id": "0+1", "labelmapIndex": 0, "segmentIndex": 1, "color": [0, 151, 206, 255],
                   "meta": {"SegmentNumber": 1, "SegmentLabel": "organ"}, "name": "organ",
                   "description": "organ"}]
    buffer = ohif_result.astype(np.uint8).tobytes(order="F")  # i fastest, then j, then slices
    r = requests.put(f"{app.url}/datastore/label", params={"image": ct.series},
                     files={"params": (None, json.dumps({"label_info": label_info})),
                            "label": ("label.bin", buffer, "application/octet-stream")}, timeout=120)
    assert r.status_code == 200, r.text
    new = seg_series(orthanc, ct.study) - before
    assert len(new) == 1, new
    seg, path = fetch_seg(orthanc, ct.study, new.pop(), tmp_path)

    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == ct.study and seg.PatientID == ct.patient_id
    assert seg.FrameOfReferenceUID == ct.frame_of_reference
    assert [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "organ")]
    referenced = seg.ReferencedSeriesSequence
    assert len(referenced) == 1 and referenced[0].SeriesInstanceUID == ct.series
    assert sorted(i.ReferencedSOPInstanceUID for i in referenced[0].ReferencedInstanceSequence) == sorted(ct.sop_uids)
    assert (seg.Rows, seg.Columns, int(seg.NumberOfFrames)) == (SHAPE[1], SHAPE[0], SHAPE[2])
    np.testing.assert_allclose([float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
                                .PixelSpacing], [SPACING[1], SPACING[0]], atol=1e-6)

    masks = seg_masks(seg, ct)
    np.testing.assert_array_equal(masks["organ"], ohif_result == 1)
    validate(path)

    # and as MONAI Label reads a SEG back (for training on it)
    import SimpleITK as sitk
    from monailabel.datastore.utils.convert import dicom_seg_to_itk_image

    image = sitk.ReadImage(dicom_seg_to_itk_image(str(path)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), ohif_result)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-3)
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-4)


def test_slicer_style_nrrd_with_two_structures_is_stored_with_consecutive_segments(app, orthanc, ct, ohif_response,
                                                                                   tmp_path):
    # the model's organ plus a lesion the annotator painted, as label values 1 and 3 on the image grid
    label, header = nrrd.read(str(ohif_response))
    label[ct.truth == 3] = 3
    assert set(np.unique(label)) == {0, 1, 3}
    nrrd.write(str(tmp_path / "two.nrrd"), label, header)

    before = seg_series(orthanc, ct.study)
    # Slicer's save_label: the label file itself, label_info [{name, idx}] in segment order
    label_info = [{"name": "organ", "idx": 1}, {"name": "lesion", "idx": 2}]
    r = requests.put(f"{app.url}/datastore/label", params={"image": ct.series},
                     files={"params": (None, json.dumps({"label_info": label_info, "client_id": "user-xyz"})),
                            "label": ("label.nrrd", (tmp_path / "two.nrrd").read_bytes())}, timeout=120)
    assert r.status_code == 200, r.text
    new = seg_series(orthanc, ct.study) - before
    assert len(new) == 1, new
    seg, path = fetch_seg(orthanc, ct.study, new.pop(), tmp_path)
    # segment numbers must run 1, 2, ... (label value 3 becomes segment 2, still named "lesion")
    assert [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "organ"), (2, "lesion")]
    assert int(seg.NumberOfFrames) == 2 * SHAPE[2]
    masks = seg_masks(seg, ct)
    np.testing.assert_array_equal(masks["organ"], label == 1)
    np.testing.assert_array_equal(masks["lesion"], label == 3)
    validate(path)


def test_a_series_stored_after_the_server_started_can_be_segmented(app, orthanc, ct, tmp_path):
    # MONAI Label caches the series list for hours; the app asks the PACS about an id it has not seen
    later = store(orthanc, write_ct_series(tmp_path, seed=701))
    r = app.post_infer(later.series, ohif_click(later)[1])
    assert r.status_code == 200, r.text
    (tmp_path / "later.nrrd").write_bytes(r.content)
    label, header = nrrd.read(str(tmp_path / "later.nrrd"))
    assert label.shape == SHAPE
    assert_series_geometry(header)
    # the next click on it finds its features: one series, one path (MONAI Label answered a temporary
    # file the first time and the datastore's copy afterwards)
    again = app.post_infer(later.series, ohif_click(later)[1], output="json")
    assert again.status_code == 200 and again.json()["engine"]["cached_features"] is True


def test_ohif_reading_a_series_through_the_proxy_encodes_it_before_the_first_click(app, orthanc, tmp_path):
    series = store(orthanc, write_ct_series(tmp_path, seed=702))
    meta = requests.get(f"{app.url}/proxy/dicom/wado/studies/{series.study}/series/{series.series}/metadata",
                        headers={"Accept": "application/dicom+json"}, timeout=30)
    assert meta.status_code == 200
    # the app downloads the series from the PACS and encodes its slices, before any click
    assert app.encode_ahead_job(series.series) == ("address:127.0.0.1", "done", SHAPE[2])
    r = app.post_infer(series.series, ohif_click(series)[1], output="json")
    assert r.status_code == 200, r.text
    assert r.json()["engine"]["encoded_ahead"] is True and r.json()["latencies"]["slices_encoded_before"] == SHAPE[2]


def test_an_empty_label_is_refused_with_a_reason(app, orthanc, ct):
    before = seg_series(orthanc, ct.study)
    empty = np.zeros(SHAPE, np.uint8).tobytes(order="F")
    r = requests.put(f"{app.url}/datastore/label", params={"image": ct.series},
                     files={"params": (None, json.dumps({"label_info": []})),
                            "label": ("label.bin", empty, "application/octet-stream")}, timeout=120)
    assert r.status_code == 422 and "empty" in r.text
    assert seg_series(orthanc, ct.study) == before


def test_series_kept_as_a_dicom_folder_gives_the_same_label_and_saves(orthanc, ct, ohif_result, random_checkpoint,
                                                                        tmp_path_factory, tmp_path):
    """MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI=false: the infer task reads the downloaded folder of DICOM files."""
    log = tmp_path_factory.mktemp("dicomweb_folder_logs") / "server.log"
    server = start_server(orthanc.dicomweb, app_conf(random_checkpoint, tmp_path_factory), log,
                          app_env(tmp_path_factory, MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI="false"))
    try:
        _, params = ohif_click(ct)
        r = server.post_infer(ct.series, params)
        assert r.status_code == 200, r.text
        (tmp_path / "folder.nrrd").write_bytes(r.content)
        label, header = nrrd.read(str(tmp_path / "folder.nrrd"))
        assert_series_geometry(header)
        np.testing.assert_array_equal(label, ohif_result)

        before = seg_series(orthanc, ct.study)
        r = requests.put(f"{server.url}/datastore/label", params={"image": ct.series},
                         files={"params": (None, json.dumps({"label_info": [{"name": "organ"}]})),
                                "label": ("label.nrrd", r.content)}, timeout=120)
        assert r.status_code == 200, r.text
        new = seg_series(orthanc, ct.study) - before
        assert len(new) == 1
        seg, _ = fetch_seg(orthanc, ct.study, new.pop(), tmp_path)
        np.testing.assert_array_equal(seg_masks(seg, ct)["organ"], label == 1)
    finally:
        stop_server(server.proc)


# ------------------------------------------------------------------- the viewer's way to the PACS: /proxy/dicom


def test_a_qido_search_through_the_proxy_returns_what_orthanc_returns(app, orthanc, ct):
    """OHIF's study list searches through the app (/proxy/dicom/qido); MONAI Label 0.8.5 dropped the
    query string, so a search for a patient that does not exist listed every study."""
    for query in ({"PatientID": "nobody"}, {"PatientID": ct.patient_id}, {"limit": "1", "offset": "0"},
                  {"StudyInstanceUID": ct.study, "includefield": "00081030"}):
        direct = requests.get(f"{orthanc.dicomweb}/studies", params=query, timeout=30)
        proxied = requests.get(f"{app.url}/proxy/dicom/qido/studies", params=query, timeout=30)
        assert proxied.status_code == direct.status_code
        assert (proxied.json() if proxied.content else []) == (direct.json() if direct.content else [])
    nobody = requests.get(f"{app.url}/proxy/dicom/qido/studies", params={"PatientID": "nobody"}, timeout=30)
    assert not nobody.content or nobody.json() == []


def test_the_proxy_passes_accept_so_wado_answers_in_the_format_ohif_asks_for(app, orthanc, ct):
    path = f"studies/{ct.study}/series/{ct.series}/instances/{ct.sop_uids[0]}"
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    direct = requests.get(f"{orthanc.dicomweb}/{path}", headers=accept, timeout=30)
    proxied = requests.get(f"{app.url}/proxy/dicom/wado/{path}", headers=accept, timeout=30)
    assert direct.status_code == proxied.status_code == 200
    assert proxied.headers["content-type"].startswith("multipart/related")
    assert len(proxied.content) == len(direct.content)
    meta = requests.get(f"{app.url}/proxy/dicom/qido/studies/{ct.study}/series/{ct.series}/metadata",
                        headers={"Accept": "application/dicom+json"}, timeout=30)
    assert meta.status_code == 200 and len(meta.json()) == SHAPE[2]


def test_stow_through_the_proxy_stores_in_orthanc_with_a_standard_client(app, orthanc, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(f"{app.url}/proxy/dicom", qido_url_prefix="qido", wado_url_prefix="wado",
                            stow_url_prefix="stow")
    extra = write_ct_series(tmp_path, seed=702)
    client.store_instances([pydicom.dcmread(str(extra.files[0]))])
    found = client.search_for_series(search_filters={"SeriesInstanceUID": extra.series})
    assert [s["0020000E"]["Value"][0] for s in found] == [extra.series]
    direct = requests.get(f"{orthanc.dicomweb}/series", params={"SeriesInstanceUID": extra.series}, timeout=30)
    assert len(direct.json()) == 1


@pytest.mark.parametrize("path", ["qido/%2E%2E/%2E%2E/system", "qido/studies/%2E%2E/%2E%2E/%2E%2E/statistics",
                                  "wado/..%2F..%2Fsystem", "%2E%2E/system"])
def test_the_proxy_never_leaves_the_dicomweb_root(app, orthanc, path):
    """Orthanc's own REST API (/system, /tools/...) lies next to /dicom-web: a path must not reach it."""
    assert requests.get(f"{orthanc.url}/system", timeout=30).status_code == 200  # it is there
    r = requests.get(f"{app.url}/proxy/dicom/{path}", timeout=30)
    assert r.status_code == 400 and "not a DICOMweb path" in r.json()["detail"]
    import http.client

    raw = http.client.HTTPConnection("127.0.0.1", int(app.url.rsplit(":", 1)[1]), timeout=30)
    raw.request("GET", "/proxy/dicom/qido/../../../system")  # sent as is, not normalised by a client
    answer = raw.getresponse()
    assert answer.status in (400, 404) and b"DatabaseVersion" not in answer.read()


def test_the_viewer_serves_its_nested_files_as_what_they_are_and_points_the_panel_here(app):
    import mimetypes

    import monailabel.endpoints

    viewer = Path(monailabel.endpoints.__file__).parent / "static" / "ohif"
    nested = next(p for p in sorted(viewer.rglob("*.js")) if p.parent != viewer)  # MONAI Label served index.html
    r = requests.get(f"{app.url}/ohif/{nested.relative_to(viewer)}", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith(mimetypes.guess_type(nested.name)[0])
    assert r.content == nested.read_bytes()
    page = requests.get(f"{app.url}/ohif/monai-label", params={"StudyInstanceUIDs": "1.2.3"}, timeout=30)
    assert page.status_code == 200 and b"<html" in page.content[:500].lower()
    from urllib.parse import unquote

    assert unquote(page.cookies.get("MONAILABEL_SERVER_URL")) == f"{app.url}/"  # the panel unescapes it
    typed = requests.get(f"{app.url}/ohif/", cookies={"MONAILABEL_SERVER_URL": "http://127.0.0.1:9/"}, timeout=30)
    assert "MONAILABEL_SERVER_URL" not in typed.cookies  # the user's own choice is kept
    assert requests.get(f"{app.url}/ohif/assets/no-such-file.js", timeout=30).status_code == 404


def test_an_orthanc_with_a_password_works_through_the_datastore_and_the_proxy(orthanc_install, random_checkpoint,
                                                                             tmp_path_factory):
    users = {"annotator": "s3cret-pw"}
    secured = run_orthanc(orthanc_install, tmp_path_factory.mktemp("orthanc_secured"), users)
    pacs = next(secured)
    try:
        series = write_ct_series(tmp_path_factory.mktemp("ct_secured"), seed=703)
        for path in series.files:
            assert requests.post(f"{pacs.url}/instances", data=path.read_bytes(), auth=("annotator", "s3cret-pw"),
                                 timeout=30).status_code == 200
        assert requests.get(f"{pacs.dicomweb}/studies", timeout=30).status_code == 401  # the password is needed
        log = tmp_path_factory.mktemp("secured_logs") / "server.log"
        server = start_server(pacs.dicomweb, app_conf(random_checkpoint, tmp_path_factory), log,
                              app_env(tmp_path_factory, MONAI_LABEL_DICOMWEB_USERNAME="annotator",
                                      MONAI_LABEL_DICOMWEB_PASSWORD="s3cret-pw"))
        try:
            stats = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60).json()
            assert stats["total"] == 1
            found = requests.get(f"{server.url}/proxy/dicom/qido/studies", params={"PatientID": series.patient_id},
                                 timeout=30)
            assert found.status_code == 200 and [s["0020000D"]["Value"][0] for s in found.json()] == [series.study]
        finally:
            stop_server(server.proc)
    finally:
        secured.close()  # stops that Orthanc
