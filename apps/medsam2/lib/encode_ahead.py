"""Starting to encode an image when a client fetches it, before the first click on it.

The engine's side (one background worker, one image ahead per user, paused while inferences run,
within the cache budget) is `medsam2/encode_ahead.py`. This module only notices that a user is about
to look at an image:
- Slicer downloads it: `GET /datastore/image?image=<id>` (after *Next Sample*, or opening an image);
- *Next Sample* names it: `POST /activelearning/<strategy>` (behind a balancer, `--conf balancer_url`,
  the balancer is asked to have it encoded on the replica its clicks will reach: lib/replicas.py);
- OHIF reads the series through the app's DICOMweb proxy: `/proxy/dicom/wado/studies/<s>/series/<id>/...`
  (`dicom_proxy.install` calls `series_seen`).
Each starts encoding that image for that user. The user is the authenticated user name, or without
authentication (the default) the client's address: one image ahead per workstation.

The two MONAI Label routes are served here with their parameters, authentication and answers, and
the image is resolved on a pool thread rather than on the event loop (MONAI Label's `download_image`
blocks it while a DICOMweb series downloads).
"""

from __future__ import annotations

import logging
import re
from typing import Optional

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from monailabel.config import RBAC_USER, settings
from monailabel.endpoints import activelearning as monailabel_activelearning
from monailabel.endpoints import datastore as monailabel_datastore
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from lib.monailabel_patches.routes import add_first
from lib.replicas import forward_encode_ahead

logger = logging.getLogger(__name__)

SERIES = re.compile(r"^studies/[^/]+/series/([^/]+)(/|$)")


def user_of(request: Request, user: User) -> str:
    """Whose encoding this is: the user name with authentication on, else the client's address."""
    if settings.MONAI_LABEL_AUTH_ENABLE and user is not None and user.username:
        return f"user:{user.username}"
    return f"address:{request.client.host if request.client else 'unknown'}"


def start(user: str, image_id: str) -> None:
    """Encode `image_id` ahead for `user` with every model that does (never raises: it is a guess)."""
    try:
        app_instance().encode_ahead(user, image_id)
    except Exception as e:  # noqa: BLE001 (a failed guess must not fail the request that caused it)
        logger.warning("encode ahead of %s for %s not started: %s: %s", image_id, user, type(e).__name__, e)


def series_seen(request: Request, user: User, path: str) -> None:
    """Called by the DICOMweb proxy for each GET it forwards: a series' metadata, instances or frames
    mean OHIF is opening that series."""
    match = SERIES.match(path)
    if match:
        start(user_of(request, user), match.group(1))


def install(fastapi_app) -> None:
    async def download_image(request: Request, image: str,
                             user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        response = await run_in_threadpool(monailabel_datastore.download_image, image)
        start(user_of(request, user), image)
        return response

    async def next_sample(request: Request, strategy: str, params: Optional[dict] = None,
                          user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        result = await run_in_threadpool(monailabel_activelearning.sample, strategy, params, user.username)
        if result and result.get("id"):
            balancer = app_instance().settings.balancer_url
            if balancer:  # behind a balancer: encoded on the replica the image's clicks will reach
                forward_encode_ahead(balancer, user_of(request, user), result["id"], request.headers.get("Authorization"))
            else:
                start(user_of(request, user), result["id"])
        return result

    add_first(fastapi_app, f"{settings.MONAI_LABEL_API_STR}/datastore/image", download_image, ["GET"],
              summary=f"{RBAC_USER}Download Image", tags=["Datastore"])
    add_first(fastapi_app, f"{settings.MONAI_LABEL_API_STR}/activelearning/{{strategy}}", next_sample, ["POST"],
              summary=f"{RBAC_USER}Run Active Learning strategy to get next sample", tags=["ActiveLearning"])
