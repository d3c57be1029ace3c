"""The `medsam2` infer task: MONAI Label request in, 3D label file out, the engine in between.

Declared as DEEPGROW with dimension 3 so that both OHIF v3 and Slicer list it as an interactive
(point-prompt) model. Every request carries the full prompt set of its label (both clients resend all
clicks of the current segment), so the prompts are replayed from scratch on each request while the
encoder features of the image stay cached per (client_id, image): a corrective click pays only for
prompting and propagation. `reset_state` is accepted and needs no action for that reason.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.infers.image_io import image_identity, image_path_or_404, load_volume, result_format, write_label
from lib.infers.out_of_memory import answer_out_of_memory
from lib.params import check_click_count, check_label_names, optional_flag

from medsam2.checkpoints import CheckpointError
from medsam2.frames import Intensity
from medsam2.memory import policy_factories
from medsam2.prompts import ObjectPrompt, PromptError, parse_objects
from medsam2.service import ImageFile, InteractiveSegmenter
from medsam2.settings import ServerSettings

logger = logging.getLogger(__name__)


class MedSam2InferTask(InferTask):
    def __init__(self, engine: InteractiveSegmenter, settings: ServerSettings, description: str | None = None,
                 type: InferType = InferType.DEEPGROW):
        defaults = settings.engine
        super().__init__(
            type=type,
            labels=settings.labels,
            dimension=3,
            description=description or "MedSAM-2: click or box on one slice, propagated through the volume",
            # the request parameters a client may set, with the server's defaults (docs/requests.md).
            # save_label: store each answer as the image's label (OHIF's panel shows it under Options; its
            # MONAI Label mode has no other way to save a label: docs/deployment.md, "OHIF")
            config={"memory_policy": defaults.memory_policy, "intensity": defaults.intensity, "reset_state": False,
                    "save_label": False, "largest_component": defaults.largest_component},
        )
        self.engine = engine
        self.label_values = dict(settings.labels)
        self.policies = policy_factories(defaults)
        self.max_voxels = settings.max_voxels
        self.max_clicks = settings.max_clicks

    def is_valid(self) -> bool:
        return True

    def _policy(self, request):
        name = str(request.get("memory_policy") or self._config["memory_policy"])
        if name not in self.policies:
            raise HTTPException(status_code=400, detail=f"unknown memory_policy {name!r}; "
                                                        f"use one of {sorted(self.policies)}")
        return self.policies[name]

    def check_request(self, request) -> None:
        """Refuse a request without prompts before any image is read (HTTP 4xx)."""
        if not (request.get("foreground") or request.get("roi") or request.get("objects")):
            raise HTTPException(status_code=400, detail="no prompt: send 'foreground' clicks [[i, j, k], ...] "
                                                        "and/or an 'roi' [i0, i1, j0, j1, k0, k1]")
        check_label_names(request)
        check_click_count(request, self.max_clicks)

    def objects(self, request, session) -> list[ObjectPrompt]:
        """The request's prompts on the opened image (PromptError for unusable ones)."""
        return parse_objects(request, session.shape, self.label_values)

    def answered(self, request, session, objects, result) -> None:
        """Called with each result, before it is written (the scribbles task remembers it)."""

    def __call__(self, request) -> tuple[str | None, dict[str, Any]]:
        t0 = time.perf_counter()
        image_path = image_path_or_404(request)
        ext, dtype = result_format(request)
        self.check_request(request)
        try:
            intensity = Intensity.parse(request.get("intensity") or self._config["intensity"])
        except (TypeError, ValueError) as e:
            raise HTTPException(status_code=400, detail=f"intensity: {e}") from e
        policy = self._policy(request)
        largest = optional_flag(request.get("largest_component", self._config["largest_component"]),
                                "largest_component")

        client, file = str(request.get("client_id") or "default"), ImageFile(*image_identity(image_path))
        t_load = time.perf_counter()
        # while this runs, encoding ahead for other users waits (it would take cores from this click)
        with answer_out_of_memory("medsam2", self.engine.cache), self.engine.ahead.inference():
            try:
                session, cached = self.engine.open(
                    client, file, lambda: load_volume(image_path, self.max_voxels), intensity)
            except CheckpointError as e:
                raise HTTPException(status_code=503, detail=f"the model is not available: {e}") from e
            try:
                objects = self.objects(request, session)
            except PromptError as e:
                raise HTTPException(status_code=422, detail=str(e)) from e
            result, stats = self.engine.run(session, objects, policy, cached, largest_component=largest)
            self.answered(request, session, objects, result)
        t_write = time.perf_counter()
        dtype_max = np.iinfo(dtype).max if dtype != "float32" else None
        if dtype_max is not None and result.label.max(initial=0) > dtype_max:
            raise HTTPException(status_code=400, detail=f"label values do not fit result_dtype {dtype}")
        label_file = write_label(result.label, image_path, session.header["affine"], ext, dtype,
                                 request.get("result_compress", False))
        total = time.perf_counter() - t0
        params = {
            "label_names": {o.label: o.value for o in objects},
            "objects": [{"label": o.label, "value": o.value,
                         "slices": [min(o.slices), max(o.slices)] if o.slices else [],
                         "slice_count": len(o.slices), "prompted_slices": prompt.frames,
                         "painted_slices": sorted(prompt.masks)}
                        for o, prompt in zip(result.objects, objects)],
            "memory_policy": request.get("memory_policy") or self._config["memory_policy"],
            "engine": stats,
            "latencies": {
                "pre": round(t_load - t0, 4),
                "encode": stats["encode_s"],
                "infer": stats["propagate_s"],
                "invert": 0,
                "post": 0,
                "write": round(time.perf_counter() - t_write, 4),
                "total": round(total, 4),
                "slices_encoded_before": stats["slices_encoded_before"],
                "transform": None,
            },
        }
        logger.info("%s: %s objects on %s in %.2fs (features %s)", type(self).__name__, len(objects),
                    os.path.basename(image_path), total, "cached" if cached else "computed")
        return label_file, params
