"""This engine as a CVPR 2025 interactive 3D challenge submission: what its `predict.sh` would run.

`python -m medsam2 challenge-predict --inputs DIR --outputs DIR --checkpoint NAME` reads every
`DIR/*.npz` the evaluator writes (evaluation/cvpr25.py: `imgs` (D, H, W) uint8, `spacing`, `boxes`,
and from step 2 `clicks`, `clicks_order`, `prev_pred`) and writes `outputs/<same name>` with `segs`,
one label value per class (class n of the boxes / clicks lists is value n + 1).

Each class is one object of the engine, prompted with everything the file holds for it: its box on
its middle slice, the result bounded to its first and last slice, and every click so far (array
indices (z, y, x) -> frame z, point (x, y)); the engine replays all prompts, so `prev_pred` is not
needed. The images are used as the organisers prepared them (grey levels 0-255, no window of our
own) and resized and normalised as the checkpoint's pipeline does. The opened image is kept between
files, so a loop over the steps of one case encodes it once (a fresh process per step, as the
official docker run is, encodes it every time).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from .frames import Intensity
from .memory import SelfSortingPolicy
from .prompts import ObjectPrompt
from .propagation import Segmenter

GREY_LEVELS = Intensity.ct_window(127.5, 255.0)  # 0 -> 0, 255 -> 1: the challenge's uint8 images as they are


def class_prompts(inputs: dict, shape_dhw: tuple[int, int, int]) -> list[ObjectPrompt]:
    """One ObjectPrompt per class from an input file's boxes and clicks (classes with neither are left out)."""
    D, H, W = shape_dhw
    boxes = list(inputs["boxes"]) if "boxes" in inputs else []
    clicks = list(inputs["clicks"]) if "clicks" in inputs else []
    prompts = []
    for n in range(max(len(boxes), len(clicks))):
        obj = ObjectPrompt(label=f"class_{n + 1}", value=n + 1)
        if n < len(boxes):
            b = dict(boxes[n])
            obj.box = (int(b["z_mid"]), (float(b["z_mid_x_min"]), float(b["z_mid_y_min"]),
                                         float(b["z_mid_x_max"]) + 1.0, float(b["z_mid_y_max"]) + 1.0))
            obj.roi = (0, W - 1, 0, H - 1, int(b["z_min"]), int(b["z_max"]))
        if n < len(clicks):
            for kind, positive in (("fg", 1), ("bg", 0)):
                for z, y, x in dict(clicks[n]).get(kind, []):
                    obj.clicks.setdefault(int(z), []).append((float(x) + 0.5, float(y) + 0.5, positive))
        if obj.initial_frames:
            prompts.append(obj)
    return prompts


class ChallengePredictor:
    """Input file -> output file with the engine; keeps the last opened image for the next step."""

    def __init__(self, segmenter: Segmenter, memory_policy_factory=SelfSortingPolicy):
        self.segmenter = segmenter
        self.memory_policy_factory = memory_policy_factory  # the server's default: MedSAM-2's self-sorting bank
        self._opened: tuple[str, object] | None = None  # (digest of imgs, session)

    def _session(self, imgs: np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(imgs).tobytes()).hexdigest() + str(imgs.shape)
        if self._opened is None or self._opened[0] != digest:
            self._opened = (digest, self.segmenter.open(imgs.transpose(2, 1, 0).astype(np.float32), GREY_LEVELS))
        return self._opened[1]

    def predict(self, inputs: dict) -> np.ndarray:
        """`segs` (D, H, W) uint8 for one input file's contents."""
        imgs = np.asarray(inputs["imgs"])
        if imgs.ndim != 3:
            raise ValueError(f"imgs must be (D, H, W), got shape {imgs.shape}")
        prompts = class_prompts(inputs, imgs.shape)
        if not prompts:
            return np.zeros(imgs.shape, dtype=np.uint8)
        label = self.segmenter.segment(self._session(imgs), prompts,
                                       self.memory_policy_factory).label  # (I, J, K) = (x, y, z)
        return np.ascontiguousarray(label.transpose(2, 1, 0)).astype(np.uint8)

    def predict_file(self, inp: Path, out: Path) -> Path:
        with np.load(inp, allow_pickle=True) as f:
            inputs = dict(f)
        segs = self.predict(inputs)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, segs=segs)
        return Path(out)


def predict_folder(predictor: ChallengePredictor, inputs: Path, outputs: Path) -> list[Path]:
    """Every `inputs/*.npz` -> `outputs/<same name>`, as a submission's predict.sh."""
    files = sorted(Path(inputs).glob("*.npz"))
    if not files:
        print(f"warning: no .npz files in {inputs}", file=sys.stderr)
    return [predictor.predict_file(f, Path(outputs) / f.name) for f in files]
