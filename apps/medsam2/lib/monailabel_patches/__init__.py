"""Every change this app makes to MONAI Label's own behaviour, in one package.

Each module says what MONAI Label does, what is changed and why; `tests/test_monailabel_patches.py`
holds, for each, a test of the upstream behaviour the patch relies on or corrects, so that a MONAI
Label that changes it fails there (and the patch is revisited) rather than in a user's hands. The
patches were written and checked against the versions in CHECKED_VERSIONS; on any other version the
app refuses to start (`check_version`) unless MEDSAM2_UNCHECKED_MONAILABEL=1 says to try anyway.

| module | MONAI Label (0.8.5) | here |
|---|---|---|
| `auth` | checks tokens with `jwt.decode` without `algorithms`: PyJWT 2 refuses every token (401 for all); `POST /reload` has no role check | RSA algorithms and `exp` required; `/reload` needs the admin role |
| `infer_route` | `POST /infer/{model}` is `async def` and runs the inference on the event loop: every other request waits | the same route, the inference on a pool of threads per model |
| `http_errors` | malformed `params`, unknown images and models end as HTTP 500 | 400 / 404 with the reason |
| `datastore` | `LocalDatastore` stores any bytes, builds paths from client ids, writes in place, ignores renames | checked, atomic saves (uses its private `_datastore`, `_lock_file`, `_update_datastore_file`, `_init_from_datastore_file`, `_config_ts`, `_handler`) |
| `dicomweb` | lists CT series only; writes DICOM-SEG with dcmqi downloaded from GitHub at start-up | every modality of `--conf dicomweb_modalities`; pydicom-seg when dcmqi is absent (uses its private `_client`, `_search_filter`, `_datastore`) |
| `app` | `MONAILabelApp` downloads dcmqi while starting on a DICOMweb URL; loads the `main.py` class whose direct base is `MONAILabelApp` | no download; a mixin (`PatchedApp`) |
| `dicom_proxy` | `/proxy/dicom` drops the query string and GET headers, and passes `..` paths on to the PACS | the DICOMweb request as OHIF sent it, to the configured base URL only |
| `ohif_viewer` | `/ohif/` answers every file in a subfolder with `index.html` | the viewer's files; its server URL cookie set |
| `routes` | the app's routes are added after MONAI Label's, so an app cannot replace one | `add_first`: the app's route answers first |

`lib/encode_ahead.py` also serves two MONAI Label routes (`GET /datastore/image`, `POST
/activelearning/{strategy}`) through `add_first`: it calls MONAI Label's own endpoint functions and only
adds the start of encoding ahead; the test of those functions' signatures is with the others.
"""

from __future__ import annotations

import logging
import os

import monailabel

logger = logging.getLogger(__name__)

CHECKED_VERSIONS = ("0.8.5",)
UNCHECKED_ENV = "MEDSAM2_UNCHECKED_MONAILABEL"


class UncheckedVersion(RuntimeError):
    """MONAI Label is a version these patches were not checked against."""


def check_version(version: str | None = None) -> None:
    """Refuse to start on a MONAI Label these patches were not checked against (the message says what to do)."""
    version = version or monailabel.__version__
    if version in CHECKED_VERSIONS:
        return
    message = (f"MONAI Label {version} is installed; this app changes MONAI Label's behaviour in ways checked only "
               f"against {', '.join(CHECKED_VERSIONS)} (apps/medsam2/lib/monailabel_patches). Install "
               f"monailabel=={CHECKED_VERSIONS[-1]} (scripts/install.sh does), or run "
               f"`pytest tests/test_monailabel_patches.py` on this version and add it to CHECKED_VERSIONS when "
               f"it passes; {UNCHECKED_ENV}=1 starts anyway")
    if os.environ.get(UNCHECKED_ENV) == "1":
        logger.warning("%s", message)
        return
    raise UncheckedVersion(message)


def install(fastapi_app, infer_limits: dict[str, int]) -> None:
    """The route-level patches, on MONAI Label's FastAPI app once it has started: 4xx answers first (the
    other routes raise what they turn into), then authentication, then the threaded infer route."""
    from . import auth, http_errors, infer_route

    http_errors.install(fastapi_app)
    auth.install(fastapi_app)
    infer_route.install(fastapi_app, infer_limits)
