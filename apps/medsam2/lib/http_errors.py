"""HTTP answers for bad input that MONAI Label itself would turn into a bare 500.

MONAI Label parses the `params` form field with `json.loads` before any task runs, so malformed JSON
ends as "Internal Server Error". The handler below answers it with 400 and the parser's message.
It is added once the server has started (MONAI Label's FastAPI app is built before our app is
loaded), so the middleware stack is rebuilt on the next request to pick it up.
"""

import json
import logging

from fastapi import Request
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)


async def _bad_json(request: Request, exc: json.JSONDecodeError):
    return JSONResponse(status_code=400, content={"detail": f"params is not valid JSON: {exc}"})


def install(fastapi_app) -> None:
    if json.JSONDecodeError in fastapi_app.exception_handlers:
        return
    fastapi_app.add_exception_handler(json.JSONDecodeError, _bad_json)
    fastapi_app.middleware_stack = None  # rebuilt with the handler on the next request
    logger.info("installed HTTP 400 handler for malformed params JSON")
