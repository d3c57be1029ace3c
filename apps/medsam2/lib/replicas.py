"""What one replica adds when several run behind a balancer (scripts/replicas.py: nginx, consistent
hashing on the image): its name on every answer, a readiness route, and encoding ahead on the replica
that owns an image.

- `X-Replica: <--conf replica>` on every response, so a client, a test or a log can tell which process
  answered.
- `GET /ready`: 200 once the model is loaded (its version in the body), 503 while it loads or when it
  cannot be loaded (the reason in the body). A balancer (or Kubernetes' readiness probe) sends no
  clicks to a replica that would answer them 503. With `--conf replica` set the model is loaded at
  start, not on the first click.
- Next Sample is answered by any replica, but the image it hands out is clicked on the replica its id
  hashes to: with `--conf balancer_url` the answering replica asks the balancer (`POST
  /encode_ahead?image=<id>`, which the balancer routes by the image like a click) to encode it there.
"""

from __future__ import annotations

import logging
import threading

import requests
from fastapi import Depends, HTTPException, Request
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from lib.monailabel_patches.routes import add_first

logger = logging.getLogger(__name__)


def install(fastapi_app, name: str, providers: list, encode_ahead) -> None:
    """`providers`: the models' ModelProviders (ready when all are loaded); `encode_ahead(user, image_id)`:
    the app's local encode-ahead (lib/encode_ahead.py)."""
    if name:
        async def say_which_replica(request: Request, call_next):
            response = await call_next(request)
            response.headers["X-Replica"] = name
            return response

        fastapi_app.middleware_stack = None  # rebuilt with it on the next request (as http_errors does)
        fastapi_app.middleware("http")(say_which_replica)
        for provider in providers:  # load now: a replica is ready when its model is
            threading.Thread(target=_load, args=(provider,), name="load-model", daemon=True).start()

    def ready():
        states = [provider.load_state() for provider in providers]
        failed = [s for s in states if s.error]
        if failed or not all(s.loaded for s in states):
            raise HTTPException(status_code=503, detail="; ".join(s.error for s in failed) or "the model is loading")
        return {"ready": True, "replica": name, "model_versions": [s.version for s in states]}

    def encode_ahead_here(request: Request, image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        who = request.headers.get("X-Encode-Ahead-For") or f"user:{user.username}"
        encode_ahead(who, image)
        return {"image": image, "replica": name}

    add_first(fastapi_app, "/ready", ready, ["GET"], include_in_schema=False)
    add_first(fastapi_app, "/encode_ahead", encode_ahead_here, ["POST"], include_in_schema=False)


def _load(provider) -> None:
    try:
        provider.get()
    except Exception as e:  # noqa: BLE001 (reported by /ready and by every click)
        logger.warning("the model did not load: %s", e)


def forward_encode_ahead(balancer_url: str, who: str, image_id: str, authorization: str | None) -> None:
    """Ask the balancer to have image `image_id` encoded ahead for `who` on the replica that owns it
    (never raises: encoding ahead is a guess)."""
    headers = {"X-Encode-Ahead-For": who}
    if authorization:
        headers["Authorization"] = authorization

    def send():
        try:
            requests.post(f"{balancer_url.rstrip('/')}/encode_ahead", params={"image": image_id}, headers=headers,
                          timeout=30)
        except requests.RequestException as e:
            logger.warning("encode ahead of %s through %s not started: %s", image_id, balancer_url, e)

    threading.Thread(target=send, name="forward-encode-ahead", daemon=True).start()
