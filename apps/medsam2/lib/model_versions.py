"""`GET /model/<name>/versions` and `POST /model/<name>/rollback?version=<id>`: the kept versions of a
model and the way back to one (medsam2/versions.py).

Listing needs the user role, a rollback the admin role (as starting a training run does). An unknown
version is answered 404, a damaged one (its file missing or not the one recorded) 409; neither changes
what is served. After a rollback every replica sharing the model folder serves that version from its
next request.
"""

from __future__ import annotations

from fastapi import Depends, HTTPException
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from lib.monailabel_patches.routes import add_first
from medsam2.versions import DamagedVersion, UnknownVersion, VersionStore


def install(fastapi_app, stores: dict[str, VersionStore]) -> None:
    def store_of(model: str) -> VersionStore:
        if model not in stores:
            raise HTTPException(status_code=404, detail=f"no model {model!r}; models: {sorted(stores)}")
        return stores[model]

    def versions(model: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        return store_of(model).describe()

    def rollback(model: str, version: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        store = store_of(model)
        try:
            served = store.rollback(version)
        except UnknownVersion as e:
            raise HTTPException(status_code=404, detail=str(e)) from e
        except DamagedVersion as e:
            raise HTTPException(status_code=409, detail=str(e)) from e
        return {"served": served}

    add_first(fastapi_app, f"{settings.MONAI_LABEL_API_STR}/model/{{model}}/versions", versions, ["GET"],
              summary="The kept versions of a model", tags=["Model"])
    add_first(fastapi_app, f"{settings.MONAI_LABEL_API_STR}/model/{{model}}/rollback", rollback, ["POST"],
              summary="Serve a kept version of a model from the next request", tags=["Model"])
