"""The `medsam2_scribbles` infer task: a painted slice or scribbles in, the structure through the volume out.

3D Slicer's MONAI Label module shows its Scribbles section for models of type `scribbles`; its Update
button sends the user's segmentation as one labelmap (the `label` file of `POST /infer/<model>`) with
`label_info`, `selected_label_name` and an optional `roi` (see medsam2/painted.py for how the labelmap
becomes prompts). The answer is the selected segment alone, value 1, on the image's grid: Slicer imports
it into that segment. The same engine and image cache as `medsam2` serve it, so clicks and paint on
one image share the encoded slices. Clicks (`foreground` / `background`) may come along and refine it.
"""

from __future__ import annotations

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.image_ids import is_upload
from lib.infers.image_io import load_labelmap
from lib.infers.medsam2 import MedSam2InferTask
from lib.params import check_click_count, label_name

from medsam2.painted import PaintHistory, labelmap_prompt
from medsam2.prompts import ObjectPrompt, add_clicks, parse_roi


class MedSam2ScribblesInferTask(MedSam2InferTask):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("description", "MedSAM-2: paint a slice or scribble inside and outside the structure; "
                                         "it is propagated through the volume")
        super().__init__(*args, type=InferType.SCRIBBLES, **kwargs)

    def check_request(self, request) -> None:
        # MONAI Label puts the uploaded file's temporary path in request["label"]; a `label` parameter
        # would replace it, and must never make the server read a file of its own
        label = request.get("label")
        if not isinstance(label, str) or not is_upload(label):
            raise HTTPException(status_code=400, detail="no label file: send the painted labelmap as the 'label' "
                                                        "file of the request (as Slicer's Scribbles Update does); "
                                                        "name the structure with 'selected_label_name' or "
                                                        "'label_name', not 'label'")
        for key in ("selected_label_name", "label_name"):
            if request.get(key) not in (None, ""):
                label_name(request[key], key)
        check_click_count(request, self.max_clicks)

    def objects(self, request, session) -> list[ObjectPrompt]:
        labelmap = load_labelmap(request["label"], session.shape, session.header["affine"], self.max_voxels)
        selected = request.get("selected_label_name")
        name = selected or request.get("label_name") or "object"
        obj = labelmap_prompt(labelmap, request.get("label_info"), selected, label=name, value=1,
                              history=session.paint.get(name))
        obj.roi = parse_roi(request.get("roi"), session.shape)
        return [add_clicks(obj, request, session.shape)]

    def answered(self, request, session, objects, result) -> None:
        obj = objects[0]
        session.paint[obj.label] = PaintHistory.of(result.label == obj.value, obj.masks)
