"""End to end: the real server encodes an image when a client fetches it, and the first click uses it.

Slicer's *Next Sample* (`POST /activelearning/<strategy>`) and its download (`GET /datastore/image`)
start encoding; the first click then reports every slice as encoded before it (`latencies`), and its
label is the one a click without encoding ahead gets. OHIF's path (series read through the DICOMweb
proxy) is in test_dicomweb_e2e.py."""

import re
import time

import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from medsam2.clicks import interior_point
from medsam2.phantoms import make_phantom, write_studies
from conftest import start_server, stop_server

pytestmark = pytest.mark.e2e

SHAPE = (64, 64, 32)


@pytest.fixture(scope="module")
def ahead_server(trained_checkpoint, tmp_path_factory):
    from conftest import DEMO_CONFIG

    studies = tmp_path_factory.mktemp("ahead_studies")
    write_studies(studies, 2, shape=SHAPE, seed=620)  # phantom_620, phantom_621
    log = tmp_path_factory.mktemp("ahead_logs") / "server.log"
    s = start_server(studies, {"checkpoint": trained_checkpoint, "model_config": DEMO_CONFIG,
                               "model_dir": tmp_path_factory.mktemp("ahead_model")}, log)
    yield s
    stop_server(s.proc)


def organ_click(image: str) -> dict:
    seed = int(image.split("_")[1])
    organ = make_phantom(SHAPE, seed=seed).label == 1
    ks = np.nonzero(organ.any(axis=(0, 1)))[0]
    k = int(ks[len(ks) // 2])
    i, j = interior_point(organ[:, :, k].T)
    return {"foreground": [[i, j, k]], "background": [], "label": "organ"}


def click(server, image, client_id, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id=client_id)
    label_file, params = client.infer("medsam2", image, organ_click(image))
    import nrrd

    return nrrd.read(label_file)[0], params


def test_next_sample_and_the_download_encode_the_image_and_the_first_click_uses_it(ahead_server, tmp_path):
    client = MONAILabelClient(ahead_server.url, tmpdir=str(tmp_path), client_id="user-xyz")
    image = client.next_sample("random", {})["id"]  # what Slicer's Next Sample button sends
    assert ahead_server.encode_ahead_job(image) == ("address:127.0.0.1", "done", SHAPE[2])
    # Slicer then downloads it: the same image for the same user, nothing new, and the file unchanged
    r = requests.get(f"{ahead_server.url}/datastore/image", params={"image": image}, timeout=60)
    assert r.status_code == 200 and r.content == (ahead_server.studies / f"{image}.nii.gz").read_bytes()

    label, params = click(ahead_server, image, "user-xyz", tmp_path)
    assert params["engine"]["encoded_ahead"] is True and params["engine"]["encode_s"] == 0.0
    assert params["latencies"]["slices_encoded_before"] == SHAPE[2]
    # another client's first click on the same image encodes it itself: the same label
    fresh, fresh_params = click(ahead_server, image, "another-client", tmp_path)
    assert fresh_params["engine"]["encoded_ahead"] is False and fresh_params["latencies"]["slices_encoded_before"] == 0
    assert np.array_equal(label, fresh) and label.any()


def test_a_downloaded_image_is_encoded_before_its_first_click(ahead_server, tmp_path):
    datastore = requests.get(f"{ahead_server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    opened = set(re.findall(r"encode ahead of (\S+) for", ahead_server.log.read_text()))
    image = next(i for i in sorted(datastore["objects"]) if i not in opened)
    r = requests.get(f"{ahead_server.url}/datastore/image", params={"image": image}, timeout=60)
    assert r.status_code == 200
    assert ahead_server.encode_ahead_job(image)[1:] == ("done", SHAPE[2])
    _, params = click(ahead_server, image, "user-xyz", tmp_path)
    assert params["engine"]["encoded_ahead"] is True and params["latencies"]["slices_encoded_before"] == SHAPE[2]


def test_an_unknown_image_is_still_404_and_starts_nothing(ahead_server):
    r = requests.get(f"{ahead_server.url}/datastore/image", params={"image": "no_such_image"}, timeout=30)
    assert r.status_code == 404
    time.sleep(0.5)
    assert "encode ahead of no_such_image" not in ahead_server.log.read_text()
