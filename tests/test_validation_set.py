"""The validation images of fine-tuning runs: chosen by image id, kept for every later run."""

from medsam2.training.validation import ValidationSet, hashed_fraction

IDS = [f"case_{n:03d}.nii.gz" for n in range(40)]


def test_the_choice_depends_on_the_ids_only_not_their_order(tmp_path):
    a, _ = ValidationSet(tmp_path / "a.json").split(IDS, 0.2)
    b, _ = ValidationSet(tmp_path / "b.json").split(list(reversed(IDS)), 0.2)
    assert sorted(a) == sorted(b) == sorted(i for i in IDS if hashed_fraction(i) < 0.2)
    assert 2 <= len(a) <= 16  # about a fifth of 40


def test_a_validation_image_stays_and_a_training_image_never_moves(tmp_path):
    kept = ValidationSet(tmp_path / "validation.json")
    first_val, first_train = kept.split(IDS[:20], 0.2)
    later_val, later_train = kept.split(IDS, 0.5)  # more images, and a larger share asked
    assert set(first_val) <= set(later_val)
    assert set(first_train) <= set(later_train)  # learnt images are not used to validate
    assert set(later_val) - set(first_val) <= set(IDS[20:])


def test_two_images_give_one_to_each_side_and_a_share_of_0_validates_nothing(tmp_path):
    kept = ValidationSet(tmp_path / "validation.json")
    val, train = kept.split(["x.nii.gz", "y.nii.gz"], 0.2)
    assert len(val) == 1 and len(train) == 1
    assert kept.split(["x.nii.gz", "y.nii.gz"], 0.2) == (val, train)  # the next run: the same
    assert kept.split(["x.nii.gz", "y.nii.gz"], 0.0) == ([], ["x.nii.gz", "y.nii.gz"])


def test_a_lone_image_trains_whatever_its_hash(tmp_path):
    lone = next(i for i in IDS if hashed_fraction(i) < 0.2)  # one the hash would put in validation
    assert ValidationSet(tmp_path / "validation.json").split([lone], 0.2) == ([], [lone])
