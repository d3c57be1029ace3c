"""POST /infer/{model} off the server's event loop, on a fixed number of threads per model.

MONAI Label 0.8.5 declares the route `async def` and calls the blocking `run_inference` inside it, so
the server's one event loop is busy for the whole inference: another user's click, a label save,
/info/ and training status all wait until it ends (measured: /info/ answered after 48 s behind two
first clicks). MONAI_LABEL_INFER_CONCURRENCY does not change that: it runs the task in a pool thread
and the event loop waits for the result.

`install` puts an `async def` route in front of it, with the same parameters, dependencies
(authentication) and answers, that hands MONAI Label's own `run_inference` to a thread pool of the
model and awaits it: the event loop keeps serving while inferences run. Each model named in `limits`
gets its own pool of that many threads (any other name shares one thread; MONAI Label answers it with
an error anyway); requests beyond a pool's threads wait in its queue, in order. A fixed set of threads
rather than one per request also bounds memory: every thread that runs torch keeps its own allocator
arena and OpenMP thread team.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from fastapi import BackgroundTasks, Depends, File, Form, UploadFile
from monailabel.config import RBAC_USER, settings
from monailabel.endpoints import infer as monailabel_infer
from monailabel.endpoints.user.auth import RBAC, User

from lib.monailabel_patches.routes import add_first

logger = logging.getLogger(__name__)

PATH = f"{settings.MONAI_LABEL_API_STR}/infer/{{model}}"


def install(fastapi_app, limits: dict[str, int]) -> None:
    if getattr(fastapi_app.state, "infer_pools", None) is not None:
        return
    pools = {name: ThreadPoolExecutor(max(1, int(n)), thread_name_prefix=f"infer-{name}") for name, n in limits.items()}
    other = ThreadPoolExecutor(1, thread_name_prefix="infer-other")
    fastapi_app.state.infer_pools = pools

    async def run_inference_on_model_threads(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[monailabel_infer.ResultType] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        job = pools.get(model, other).submit(monailabel_infer.run_inference, background_tasks, model, image,
                                             session_id, params, file, label, output)
        return await asyncio.wrap_future(job)

    add_first(fastapi_app, PATH, run_inference_on_model_threads, ["POST"], summary=f"{RBAC_USER}Run Inference for "
              "supported model", tags=["Infer"], responses=monailabel_infer.router.responses)
    logger.info("/infer runs on each model's threads: %s", dict(limits))
