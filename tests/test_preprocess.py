"""Each checkpoint gets its input frames made as its own pipeline made them (manifest `preprocess`).

The engine's frames (what `Segmenter.open` feeds the image encoder) are compared, grey level by grey
level, with an independent implementation of each reference's steps in NumPy and PIL, written from
the reference code named in the manifest: Meta's SAM 2 (and Medical SAM 2, the same frame loader)
reads uint8 slices resized by PIL; bowang-lab's MedSAM2 clips CT to the window and stretches it, and
takes MR percentiles over the nonzero voxels with the zero background kept black. Within one grey
level: PIL rounds in fixed point, the engine in floats.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsam2.checkpoints import ModelSpec, build_model, load_manifest
from medsam2.frames import IMAGENET_MEAN, IMAGENET_STD, Intensity, Preprocess
from medsam2.propagation import Segmenter

REPO = Path(__file__).resolve().parent.parent
MANIFEST = load_manifest(REPO / "model")
SOFT_TISSUE = (40.0 - 200.0, 40.0 + 200.0)  # the engine's `auto` window for CT (level 40, width 400)


def ct_volume(rng) -> np.ndarray:
    """HU-like: air, fat, soft tissue and bone, 300 x 260 x 3 (not square: the resize squashes it)."""
    vol = rng.normal(40, 60, (300, 260, 3)).astype(np.float32)
    vol[:40] = -1000
    vol[100:140, 80:200] = 700
    return vol


def mr_volume(rng) -> np.ndarray:
    """MR-like with a zero background around the head (skull-stripped or padded), 200 x 180 x 3."""
    vol = np.zeros((200, 180, 3), np.float32)
    yy, xx = np.mgrid[:200, :180]
    head = (yy - 100) ** 2 / 80**2 + (xx - 90) ** 2 / 70**2 < 1
    vol[head] = rng.gamma(4, 150, (int(head.sum()), 3)).astype(np.float32)
    return vol


def to_input(grey: np.ndarray, size: int) -> np.ndarray:
    """The part every reference shares: a uint8 (rows, columns) slice -> PIL RGB, resized with PIL's
    default filter, /255, ImageNet mean/std (sam2/utils/misc.py; MedSAM2's resize_grayscale_to_rgb_and_resize)."""
    rgb = np.asarray(Image.fromarray(grey).convert("RGB").resize((size, size)), dtype=np.float64) / 255.0
    return ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def sam2_reference(vol: np.ndarray, size: int) -> np.ndarray:
    """Meta's SAM 2 / Medical SAM 2: uint8 slices as the user writes them (the CT window or the
    0.5/99.5 percentiles of the volume to 0-255), then the frame loader's steps."""
    lo, hi = SOFT_TISSUE if vol.min() <= -500 else np.percentile(vol, [0.5, 99.5])
    grey = np.uint8(np.clip((vol - lo) / (hi - lo), 0, 1) * 255.0)
    return np.stack([to_input(grey[:, :, k].T, size) for k in range(vol.shape[2])])


def medsam2_reference(vol: np.ndarray, size: int) -> np.ndarray:
    """bowang-lab MedSAM2: CT clipped to the window and min-max stretched to 0-255
    (medsam2_infer_3D_CT.py); otherwise clipped to the 0.5/99.5 percentiles of the voxels > 0,
    stretched, the zero background set back to 0 (examples/infer_CT_LUNA25.py); np.uint8 truncates."""
    if vol.min() <= -500:
        lo, hi = SOFT_TISSUE
        pre = np.clip(vol, lo, hi)
        pre = (pre - pre.min()) / (pre.max() - pre.min()) * 255.0
    else:
        lo, hi = np.percentile(vol[vol > 0], 0.5), np.percentile(vol[vol > 0], 99.5)
        pre = np.clip(vol, lo, hi)
        pre = (pre - pre.min()) / (pre.max() - pre.min()) * 255.0
        pre[vol == 0] = 0
    grey = np.uint8(pre)
    return np.stack([to_input(grey[:, :, k].T, size) for k in range(vol.shape[2])])


REFERENCES = {"sam2.1_hiera_tiny": sam2_reference, "sam2.1_hiera_small": sam2_reference,
              "sam2.1_hiera_base_plus": sam2_reference, "sam2.1_hiera_large": sam2_reference,
              "medsam2_zhu": sam2_reference, "medsam2": medsam2_reference}


def engine_frames(entry: dict, vol: np.ndarray) -> np.ndarray:
    """What the engine feeds the image encoder for a checkpoint with this manifest entry: a small model
    at the entry's size with the entry's pipeline (the frames do not depend on the weights)."""
    spec = ModelSpec("sam2.1_hiera_micro", entry["image_size"], preprocess=Preprocess.parse(entry.get("preprocess")))
    session = Segmenter(build_model(spec)).open(vol, "auto")
    return session.features.frames(list(range(vol.shape[2]))).double().numpy()


def grey_levels(frames: np.ndarray) -> np.ndarray:
    std, mean = np.asarray(IMAGENET_STD)[:, None, None], np.asarray(IMAGENET_MEAN)[:, None, None]
    return (frames * std + mean) * 255.0


@pytest.mark.parametrize("volume", ["ct", "mr"])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_each_checkpoint_gets_its_frames_as_its_reference_made_them(name, volume):
    rng = np.random.default_rng(7)
    vol = ct_volume(rng) if volume == "ct" else mr_volume(rng)
    entry = MANIFEST[name]
    ours = grey_levels(engine_frames(entry, vol))
    theirs = grey_levels(REFERENCES[name](vol, entry["image_size"]))
    assert ours.shape == theirs.shape == (vol.shape[2], 3, entry["image_size"], entry["image_size"])
    assert np.abs(ours - theirs).max() <= 1.0 + 1e-3, f"{name} on {volume}: {np.abs(ours - theirs).max():.2f} grey levels"


def test_medsam2_takes_mr_percentiles_over_the_head_not_over_the_background_around_it():
    vol = mr_volume(np.random.default_rng(3))
    vol[vol > 0] += 400.0  # no tissue near zero
    head = vol > 0
    nonzero = Intensity().scale(torch.from_numpy(vol), Preprocess(percentiles_of="nonzero"))
    whole = Intensity().scale(torch.from_numpy(vol))
    assert float(nonzero[~head].max()) == 0.0 == float(whole[~head].max())
    # over the head: its darkest 0.5 % black, its brightest 0.5 % white, the range in between used
    assert float((nonzero[head] == 0).float().mean()) == pytest.approx(0.005, abs=0.002)
    assert float((nonzero[head] == 1).float().mean()) == pytest.approx(0.005, abs=0.002)
    # over the whole volume the background sets the low end: the head is squeezed into the upper part
    # of the range, and twice as much of it saturates (half the voxels are background)
    assert float(whole[head].min()) > 0.15
    assert float((whole[head] == 1).float().mean()) > 1.7 * float((nonzero[head] == 1).float().mean())


def test_the_demo_model_is_fed_as_its_trainer_fed_it():
    """The demo model's reference is this project's trainer: the engine's frames equal the clips'."""
    from medsam2.training.clips import ClipSampler, LabelledVolume

    entry = MANIFEST["demo"]
    vol = mr_volume(np.random.default_rng(5))
    label = (vol > 0).astype(np.int64)
    preprocess = Preprocess.parse(entry.get("preprocess"))
    sampler = ClipSampler([LabelledVolume(vol, label, "auto", preprocess)], entry["image_size"], clip_len=3,
                          preprocess=preprocess)
    clip = sampler.sample()
    ours = engine_frames(entry, vol)[clip.slices]
    np.testing.assert_allclose(ours, clip.frames.double().numpy(), atol=1e-5)


def test_a_preprocess_declaration_that_makes_no_sense_is_refused():
    with pytest.raises(ValueError, match="resize"):
        Preprocess.parse({"resize": "lanczos"})
    with pytest.raises(ValueError, match="uint8"):
        Preprocess.parse({"resize": "pil_bicubic"})
    with pytest.raises(ValueError, match="unknown preprocess fields"):
        Preprocess.parse({"window": [40, 400]})
