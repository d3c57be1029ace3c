"""Stock SAM 2, run as Meta's code runs it: the reference the engine is measured and tested against.

`build_stock_predictor` builds sam2's own `SAM2VideoPredictor` on the same config and weights as the
engine's model; `write_jpegs` writes a volume as the JPEG folder its examples feed it; `stock_track`
clicks and propagates both ways as its examples do. `make_case` is the phantom and clicks the speed
benchmark and the equivalence tests use (benchmarks/speed.py, tests/test_speed_equivalence.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # for annotations only: the functions import torch where they use it
    import torch


def stock_config(model_config: str, image_size: int | None) -> tuple[str, list[str], int]:
    """(sam2 config name for hydra, hydra overrides, image size) giving the same model as
    `medsam2.checkpoints.build_model(ModelSpec(model_config, image_size))`."""
    from importlib import resources

    from omegaconf import OmegaConf

    from medsam2.checkpoints import PROJECT_CONFIGS, load_model_config

    overrides: list[str] = []
    name = model_config[:-5] if model_config.endswith(".yaml") else model_config
    own = PROJECT_CONFIGS / f"{name}.yaml"
    if own.exists():  # a project config: a sam2 base config plus dotlist overrides
        cfg = OmegaConf.load(own)
        name = str(cfg.base)
        overrides += [f"++{o}" for o in cfg.get("overrides", [])]
    root = Path(str(resources.files("sam2")))
    for rel in (f"configs/sam2.1/{name}.yaml", f"configs/sam2/{name}.yaml", f"{name}.yaml"):
        if (root / rel).exists():
            break
    else:
        raise ValueError(f"{model_config!r} is not a sam2 config nor a project config built on one")
    size = int(image_size or load_model_config(model_config).model.image_size)
    overrides.append(f"++model.image_size={size}")
    attn = load_model_config(model_config).model.memory_attention.layer
    for part in ("self_attention", "cross_attention"):
        if "feat_sizes" in attn[part]:  # RoPE tables follow the image size, as build_model does
            overrides.append(f"++model.memory_attention.layer.{part}.feat_sizes=[{size // 16},{size // 16}]")
    return rel, overrides, size


def build_stock_predictor(model_config: str, image_size: int | None, checkpoint, device="cpu"):
    """sam2's own `build_sam2_video_predictor` (plain SAM2VideoPredictor) on our config and weights."""
    from sam2.build_sam import build_sam2_video_predictor

    name, overrides, _ = stock_config(model_config, image_size)
    return build_sam2_video_predictor(name, str(checkpoint), device=str(device), hydra_overrides_extra=overrides)


def write_jpegs(scaled, folder: Path) -> int:
    """(I, J, K) intensities in [0, 1] -> folder/00000.jpg ... as 8-bit RGB, frame k = volume[:, :, k].T
    (rows J, columns I: the engine's frame orientation), the way SAM2's examples feed a video."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    u8 = np.clip(np.rint(np.asarray(scaled, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    for k in range(u8.shape[2]):
        Image.fromarray(np.ascontiguousarray(u8[:, :, k].T)).convert("RGB").save(folder / f"{k:05d}.jpg")
    return u8.shape[2]


def stock_propagate(predictor, state, frame_idx: int, points, labels, directions: str, logits) -> None:
    """Stock SAM2's propagation from the clicked `frame_idx` into `logits` (K, H, W): forward, then
    reverse (after `reset_state` and the same click again when `directions` is "independent"; on the
    same state when "sequential")."""
    for reverse in (False, True):
        if reverse and directions == "independent":
            predictor.reset_state(state)
            predictor.add_new_points_or_box(state, frame_idx=frame_idx, obj_id=1, points=points, labels=labels)
        for k, _, video_res in predictor.propagate_in_video(state, start_frame_idx=frame_idx, reverse=reverse):
            logits[k] = video_res[0, 0].float()


def stock_track(predictor, state, frame_idx: int, points, labels, directions: str = "independent") -> torch.Tensor:
    """Stock SAM2 on one object: click on `frame_idx`, then `stock_propagate`; returns (K, H, W) mask
    logits at the video resolution."""
    import torch

    K, H, W = state["num_frames"], state["video_height"], state["video_width"]
    with torch.inference_mode():
        logits = torch.full((K, H, W), -1e4, dtype=torch.float32, device=state["device"])
        predictor.add_new_points_or_box(state, frame_idx=frame_idx, obj_id=1, points=points, labels=labels)
        stock_propagate(predictor, state, frame_idx, points, labels, directions, logits)
    return logits


def make_case(shape, seed: int):
    """The phantom and the clicks: foreground at the organ's interior point on the middle slice,
    background inside the vessel on that slice (else at the point farthest from the organ)."""
    from medsam2.clicks import interior_point
    from medsam2.phantoms import PHANTOM_LABELS, make_phantom

    ph = make_phantom(tuple(shape), seed=seed)
    k = ph.image.shape[2] // 2
    organ = ph.label[:, :, k] == PHANTOM_LABELS["organ"]
    if not organ.any():
        raise SystemExit(f"the phantom (seed {seed}) shows no organ on the middle slice {k}; pick another --seed")
    x, y = interior_point(organ.T)  # frames are volume[:, :, k].T: x = i, y = j
    vessel = ph.label[:, :, k] == PHANTOM_LABELS["vessel"]
    bx, by = interior_point((vessel if vessel.any() else ~organ).T)
    return ph, [x, y, k], [bx, by, k]
