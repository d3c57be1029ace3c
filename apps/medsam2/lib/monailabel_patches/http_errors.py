"""HTTP answers for bad input that MONAI Label itself would turn into a bare 500.

MONAI Label's endpoints parse the `params` form field with `json.loads` and hand the result to
`dict.update` and `copy.deepcopy`: malformed JSON, a JSON list or number, or an array nested a few
thousand deep all end as "Internal Server Error". The endpoint modules get a `json` here whose `loads`
accepts only a JSON object nested at most MAX_DEPTH deep and answers anything else with 400 and a
message (form fields over 1 MB are already refused with 400 by Starlette's form parser). A datastore
lookup of an unknown image or label (`ImageNotFoundException`) is answered 404 and an unknown model
(`INVALID_INPUT`) 400, with MONAI Label's own message.

The handlers are added once the server has started (MONAI Label's FastAPI app is built before our app
is loaded), so the middleware stack is rebuilt on the next request to pick them up.
"""

import json
import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from monailabel.interfaces.exception import (ImageNotFoundException, LabelNotFoundException, MONAILabelError,
                                             MONAILabelException)

logger = logging.getLogger(__name__)

MAX_DEPTH = 20  # the deepest params the clients send ({"objects": [{"foreground": [[i, j, k]]}]}) are 4 deep


class ParamsError(ValueError):
    """The `params` field parsed but cannot be request params; the message is for the user."""


def _depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


class ParamsJson:
    """The `json` module as MONAI Label's endpoints see it: `loads` returns request params or refuses."""

    def __getattr__(self, name):
        return getattr(json, name)

    @staticmethod
    def loads(text, *args, **kwargs):
        try:
            value = json.loads(text, *args, **kwargs)
        except RecursionError:
            raise ParamsError(f"params is nested more than {MAX_DEPTH} deep") from None
        if not isinstance(value, dict):
            raise ParamsError(f"params must be a JSON object {{...}}, got {type(value).__name__}: {str(text)[:40]!r}")
        if _depth(value) > MAX_DEPTH:
            raise ParamsError(f"params is nested more than {MAX_DEPTH} deep")
        return value


async def _bad_json(request: Request, exc: json.JSONDecodeError):
    return JSONResponse(status_code=400, content={"detail": f"params is not valid JSON: {exc}"})


async def _bad_params(request: Request, exc: ParamsError):
    return JSONResponse(status_code=400, content={"detail": str(exc)})


async def _monailabel_error(request: Request, exc: MONAILabelException):
    if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)):
        return JSONResponse(status_code=404, content={"detail": exc.msg})
    if exc.error == MONAILabelError.INVALID_INPUT:
        return JSONResponse(status_code=400, content={"detail": exc.msg})
    logger.error("MONAI Label error %s: %s", exc.error, exc.msg)
    return JSONResponse(status_code=500, content={"detail": f"{exc.error.value}: {exc.msg}"})


def install(fastapi_app) -> None:
    if json.JSONDecodeError in fastapi_app.exception_handlers:
        return
    from monailabel.endpoints import datastore, infer

    for module in (infer, datastore):
        module.json = ParamsJson()  # the only json these modules use: params/info fields in, results out
    fastapi_app.add_exception_handler(json.JSONDecodeError, _bad_json)
    fastapi_app.add_exception_handler(ParamsError, _bad_params)
    fastapi_app.add_exception_handler(MONAILabelException, _monailabel_error)
    fastapi_app.middleware_stack = None  # rebuilt with the handlers on the next request
    logger.info("installed HTTP 4xx answers for malformed params and unknown images/labels/models")
