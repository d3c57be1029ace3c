"""`/proxy/dicom/...`: the bundled OHIF's way to the PACS, passing what OHIF asks and nothing else.

OHIF, served by the app at `/ohif/`, reads and writes DICOMweb through `/proxy/dicom/{qido,wado,stow}/...`
(its `app-config.js`), which the server forwards to the `--studies` DICOMweb URL. MONAI Label 0.8.5's
proxy drops the query string (a QIDO search for a patient that does not exist returned every study;
OHIF's study-list filters, `limit` and `offset` never reached the PACS) and, for GET, every request
header (OHIF's `Accept` for metadata, frames and rendered images). Its path also went into the URL as
it came, so `/proxy/dicom/../../tools/...` reached the PACS's other REST routes (Orthanc's admin API)
with the server's credentials.

`install` puts routes in front of MONAI Label's that forward method, path, query string, `Accept` and
(for STOW) `Content-Type` and the body to the configured DICOMweb server only: a path with `..`, `.`,
empty or encoded-slash segments, or anything that would leave the configured base URL, is refused with
400. The PACS's credentials (MONAI_LABEL_DICOMWEB_USERNAME / _PASSWORD) are added here, as MONAI Label
does; the user's own `Authorization` header (MONAI Label's token) is not passed on.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, unquote, urlsplit

import requests
from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from lib.monailabel_patches.routes import add_first

logger = logging.getLogger(__name__)

OPERATIONS = ("qido", "wado", "stow")
REQUEST_HEADERS = ("accept", "content-type")  # what OHIF's DICOMweb client needs the PACS to see
RESPONSE_HEADERS = ("content-type", "content-disposition", "etag", "last-modified", "cache-control")
TIMEOUT_S = (10, 300)  # connect, read: a large series' WADO can take minutes from a slow PACS


def _prefix(op: str, path: str) -> str:
    """MONAI Label's per-operation URL prefixes (MONAI_LABEL_{QIDO,WADO,STOW}_PREFIX); metadata is WADO."""
    if op == "qido" and path.endswith("metadata"):
        op = "wado"
    value = {"qido": settings.MONAI_LABEL_QIDO_PREFIX, "wado": settings.MONAI_LABEL_WADO_PREFIX,
             "stow": settings.MONAI_LABEL_STOW_PREFIX}.get(op)
    return (value or "").strip("/")


def target_url(base: str, op: str, path: str, query: str) -> str:
    """The PACS URL for `/proxy/dicom/<op>/<path>?<query>`; HTTPException 400 for a path that is not
    a plain DICOMweb path under `base`."""
    segments = path.split("/") if path else []
    for segment in segments:
        plain = unquote(segment)
        if segment in ("", ".", "..") or plain in (".", "..") or "/" in plain or "\\" in plain or "\x00" in plain:
            raise HTTPException(status_code=400, detail=f"not a DICOMweb path: {path!r}")
    parts = [p for p in (_prefix(op, path), *segments) if p]
    url = base.rstrip("/") + ("/" + "/".join(quote(unquote(p), safe="@:+=,;") for p in parts) if parts else "")
    if query:
        url += "?" + query
    ours, theirs = urlsplit(base), urlsplit(url)
    if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc) or not theirs.path.startswith(ours.path):
        raise HTTPException(status_code=400, detail=f"not a DICOMweb path: {path!r}")
    return url


def _auth():
    user, password = settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
    return (user, password) if user and password else None


def forward(method: str, url: str, headers: dict, body: bytes | None) -> Response:
    try:
        r = requests.request(method, url, headers=headers, data=body, auth=_auth(), timeout=TIMEOUT_S,
                             allow_redirects=False)
    except requests.RequestException as e:
        logger.warning("DICOMweb proxy: %s %s failed: %s", method, url, e)
        raise HTTPException(status_code=502, detail=f"the DICOMweb server did not answer: {type(e).__name__}") from e
    kept = {k: v for k, v in r.headers.items() if k.lower() in RESPONSE_HEADERS}
    return Response(content=r.content, status_code=r.status_code, headers=kept)


def install(fastapi_app, studies: str, on_get=None) -> None:
    """Serve `/proxy/dicom/...` here, before MONAI Label's own routes (only with a DICOMweb datastore).
    `on_get(request, user, path)` is told of each GET forwarded with an operation (OHIF opening a series
    starts encoding it: encode_ahead.py)."""
    if not studies.startswith(("http://", "https://")) or "googleapis.com" in studies:
        return  # no PACS (a folder), or Google's Healthcare API, whose tokens MONAI Label's proxy handles

    async def proxy(request: Request, op: str, path: str):
        headers = {k: v for k, v in request.headers.items() if k.lower() in REQUEST_HEADERS}
        body = await request.body() if request.method == "POST" else None
        url = target_url(studies, op, path, request.url.query)
        return await run_in_threadpool(forward, request.method, url, headers, body)

    async def with_operation(request: Request, op: str, path: str,
                             user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        if op not in OPERATIONS:  # /proxy/dicom/<path> without an operation: the path as it is
            return await proxy(request, "", f"{op}/{path}")
        response = await proxy(request, op, path)
        if on_get is not None and request.method == "GET" and response.status_code == 200:
            on_get(request, user, path)
        return response

    async def without_operation(request: Request, path: str,
                                user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        return await proxy(request, "", path)

    # added in reverse: each goes to the front, and the route with an operation must be tried first
    add_first(fastapi_app, "/proxy/dicom/{path:path}", without_operation, ["GET", "POST"], include_in_schema=False)
    add_first(fastapi_app, "/proxy/dicom/{op}/{path:path}", with_operation, ["GET", "POST"], include_in_schema=False)
    logger.info("/proxy/dicom forwards to %s only (query strings and Accept passed on)", studies)
