"""Bad label saves against a DICOMweb datastore (Orthanc on 127.0.0.1): refused before anything reaches
the PACS or MONAI Label's local cache. Uses the Orthanc, CT series and server of test_dicomweb_e2e."""

from __future__ import annotations

import json

import pytest
import requests

from test_dicomweb_e2e import app, ct, orthanc, orthanc_install, seg_series  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("tag, label_info, words", [
    ("../../../escaped", [{"name": "organ"}], "not a path"),
    ("final", [{"name": "organ\\lesion"}], "backslash"),
    ("final", [{"name": "x" * 65}], "1 to 64"),
    ("final", [{"name": 7}], "must be a text name"),
])
def test_label_saves_with_a_path_tag_or_unusable_segment_names_store_nothing(app, orthanc, ct, tag, label_info,
                                                                            words):
    before = seg_series(orthanc, ct.study)
    r = requests.put(f"{app.url}/datastore/label", params={"image": ct.series, "tag": tag},
                     files={"params": (None, json.dumps({"label_info": label_info})),
                            "label": ("label.bin", b"\x01" * 64, "application/octet-stream")}, timeout=120)
    assert r.status_code == 400 and words in r.json()["detail"], r.text
    assert seg_series(orthanc, ct.study) == before
    assert requests.get(f"{app.url}/info/", timeout=30).status_code == 200
