"""Running out of memory on one request answers that request, not the server.

CUDA raises `torch.OutOfMemoryError`; on the CPU, numpy raises `MemoryError` and PyTorch's CPU
allocator a RuntimeError saying "can't allocate memory". Any of them inside an inference drops the
opened volumes kept for corrective clicks (the memory most likely to be given back), returns cached
CUDA blocks to the driver, and answers 503 with what happened; the next request starts from a clean
cache. Other errors pass through untouched.
"""

from __future__ import annotations

import contextlib
import gc
import logging

import torch
from fastapi import HTTPException

logger = logging.getLogger(__name__)

CPU_ALLOCATOR_FAILURE = "can't allocate memory"  # c10's DefaultCPUAllocator message


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and CPU_ALLOCATOR_FAILURE in str(error))


@contextlib.contextmanager
def answer_out_of_memory(task: str, cache=None):
    """Turn running out of memory inside the block into HTTP 503 after freeing what can be freed."""
    try:
        yield
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        message = (str(e).splitlines() or [type(e).__name__])[0][:300]
        e.__traceback__ = None  # it holds the failed request's frames, and with them its tensors
        if cache is not None:
            cache.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.error("%s ran out of memory; cached volumes dropped: %s", task, message)
        raise HTTPException(status_code=503, detail=f"{task}: the server ran out of memory for this request "
                                                    f"({message}); cached images were released, so retrying may "
                                                    "work; a smaller image or fewer objects need less") from None
