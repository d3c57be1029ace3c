"""What MONAI Label itself does where the app changes it (apps/medsam2/lib/monailabel_patches).

Each test states the upstream behaviour, or the upstream internals, one patch relies on. When a MONAI
Label release changes it, the test fails here: the patch is then revisited (dropped if upstream fixed
the problem, adapted if the internals moved) before CHECKED_VERSIONS takes the new version.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import inspect
import os
import sys
import threading
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "medsam2"))

import monailabel  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402

from lib import monailabel_patches  # noqa: E402
from lib.monailabel_patches import UncheckedVersion, check_version  # noqa: E402


def test_the_installed_monai_label_is_one_the_patches_were_checked_against():
    assert monailabel.__version__ in monailabel_patches.CHECKED_VERSIONS
    check_version()


def test_another_monai_label_version_stops_the_app_with_what_to_do(monkeypatch):
    monkeypatch.delenv(monailabel_patches.UNCHECKED_ENV, raising=False)
    with pytest.raises(UncheckedVersion, match=r"MONAI Label 0\.9\.0 is installed.*checked only against 0\.8\.5"):
        check_version("0.9.0")
    monkeypatch.setenv(monailabel_patches.UNCHECKED_ENV, "1")
    check_version("0.9.0")  # the operator's explicit choice: a warning, no stop


# --- auth -------------------------------------------------------------------------------------------

def test_upstream_refuses_every_valid_token_and_the_patch_accepts_it(monkeypatch):
    from monailabel.endpoints.user import auth as upstream

    from lib.monailabel_patches import auth

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = jwt.encode({"preferred_username": "ann", "exp": datetime.datetime.now(datetime.timezone.utc)
                        + datetime.timedelta(minutes=5)}, key, algorithm="RS256")
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_ENABLE", True)
    monkeypatch.setattr(upstream, "get_public_key", lambda uri: public.decode())  # the realm's key, no Keycloak
    with pytest.raises(jwt.exceptions.DecodeError, match="algorithms"):
        upstream.from_token(token)
    assert auth.from_token(token).username == "ann"


def test_upstream_reload_route_has_no_role_check():
    from monailabel.app import app

    (route,) = [r for r in app.router.routes if getattr(r, "path", None) == "/reload"]
    assert route.dependant.dependencies == []


# --- infer_route --------------------------------------------------------------------------------------

def test_upstream_runs_the_inference_on_the_event_loop_with_the_arguments_the_patch_passes():
    from monailabel.endpoints import infer

    assert inspect.iscoroutinefunction(infer.api_run_inference)
    assert not inspect.iscoroutinefunction(infer.run_inference)  # blocking, called inside the async route
    assert list(inspect.signature(infer.run_inference).parameters) == [
        "background_tasks", "model", "image", "session_id", "params", "file", "label", "output"]


# --- http_errors ----------------------------------------------------------------------------------------

def test_upstream_parses_params_with_the_module_json_the_patch_replaces():
    import json

    from monailabel.endpoints import datastore, infer

    for module in (infer, datastore):
        assert module.json is json or type(module.json).__name__ == "ParamsJson"  # installed in this process
        assert "json.loads(" in inspect.getsource(module)


# --- datastore ------------------------------------------------------------------------------------------

def test_upstream_local_datastore_stores_any_bytes_and_has_the_internals_the_patch_uses(tmp_path):
    (tmp_path / "studies").mkdir()
    store = LocalDatastore(str(tmp_path / "studies"), extensions=("*.nii.gz",), auto_reload=False)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(os.urandom(64))
    store.add_image("junk", str(junk), {})  # not an image, and upstream keeps it
    assert "junk" in store.list_images()
    for name in ("_datastore", "_lock_file", "_datastore_config_path", "_config_ts", "_extensions"):
        assert hasattr(store, name), name
    for name in ("_init_from_datastore_file", "_on_any_event", "_filename", "_to_id"):
        assert callable(getattr(store, name)), name
    assert "lock" in inspect.signature(store._update_datastore_file).parameters
    source = inspect.getsource(LocalDatastore.__init__)
    assert "self._handler" in source and "on_moved" not in source  # renames (atomic saves) unseen upstream


# --- dicomweb, app ------------------------------------------------------------------------------------------

def test_upstream_lists_ct_only_and_downloads_dcmqi_when_starting_on_dicomweb():
    from monailabel.datastore.dicom import DICOMWebDatastore
    from monailabel.interfaces.app import MONAILabelApp

    assert settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER == {"Modality": "CT"}
    init = inspect.getsource(DICOMWebDatastore.__init__)
    assert "self._client = client" in init and "self._search_filter = search_filter" in init
    assert callable(MONAILabelApp._download_dcmqi_tools)
    assert "self._download_dcmqi_tools()" in inspect.getsource(MONAILabelApp)  # while building the DICOMweb store


# --- dicom_proxy ------------------------------------------------------------------------------------------

def test_upstream_proxy_drops_the_query_string_and_the_accept_header(monkeypatch):
    from monailabel.endpoints import proxy
    from starlette.requests import Request

    seen = {}

    class Pacs(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.update(path=self.path, accept=self.headers.get("Accept"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args):
            pass

    pacs = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pacs)
    threading.Thread(target=pacs.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(settings, "MONAI_LABEL_STUDIES", f"http://127.0.0.1:{pacs.server_port}/dicom-web")
        request = Request({"type": "http", "method": "GET", "path": "/proxy/dicom/qido/studies",
                           "query_string": b"PatientID=nobody", "headers": [(b"accept", b"application/dicom+json")]})
        asyncio.run(proxy.proxy_dicom(request, "qido", "studies"))
    finally:
        pacs.shutdown()
    assert seen["path"] == "/dicom-web/studies"  # OHIF's search never reaches the PACS
    assert seen["accept"] != "application/dicom+json"


# --- ohif_viewer ------------------------------------------------------------------------------------------

def test_upstream_answers_a_viewer_file_in_a_subfolder_with_index_html():
    from monailabel.endpoints import ohif

    viewer = Path(ohif.__file__).resolve().parent / "static" / "ohif"
    asset = next(p for p in (viewer / "assets").iterdir() if p.is_file())
    assert Path(ohif.get_ohif(f"assets/{asset.name}").path).name == "index.html"


# --- routes, encode_ahead ------------------------------------------------------------------------------

def test_the_first_route_that_matches_answers_so_add_first_replaces_a_route():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib.monailabel_patches.routes import add_first

    app = FastAPI()
    app.add_api_route("/x", lambda: "upstream", methods=["GET"])
    client = TestClient(app)
    assert client.get("/x").json() == "upstream"

    def ours():
        return "ours"

    add_first(app, "/x", ours, ["GET"])
    add_first(app, "/x", ours, ["GET"])  # an app built again does not stack copies
    assert client.get("/x").json() == "ours"
    assert sum(getattr(r, "path", None) == "/x" for r in app.router.routes) == 2


def test_upstream_endpoint_functions_that_encode_ahead_calls_keep_their_signatures():
    from monailabel.endpoints import activelearning, datastore

    assert list(inspect.signature(datastore.download_image).parameters)[:1] == ["image"]
    assert list(inspect.signature(activelearning.sample).parameters) == ["strategy", "params", "user"]


def test_upstream_loads_the_main_py_class_whose_direct_base_is_monailabelapp(tmp_path):
    from monailabel.utils.others.class_utils import get_class_of_subclass_from_file

    main = Path(__file__).resolve().parents[1] / "apps" / "medsam2" / "main.py"
    indirect = tmp_path / "main.py"
    indirect.write_text("from monailabel.interfaces.app import MONAILabelApp\n"
                        "class Base(MONAILabelApp):\n    pass\n"
                        "class App(Base):\n    pass\n")
    ours = {name: module for name, module in sys.modules.items() if name == "lib" or name.startswith("lib.")}
    try:  # loading a main.py unloads `lib` (MONAI Label reloads an app's modules): put this process's back
        assert get_class_of_subclass_from_file("main", str(main), "MONAILabelApp").__name__ == "MedSam2App"
        assert get_class_of_subclass_from_file("main", str(indirect), "MONAILabelApp").__name__ == "Base"
    finally:
        for name in [n for n in sys.modules if n == "lib" or n.startswith("lib.")]:
            del sys.modules[name]
        sys.modules.update(ours)
