"""Scoring method `medsam2_confidence`: the model's confidence on each unlabelled image, stored in
the datastore's image info with the model version that made it (see medsam2/confidence.py for what
the number means; refresh.py runs it again when the served model changes)."""

from __future__ import annotations

import logging
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from lib.infers.image_io import read_image
from medsam2.checkpoints import CheckpointError
from medsam2.confidence import reference_memories, volume_confidence
from medsam2.service import ModelProvider
from medsam2.versions import VersionStore

logger = logging.getLogger(__name__)
INFO_KEY = "medsam2_confidence"


class ConfidenceScoring(ScoringMethod):
    def __init__(self, provider: ModelProvider, versions: VersionStore, probes: int = 5):
        super().__init__("Model confidence (predicted IoU x object score) from the saved labels' memories")
        self.provider = provider
        self.versions = versions  # which kept version is served: stored with each score
        self.probes = probes

    def __call__(self, request, datastore: Datastore):
        pairs = []
        for item in datastore.datalist():
            try:
                pairs.append((read_image(item["image"])[0].squeeze(), read_image(item["label"])[0].squeeze()))
            except Exception as e:
                logger.warning("scoring: skipping %s: %s", item["image"], getattr(e, "detail", e))
        if not pairs:
            return {"scored": 0, "reason": "no saved labels yet"}
        try:
            served = self.versions.served()  # read first: a change after it starts another scoring run
            segmenter, _ = self.provider.get()
        except CheckpointError as e:  # MONAI Label runs scoring at start-up too: say why, don't crash
            logger.warning("scoring: the model is not available: %s", e)
            return {"scored": 0, "reason": f"the model is not available: {e}"}
        memories = reference_memories(segmenter, pairs)
        if not memories:  # every saved label is empty: no score (a NaN in the image info breaks /datastore)
            return {"scored": 0, "reason": "the saved labels hold no structure"}
        scores = {}
        for image_id in datastore.get_unlabeled_images():
            try:
                volume = read_image(datastore.get_image_uri(image_id))[0].squeeze()
                result = volume_confidence(segmenter, volume, memories, probes=self.probes)
            except Exception as e:
                logger.warning("scoring: cannot score %s: %s", image_id, getattr(e, "detail", e))
                continue
            datastore.update_image_info(image_id, {INFO_KEY: result["confidence"], f"{INFO_KEY}_ts": int(time.time()),
                                                   f"{INFO_KEY}_model": served})
            scores[image_id] = result["confidence"]
            logger.info("scoring: %s confidence %.4f %s", image_id, result["confidence"], result["per_label"])
        return {"scored": len(scores), "scores": scores, "model_version": served}
