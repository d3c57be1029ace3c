"""Kept versions of the served model: recorded on publish, listed, rolled back, pruned (medsam2/versions.py)."""

import pytest

from medsam2.versions import BASE, DamagedVersion, UnknownVersion, VersionStore


def publish(store: VersionStore, content: bytes, dice: float, parent_dice: float):
    store.served_path.parent.mkdir(parents=True, exist_ok=True)
    store.served_path.write_bytes(content)  # what a training run writes
    return store.record(store.served_path, train_images=3, val_dice=dice, parent_val_dice=parent_dice,
                        settings={"max_steps": 5, "lr": None})


def test_each_publish_is_kept_with_its_numbers_and_parent(tmp_path):
    store = VersionStore(tmp_path / "versions", tmp_path / "finetuned" / "served.pt")
    assert store.served() == BASE and store.list() == []
    first = publish(store, b"weights one", 0.7, 0.5)
    second = publish(store, b"weights two", 0.8, 0.7)
    assert [v.id for v in store.list()] == [first.id, second.id] and store.served() == second.id
    assert first.parent == BASE and second.parent == first.id
    assert (second.val_dice, second.parent_val_dice, second.train_images) == (0.8, 0.7, 3)
    assert second.settings == {"max_steps": 5}  # what can be shown and compared


def test_rollback_serves_the_old_bytes_and_a_bad_request_changes_nothing(tmp_path):
    store = VersionStore(tmp_path / "versions", tmp_path / "served.pt")
    first = publish(store, b"weights one", 0.7, 0.5)
    second = publish(store, b"weights two", 0.8, 0.7)
    assert store.rollback(first.id) == first.id
    assert store.served_path.read_bytes() == b"weights one" and store.served() == first.id
    with pytest.raises(UnknownVersion):
        store.rollback("20990101T000000Z-deadbeef")
    with pytest.raises(UnknownVersion):
        store.rollback("../../etc/passwd")
    (store.folder / f"{second.id}.pt").write_bytes(b"tampered")
    with pytest.raises(DamagedVersion):
        store.rollback(second.id)
    assert store.served_path.read_bytes() == b"weights one" and store.served() == first.id  # unchanged
    assert store.rollback(BASE) == BASE and not store.served_path.exists()


def test_pruning_keeps_the_count_but_never_the_served_version_or_its_parent(tmp_path):
    store = VersionStore(tmp_path / "versions", tmp_path / "served.pt", keep=3)
    ids = [publish(store, f"weights {n}".encode(), 0.5 + n / 10, 0.4).id for n in range(4)]
    assert [v.id for v in store.list()] == ids[1:]  # the oldest pruned at the 4th publish
    store.rollback(ids[2])  # serve an older one: it and its parent (ids[1]) survive any pruning
    store.keep = 2
    store.prune()
    assert [v.id for v in store.list()] == ids[1:3]
