"""Making MONAI Label's authentication work (MONAI_LABEL_AUTH_ENABLE=true), and close its one open door.

MONAI Label 0.8.5 checks bearer tokens in `monailabel.endpoints.user.auth.from_token`: it fetches the
realm's RSA public key (`GET <MONAI_LABEL_AUTH_REALM_URI>`, Keycloak's `{"public_key": ...}`) and calls
`jwt.decode(token, key, options=...)` without `algorithms`. PyJWT 2 (monailabel requires >= 2.8) refuses
that call for every token, so with authentication on every request is answered 401, valid token or not.
`install` puts in the same check with the algorithms an RSA realm key signs with, and an `exp` claim
required (a token without one would never expire). Everything else is MONAI Label's: where the key comes
from, which claims hold the user name and roles (MONAI_LABEL_AUTH_TOKEN_*), which role each endpoint needs.

`POST /reload` is the one route MONAI Label serves without any check; it drops the app (models, caches,
sessions). With authentication on it needs the admin role here.
"""

from __future__ import annotations

import logging

import jwt
from fastapi import Depends
from monailabel.config import settings

logger = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]  # the realm key is an RSA public key


def from_token(token: str):
    from monailabel.endpoints.user import auth

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return auth.DEFAULT_USER
    key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    payload = jwt.decode(token, key, algorithms=ALGORITHMS,
                         options={"verify_signature": True, "verify_exp": True, "verify_aud": False,
                                  "require": ["exp"]})
    roles = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(part) if isinstance(roles, dict) else None
    return auth.User(username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or "",
                     email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                     name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
                     roles=[str(r) for r in roles] if isinstance(roles, list) else [])


def install(fastapi_app) -> None:
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return
    from monailabel.endpoints.user import auth
    from monailabel.interfaces.utils.app import clear_cache

    auth.from_token = from_token  # looked up by get_current_user on every request

    for route in list(fastapi_app.router.routes):
        if getattr(route, "path", None) == "/reload":
            fastapi_app.router.routes.remove(route)

    @fastapi_app.post("/reload", include_in_schema=False)
    def reload(user: auth.User = Depends(auth.RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        logger.info("reload requested by %s", user.username)
        clear_cache()
        return {}

    logger.info("authentication: tokens checked against %s (%s); /reload needs %s",
                settings.MONAI_LABEL_AUTH_REALM_URI, ", ".join(ALGORITHMS), settings.MONAI_LABEL_AUTH_ROLE_ADMIN)
