"""Which SAM 2 architecture a checkpoint holds, read from its tensors, and which config builds it.

A checkpoint names no config: Meta's, MedSAM2's and Medical SAM 2's files are bare `{"model":
state_dict}`. What the tensors do tell:
- SAM 2.0 or 2.1: only 2.1 configs have `no_obj_embed_spatial` and a learned `obj_ptr_tpos_proj`;
- the Hiera trunk: its width (`patch_embed`'s output channels) and its stages (the first block of
  every later stage carries a `proj` that widens the channels), i.e. Tiny, Small, Base+ or Large;
- the widths of the FPN neck and the memory (`mem_dim`), and the memory-attention depth.
What they do not tell: the input resolution (no tensor depends on it: positional encodings are
interpolated, RoPE is computed) and the global-attention blocks. The image size therefore comes from
the file's own `meta` (this project's trainer writes it), the manifest, or the config.

A config is described the same way from its YAML, without building it, so a file is matched to a
config in milliseconds and a contradiction is reported before any model is built.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

HIERA_NAMES = {  # Meta's four Hiera sizes: (width, blocks per stage) -> name
    (96, (1, 2, 7, 2)): "Tiny",
    (96, (1, 2, 11, 2)): "Small",
    (112, (2, 3, 16, 3)): "Base+",
    (144, (2, 6, 36, 4)): "Large",
}


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint's tensors (or a config's YAML) say about the model they belong to."""

    sam2_version: str  # "2.0" or "2.1"
    hiera_width: int  # channels of the trunk's first stage
    hiera_stages: tuple[int, ...]  # blocks per stage
    neck_dim: int  # channels of the FPN neck (SAM 2's 256)
    mem_dim: int  # channels of a memory (SAM 2's 64)
    memory_layers: int  # memory-attention layers

    def describe(self) -> str:
        size = HIERA_NAMES.get((self.hiera_width, self.hiera_stages))
        trunk = f"Hiera-{size}" if size else "Hiera"
        shape = f"width {self.hiera_width}, stages {'-'.join(map(str, self.hiera_stages))}"
        extra = "" if (self.neck_dim, self.mem_dim, self.memory_layers) == (256, 64, 4) else \
            f", neck {self.neck_dim}, memory {self.mem_dim}, {self.memory_layers} memory-attention layers"
        return f"SAM {self.sam2_version} {trunk} ({shape}{extra})"


def of_state_dict(state: dict) -> Architecture:
    """The architecture of a SAM 2 state dict (raises ValueError when it is not one)."""
    prefix = "image_encoder.trunk."
    if f"{prefix}patch_embed.proj.weight" not in state:
        raise ValueError("it holds no SAM 2 image encoder (no image_encoder.trunk.patch_embed.proj.weight)")
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}blocks\.(\d+)\.", k))})
    stages, count = [], 0
    for b in blocks:
        if b > 0 and f"{prefix}blocks.{b}.proj.weight" in state:
            stages.append(count)
            count = 0
        count += 1
    stages.append(count)
    layers = {int(m.group(1)) for k in state if (m := re.match(r"memory_attention\.layers\.(\d+)\.", k))}
    neck = state.get("image_encoder.neck.convs.0.conv.weight")
    # the memory width from either of two tensors: a file short of one is still described right, and
    # the strict load then names what is missing
    tpos, out_proj = state.get("maskmem_tpos_enc"), state.get("memory_encoder.out_proj.weight")
    mem_dim = int(tpos.shape[-1]) if tpos is not None else int(out_proj.shape[0]) if out_proj is not None else 0
    return Architecture(
        sam2_version="2.1" if "no_obj_embed_spatial" in state else "2.0",
        hiera_width=int(state[f"{prefix}patch_embed.proj.weight"].shape[0]),
        hiera_stages=tuple(stages),
        neck_dim=int(neck.shape[0]) if neck is not None else 0,
        mem_dim=mem_dim,
        memory_layers=len(layers),
    )


def of_config(model_cfg) -> Architecture:
    """The same description from a config's `model:` node (medsam2.checkpoints.load_model_config)."""
    from sam2.modeling.backbones.hieradet import Hiera

    defaults = inspect.signature(Hiera.__init__).parameters
    trunk = model_cfg.image_encoder.trunk
    width = trunk.get("embed_dim") or defaults["embed_dim"].default
    stages = trunk.get("stages") or defaults["stages"].default
    return Architecture(
        sam2_version="2.1" if model_cfg.get("no_obj_embed_spatial", False) else "2.0",
        hiera_width=int(width),
        hiera_stages=tuple(int(s) for s in stages),
        neck_dim=int(model_cfg.image_encoder.neck.d_model),
        mem_dim=int(model_cfg.memory_encoder.get("out_dim", model_cfg.memory_attention.get("d_model", 0))),
        memory_layers=int(model_cfg.memory_attention.num_layers),
    )


def known_configs() -> list[str]:
    """Every config a file can be matched to: the `sam2` package's SAM 2.1 and 2.0 configs, then this
    project's (medsam2/configs), in that order of preference."""
    root = Path(str(resources.files("sam2")))
    names = [p.stem for family in ("sam2.1", "sam2") for p in sorted((root / "configs" / family).glob("*.yaml"))]
    own = Path(__file__).parent / "configs"
    return names + [p.stem for p in sorted(own.glob("*.yaml"))]


def configs_for(arch: Architecture) -> list[str]:
    """The configs whose architecture is `arch` (several only when configs differ in what the weights
    cannot show, such as global-attention blocks)."""
    from .checkpoints import load_model_config

    return [name for name in known_configs() if of_config(load_model_config(name).model) == arch]


def read_state_dict(path: Path) -> tuple[dict, dict]:
    """(state dict, meta) of a checkpoint, memory-mapped: reading a 900 MB file's keys costs no copy.
    Weights only: a checkpoint is data, never code."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:  # files in torch's legacy (pre-zip) format cannot be memory-mapped
        if "mmap" not in str(e):
            raise
        blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict):
        raise ValueError(f"it holds a {type(blob).__name__}, not a state dict")
    state = blob.get("model", blob)
    meta = blob.get("meta") if isinstance(blob.get("meta"), dict) else {}
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError("it holds no state dict of tensors")
    return state, meta
