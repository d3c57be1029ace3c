"""End to end: the real server with MONAI_LABEL_AUTH_ENABLE=true against a realm served here.

MONAI Label talks to a Keycloak-style realm in three ways, and the realm below serves exactly those on
127.0.0.1: `GET <realm>` answers `{"public_key": <base64 DER of the RSA key>}` (the key tokens are
checked with), `GET <realm>/.well-known/openid-configuration` names the `token_endpoint`, and that
endpoint answers a password grant (what `POST /auth/token`, Slicer's login, forwards). Tokens are real
RS256 JWTs signed with a key generated here, with Keycloak's claims (`preferred_username`,
`realm_access.roles`). The test proves: every route that reads images or labels or changes anything
refuses a request with no token, a malformed one, an expired one, one signed by another key, an
unsigned one, an HMAC one made with the public key as secret, and one without an expiry (401); a valid
token without the route's role gets 403; a valid token with it gets the real answer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import nrrd
import numpy as np
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import free_port, start_server, stop_server
from medsam2.clicks import interior_point, largest_slice
from medsam2.phantoms import make_phantom, write_studies

pytestmark = pytest.mark.e2e

CLIENT_ID = "monailabel-app"
ADMIN, REVIEWER, ANNOTATOR, USER = ("monailabel-admin", "monailabel-reviewer", "monailabel-annotator",
                                    "monailabel-user")
USERS = {  # name: (password, realm roles)
    "viewer": ("viewer-pw", [USER]),
    "annotator": ("annotator-pw", [USER, ANNOTATOR]),
    "admin": ("admin-pw", [USER, ANNOTATOR, REVIEWER, ADMIN]),
    "nobody": ("nobody-pw", []),
}
IMAGE = "phantom_600"


class Realm:
    """A Keycloak-style realm: its public key, its OpenID configuration, a password-grant token endpoint."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/realms/monailabel"
        self.requests: list[str] = []
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                realm.requests.append(f"GET {self.path}")
                if self.path == "/realms/monailabel":
                    der = realm.key.public_key().public_bytes(serialization.Encoding.DER,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo)
                    self._json(200, {"realm": "monailabel", "public_key": base64.b64encode(der).decode(),
                                     "token-service": f"{realm.url}/protocol/openid-connect",
                                     "tokens-not-before": 0})
                elif self.path == "/realms/monailabel/.well-known/openid-configuration":
                    self._json(200, {"issuer": realm.url,
                                     "token_endpoint": f"{realm.url}/protocol/openid-connect/token"})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self):
                realm.requests.append(f"POST {self.path}")
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                field = lambda name: (form.get(name) or [""])[0]  # noqa: E731
                if self.path != "/realms/monailabel/protocol/openid-connect/token":
                    return self._json(404, {"error": "not found"})
                user = USERS.get(field("username"))
                if (field("grant_type") != "password" or field("client_id") != CLIENT_ID or not user
                        or user[0] != field("password")):
                    return self._json(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
                self._json(200, {"access_token": realm.token(field("username")), "token_type": "Bearer",
                                 "expires_in": 300})

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def claims(self, username: str, lifetime: int = 300) -> dict:
        now = int(time.time())
        return {"exp": now + lifetime, "iat": now, "iss": self.url, "sub": f"id-{username}", "typ": "Bearer",
                "azp": CLIENT_ID, "preferred_username": username, "email": f"{username}@example.org",
                "name": username.title(), "realm_access": {"roles": USERS[username][1]}}

    def token(self, username: str, **changes) -> str:
        return jwt.encode({**self.claims(username), **changes}, self.key, algorithm="RS256",
                          headers={"kid": "realm-key"})

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def realm():
    r = Realm()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def auth_server(realm, random_checkpoint, tmp_path_factory):
    studies = tmp_path_factory.mktemp("auth_studies")
    write_studies(studies, 2, shape=(64, 64, 32), seed=600)
    log = tmp_path_factory.mktemp("auth_logs") / "server.log"
    conf = {"checkpoint": random_checkpoint, "model_config": "sam2.1_hiera_micro",
            "model_dir": tmp_path_factory.mktemp("auth_model")}
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm.url,
           "MONAI_LABEL_AUTH_CLIENT_ID": CLIENT_ID, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    s = _start(studies, conf, log, env, realm)
    yield s
    stop_server(s.proc)


def _start(studies, conf, log, env, realm):
    """The readiness probe (GET /info/) now takes a token."""
    return start_server(studies, conf, log, env, ready_headers=bearer(realm.token("viewer")))


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def organ_click() -> list[int]:
    truth = make_phantom((64, 64, 32), seed=600).label == 1
    k = largest_slice(truth)
    x, y = interior_point(truth[:, :, k].T)
    return [x, y, k]


def bad_tokens(realm: Realm) -> dict[str, str | None]:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = realm.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = realm.claims("admin")
    unsigned = (base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode() + "."
                + base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode() + ".")
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    return {
        "none": None,
        "garbage": "not-a-jwt",
        "expired": realm.token("admin", exp=int(time.time()) - 60, iat=int(time.time()) - 400),
        "other key": jwt.encode(claims, other, algorithm="RS256", headers={"kid": "realm-key"}),
        "unsigned": unsigned,
        "HS256 with the public key": _hmac_token(claims, public_pem),
        "no expiry": jwt.encode(no_exp, realm.key, algorithm="RS256"),
    }


def _hmac_token(claims: dict, secret: bytes) -> str:
    """An HS256 token keyed with the realm's public key PEM (the classic algorithm-confusion forgery).
    PyJWT refuses to sign with a PEM as HMAC key, so it is signed by hand."""
    import hashlib
    import hmac

    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    signing_input = enc(b'{"alg":"HS256","typ":"JWT"}') + "." + enc(json.dumps(claims).encode())
    return signing_input + "." + enc(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


# Routes FastAPI leaves out of /openapi.json, and deprecated aliases: listed by hand
HIDDEN = [
    ("post", "/reload"),
    ("get", "/ohif/index.html"),
    ("get", "/proxy/dicom/studies"), ("post", "/proxy/dicom/studies"),
    ("get", "/proxy/dicom/qido/studies"), ("get", "/proxy/dicom/wado/studies"),
    ("post", "/proxy/dicom/stow/studies"),
    ("post", "/train/"), ("post", "/scoring/"),
    ("put", "/datastore/"), ("delete", "/datastore/"), ("put", "/datastore/updatelabelinfo"),
    ("post", "/encode_ahead?image=x"),
]
# What stays open with authentication on: the login itself and documentation (no images, labels or state)
OPEN = {("get", "/auth/"), ("post", "/auth/token")}
PATH_VALUES = {"model": "medsam2", "strategy": "random", "method": "medsam2_confidence", "session_id": "x",
               "path": "x"}


def protected_routes(server) -> list[tuple[str, str]]:
    schema = requests.get(f"{server.url}/openapi.json", timeout=30).json()
    routes = [(method, path) for path, ops in schema["paths"].items() for method in ops]
    routes = [(m, p.format(**PATH_VALUES)) for m, p in routes + HIDDEN if (m, p) not in OPEN]
    assert len(routes) > 40 and ("post", "/infer/medsam2") in routes and ("put", "/datastore/label") in routes
    return routes


def test_every_route_refuses_requests_without_a_valid_token(auth_server, realm):
    refused, wrong = 0, []
    routes = protected_routes(auth_server)
    for name, token in bad_tokens(realm).items():
        for method, path in routes:
            r = requests.request(method, f"{auth_server.url}{path}", headers=bearer(token),
                                 params={"image": IMAGE}, timeout=30)
            if r.status_code == 401:
                refused += 1
            else:
                wrong.append(f"{name}: {method.upper()} {path} -> {r.status_code} {r.text[:120]}")
    assert not wrong, "\n".join(wrong)
    assert refused == len(routes) * 7
    for path in ("/", "/docs", "/openapi.json", "/favicon.ico", "/auth/"):  # what stays open: no data, no state
        assert requests.get(f"{auth_server.url}{path}", timeout=30).status_code == 200, path
    # nothing was inferred, trained or saved meanwhile
    log = auth_server.log.read_text()
    assert "medsam2: " not in log and "Saving Label" not in log


def test_a_valid_token_without_the_route_role_is_forbidden(auth_server, realm):
    nobody, viewer, annotator = (bearer(realm.token(u)) for u in ("nobody", "viewer", "annotator"))
    assert requests.get(f"{auth_server.url}/info/", headers=nobody, timeout=30).status_code == 403
    label = ("label.nrrd", b"not used", "application/octet-stream")
    r = requests.put(f"{auth_server.url}/datastore/label", params={"image": IMAGE}, headers=viewer,
                     files={"label": label}, timeout=30)
    assert r.status_code == 403 and ANNOTATOR in r.text
    for method, path in (("post", "/train/medsam2"), ("delete", "/datastore/label"), ("post", "/reload"),
                         ("post", "/batch/infer/medsam2"), ("get", "/model/medsam2")):
        r = requests.request(method, f"{auth_server.url}{path}", headers=annotator,
                             params={"id": IMAGE, "tag": "final"}, timeout=30)
        assert r.status_code == 403, (method, path, r.status_code, r.text)


def test_valid_tokens_with_the_role_get_real_answers(auth_server, realm, tmp_path):
    viewer, annotator = bearer(realm.token("viewer")), bearer(realm.token("annotator"))
    info = requests.get(f"{auth_server.url}/info/", headers=viewer, timeout=30)
    assert info.status_code == 200 and "medsam2" in info.json()["models"]
    stats = requests.get(f"{auth_server.url}/datastore/", params={"output": "stats"}, headers=viewer, timeout=30)
    assert stats.status_code == 200 and stats.json()["total"] == 2

    params = {"foreground": [organ_click()], "background": [], "result_extension": ".nrrd", "result_dtype": "uint8"}
    r = auth_server.post_infer(IMAGE, params, headers=viewer)
    assert r.status_code == 200, r.text
    (tmp_path / "label.nrrd").write_bytes(r.content)
    label, _ = nrrd.read(str(tmp_path / "label.nrrd"))
    assert label.shape == (64, 64, 32)

    r = requests.put(f"{auth_server.url}/datastore/label", params={"image": IMAGE}, headers=annotator,
                     files={"params": (None, json.dumps({"label_info": [{"name": "organ", "idx": 1}]})),
                            "label": ("label.nrrd", (tmp_path / "label.nrrd").read_bytes())}, timeout=60)
    assert r.status_code == 200, r.text
    r = requests.get(f"{auth_server.url}/datastore/label", params={"label": IMAGE, "tag": "final"},
                     headers=viewer, timeout=30)
    assert r.status_code == 200
    (tmp_path / "saved.nrrd").write_bytes(r.content)
    np.testing.assert_array_equal(nrrd.read(str(tmp_path / "saved.nrrd"))[0], label)

    r = requests.post(f"{auth_server.url}/activelearning/first", headers=viewer, json={}, timeout=30)
    assert r.status_code == 200 and r.json()["id"] == "phantom_601"  # the one without a label
    r = requests.get(f"{auth_server.url}/train/", params={"check_if_running": True}, headers=viewer, timeout=30)
    assert r.status_code == 404 and "credentials" not in r.text  # past the check: no training has run yet


def test_login_through_the_server_like_slicer(auth_server, realm, tmp_path):
    """MONAI Label's Python client, the same code as Slicer's module: /auth/ -> /auth/token -> Bearer."""
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException

    client = MONAILabelClient(auth_server.url, tmpdir=str(tmp_path), client_id="slicer-user")
    assert client.auth_enabled()
    assert requests.get(f"{auth_server.url}/auth/", timeout=30).json() == {"enabled": True, "client_id": CLIENT_ID,
                                                                           "realm": realm.url}
    with pytest.raises(MONAILabelClientException):
        client.auth_token("annotator", "wrong")
    r = requests.post(f"{auth_server.url}/auth/token", data={"username": "annotator", "password": "wrong"}, timeout=30)
    print("wrong password ->", r.status_code, r.text[:80])
    assert r.status_code >= 400 and "access_token" not in r.text
    with pytest.raises(MONAILabelClientException):
        client.info()  # no token yet
    client.update_auth(client.auth_token("annotator", "annotator-pw"))  # the realm's token endpoint, via the server
    assert client.auth_valid_token()
    assert "medsam2" in client.info()["models"]
    params = {"label": "organ", "foreground": [organ_click()], "background": [], "result_extension": ".nii.gz",
              "result_dtype": "uint8"}
    out, res = client.infer("medsam2", IMAGE, params)
    assert res["label_names"] == {"organ": 1}
    client.save_label(IMAGE, out, params={"label_info": [{"name": "organ", "idx": 1}]})
    me = requests.get(f"{auth_server.url}/auth/token/valid", headers=client._headers, timeout=30).json()
    assert me["username"] == "annotator" and set(me["roles"]) == {USER, ANNOTATOR}
    assert "POST /realms/monailabel/protocol/openid-connect/token" in realm.requests


def test_reload_needs_the_admin_role(auth_server, realm):
    assert requests.post(f"{auth_server.url}/reload", timeout=30).status_code == 401
    r = requests.post(f"{auth_server.url}/reload", headers=bearer(realm.token("admin")), timeout=30)
    assert r.status_code == 200, r.text
    r = requests.get(f"{auth_server.url}/info/", headers=bearer(realm.token("viewer")), timeout=120)
    assert r.status_code == 200 and "medsam2" in r.json()["models"]
