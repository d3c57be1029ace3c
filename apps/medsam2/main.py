"""MONAI Label app serving MedSAM-2: wires the configs in lib/configs into tasks, nothing more.

Start it with:  monailabel start_server --app apps/medsam2 --studies <folder or DICOMweb URL>
Options (--conf NAME VALUE) are read once into ServerSettings (medsam2/settings.py; docs/options.md).
"""

import logging
import os
from typing import Dict

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from lib import encode_ahead, model_versions, monailabel_patches, replicas, train_schedule
from lib.activelearning import refresh as rescoring
from lib.monailabel_patches import dicom_proxy, ohif_viewer
from lib.monailabel_patches.app import PatchedApp
from lib.image_ids import check_image_id
from lib.params import flag
from lib.configs import MedSam2Config
from medsam2.settings import ServerSettings

logger = logging.getLogger(__name__)


class MedSam2App(PatchedApp, MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        monailabel_patches.check_version()  # patches checked against this MONAI Label, or no start
        self.settings = ServerSettings.from_conf(conf)  # every --conf option, checked (a bad one stops here)
        self.model_dir = self.settings.model_dir or os.path.normpath(os.path.join(app_dir, "..", "..", "model"))
        self.models = {"medsam2": MedSam2Config()}
        for name, config in self.models.items():
            config.init(name, self.model_dir, conf, None, settings=self.settings)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"MedSAM-2 ({monailabel.__version__})",
            description="Interactive 3D segmentation with Medical SAM 2",
            version="0.1.0",
        )

    def info(self):
        meta = super().info()
        meta["model_versions"] = {name: config.versions.describe() for name, config in self.models.items()}
        meta["train_schedule"] = {name: config.schedule.describe(self.datastore()) for name, config in self.models.items()}
        return meta

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for config in self.models.values():
            infers.update(config.infer())
        return infers

    def infer(self, request, datastore=None):
        datastore = datastore or self.datastore()
        check_image_id(request, datastore)
        for config in self.models.values():  # never fetch a series while encoding ahead downloads it
            with config.engine.ahead.fetching(str(request.get("image"))):
                datastore.get_image_uri(request.get("image"))
        if "save_label" in request:
            # a user who asks to save an answer means it as the image's label (MONAI Label would tag it
            # "original", which a DICOMweb datastore never stores as DICOM-SEG); "false" is not true
            request = {**request, "save_label": flag(request["save_label"])}
            if request["save_label"]:
                request.setdefault("label_tag", DefaultLabelTag.FINAL)
        return super().infer(request, datastore)

    def encode_ahead(self, user: str, image_id: str) -> None:
        """A client fetched `image_id`: encode it for `user` before the first click (lib/encode_ahead.py)."""
        for config in self.models.values():
            config.encode_ahead(user, image_id, self.datastore())

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers: Dict[str, TrainTask] = {}
        for name, config in self.models.items():
            t = config.trainer()
            if t:
                trainers[name] = t
        return trainers

    def init_strategies(self) -> Dict[str, Strategy]:
        strategies: Dict[str, Strategy] = {"random": Random(), "first": First()}
        for config in self.models.values():
            strategies.update(config.strategy() or {})
        return strategies

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        methods: Dict[str, ScoringMethod] = {}
        for config in self.models.values():
            methods.update(config.scoring_method() or {})
        return methods

    def on_init_complete(self):
        super().on_init_complete()
        from monailabel.app import app as fastapi_app

        limits = {name: 1 for name in self.infer_names()}  # others: one at a time, as MONAI Label runs them
        limits.update({name: config.settings.infer_concurrency for name, config in self.models.items()})
        monailabel_patches.install(fastapi_app, limits)
        dicom_proxy.install(fastapi_app, self.studies, on_get=encode_ahead.series_seen)
        encode_ahead.install(fastapi_app)
        ohif_viewer.install(fastapi_app)
        replicas.install(fastapi_app, self.settings.replica, [c.provider for c in self.models.values()],
                         self.encode_ahead)
        model_versions.install(fastapi_app, {name: config.versions for name, config in self.models.items()})
        train_schedule.install(self, {name: config.schedule for name, config in self.models.items()})
        rescoring.install(self, {method: config.versions for config in self.models.values()
                                 for method in (config.scoring_method() or {})})
