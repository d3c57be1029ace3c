"""The DICOMweb proxy's URLs and the viewer's files, without a server (the server: test_dicomweb_e2e)."""

import sys
from pathlib import Path

import pytest
from fastapi import HTTPException

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "apps" / "medsam2"))
from lib.monailabel_patches.dicom_proxy import target_url  # noqa: E402
from lib.monailabel_patches.ohif_viewer import viewer_dir, viewer_file  # noqa: E402

BASE = "http://127.0.0.1:8042/dicom-web"


def test_the_query_string_and_the_path_reach_the_configured_server():
    assert target_url(BASE, "qido", "studies", "PatientID=nobody&limit=25&offset=0") == \
        f"{BASE}/studies?PatientID=nobody&limit=25&offset=0"
    assert target_url(BASE, "wado", "studies/1.2.3/series/4.5/instances/6.7/frames/1", "") == \
        f"{BASE}/studies/1.2.3/series/4.5/instances/6.7/frames/1"
    assert target_url(BASE, "", "studies", "") == f"{BASE}/studies"


@pytest.mark.parametrize("path", [
    "../../tools/execute-script", "studies/../../system", "studies/%2E%2E/%2E%2E/system", "./studies",
    "studies//series", "studies/a%2Fb", "studies\\..\\x", "..%2F..%2Fsystem",
])
def test_paths_that_leave_the_dicomweb_root_are_refused(path):
    with pytest.raises(HTTPException) as e:
        target_url(BASE, "qido", path, "")
    assert e.value.status_code == 400


@pytest.mark.parametrize("path", ["@evil.example/studies", "studies@evil.example", "http://evil.example/x"])
def test_no_path_makes_the_proxy_contact_another_host(path):
    try:
        url = target_url(BASE, "qido", path, "")
    except HTTPException as e:
        assert e.status_code == 400
    else:
        assert url.startswith(BASE + "/")


def test_viewer_files_in_subfolders_are_found_and_nothing_outside_the_viewer_is():
    root = viewer_dir()
    nested = next(p for p in Path(root).rglob("*.js") if p.parent != Path(root))
    relative = str(nested.relative_to(root))
    assert viewer_file(root, relative) == str(nested.resolve())
    assert viewer_file(root, "monai-label") is None  # a viewer route: index.html
    assert viewer_file(root, "../../../__init__.py") is None
    assert viewer_file(root, "/etc/passwd") is None
