"""Volume -> SAM2 frames: orientation, intensity windows, normalisation (fast, no model)."""

import numpy as np
import pytest
import torch

from medsam2.frames import (CT_WINDOWS, IMAGENET_MEAN, IMAGENET_STD, Intensity, frames_from_scaled, scale_volume,
                            volume_to_frames)


def unnormalise(frames):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return frames * std + mean


def test_frame_k_is_the_kth_slice_with_rows_j_and_columns_i():
    vol = np.full((32, 32, 6), -1000.0, dtype=np.float32)
    vol[5, 20, 3] = 1000.0  # i=5, j=20, k=3
    frames = volume_to_frames(vol, image_size=32, intensity="soft_tissue")
    assert frames.shape == (6, 3, 32, 32)
    img = unnormalise(frames)[3, 0]
    assert torch.isclose(img[20, 5], torch.tensor(1.0), atol=1e-5)  # row j, column i
    assert img.sum() == pytest.approx(1.0, abs=1e-4)
    assert unnormalise(frames)[[0, 1, 2, 4, 5]].abs().max() < 1e-5


def test_ct_window_maps_level_minus_half_width_to_0_and_plus_half_width_to_1():
    level, width = CT_WINDOWS["soft_tissue"]
    vol = np.array([level - width, level - width / 2, level, level + width / 2, 3000.0], dtype=np.float32)
    vol = np.tile(vol[:, None, None], (1, 5, 1))
    out = Intensity.parse("soft_tissue").scale(torch.from_numpy(vol))[:, 0, 0]
    np.testing.assert_allclose(out.numpy(), [0, 0, 0.5, 1, 1], atol=1e-6)


def test_auto_uses_a_ct_window_for_hounsfield_units_and_percentiles_otherwise():
    ct = torch.linspace(-1000, 1000, 1000).reshape(10, 10, 10)
    mr = torch.linspace(0, 5000, 1000).reshape(10, 10, 10)
    assert Intensity().resolve(ct).mode == "ct"
    assert Intensity().resolve(mr).mode == "percentile"
    scaled = Intensity().scale(mr)
    assert float(scaled.min()) == 0.0 and float(scaled.max()) == 1.0
    assert float((scaled == 1.0).float().mean()) < 0.02  # only the top 0.5 % is clipped


def test_intensity_settings_parse_and_bad_ones_are_refused():
    assert Intensity.parse("ct:40,400").window == (40.0, 400.0)
    assert Intensity.parse([50, 350]).window == (50.0, 350.0)
    assert Intensity.parse("mr").mode == "percentile"
    with pytest.raises(ValueError, match="unknown intensity"):
        Intensity.parse("sepia")
    for window in ("ct:nan,400", "ct:40,0", [40, float("inf")]):
        with pytest.raises(ValueError, match="finite level and a width > 0"):
            Intensity.parse(window)


def test_resizing_keeps_the_whole_slice_and_non_3d_input_is_refused():
    vol = np.zeros((40, 20, 2), dtype=np.float32)
    assert volume_to_frames(vol, image_size=64).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="3D"):
        volume_to_frames(np.zeros((4, 4)), image_size=8)


def test_scaled_volumes_and_frames_are_plain_tensors():
    """MONAI's transforms return MetaTensors, whose Python-level __torch_function__ runs for every op:
    the image encoder fed with one ran about 20 % slower on the CPU (and far slower on a GPU)."""
    for values in (np.full((8, 8, 3), -1000.0, np.float32), np.random.default_rng(0).random((8, 8, 3))):
        scaled = scale_volume(values, "auto")
        assert type(scaled) is torch.Tensor
        assert type(frames_from_scaled(scaled, [0, 2], 16)) is torch.Tensor
