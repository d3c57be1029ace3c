"""The `medsam2` model's tasks, built from the server's settings (medsam2/settings.py: every --conf
option, its default and its help; the table is docs/options.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from monailabel.interfaces.config import TaskConfig

from lib.activelearning import ConfidenceScoring, LeastConfident
from lib.infers.image_io import image_identity, load_volume
from lib.infers.medsam2 import MedSam2InferTask
from lib.infers.oneprompt import OnePromptInferTask
from lib.infers.scribbles import MedSam2ScribblesInferTask
from lib.train_schedule import TrainSchedule
from lib.trainers.medsam2 import MedSam2Trainer
from medsam2.frames import Intensity
from medsam2.oneprompt import BankStore
from medsam2.service import ImageFile, InteractiveSegmenter, ModelProvider
from medsam2.settings import ServerSettings
from medsam2.versions import VersionStore

logger = logging.getLogger(__name__)


class MedSam2Config(TaskConfig):
    def init(self, name, model_dir, conf, planner, settings: ServerSettings | None = None, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.settings = settings or ServerSettings.from_conf(conf)
        self.provider = ModelProvider(self.settings.engine, model_dir)
        self.provider.check_at_startup()  # a config that contradicts the checkpoint file stops the server here
        self.engine = InteractiveSegmenter(self.provider)
        self.banks = BankStore(os.path.join(model_dir, "oneprompt"), capacity=self.settings.engine.memory_capacity)
        # every published fine-tune kept, and the way back (medsam2/versions.py)
        self.schedule = TrainSchedule(name, Path(model_dir) / "train", self.settings.train_every,
                                      self.settings.train_at, self.settings.auto_train_params)
        self.versions = VersionStore(os.path.join(model_dir, "versions", name), self.provider.finetuned_path,
                                     keep=self.settings.keep_versions)

    def infer(self):
        return {
            self.name: MedSam2InferTask(self.engine, self.settings),
            f"{self.name}_scribbles": MedSam2ScribblesInferTask(self.engine, self.settings),
            f"{self.name}_oneprompt": OnePromptInferTask(self.provider, self.banks, self.settings),
        }

    def encode_ahead(self, user: str, image_id: str, datastore) -> None:
        """Start encoding `image_id` for `user` before their first click (lib/encode_ahead.py)."""
        max_voxels = self.settings.max_voxels

        def locate():
            path = datastore.get_image_uri(image_id)  # a DICOMweb series is downloaded here
            if not path or not os.path.exists(path):
                raise FileNotFoundError(f"image {image_id!r} is not in the datastore")
            return ImageFile(*image_identity(path)), lambda: load_volume(path, max_voxels)

        self.engine.encode_ahead(user, image_id, locate, Intensity.parse(self.settings.engine.intensity))

    def trainer(self):
        return MedSam2Trainer(self.provider, self.model_dir, self.name, versions=self.versions,
                              mlflow_uri=self.settings.mlflow_uri)

    def strategy(self):
        return {"least_confident": LeastConfident()}

    def scoring_method(self):
        return {f"{self.name}_confidence": ConfidenceScoring(self.provider, self.versions)}
