"""End to end: Slicer's Scribbles Update and a painted slice from any client, through the real server.

The request bodies are the ones 3D Slicer's MONAI Label module sends from `onUpdateScribbles` (the
labelmap of every segment, scribble layers included, as the `label` file; `label_info`,
`selected_label_name`, `roi` and the model's config), sent with `monailabel.client.MONAILabelClient`
as Slicer does.
"""

import json

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from medsam2.phantoms import SAMPLE_SHAPE, make_phantom
from medsam2.evaluation.metrics import dice
from conftest import SAMPLE_PHANTOM

pytestmark = pytest.mark.e2e

MODEL = "medsam2_scribbles"
INFO = [{"name": "organ", "id": 1}, {"name": "vessel", "id": 2},
        {"name": "foreground_scribbles", "id": 3}, {"name": "background_scribbles", "id": 4}]


@pytest.fixture(scope="module")
def truth():
    return make_phantom(SAMPLE_SHAPE, seed=0).label


@pytest.fixture(scope="module")
def affine(server):
    return nib.load(str(server.studies / f"{SAMPLE_PHANTOM}.nii.gz")).affine


def middle_slice(mask):
    ks = np.nonzero(mask.any(axis=(0, 1)))[0]
    return int(ks[len(ks) // 2])


def slicer_update(server, tmp_path, labelmap, affine, selected="organ", info=INFO, name="scribbles.nii.gz"):
    """What onUpdateScribbles does: save the labelmap (the image's grid), send it with the model's config."""
    path = tmp_path / name
    nib.save(nib.Nifti1Image(labelmap.astype(np.uint8), affine), str(path))
    config = requests.get(f"{server.url}/info/", timeout=30).json()["models"][MODEL]["config"]
    params = {**config, "roi": [], "label_info": info, "selected_label_name": selected}
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="slicer-user")
    out, body = client.infer(MODEL, SAMPLE_PHANTOM, params, str(path))
    data, header = nrrd.read(out)  # Slicer reads the answer with SimpleITK; no result_extension: NRRD
    return data, header, body


def test_info_lists_the_scribbles_model_for_slicers_scribbles_section(server):
    model = requests.get(f"{server.url}/info/", timeout=30).json()["models"][MODEL]
    assert model["type"] == "scribbles" and model["dimension"] == 3


def test_a_painted_slice_comes_back_as_painted_and_the_structure_fills_the_volume(server, truth, affine, tmp_path):
    organ, vessel = truth == 1, truth == 2
    k = middle_slice(organ)
    labelmap = np.zeros(truth.shape, np.uint8)
    labelmap[:, :, k][organ[:, :, k]] = 1  # the user paints the organ on one slice
    kv = middle_slice(vessel) + 3
    labelmap[:, :, kv][vessel[:, :, kv]] = 2  # another segment, painted earlier: not this request's business
    data, header, body = slicer_update(server, tmp_path, labelmap, affine)
    assert data.shape == truth.shape and set(np.unique(data)) == {0, 1}  # the selected segment, value 1
    lps_to_ras = np.diag([-1, -1, 1])
    np.testing.assert_allclose(lps_to_ras @ np.asarray(header["space directions"]).T, affine[:3, :3], atol=1e-4)
    np.testing.assert_allclose(lps_to_ras @ np.asarray(header["space origin"]), affine[:3, 3], atol=1e-4)
    pred = data.astype(bool)
    assert np.array_equal(pred[:, :, k], organ[:, :, k])
    assert dice(pred[:, :, :k], organ[:, :, :k]) > 0.85 and dice(pred[:, :, k + 1:], organ[:, :, k + 1:]) > 0.85
    assert (pred & vessel).sum() < 0.05 * vessel.sum()
    assert body["objects"][0]["painted_slices"] == [k]

    # the second Update: Slicer sends the answer back as the organ segment, plus a background scribble
    # in a corner of another slice; only the painted slice is still a mask prompt
    again = data.astype(np.uint8)
    again[2:6, 2:6, k + 5] = 4
    data2, _, body2 = slicer_update(server, tmp_path, again, affine, name="again.nii.gz")
    assert body2["objects"][0]["painted_slices"] == [k]
    assert body2["objects"][0]["prompted_slices"] == [k, k + 5]
    pred2 = data2.astype(bool)
    assert np.array_equal(pred2[:, :, k], organ[:, :, k]) and dice(pred2, organ) > 0.9


def test_foreground_and_background_scribbles_alone_segment_the_scribbled_structure(server, truth, affine, tmp_path):
    organ, vessel = truth == 1, truth == 2
    k = middle_slice(organ)
    labelmap = np.zeros(truth.shape, np.uint8)
    ii, jj = np.nonzero(organ[:, :, k])
    ci, cj = int(np.median(ii)), int(np.median(jj))
    labelmap[ci - 6:ci + 7, cj - 1:cj + 2, k] = 3  # a short stroke across the organ's middle
    labelmap[:, :, k][vessel[:, :, k]] = 4  # and one over the vessel: not that
    labelmap[labelmap == 3] *= organ[labelmap == 3]  # strokes stay where the user drew them: inside
    data, _, body = slicer_update(server, tmp_path, labelmap, affine, name="strokes.nii.gz")
    pred = data.astype(bool)
    assert body["objects"][0]["painted_slices"] == [] and body["objects"][0]["prompted_slices"] == [k]
    assert dice(pred, organ) > 0.85 and (pred & vessel).sum() < 0.05 * vessel.sum()


def test_any_client_can_send_a_painted_slice_without_label_info(server, truth, affine, tmp_path):
    """"Fill the volume from my slice": a labelmap whose nonzero voxels are the structure, named by
    `label_name`; the answer is that structure, value 1."""
    vessel = truth == 2
    k = middle_slice(vessel)
    labelmap = np.zeros(truth.shape, np.uint8)
    labelmap[:, :, k][vessel[:, :, k]] = 7
    path = tmp_path / "paint.nii.gz"
    nib.save(nib.Nifti1Image(labelmap, affine), str(path))
    r = requests.post(f"{server.url}/infer/{MODEL}", params={"image": SAMPLE_PHANTOM, "output": "image"},
                      files={"params": (None, json.dumps({"label_name": "vessel", "result_extension": ".nii.gz"})),
                             "label": ("paint.nii.gz", path.read_bytes())}, timeout=300)
    assert r.status_code == 200, r.text
    (tmp_path / "out.nii.gz").write_bytes(r.content)
    pred = np.asarray(nib.load(str(tmp_path / "out.nii.gz")).dataobj) == 1
    assert np.array_equal(pred[:, :, k], vessel[:, :, k]) and dice(pred, vessel) > 0.85


def labels_on_disk(server):
    return sorted(str(p.relative_to(server.studies)) for p in (server.studies / "labels").rglob("*") if p.is_file())


@pytest.mark.parametrize("case, status, words", [
    ("other shape", 422, "has shape"),
    ("elsewhere in space", 422, "elsewhere in space"),
    ("nothing painted", 422, "nothing painted"),
    ("values not in label_info", 422, "does not name"),
    ("unknown selected_label_name", 422, "is not a segment"),
    ("not a labelmap file", 422, "the label file: cannot read"),
    ("a path instead of a file", 400, "no label file"),
    ("no label file", 400, "no label file"),
])
def test_bad_labelmaps_get_a_clear_4xx_and_nothing_is_stored(server, truth, affine, tmp_path, case, status, words):
    before = labels_on_disk(server)
    labelmap = np.zeros(truth.shape, np.uint8)
    k = middle_slice(truth == 1)
    labelmap[:, :, k][truth[:, :, k] == 1] = 1
    params, aff = {"label_info": INFO, "selected_label_name": "organ"}, affine
    if case == "other shape":
        labelmap = labelmap[:, :, :-1]
    elif case == "elsewhere in space":
        aff = affine.copy()
        aff[:3, 3] += 25.0
    elif case == "nothing painted":
        labelmap[:] = 0
    elif case == "values not in label_info":
        labelmap[0, 0, 0] = 9
    elif case == "unknown selected_label_name":
        params["selected_label_name"] = "liver"
    elif case == "a path instead of a file":
        params["label"] = str(server.studies / f"{SAMPLE_PHANTOM}.nii.gz")  # a file on the server: never read
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(labelmap, aff), str(path))
    content = b"not a labelmap" if case == "not a labelmap file" else path.read_bytes()
    files = {"params": (None, json.dumps(params))}
    if case not in ("a path instead of a file", "no label file"):
        files["label"] = ("bad.nii.gz", content)
    r = requests.post(f"{server.url}/infer/{MODEL}", params={"image": SAMPLE_PHANTOM, "output": "image"},
                      files=files, timeout=300)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.json()["detail"]
    assert labels_on_disk(server) == before
