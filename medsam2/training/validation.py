"""Which saved images validate fine-tuning runs: a set that only grows, so that every run measures the
served model and its candidate on the same images, and one run's Dice can be compared with the next.

An image is assigned when a run first sees it: to validation when a hash of its id falls below the
validation share (so the choice does not depend on the order images arrive in, nor on a seed), else to
training. The assignment is kept (`validation.json` in the model's train folder): an image chosen for
validation stays there in every later run, and a training image stays in training (the model has
learnt it). When two or more images exist and none validates, the new image whose hash is lowest
moves to validation (a training image only when no new one is there: a validation image was
deleted); when none would be left to train on (a lone image), the reverse. A share of 0 trains on every
image and changes nothing kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def hashed_fraction(image_id: str) -> float:
    """A number in [0, 1) fixed by the image id alone."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:12], 16) / float(16 ** 12)


class ValidationSet:
    def __init__(self, path: Path):
        self.path = Path(path)

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return {"validation": list(data.get("validation", [])), "training": list(data.get("training", []))}
        except (OSError, ValueError):
            return {"validation": [], "training": []}

    def _save(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)

    def split(self, image_ids: list[str], share: float) -> tuple[list[str], list[str]]:
        """(validation ids, training ids) among `image_ids`, the assignment of new ids kept."""
        if share <= 0:
            return [], list(image_ids)
        data = self._load()
        validation, training = set(data["validation"]), set(data["training"])
        for image_id in image_ids:
            if image_id not in validation and image_id not in training:
                (validation if hashed_fraction(image_id) < share else training).add(image_id)
        present = set(image_ids)
        if len(present) >= 2 and not (validation & present):
            # none of today's images validates: the lowest hash among the new ones moves over once (a training
            # image already learnt never does), else the lowest among all
            new = present - set(data["training"])
            first = min(new or present, key=hashed_fraction)
            training.discard(first)
            validation.add(first)
        if present and not (training & present):  # something must be left to train on (a lone image trains)
            last = max(validation & present - set(data["validation"]) or validation & present, key=hashed_fraction)
            validation.discard(last)
            training.add(last)
        self._save({"validation": sorted(validation), "training": sorted(training)})
        return [i for i in image_ids if i in validation], [i for i in image_ids if i in training]
