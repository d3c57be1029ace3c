"""Settings of the `medsam2` model, read from `--conf` once, and the tasks built from them.

--conf checkpoint      manifest name (model/manifest.json) or a file path   [sam2.1_hiera_tiny]
--conf model_config    sam2 config name, project config name or .yaml path  [from the manifest]
--conf image_size      input resolution in pixels                            [from the manifest]
--conf memory_policy   default memory policy: self_sorting | fifo            [self_sorting]
--conf memory_capacity entries of a self-sorting memory bank (3D and One-Prompt) [16]
--conf intensity       auto | percentile | CT preset | ct:<level>,<width>   [auto]
--conf labels          JSON {name: value} offered to the clients            [{"organ":1,"vessel":2,"lesion":3}]
--conf device          cuda | cpu | auto                                     [auto]
--conf cache_mb        memory budget of cached encoder features              [4096]
--conf cache_entries   most images kept open at once                         [8]
--conf encode_ahead    encode an image when a client fetches it, before the first click [true]
--conf encode_batch    slices per image-encoder batch                        [8 on GPU, 1 on CPU]
--conf precision       auto (bf16 on CUDA; on a CPU with bf16 units only if clearly faster, timed once per machine) | bf16 | fp32 [auto]
--conf encoder_runtime auto (the fastest fp32 runtime, a reduced precision only if 1.5x faster; timed once per machine) | torch | onnxruntime | openvino [auto]
--conf largest_component keep each structure's largest 3D piece: auto (the checkpoint's reference) | true | false, also per request [auto]
--conf encoder_precision auto | fp32 | int8 (onnxruntime) | bf16 (openvino)  [auto]
--conf stop_after_empty stop a direction after N empty slices (0 = never)    [0]
--conf directions      independent | sequential (stock SAM2's order)        [independent]
--conf settle_slices   a correction re-propagates only until N slices come out unchanged [0 = to the ends]
--conf cuda_graphs     replay the propagation step as CUDA graphs (GPU; unverified) [false]
--conf overlap_encoding encode slices alongside propagation (GPU; unverified) [false]
--conf dicomweb_modalities the series a PACS offers as images (main.py)      [CT,MR,PT]
--conf max_voxels      largest image read, from its header (lib/image_size.py) [1024*1024*2000]
--conf max_clicks      most clicks in one request (lib/params.py)            [1000]
--conf infer_concurrency 3D inferences running at once (lib/infer_route.py)  [2]
"""

from __future__ import annotations

import json
import logging
import os
from functools import partial

from monailabel.interfaces.config import TaskConfig

from lib.activelearning import ConfidenceScoring, LeastConfident
from lib.infers.image_io import image_identity, load_volume
from lib.infers.medsam2 import MedSam2InferTask
from lib.infers.oneprompt import OnePromptInferTask
from lib.infers.scribbles import MedSam2ScribblesInferTask
from lib.image_size import max_voxels
from lib.params import DEFAULT_MAX_CLICKS, flag
from lib.trainers.medsam2 import MedSam2Trainer
from medsam2.frames import Intensity
from medsam2.memory import SelfSortingPolicy
from medsam2.tracker import DIRECTIONS
from medsam2.oneprompt import BankStore
from medsam2.service import InteractiveSegmenter, ModelProvider
from medsam2.sessions import SessionCache

logger = logging.getLogger(__name__)

DEFAULT_LABELS = {"organ": 1, "vessel": 2, "lesion": 3}


class MedSam2Config(TaskConfig):
    def init(self, name, model_dir, conf, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        image_size = conf.get("image_size")
        self.provider = ModelProvider(
            checkpoint=conf.get("checkpoint", "sam2.1_hiera_tiny"),
            model_config=conf.get("model_config"),
            image_size=int(image_size) if image_size else None,
            model_dir=model_dir,
            device=conf.get("device", "auto"),
            encoder_runtime=conf.get("encoder_runtime", "auto"),
            encoder_precision=conf.get("encoder_precision", "auto"),
            encode_batch_size=int(conf["encode_batch"]) if conf.get("encode_batch") else None,
            precision=conf.get("precision", "auto"),
            stop_after_empty=int(conf.get("stop_after_empty", 0)),
            directions=conf.get("directions", "independent"),
            settle_slices=int(conf.get("settle_slices", 0)),
            cuda_graphs=flag(conf.get("cuda_graphs", False)),
            overlap_encoding=flag(conf.get("overlap_encoding", False)),
        )
        self.provider.check_at_startup()  # a config that contradicts the checkpoint file stops the server here
        self.cache = SessionCache(max_bytes=int(conf.get("cache_mb", 4096)) << 20,
                                  max_entries=int(conf.get("cache_entries", 8)))
        self.labels = json.loads(conf["labels"]) if conf.get("labels") else dict(DEFAULT_LABELS)
        capacity = int(conf.get("memory_capacity", 16))
        self.policies = {"fifo": None, "self_sorting": partial(SelfSortingPolicy, capacity=capacity)}
        self.memory_policy = conf.get("memory_policy", "self_sorting")  # docs/accuracy.md: why
        if self.memory_policy not in self.policies:
            raise ValueError(f"--conf memory_policy must be one of {sorted(self.policies)}")
        if self.provider.segmenter_options["directions"] not in DIRECTIONS:
            raise ValueError(f"--conf directions must be one of {DIRECTIONS}")
        self.intensity = conf.get("intensity", "auto")
        self.largest_component = str(conf.get("largest_component", "auto")).lower()
        if self.largest_component not in ("auto", "true", "false"):
            raise ValueError("--conf largest_component must be auto, true or false")
        self.limits = {"max_voxels": max_voxels(conf), "max_clicks": int(conf.get("max_clicks", DEFAULT_MAX_CLICKS))}
        self.infer_concurrency = max(1, int(conf.get("infer_concurrency", 2)))
        self.engine = InteractiveSegmenter(self.provider, self.cache,
                                           encode_ahead=flag(conf.get("encode_ahead", True)))
        self.banks = BankStore(os.path.join(model_dir, "oneprompt"), capacity=capacity)

    def infer(self):
        return {
            self.name: MedSam2InferTask(self.engine, self.labels, self.memory_policy, self.intensity,
                                        policies=self.policies, largest_component=self.largest_component,
                                        **self.limits),
            f"{self.name}_scribbles": MedSam2ScribblesInferTask(self.engine, self.labels, self.memory_policy,
                                                                self.intensity, policies=self.policies,
                                                                largest_component=self.largest_component,
                                                                **self.limits),
            f"{self.name}_oneprompt": OnePromptInferTask(self.provider, self.banks, self.labels, **self.limits),
        }

    def encode_ahead(self, user: str, image_id: str, datastore) -> None:
        """Start encoding `image_id` for `user` before their first click (lib/encode_ahead.py)."""
        max_voxels = self.limits["max_voxels"]

        def locate():
            path = datastore.get_image_uri(image_id)  # a DICOMweb series is downloaded here
            if not path or not os.path.exists(path):
                raise FileNotFoundError(f"image {image_id!r} is not in the datastore")
            return (*image_identity(path), lambda: load_volume(path, max_voxels))

        self.engine.encode_ahead(user, image_id, locate, Intensity.parse(self.intensity))

    def trainer(self):
        return MedSam2Trainer(self.provider, self.model_dir, self.name)

    def strategy(self):
        return {"least_confident": LeastConfident()}

    def scoring_method(self):
        return {f"{self.name}_confidence": ConfidenceScoring(self.provider)}
