"""Strategy `least_confident`: hand over the unlabelled image the model is least sure about.

Images never scored (added since the last scoring run) count as least confident: nothing is known
about them yet. Ties go to the first image id, so the answer is deterministic."""

from __future__ import annotations

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning.confidence import INFO_KEY


class LeastConfident(Strategy):
    def __init__(self):
        super().__init__("Least confident unlabelled image (run scoring medsam2_confidence first)")

    def __call__(self, request, datastore: Datastore):
        images = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        if not images:
            return None
        scored = [(datastore.get_image_info(i).get(INFO_KEY), i) for i in images]
        score, image = min(scored, key=lambda t: (-1.0 if t[0] is None else float(t[0]), t[1]))
        return {"id": image, "confidence": score}
