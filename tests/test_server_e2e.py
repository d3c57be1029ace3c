"""End to end: the real MONAI Label server, the bodies OHIF v3 and Slicer send, real files back."""


import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from medsam2.clicks import interior_point, largest_slice
from medsam2.phantoms import SAMPLE_SHAPE, make_phantom
from conftest import SAMPLE_PHANTOM

pytestmark = pytest.mark.e2e

IMAGE = "phantom_500"


@pytest.fixture(scope="module")
def truth(server):
    return make_phantom((64, 64, 32), seed=500).label


def organ_click(truth):
    organ = truth == 1
    k = largest_slice(organ)
    x, y = interior_point(organ[:, :, k].T)
    return [x, y, k]


def image_nifti(server, image_id=IMAGE):
    return nib.load(str(server.studies / f"{image_id}.nii.gz"))


def test_info_lists_medsam2_as_an_interactive_3d_model(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    model = info["models"]["medsam2"]
    assert model["type"] == "deepgrow" and model["dimension"] == 3
    assert {"memory_policy", "intensity"} <= set(model["config"])


def test_ohif_point_prompt_on_the_organ_returns_the_organ_on_both_sides_of_the_click_as_nrrd(server):
    # what OHIF v3's PointPrompts sends for a deepgrow model: a click on the organ's middle slice of the
    # bundled sample's phantom_000, the README's first click (on the small 64 x 64 x 32 phantoms the
    # demo model is weak on organs: docs/demo-model.md, "Where it is weak")
    truth = make_phantom(SAMPLE_SHAPE, seed=0).label
    organ, vessel = truth == 1, truth == 2
    ks = np.nonzero(organ.any(axis=(0, 1)))[0]
    k = int(ks[len(ks) // 2])
    i, j = interior_point(organ[:, :, k].T)
    # (the panel sends the model's config from /info along with the click)
    config = requests.get(f"{server.url}/info/", timeout=30).json()["models"]["medsam2"]["config"]
    params = {"foreground": [[i, j, k]], "background": [], "result_extension": ".nrrd", "result_dtype": "uint8",
              "result_compress": False, "restore_label_idx": False, "memory_policy": config["memory_policy"],
              "intensity": config["intensity"]}
    r = server.post_infer(SAMPLE_PHANTOM, params)
    assert r.status_code == 200, r.text
    path = server.log.parent / "ohif.nrrd"
    path.write_bytes(r.content)
    data, header = nrrd.read(str(path))
    ref = image_nifti(server, SAMPLE_PHANTOM)
    assert data.shape == ref.shape and data.dtype == np.uint8
    assert set(np.unique(data)) == {0, 1}
    # geometry: NRRD is LPS, NIfTI RAS; the voxel-to-world maps must be the same
    lps_to_ras = np.diag([-1, -1, 1])
    np.testing.assert_allclose(lps_to_ras @ np.asarray(header["space directions"]).T, ref.affine[:3, :3], atol=1e-4)
    np.testing.assert_allclose(lps_to_ras @ np.asarray(header["space origin"]), ref.affine[:3, 3], atol=1e-4)
    pred = data.astype(bool)
    for side in (np.s_[:, :, :k], np.s_[:, :, k + 1:]):  # the organ, not the vessel, away from the click
        assert 2 * (pred[side] & organ[side]).sum() / (pred[side].sum() + organ[side].sum()) > 0.8
    assert (pred & vessel).sum() < 0.05 * vessel.sum()


def test_a_click_on_either_twin_follows_that_twin_ohif_and_slicer(server, tmp_path):
    """Two identical-looking structures: only SAM 2's memory of the clicked slice says which one is
    meant. OHIF's body for one twin, Slicer's client for the other; each must come back as the clicked
    twin through the volume and leave the other alone (tests/test_tracking.py shows the same model
    with its memory cut fails this)."""
    from conftest import TWINS_SEED

    from medsam2.evaluation.twins import twin_results
    from medsam2.memory_phantoms import make_twins

    label = make_twins((64, 64, 32), seed=TWINS_SEED).label
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="slicer-user")
    calls = []

    def segment(ijk):
        i, j, k = ijk
        if not calls:  # OHIF v3
            body = {"foreground": [[i, j, k]], "background": [], "result_extension": ".nrrd", "result_dtype": "uint8",
                    "result_compress": False, "restore_label_idx": False}
            r = server.post_infer("twins_5010", body)
            assert r.status_code == 200, r.text
            (tmp_path / "ohif.nrrd").write_bytes(r.content)
            data = nrrd.read(str(tmp_path / "ohif.nrrd"))[0]
        else:  # Slicer
            out, _ = client.infer("medsam2", "twins_5010", {"label": "Segment_1", "foreground": [[i, j, k]],
                                                            "background": [], "result_extension": ".nii.gz"})
            data = np.asarray(nib.load(out).dataobj)
        calls.append(ijk)
        return data > 0

    for result in twin_results(label, segment):
        assert result.passes(), result
    assert len(calls) == 2
def test_slicer_client_with_roi_and_corrective_click_gets_a_nifti_with_the_image_geometry(server, truth, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="slicer-user")
    i, j, k = organ_click(truth)
    ii, jj, _ = np.nonzero(truth == 1)
    # Slicer's roi from RAS corners: i and j reversed on this volume, one voxel overshoot
    roi = [int(ii.max()) + 1, int(ii.min()), int(jj.max()), int(jj.min()) - 1, k, k]
    params = {"label": "organ", "foreground": [[i, j, k]], "background": [], "roi": roi,
              "result_extension": ".nii.gz", "result_dtype": "uint8", "reset_state": True}
    out, res = client.infer("medsam2", IMAGE, params)
    label = nib.load(out)
    ref = image_nifti(server)
    assert label.shape == ref.shape
    np.testing.assert_allclose(label.affine, ref.affine, atol=1e-4)
    assert res["label_names"] == {"organ": 1}
    first = np.asarray(label.dataobj)
    # a corrective background click far from the organ: same image, features come from the cache
    params["background"] = [[2, 2, k]]
    out2, res2 = client.infer("medsam2", IMAGE, params)
    assert res2["engine"]["cached_features"] is True and res2["latencies"]["encode"] == 0.0
    assert np.asarray(nib.load(out2).dataobj).shape == first.shape


def test_two_labels_in_one_request_and_multipart_output(server, truth):
    params = {"objects": [{"label": "organ", "foreground": [organ_click(truth)]},
                          {"label": "vessel", "foreground": [organ_click(np.where(truth == 2, 1, 0))]}],
              "result_extension": ".nii.gz", "result_dtype": "uint16"}
    r = server.post_infer(IMAGE, params, output="all")
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/form-data")
    r = server.post_infer(IMAGE, params, output="json")
    body = r.json()
    assert body["label_names"] == {"organ": 1, "vessel": 2}
    assert all(o["slice_count"] > 0 for o in body["objects"])


def test_two_clients_on_two_images_keep_their_cached_features(server, truth):
    click = {"foreground": [organ_click(truth)]}
    for client in ("a", "b"):
        image = "phantom_501" if client == "a" else "phantom_502"
        assert server.post_infer(image, {**click, "client_id": client}).status_code == 200
    for client in ("a", "b"):
        image = "phantom_501" if client == "a" else "phantom_502"
        r = server.post_infer(image, {**click, "client_id": client}, output="json")
        assert r.json()["engine"]["cached_features"] is True


@pytest.mark.parametrize("image, params, status, message", [
    (IMAGE, {"foreground": [[64, 10, 10]]}, 422, "outside the image"),
    (IMAGE, {"foreground": [[10, 10, -1]]}, 422, "outside the image"),
    (IMAGE, {"foreground": [[10, 10, 40]], "background": []}, 422, "outside the image"),
    (IMAGE, {"foreground": [], "background": []}, 400, "no prompt"),
    (IMAGE, {}, 400, "no prompt"),
    (IMAGE, {"background": [[3, 3, 3]]}, 400, "no prompt"),
    (IMAGE, {"roi": [200, 300, 0, 10, 0, 1]}, 422, "outside the image"),
    (IMAGE, {"foreground": [[1, 1, 1]], "memory_policy": "lifo"}, 400, "memory_policy"),
    (IMAGE, {"foreground": [[1, 1, 1]], "result_extension": ".exe"}, 400, "result_extension"),
    (IMAGE, {"foreground": [[1, 1, 1]], "intensity": "sepia"}, 400, "intensity"),
    ("no_such_image", {"foreground": [[1, 1, 1]]}, 404, "not in the datastore"),
    ("broken", {"foreground": [[1, 1, 1]]}, 422, "cannot read image"),
    ("flat2d", {"foreground": [[1, 1, 0]]}, 422, "2D image"),
    ("stack4d", {"foreground": [[1, 1, 1]]}, 422, "4D image"),
    (IMAGE, "{not json", 400, "not valid JSON"),
])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, truth, image, params, status, message):
    r = server.post_infer(image, params)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    ok = server.post_infer(IMAGE, {"foreground": [organ_click(truth)]}, output="json")
    assert ok.status_code == 200


def test_each_memory_policy_segments_both_sides_of_the_click(server, truth):
    i, j, k = organ_click(truth)
    for policy in ("fifo", "self_sorting"):
        r = server.post_infer(IMAGE, {"foreground": [[i, j, k]], "memory_policy": policy}, output="json")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["memory_policy"] == policy
        first, last = body["objects"][0]["slices"]
        assert first < k - 3 and last > k + 3


def test_one_prompt_segments_another_image_from_the_bank_and_the_bank_survives_a_restart(server, studies, tmp_path):
    organ = make_phantom((64, 64, 32), seed=510).label[:, :, 16] == 1
    x, y = interior_point(organ.T)
    # nothing in the bank yet: a clear 409
    r = server.post_infer("photo2d_b", {"label": "vessel"}, model="medsam2_oneprompt")
    assert r.status_code == 409 and "prompt one image" in r.json()["detail"]
    r = server.post_infer("photo2d_a", {"label": "organ", "foreground": [[x, y]]}, model="medsam2_oneprompt",
                          output="json")
    assert r.status_code == 200, r.text
    assert r.json()["prompted"] is True and r.json()["bank_size"] == 1
    r = server.post_infer("photo2d_b", {"label": "organ", "result_extension": ".nii.gz"}, model="medsam2_oneprompt")
    assert r.status_code == 200, r.text
    (tmp_path / "b.nii.gz").write_bytes(r.content)
    mask = nib.load(str(tmp_path / "b.nii.gz"))
    assert mask.shape == (64, 64)
    # a second server process on the same model folder finds the bank on disk
    from conftest import start_server, stop_server

    again = start_server(studies, server.conf, tmp_path / "again.log")
    try:
        r = again.post_infer("photo2d_b", {"label": "organ"}, model="medsam2_oneprompt", output="json")
        assert r.status_code == 200, r.text
        assert r.json()["prompted"] is False and r.json()["memories_used"] >= 1
        r = again.post_infer("photo2d_b", {"label": "organ", "clear_bank": True}, model="medsam2_oneprompt",
                             output="json")
        assert r.json()["cleared"] is True
        assert again.post_infer("photo2d_b", {"label": "organ"}, model="medsam2_oneprompt").status_code == 409
    finally:
        stop_server(again.proc)


@pytest.mark.parametrize("label", ["../../etc/passwd", "a/b", "x" * 100])
def test_one_prompt_refuses_label_names_that_are_not_plain_names(server, label):
    r = server.post_infer("photo2d_a", {"label": label, "foreground": [[3, 3]]}, model="medsam2_oneprompt")
    assert r.status_code == 400 and "not allowed" in r.json()["detail"]


@pytest.mark.parametrize("image", ["/etc/passwd", "README.md", "../studies/phantom_500", "phantom_500.nii.gz"])
def test_image_ids_that_are_paths_are_not_read(server, image):
    r = server.post_infer(image, {"foreground": [[1, 1, 1]]})
    assert r.status_code == 404 and "not in the datastore" in r.json()["detail"]
