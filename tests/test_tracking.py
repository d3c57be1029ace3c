"""Tracking by memory, on the demo model: twins only memory tells apart, and the same model with its
memory cut, which must fail the same check (so these tests are known to be able to fail)."""

import numpy as np
import pytest

from medsam2.checkpoints import build_model, resolve_spec
from medsam2.evaluation.twins import clicker, twin_results
from medsam2.memory_phantoms import make_twins
from medsam2.phantoms import PHANTOM_LABELS, make_phantom
from medsam2.propagation import Segmenter
from medsam2.training.diagnostics import memory_cut
from tests.conftest import REPO

HELD_OUT = range(5000, 5004)  # twins the demo model never saw (it trains on seeds 1000-1031)


@pytest.fixture(scope="module")
def segmenter():
    spec = resolve_spec("demo", None, None, REPO / "model")
    return Segmenter(build_model(spec))


@pytest.mark.parametrize("seed", HELD_OUT)
def test_a_click_on_either_twin_follows_that_twin_through_the_volume(segmenter, seed):
    case = make_twins(seed=seed)
    results = twin_results(case.label, clicker(segmenter, case.image))
    for r in results:
        assert r.passes(), r  # Dice >= 0.8 before and after the click, <= 5 % of the other twin


def test_with_its_memory_cut_the_same_model_cannot_tell_the_twins_apart(segmenter):
    """Memory attention given zero memories and zero object pointers: whatever the model can do
    from appearance alone. The check above must fail for it."""
    failures = 0
    for seed in HELD_OUT:
        case = make_twins(seed=seed)
        with memory_cut(segmenter.model):
            results = twin_results(case.label, clicker(segmenter, case.image))
        failures += sum(not r.passes() for r in results)
    assert failures == 2 * len(HELD_OUT)
    # and the cut is undone: the intact model passes again
    case = make_twins(seed=HELD_OUT[0])
    assert all(r.passes() for r in twin_results(case.label, clicker(segmenter, case.image)))


def test_a_click_on_the_phantom_organ_gives_the_organ_on_other_slices_not_the_vessel(segmenter):
    p = make_phantom((64, 64, 32), seed=777)
    organ, vessel = p.label == PHANTOM_LABELS["organ"], p.label == PHANTOM_LABELS["vessel"]
    ks = np.nonzero(organ.any(axis=(0, 1)))[0]
    k = int(ks[len(ks) // 2])
    from medsam2.clicks import interior_point

    i, j = interior_point(organ[:, :, k].T)
    pred = clicker(segmenter, p.image)((i, j, k))
    others = np.ones(p.label.shape[2], bool)
    others[k] = False
    dice = 2 * (pred & organ)[:, :, others].sum() / max(1, pred[:, :, others].sum() + organ[:, :, others].sum())
    assert dice > 0.8
    assert (pred & vessel).sum() < 0.05 * vessel.sum()
