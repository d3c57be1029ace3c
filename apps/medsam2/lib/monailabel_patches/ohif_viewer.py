"""`/ohif/...`: the OHIF v3 viewer bundled in the monailabel wheel, served file for file, pointed at this server.

MONAI Label 0.8.5 looks a requested file up with `path.replace("/", os.pathsep)`, so every file in a
subfolder (`/ohif/assets/...`) is answered with `index.html`. Here a path names the file under the
viewer's folder (never outside it); any other path is one of the viewer's own routes
(`/ohif/monai-label?StudyInstanceUIDs=...`) and gets `index.html`.

The MONAI Label panel reads its server URL from the `MONAILABEL_SERVER_URL` cookie and otherwise
guesses port 8000 of the page's host; an empty URL field takes the whole viewer down (an OHIF panel
bug). So when a browser without that cookie opens the viewer, the page comes with the cookie set to
the address the browser used to reach this server: the panel connects here without typing. A cookie
the user already has (another server, typed by hand) is left alone.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi.responses import FileResponse
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.utils.others.generic import get_mime_type

from lib.monailabel_patches.routes import add_first

logger = logging.getLogger(__name__)

SERVER_COOKIE = "MONAILABEL_SERVER_URL"


def viewer_dir() -> str:
    import monailabel.endpoints

    return os.path.join(os.path.dirname(os.path.realpath(monailabel.endpoints.__file__)), "static", "ohif")


def viewer_file(root: str, path: str) -> str | None:
    """The file `path` names under `root`, or None (a viewer route, a folder, or outside `root`)."""
    if not path:
        return None
    candidate = os.path.realpath(os.path.join(root, path))
    if not candidate.startswith(os.path.realpath(root) + os.sep) or not os.path.isfile(candidate):
        return None
    return candidate


def install(fastapi_app) -> None:
    root = viewer_dir()
    if not os.path.isfile(os.path.join(root, "index.html")):
        return

    def ohif(request: Request, path: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        found = viewer_file(root, path)
        if found is None and "." in os.path.basename(path) and path.split("/")[0] in ("assets", "static"):
            raise HTTPException(status_code=404, detail=f"no such file in the viewer: {path}")
        served = found or os.path.join(root, "index.html")
        response = FileResponse(served, media_type=get_mime_type(served))
        if found is None and SERVER_COOKIE not in request.cookies:
            # percent-encoded as the panel's CookieUtils writes it (JavaScript's escape; it reads with
            # unescape): a quoted cookie value would reach the panel with its quotes
            response.headers.append("set-cookie", f"{SERVER_COOKIE}={quote(str(request.base_url), safe='')}; "
                                                  "Path=/; SameSite=Lax")
        return response

    add_first(fastapi_app, "/ohif/{path:path}", ohif, ["GET"], include_in_schema=False)
    logger.info("/ohif serves %s (its assets as files; the panel's server URL defaults to this server)", root)
