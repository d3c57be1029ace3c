"""Next-sample scores follow the served model: when a model version is promoted (by a run on any
replica sharing the model folder) or rolled back to, the model's confidence scoring runs again, so
"next sample" ranks the unlabelled images by what the served model is unsure about now, not by what
its predecessor was.

MONAI Label itself re-scores after a training run by posting `/scoring` to its own port from the
training process, without a token: with authentication on that request is refused, and a rollback or
a promotion made by another replica never triggers it. This thread watches what each model's version
store serves (a small JSON file) and asks the app for a scoring run when it changes. Each score is
stored with the model version that made it (`medsam2_confidence_model` in the image info).
"""

from __future__ import annotations

import logging
import threading
import time

from medsam2.versions import VersionStore

logger = logging.getLogger(__name__)

CHECK_EVERY_S = 5.0


def install(app, methods: dict[str, VersionStore], check_every_s: float = CHECK_EVERY_S) -> None:
    """`methods`: scoring method name -> the version store of the model it scores with."""
    from monailabel.config import settings

    if not methods or not settings.MONAI_LABEL_TASKS_SCORING:  # scoring switched off: nothing to refresh
        return
    seen = {method: store.served() for method, store in methods.items()}  # MONAI Label scores at start itself

    def watch():
        while True:
            time.sleep(check_every_s)
            for method, store in methods.items():
                try:
                    served = store.served()
                    if served != seen[method]:
                        logger.info("%s: the served model is now %s (was %s): scoring again", method, served,
                                    seen[method])
                        seen[method] = served
                        app.async_scoring(method)
                except Exception as e:  # noqa: BLE001 (the next check tries again)
                    logger.warning("re-scoring after a model change failed: %s: %s", type(e).__name__, e)

    threading.Thread(target=watch, name="rescore-on-new-model", daemon=True).start()
