"""Checkpoint files laid out as the public releases are, with random weights (none can be downloaded here).

Each release is a `{"model": state_dict}` file (how Meta, bowang-lab and Zhu et al. all save) whose
keys and shapes are those of Meta's own SAM 2 model built from the release's config by
`sam2.build_sam.build_sam2` (stock `SAM2Base`, not this project's class), stored in the release's
dtype. The values are random; every tensor is a view of one random buffer, so that even Hiera-Large's
file is only as large as its largest tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch

# manifest name -> (the sam2 package's config the release was made with, dtype of the stored tensors)
RELEASES = {
    "sam2.1_hiera_tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", torch.float32),
    "sam2.1_hiera_small": ("configs/sam2.1/sam2.1_hiera_s.yaml", torch.float32),
    "sam2.1_hiera_base_plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", torch.float32),
    "sam2.1_hiera_large": ("configs/sam2.1/sam2.1_hiera_l.yaml", torch.float32),
    # bowang-lab MedSAM2: Meta's SAM 2.1 keys, loaded strictly by its build_sam (sam2.1_hiera_t512.yaml
    # changes only image_size and RoPE feat_sizes, neither stored); its dtype is not known here: fp32
    "medsam2": ("configs/sam2.1/sam2.1_hiera_t.yaml", torch.float32),
    # Medical SAM 2 (Zhu et al.): SAM 2.0 code, train_3d.py casts the net to bf16 before torch.save
    "medsam2_zhu": ("configs/sam2/sam2_hiera_t.yaml", torch.bfloat16),
}

_shapes: dict[str, dict[str, torch.Size]] = {}


def stock_shapes(config: str) -> dict[str, torch.Size]:
    """Key -> shape of Meta's SAM 2 built from `config` (a path inside the sam2 package)."""
    if config not in _shapes:
        from sam2.build_sam import build_sam2

        _shapes[config] = {k: v.shape for k, v in build_sam2(config, None, device="cpu").state_dict().items()}
    return _shapes[config]


def write_release(path: Path, config: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A `{"model": state_dict}` file with the keys and shapes of `config`, random values in `dtype`."""
    shapes = stock_shapes(config)
    largest = max(s.numel() for s in shapes.values())
    buffer = torch.randn(largest, generator=torch.Generator().manual_seed(seed)).mul_(0.02).to(dtype)
    state = {k: buffer[: s.numel()].view(s) for k, s in shapes.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    return path
