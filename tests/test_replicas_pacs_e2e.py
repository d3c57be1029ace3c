"""Two replicas behind nginx on one PACS: Orthanc over DICOMweb holds the images and the labels, as
in a hospital. OHIF's read of a series through the balancer, the clicks on it, a correction and the
label saved for it all reach one replica (the series UID is the image id, hashed the same way in
`/proxy/dicom/.../series/<uid>` and in `?image=`); the label lands in Orthanc as DICOM-SEG, and both
replicas then list the series as labelled (they share MONAI Label's DICOMweb cache folder).

Run alone with `pytest -m replicas`. Needs Orthanc and nginx from Debian (skipped with the reason
where they cannot be had), like tests/test_dicomweb_e2e.py and tests/test_replicas_e2e.py.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import requests

from benchmarks.server import launch_replicas
from conftest import stop_server
from medsam2.clicks import interior_point
from medsam2.demo_model import DEMO_CONFIG
from test_dicomweb_e2e import SHAPE, orthanc, orthanc_install, seg_series, store, write_ct_series  # noqa: F401
from test_replicas_e2e import nginx  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.replicas]


@pytest.fixture(scope="module")
def series_in_pacs(orthanc, tmp_path_factory):  # noqa: F811
    return [store(orthanc, write_ct_series(tmp_path_factory.mktemp(f"ct{seed}"), seed=seed)) for seed in (710, 711, 712)]


@pytest.fixture(scope="module")
def pacs_cluster(nginx, orthanc, series_in_pacs, trained_checkpoint, tmp_path_factory):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("pacs_replicas_run")
    conf = ["--conf", "checkpoint", str(trained_checkpoint), "--conf", "model_config", DEMO_CONFIG,
            "--conf", "model_dir", str(tmp_path_factory.mktemp("pacs_replicas_model"))]
    env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
           "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp_path_factory.mktemp("pacs_replicas_cache"))}
    url, proc = launch_replicas(orthanc.dicomweb, conf, run_dir, 2, env_extra=env, timeout=300)
    replicas = json.loads((run_dir / "replicas.json").read_text())
    yield {"url": url, "replicas": [f"http://127.0.0.1:{r['port']}" for r in replicas], "run_dir": run_dir}
    stop_server(proc)


def organ_click(series, **extra) -> dict:
    k = SHAPE[2] // 2
    x, y = interior_point(series.truth[:, :, k].T == 1)
    return {"foreground": [[x, y, k]], "label": "organ", **extra}


def infer(url: str, series, params: dict):
    r = requests.post(f"{url}/infer/medsam2", params={"image": series.series, "output": "json"},
                      data={"params": json.dumps(params)}, timeout=300)
    assert r.status_code == 200, r.text
    return r.headers["X-Replica"], r.json()


def encoded_ahead_on(run_dir, series, timeout: float = 180) -> str:
    """The replica (r1, r2) whose log says it encoded `series` ahead, once it has."""
    pattern = re.compile(rf"encode ahead of {re.escape(series.series)} for \S+: done after")
    deadline = time.time() + timeout
    while time.time() < deadline:
        for log in sorted(run_dir.glob("replica-*.log")):
            if pattern.search(log.read_text(errors="replace")):
                return f"r{log.stem.split('-')[1]}"
        time.sleep(1)
    pytest.fail(f"no replica encoded {series.series} ahead within {timeout} s")


def labelled_on(replica_url: str, series, wait: float = 0.0) -> bool:
    """Whether the replica's datastore listing has `series` labelled, asked until `wait` seconds have
    passed. The replicas share MONAI Label's DICOMweb cache folder; the replica that did not save the
    label lists it once its datastore has reloaded that folder (a file watcher: under load, seconds later)."""
    deadline = time.time() + wait
    while True:
        listing = requests.get(f"{replica_url}/datastore/", params={"output": "all"}, timeout=60).json()
        if "final" in listing["objects"][series.series]["labels"] or time.time() >= deadline:
            return "final" in listing["objects"][series.series]["labels"]
        time.sleep(1)


def test_a_series_read_clicked_corrected_and_labelled_through_the_balancer(pacs_cluster, orthanc, series_in_pacs):  # noqa: F811
    url = pacs_cluster["url"]
    owners = {}
    for series in series_in_pacs:
        # OHIF opens the series: its metadata through the app's proxy, via the balancer
        meta = requests.get(f"{url}/proxy/dicom/wado/studies/{series.study}/series/{series.series}/metadata",
                            headers={"Accept": "application/dicom+json"}, timeout=60)
        assert meta.status_code == 200, meta.text
        owner = meta.headers["X-Replica"]
        # the owner downloads the series from Orthanc and encodes it while the annotator looks at it
        assert encoded_ahead_on(pacs_cluster["run_dir"], series) == owner
        replica, answer = infer(url, series, organ_click(series, client_id="annotator"))
        assert replica == owner and answer["engine"]["encoded_ahead"] is True, (owner, replica, answer["engine"])
        corrected, again = infer(url, series, organ_click(series, client_id="annotator", background=[[2, 2, 16]]))
        assert corrected == owner and again["engine"]["cached_features"] is True
        owners[series.series] = owner
    print(f"\nowners: {owners}")  # the UIDs are new each run: which replica owns which series varies

    series = series_in_pacs[0]
    before = seg_series(orthanc, series.study)
    label = (series.truth == 1).astype(np.uint8)
    label_info = [{"id": "0+1", "labelmapIndex": 0, "segmentIndex": 1, "name": "organ",
                   "meta": {"SegmentNumber": 1, "SegmentLabel": "organ"}}]
    r = requests.put(f"{url}/datastore/label", params={"image": series.series},
                     files={"params": (None, json.dumps({"label_info": label_info})),
                            "label": ("label.bin", label.tobytes(order="F"), "application/octet-stream")}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["X-Replica"] == owners[series.series]
    assert len(seg_series(orthanc, series.study) - before) == 1  # a DICOM-SEG in the PACS
    for replica_url in pacs_cluster["replicas"]:  # each replica asks Orthanc: both see the label
        assert labelled_on(replica_url, series, wait=60), replica_url
        assert not labelled_on(replica_url, series_in_pacs[1])
