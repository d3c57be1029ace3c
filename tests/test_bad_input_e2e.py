"""Bad input against the real server: each answered with a clear 4xx, nothing written, still serving.

Every case below is sent to `monailabel start_server` on 127.0.0.1 as a client would send it (infer
params, uploaded images on /infer, `PUT /datastore/image`, `PUT /datastore/label`). After each one the
datastore folder (and everything beside it) is byte-for-byte what it was, the path a traversal aimed at
does not exist, and the server answers /info/; at the end it still segments.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

import bad_files
from conftest import start_server, stop_server
from medsam2.phantoms import make_phantom, write_studies

pytestmark = pytest.mark.e2e
QUIET = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}  # no scoring run at start-up competing for the CPU

IMAGE = "phantom_600"  # 32 x 32 x 8, with a saved label
SHAPE = (32, 32, 8)
CLICK = [16, 16, 4]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The folder holding the datastore: nothing in it may change on bad input."""
    root = tmp_path_factory.mktemp("bad_input")
    studies = root / "studies"
    write_studies(studies, 1, shape=SHAPE, seed=600, with_labels=1)
    bad_files.nifti(studies / "flat2d.nii.gz", make_phantom(SHAPE, seed=601).image[:, :, 4].astype(np.int16))
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_files")
    phantom = make_phantom(SHAPE, seed=602)
    good = bad_files.nifti(d / "good.nii.gz", phantom.image.astype(np.int16))
    good_nrrd = bad_files.nrrd_volume(d / "good.nrrd", phantom.image.astype(np.int16))
    good_dcm = bad_files.dicom(d / "good.dcm", 32, 32, 8)
    f = {
        "good": good,
        "label_ok": bad_files.nifti(d / "label_ok.nii.gz", (phantom.label == 1).astype(np.uint8)),
        "junk": d / "junk.nii.gz",
        "empty": d / "empty.nii.gz",
        "truncated": bad_files.truncated(good, d / "truncated.nii.gz"),
        "truncated_nrrd": bad_files.truncated(good_nrrd, d / "truncated.nrrd", keep=0.6),
        "truncated_dcm": bad_files.truncated(good_dcm, d / "truncated.dcm"),
        "zero_size": bad_files.nifti(d / "zero_size.nii.gz", np.zeros((0, 32, 8), np.int16)),
        "bomb": bad_files.nifti_bomb(d / "bomb.nii.gz"),
        "bomb_nrrd": bad_files.nrrd_bomb(d / "bomb.nrrd"),
        "bomb_dcm": bad_files.dicom(d / "bomb.dcm", 65535, 65535, 1000, with_pixels=False),
        "flat2d": bad_files.nifti(d / "flat2d.nii.gz", np.zeros((32, 32), np.int16)),
        "stack4d": bad_files.nifti(d / "stack4d.nii.gz", np.zeros((8, 8, 4, 3), np.int16)),
        "exe": d / "label.exe",
        "label_wrong_grid": bad_files.nifti(d / "wrong_grid.nii.gz", np.zeros((32, 32, 9), np.uint8)),
        "label_fraction": bad_files.nifti(d / "fraction.nii.gz", np.full(SHAPE, 0.5, np.float32)),
        "label_negative": bad_files.nifti(d / "negative.nii.gz", np.full(SHAPE, -1, np.int16)),
        "label_nan": bad_files.nifti(d / "nan.nii.gz", np.full(SHAPE, np.nan, np.float32)),
        "raw_wrong_size": d / "label.bin",
    }
    f["junk"].write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)
    f["empty"].write_bytes(b"")
    f["exe"].write_bytes(f["label_ok"].read_bytes())
    f["raw_wrong_size"].write_bytes(b"\x01" * (np.prod(SHAPE) - 7))
    return f


@pytest.fixture(scope="module")
def srv(root, random_checkpoint, tmp_path_factory):
    logs = tmp_path_factory.mktemp("bad_input_logs")
    s = start_server(root / "studies", {"checkpoint": random_checkpoint, "model_config": "sam2.1_hiera_micro",
                                        "model_dir": tmp_path_factory.mktemp("bad_input_model")}, logs / "server.log",
                     QUIET)
    yield s
    stop_server(s.proc)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def infer(srv, params, image=IMAGE, model="medsam2", upload: Path | None = None):
    body = params if isinstance(params, str) else json.dumps(params)
    files = {"params": (None, body)}
    if upload is not None:
        files["file"] = (upload.name, upload.read_bytes())
    query = {"output": "json", **({"image": image} if upload is None else {})}
    return requests.post(f"{srv.url}/infer/{model}", params=query, files=files, timeout=300)


def put_image(srv, path: Path, image_id: str | None = None, filename: str | None = None):
    return requests.put(f"{srv.url}/datastore/image", params={"image": image_id} if image_id else {},
                        files={"file": (filename or path.name, path.read_bytes())}, timeout=60)


def put_label(srv, path: Path, image=IMAGE, tag="final", filename: str | None = None, params=None):
    return requests.put(f"{srv.url}/datastore/label", params={"image": image, "tag": tag},
                        files={"label": (filename or path.name, path.read_bytes()),
                               "params": (None, json.dumps(params or {}))}, timeout=60)


def nested(depth: int) -> str:
    return '{"foreground": ' + "[" * depth + "]" * depth + "}"


TOO_MANY_CLICKS = {"foreground": [CLICK] * 1001}
LONG_PARAMS = json.dumps({"foreground": [CLICK] * 100_000})  # 1.3 MB

# (name, how it is sent, expected status, words the message must hold)
def click_on_upload(key: str):
    """A case: one click on the file `files[key]`, uploaded with the request instead of a datastore image."""
    return lambda s, f: infer(s, {"foreground": [CLICK]}, upload=f[key])


CASES = [
    ("params a JSON list", lambda s, f: infer(s, "[1, 2]"), 400, "must be a JSON object"),
    ("params null", lambda s, f: infer(s, "null"), 400, "must be a JSON object"),
    ("params a string", lambda s, f: infer(s, '"foreground"'), 400, "must be a JSON object"),
    ("params not JSON", lambda s, f: infer(s, "{foreground: [[1,2,3]]"), 400, "not valid JSON"),
    ("params nested 30 deep", lambda s, f: infer(s, nested(30)), 400, "nested more than"),
    ("params nested 100000 deep", lambda s, f: infer(s, nested(100_000)), 400, "nested more than"),
    ("params over 1 MB", lambda s, f: infer(s, LONG_PARAMS), 400, "maximum size"),
    ("1001 clicks", lambda s, f: infer(s, TOO_MANY_CLICKS), 413, "max_clicks"),
    ("click with NaN", lambda s, f: infer(s, '{"foreground": [[NaN, 3, 3]]}'), 422, "not finite"),
    ("click with 'nan' text", lambda s, f: infer(s, {"foreground": [["nan", 3, 3]]}), 422, "not finite"),
    ("click with Infinity", lambda s, f: infer(s, '{"foreground": [[3, Infinity, 3]]}'), 422, "not finite"),
    ("click 1e308", lambda s, f: infer(s, {"foreground": [[1e308, 3, 3]]}), 422, "outside the image"),
    ("click out of bounds", lambda s, f: infer(s, {"foreground": [[32, 3, 3]]}), 422, "outside the image"),
    ("click not a list", lambda s, f: infer(s, {"foreground": {"i": 3}}), 422, "must be a list"),
    ("label a number", lambda s, f: infer(s, {"foreground": [CLICK], "label": 5}), 400, "must be a text name"),
    ("label with NUL", lambda s, f: infer(s, {"foreground": [CLICK], "label": "a\x00b"}), 400, "control characters"),
    ("label 65 characters", lambda s, f: infer(s, {"foreground": [CLICK], "label": "x" * 65}), 400, "1 to 64"),
    ("objects label a list", lambda s, f: infer(s, {"objects": [{"label": ["organ"], "foreground": [CLICK]}]}),
     400, "objects[0].label"),
    ("intensity [null, 1]", lambda s, f: infer(s, {"foreground": [CLICK], "intensity": [None, 1]}), 400, "intensity"),
    ("intensity window NaN", lambda s, f: infer(s, {"foreground": [CLICK], "intensity": "ct:nan,400"}), 400,
     "finite level"),
    ("label_tag a path (save_label)", lambda s, f: infer(s, {"foreground": [CLICK], "save_label": True,
                                                            "label_tag": "../../../escaped_tag"}), 400, "not a path"),
    ("unknown model", lambda s, f: requests.post(f"{s.url}/infer/no_such_model", params={"image": IMAGE},
                                                 files={"params": (None, "{}")}, timeout=60), 400, "no_such_model"),
    ("3D volume to the 2D task, no slice", lambda s, f: infer(s, {"label": "organ"}, model="medsam2_oneprompt"),
     422, "send 'slice'"),
    ("slice not a number", lambda s, f: infer(s, {"label": "organ", "slice": "middle"}, model="medsam2_oneprompt"),
     400, "'slice' must be"),
    ("2D image to the 3D task", lambda s, f: infer(s, {"foreground": [[3, 3, 0]]}, image="flat2d"), 422, "2D image"),
    # images uploaded with the request
    ("upload: random bytes", click_on_upload("junk"), 422, "cannot read image"),
    ("upload: empty file", click_on_upload("empty"), 422, "cannot read image"),
    ("upload: truncated NIfTI", click_on_upload("truncated"), 422, "cannot read image"),
    ("upload: truncated NRRD", click_on_upload("truncated_nrrd"), 422, "cannot read image"),
    ("upload: truncated DICOM", click_on_upload("truncated_dcm"), 422, "cannot read image"),
    ("upload: zero-size volume", click_on_upload("zero_size"), 422, "empty"),
    ("upload: NIfTI of 2.1 G voxels", click_on_upload("bomb"), 413, "max_voxels"),
    ("upload: NRRD of 2.1 G voxels", click_on_upload("bomb_nrrd"), 413, "max_voxels"),
    ("upload: DICOM of 4.3 T voxels", click_on_upload("bomb_dcm"), 413, "max_voxels"),
    ("upload: 4D image", lambda s, f: infer(s, {"foreground": [[1, 1, 1]]}, upload=f["stack4d"]), 422, "4D image"),
    # PUT /datastore/image
    ("image: random bytes", lambda s, f: put_image(s, f["junk"], "new_a"), 422, "cannot read image"),
    ("image: empty file", lambda s, f: put_image(s, f["empty"], "new_a"), 422, "cannot read image"),
    ("image: truncated NIfTI", lambda s, f: put_image(s, f["truncated"], "new_a"), 422, "cannot read image"),
    ("image: truncated NRRD", lambda s, f: put_image(s, f["truncated_nrrd"], "new_a"), 422, "cannot read image"),
    ("image: zero-size volume", lambda s, f: put_image(s, f["zero_size"], "new_a"), 422, "empty"),
    ("image: NIfTI of 2.1 G voxels", lambda s, f: put_image(s, f["bomb"], "new_a"), 413, "max_voxels"),
    ("image: 4D image", lambda s, f: put_image(s, f["stack4d"], "new_a"), 422, "2D or 3D"),
    ("image: DICOM file", lambda s, f: put_image(s, f["truncated_dcm"], "new_a"), 415, "send one of"),
    ("image: id a path", lambda s, f: put_image(s, f["good"], "../../escaped_image"), 400, "not a path"),
    ("image: id a hidden file", lambda s, f: put_image(s, f["good"], ".hidden"), 400, "not a path"),
    ("image: .exe file", lambda s, f: put_image(s, f["exe"], "new_a"), 415, "send one of"),
    # PUT /datastore/label, on an image that has a label
    ("label: random bytes", lambda s, f: put_label(s, f["junk"]), 422, "cannot read label"),
    ("label: empty file", lambda s, f: put_label(s, f["empty"]), 422, "cannot read label"),
    ("label: truncated NIfTI", lambda s, f: put_label(s, f["truncated"]), 422, "cannot read label"),
    ("label: truncated NRRD", lambda s, f: put_label(s, f["truncated_nrrd"]), 422, "cannot read label"),
    ("label: zero-size", lambda s, f: put_label(s, f["zero_size"]), 422, "empty"),
    ("label: NIfTI of 2.1 G voxels", lambda s, f: put_label(s, f["bomb"]), 413, "max_voxels"),
    ("label: not on the image grid", lambda s, f: put_label(s, f["label_wrong_grid"]), 422, "image's grid"),
    ("label: fractions", lambda s, f: put_label(s, f["label_fraction"]), 422, "whole numbers"),
    ("label: NaN", lambda s, f: put_label(s, f["label_nan"]), 422, "whole numbers"),
    ("label: negative", lambda s, f: put_label(s, f["label_negative"]), 422, "negative"),
    ("label: raw buffer of the wrong size", lambda s, f: put_label(s, f["raw_wrong_size"]), 422, "voxels"),
    ("label: .exe file", lambda s, f: put_label(s, f["exe"]), 415, "send one of"),
    ("label: tag a path", lambda s, f: put_label(s, f["label_ok"], tag="../../../escaped_tag"), 400, "not a path"),
    ("label: unknown image", lambda s, f: put_label(s, f["label_ok"], image="no_such_image"), 404,
     "not in the datastore"),
    ("label: params a list", lambda s, f: requests.put(
        f"{s.url}/datastore/label", params={"image": IMAGE},
        files={"label": ("l.nii.gz", f["label_ok"].read_bytes()), "params": (None, "[1]")}, timeout=60), 400,
     "must be a JSON object"),
    # other datastore calls on things that do not exist
    ("image info of an unknown image", lambda s, f: requests.put(
        f"{s.url}/datastore/image/info", params={"image": "no_such_image"}, files={"info": (None, "{}")},
        timeout=60), 404, "not found"),
    ("delete an unknown image", lambda s, f: requests.delete(f"{s.url}/datastore/image", params={"id": "nope"},
                                                             timeout=60), 404, "not found"),
]


@pytest.mark.parametrize("name, send, status, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_nothing_is_written(srv, root, files, name, send, status, words):
    before = snapshot(root)
    r = send(srv, files)
    assert r.status_code == status, r.text[:500]
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail, detail
    assert snapshot(root) == before
    for target in (root / "studies" / "labels" / "../../../escaped_tag",
                   root / "studies" / "../../escaped_image.nii.gz",
                   root.parent / "escaped_tag", root.parent / "escaped_image.nii.gz"):
        assert not target.resolve().exists()
    assert requests.get(f"{srv.url}/info/", timeout=30).status_code == 200


def test_unknown_label_names_are_segment_names_and_are_kept(srv):
    """Slicer sends the user's segment name; a name outside --conf labels is not an error."""
    r = infer(srv, {"foreground": [CLICK], "label": "Niere links (ü)"})
    assert r.status_code == 200, r.text
    assert r.json()["label_names"] == {"Niere links (ü)": 1}
    r = infer(srv, {"objects": [{"label": "lesion", "foreground": [CLICK]},
                                {"label": "tumour 2", "foreground": [[8, 8, 4]]}]})
    assert r.status_code == 200, r.text
    assert r.json()["label_names"] == {"lesion": 3, "tumour 2": 2}  # a known name keeps its --conf value


def test_good_uploads_are_stored_inside_the_datastore_and_read_back(srv, root, files):
    studies = root / "studies"
    # a file name that is a path: MONAI Label keeps its last part, so the image lands inside, named "escaped"
    r = put_image(srv, files["good"], filename="../../escaped.nii.gz")
    assert r.status_code == 200 and r.json()["image"] == "escaped"
    assert (studies / "escaped.nii.gz").read_bytes() == files["good"].read_bytes()
    assert not (root.parent / "escaped.nii.gz").exists()
    # a Slicer volume name (DICOM series are named like this) is a valid id
    r = put_image(srv, files["good"], image_id="3: CT Abdomen")
    assert r.status_code == 200 and (studies / "3: CT Abdomen.nii.gz").exists()
    r = put_label(srv, files["label_ok"], image="3: CT Abdomen")
    assert r.status_code == 200, r.text
    assert (studies / "labels" / "final" / "3: CT Abdomen.nii.gz").read_bytes() == files["label_ok"].read_bytes()
    # OHIF's raw label buffer of the right size is stored as NIfTI on the image's grid
    raw = root.parent / "ohif_label.bin"
    truth = (make_phantom(SHAPE, seed=602).label == 1).astype(np.uint8)
    raw.write_bytes(truth.tobytes(order="F"))
    r = put_label(srv, raw, image="escaped", filename="label.bin")
    raw.unlink()
    assert r.status_code == 200, r.text
    stored = nib.load(str(studies / "labels" / "final" / "escaped.nii.gz"))
    assert stored.shape == SHAPE and np.array_equal(np.asarray(stored.dataobj), truth)
    listed = requests.get(f"{srv.url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
    assert {"escaped", "3: CT Abdomen", IMAGE} <= set(listed)
    assert "final" in listed["escaped"]["labels"] and not list(studies.rglob(".*.part"))


def test_the_server_still_segments_after_all_that(srv):
    r = infer(srv, {"foreground": [CLICK], "label": "organ"})
    assert r.status_code == 200, r.text
    assert r.json()["objects"][0]["slice_count"] >= 1
