"""The `medsam2_oneprompt` infer task: One-Prompt segmentation of 2D images (see medsam2/oneprompt.py).

A request with clicks or a box segments that image and adds it to the label's memory bank; a request
without prompts segments the image from the bank. Works on 2D images (PNG, 2D NIfTI...) and on one
slice of a volume (`slice`, as Slicer and OHIF send for 2D models; only that slice is returned
filled). MONAI Label's batch infer over unlabelled images runs the unprompted path on each.
Request params: `label` (which bank), `clear_bank: true` (forget the label's examples),
`add_to_bank` (default true).
"""

from __future__ import annotations

import time

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.infers.image_io import image_path_or_404, read_image, result_format, write_label
from lib.infers.out_of_memory import answer_out_of_memory
from lib.params import check_click_count, flag
from medsam2.checkpoints import CheckpointError
from medsam2.oneprompt import BankError, BankStore, OnePromptSegmenter, check_label
from medsam2.prompts import PromptError, object_from_params
from medsam2.service import ModelProvider
from medsam2.settings import ServerSettings


class OnePromptInferTask(InferTask):
    def __init__(self, provider: ModelProvider, store: BankStore, settings: ServerSettings):
        labels = settings.labels
        default_label = next(iter(labels), "object")
        super().__init__(
            type=InferType.DEEPGROW,
            labels=labels,
            dimension=2,
            description="MedSAM-2 One-Prompt: prompt one image of a structure, segment others from its memory",
            config={"label": default_label, "add_to_bank": True, "clear_bank": False},
        )
        self.provider = provider
        self.store = store
        self.max_voxels = settings.max_voxels
        self.max_clicks = settings.max_clicks

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        t0 = time.perf_counter()
        label = request.get("label") or self._config["label"]
        try:
            check_label(label)
        except BankError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        if flag(request.get("clear_bank", False)):
            return None, {"label": label, "cleared": self.store.clear(label)}
        image_path = image_path_or_404(request)
        check_click_count(request, self.max_clicks)
        with answer_out_of_memory("medsam2_oneprompt"):
            array, header = read_image(image_path, self.max_voxels)
        if array.ndim == 3 and array.shape[-1] in (3, 4) and image_path.lower().endswith((".png", ".jpg", ".jpeg")):
            array = array[..., :3].mean(axis=-1)  # RGB photograph -> grey
        k = self._slice(request, array)
        image = array if array.ndim == 2 else array[:, :, k]
        try:
            fg = [list(p[:2]) + [0] for p in request.get("foreground") or [] if self._on_slice(p, k)]
            bg = [list(p[:2]) + [0] for p in request.get("background") or [] if self._on_slice(p, k)]
        except (TypeError, ValueError):
            raise HTTPException(status_code=400, detail="'foreground'/'background' must be lists of [i, j(, k)]")
        roi = request.get("roi") or []
        if not isinstance(roi, list):
            raise HTTPException(status_code=400, detail="'roi' must be a list [i0, i1, j0, j1(, k0, k1)]")
        prompt = None
        if fg or roi:
            roi2d = list(roi[:4]) + [0, 0] if len(roi) >= 4 else roi
            try:
                prompt = object_from_params({"foreground": fg, "background": bg, "roi": roi2d},
                                            (*image.shape, 1), label)
            except PromptError as e:
                raise HTTPException(status_code=422, detail=str(e)) from e
        ext_default = ".nrrd" if array.ndim == 3 else ".nii.gz"
        ext, dtype = result_format(request, ext_default)
        try:
            segmenter, version = self.provider.get()
        except CheckpointError as e:
            raise HTTPException(status_code=503, detail=f"the model is not available: {e}") from e
        try:
            with answer_out_of_memory("medsam2_oneprompt"):
                mask, info = OnePromptSegmenter(segmenter, self.store).segment(
                    image.astype(np.float32), label, prompt, str(version),
                    add_to_bank=flag(request.get("add_to_bank", self._config["add_to_bank"])))
        except BankError as e:
            raise HTTPException(status_code=409, detail=str(e)) from e
        value = int(self.labels.get(label, 1)) if isinstance(self.labels, dict) else 1
        out = np.zeros(array.shape[:3] if array.ndim == 3 else array.shape, dtype=np.uint8)
        if array.ndim == 3:
            out[:, :, k][mask] = value
        else:
            out[mask] = value
        label_file = write_label(out, image_path, header["affine"], ext, dtype)
        return label_file, {"label": label, "prompted": prompt is not None, **info,
                            "latencies": {"total": round(time.perf_counter() - t0, 4), "transform": None}}

    @staticmethod
    def _on_slice(point, k) -> bool:
        return k is None or len(point) < 3 or int(round(float(point[2]))) == k

    @staticmethod
    def _slice(request, array):
        """The slice to segment: `slice`, else the k of the clicks; None for a 2D image."""
        if array.ndim == 2:
            return None
        if array.ndim != 3:
            raise HTTPException(status_code=422, detail=f"one-prompt segments 2D images or one slice of a volume; "
                                                        f"got shape {list(array.shape)}")
        k = request.get("slice")
        try:
            if k is None:
                points = list(request.get("foreground") or []) + list(request.get("background") or [])
                ks = {int(round(float(p[2]))) for p in points if len(p) > 2}
                if len(ks) != 1:
                    raise HTTPException(status_code=422, detail=(
                        f"medsam2_oneprompt segments 2D images; this image is a volume of shape {list(array.shape)}: "
                        "send 'slice' (the k to segment) or clicks on one slice, or use medsam2 for the volume"))
                k = ks.pop()
            k = int(k)
        except (TypeError, ValueError, OverflowError):
            raise HTTPException(status_code=400, detail="'slice' must be a slice number and clicks [i, j, k] numbers")
        if not 0 <= k < array.shape[2]:
            raise HTTPException(status_code=422, detail=f"slice {k} is outside the image ({array.shape[2]} slices)")
        return k
