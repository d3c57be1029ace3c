"""The self-sorting memory bank on hand-made vectors: write, replace and read rules (fast)."""

import torch

from medsam2.memory import MemoryBank, MemoryEntry


def entry(key, feature, confidence=0.9, embedding=None, prompted=False):
    f = torch.tensor(feature, dtype=torch.float32)
    e = torch.tensor(embedding, dtype=torch.float32) if embedding is not None else f
    return MemoryEntry(key=key, feature=f, embedding=e, confidence=confidence, prompted=prompted)


def keys(bank):
    return [e.key for e in bank.entries]


def test_low_confidence_memories_never_enter():
    bank = MemoryBank(capacity=4, min_confidence=0.5)
    assert not bank.write(entry(1, [1, 0], confidence=0.49))
    assert bank.write(entry(2, [1, 0], confidence=0.5))
    assert keys(bank) == [2]


def test_when_full_the_most_redundant_entry_is_replaced_by_a_diverse_one():
    bank = MemoryBank(capacity=3, min_confidence=0.0)
    for k, f in [("a", [1, 0, 0]), ("b", [0.9, 0.44, 0]), ("c", [0.6, 0.8, 0])]:
        bank.write(entry(k, f))
    # the new memory points away from everything: the stored entry least similar to it is i = a;
    # the entry most similar to a is j = b (cos 0.9); sim(new, a) = -0.7 < 0.9, so b is replaced
    assert bank.write(entry("d", [-0.7, 0.7, 0.1]))
    assert keys(bank) == ["a", "d", "c"]


def test_a_memory_that_adds_no_diversity_is_not_stored():
    bank = MemoryBank(capacity=2, min_confidence=0.0)
    bank.write(entry("a", [1, 0]))
    bank.write(entry("b", [0, 1]))
    # new is a copy of a: i = b (sim 0), j = a (sim(b, a) = 0); sim(new, i) = 0 is not < 0 -> rejected
    assert not bank.write(entry("c", [1, 0]))
    assert keys(bank) == ["a", "b"]


def test_a_much_less_confident_memory_cannot_replace_a_confident_one():
    def full_bank():
        bank = MemoryBank(capacity=3, min_confidence=0.0, margin=0.1)
        for k, f in [("a", [1, 0, 0]), ("b", [0.9, 0.44, 0]), ("c", [0.6, 0.8, 0])]:
            bank.write(entry(k, f, confidence=0.9))
        return bank

    bank = full_bank()
    assert not bank.write(entry("d", [-0.7, 0.7, 0.1], confidence=0.75))  # 0.75 <= 0.9 - 0.1
    assert keys(bank) == ["a", "b", "c"]
    bank = full_bank()
    assert bank.write(entry("d", [-0.7, 0.7, 0.1], confidence=0.85))
    assert keys(bank) == ["a", "d", "c"]


def test_prompted_memories_are_never_evicted_by_tracked_ones_and_capacity_holds():
    bank = MemoryBank(capacity=3, min_confidence=0.0)
    bank.write(entry("p1", [1, 0, 0], prompted=True))
    bank.write(entry("p2", [0.9, 0.44, 0], prompted=True))
    bank.write(entry("t", [0.6, 0.8, 0]))
    for n in range(20):
        angle = torch.tensor(n * 0.7)
        bank.write(entry(f"x{n}", [float(torch.cos(angle)), float(torch.sin(angle)), 0.3]))
        assert len(bank) == 3
        assert {"p1", "p2"} <= set(keys(bank))


def test_read_returns_the_most_relevant_first_and_is_deterministic():
    bank = MemoryBank(capacity=8, min_confidence=0.0)
    for k, emb in [("far", [0, 1]), ("near", [1, 0.1]), ("mid", [1, 1]), ("same", [1, 0])]:
        bank.write(entry(k, [1, 0], embedding=emb))
    query = torch.tensor([1.0, 0.0])
    assert [e.key for e in bank.read(query, 3)] == ["same", "near", "mid"]
    assert [e.key for e in bank.read(query, 3, exclude={"same"})] == ["near", "mid", "far"]
    assert [e.key for e in bank.read(query, 3)] == [e.key for e in bank.read(query, 3)]


def test_the_policy_reads_the_most_relevant_memories_but_places_them_by_distance():
    """SAM 2 tells memories apart by their slot ("n slices back"): the bank picks which memories, the
    slice distance decides the slot. Placed by relevance, a far memory sat in a near slot and the demo
    model lost a moving twin (memory.py, SelfSortingPolicy.choose)."""
    from medsam2.memory import SelfSortingPolicy

    policy = SelfSortingPolicy(capacity=8, slots=4, keep_last=1, min_confidence=0.0)
    query = torch.tensor([1.0, 0.0])
    relevance = {2: [1.0, 0.0], 5: [0.8, 0.6], 8: [0.9, 0.44], 3: [-1.0, 0.0]}  # most relevant: 2, 8, 5; 3 least
    for key, emb in relevance.items():
        policy.bank.write(entry(key, [float(key), 1.0], embedding=emb))
    chosen = policy.choose(tracked={2, 3, 5, 8, 9}, frame_idx=10, reverse=False, embedding=query)
    assert chosen == [9, 8, 5, 2]  # the preceding slice, then the three most relevant, nearest first
    assert SelfSortingPolicy.slot_frames(chosen, 10, False) == {9: 9, 8: 8, 7: 5, 6: 2}


def test_memory_keep_last_0_gives_medsam2s_pure_bank_to_every_lane():
    """`--conf memory_keep_last 0`: the preceding slice is not kept for its own sake; the bank alone
    decides (here it does not hold slice 9, so 9 is not read)."""
    from medsam2.memory import policy_factories
    from medsam2.settings import EngineSettings

    for keep_last, expected in ((1, [9, 8, 5, 2]), (0, [8, 5, 3, 2])):
        policy = policy_factories(EngineSettings.from_conf({"memory_keep_last": str(keep_last)}))["self_sorting"]()
        policy.slots, policy.bank.min_confidence = 4, 0.0
        for key, emb in {2: [1.0, 0.0], 5: [0.8, 0.6], 8: [0.9, 0.44], 3: [-1.0, 0.0]}.items():
            policy.bank.write(entry(key, [float(key), 1.0], embedding=emb))
        assert policy.choose({2, 3, 5, 8, 9}, 10, False, torch.tensor([1.0, 0.0])) == expected
