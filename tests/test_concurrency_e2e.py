"""Many users at once on the real server: 8 OHIF/Slicer users on 4 images get, click for click, the
labels each request gets alone, and labels saved meanwhile read back intact.

The users and their requests are benchmarks/annotators.py's (what OHIF v3 and Slicer send; two OHIF
users share the server's "default" session of an image). The server runs four inferences at once and
keeps three images open, so sessions are evicted and reopened while other requests use them; before
the users start together, the sessions of the alone run are evicted, so every result is computed again.
Speed is measured by `python -m benchmarks.concurrency`, never asserted here.
"""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `benchmarks` is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.annotators import (INFER_KINDS, InFlight, evict_sessions, make_scenario, run_alone,  # noqa: E402
                                   run_together)
from conftest import DEMO_CONFIG, start_server, stop_server  # noqa: E402
from medsam2.phantoms import make_phantom, write_studies  # noqa: E402

pytestmark = pytest.mark.e2e

SHAPE = (48, 48, 16)
CACHE_ENTRIES = 3
INFER_CONCURRENCY = 4


@pytest.fixture(scope="module")
def busy_server(trained_checkpoint, tmp_path_factory):
    studies = tmp_path_factory.mktemp("concurrency_studies")
    images = write_studies(studies, 4, shape=SHAPE, seed=600)
    log = tmp_path_factory.mktemp("concurrency_logs") / "server.log"
    server = start_server(studies, {"checkpoint": trained_checkpoint, "model_config": DEMO_CONFIG,
                                    "model_dir": tmp_path_factory.mktemp("concurrency_model"),
                                    "cache_entries": CACHE_ENTRIES, "infer_concurrency": INFER_CONCURRENCY}, log)
    server.truths = {image: make_phantom(SHAPE, seed=600 + n).label for n, image in enumerate(images)}
    yield server
    stop_server(server.proc)


def test_eight_users_on_four_images_get_what_each_request_gets_alone(busy_server, tmp_path):
    import requests

    server = busy_server
    options = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["medsam2"]["config"]
    annotators = make_scenario(server.truths, options, users=8, visits=2, corrections=1)
    assert {a.app for a in annotators} == {"slicer", "ohif"}
    assert len({s.image for a in annotators for s in a.steps}) == 4

    alone = run_alone(server.url, annotators, tmp_path / "alone")
    assert all(o.ok for o in alone.values()), [o.error for o in alone.values() if not o.ok]

    # nothing the alone run computed stays cached: the users' results are computed again, side by side
    evict_sessions(server.url, annotators[0].steps[0].image, annotators[0].steps[0].params["foreground"][0],
                   CACHE_ENTRIES + 1)
    inflight = InFlight()
    outcomes, submitted, hung = run_together(server.url, annotators, tmp_path / "together", inflight,
                                             join_timeout=600)
    assert not hung
    failed = [(o.key, o.error) for o in outcomes if not o.ok]
    assert not failed
    assert inflight.most_infers > INFER_CONCURRENCY  # more clicks out at once than the server runs: some wait

    infers = [o for o in outcomes if o.kind in INFER_KINDS]
    assert len(infers) == len(alone) == 32
    # each Slicer user's first click on an image opened its session afresh: computed, not found cached
    assert all(o.engine["cached_features"] is False for o in infers if o.kind == "first_click" and o.engine)
    differ = [o.key for o in infers if o.voxels != alone[o.key].voxels]
    assert not differ, f"{len(differ)} results differ from the same request alone: {differ}"

    # the results are real segmentations, not empty volumes that would match trivially
    assert sum(o.nonzero > 0 for o in infers) >= 24

    # the server really ran inferences side by side: Slicer answers report how long each ran
    spans = sorted((o.ended - o.server_seconds, o.ended) for o in infers if o.server_seconds)
    assert any(b0 < a1 - 0.05 for (a0, a1), (b0, b1) in zip(spans, spans[1:]))
    # 8 Slicer sessions alone (4 users x 2 images) in a cache of 3: it filled up and evicted, never more
    assert max(o.engine["cache_entries"] for o in infers if o.engine) == CACHE_ENTRIES

    saves = [o for o in outcomes if o.kind == "save_label"]
    reads = [o for o in outcomes if o.kind == "read_label"]
    assert len(saves) == len(reads) == 8 and all(o.ok for o in saves + reads)
    assert len(submitted) == 4
    for image, data in submitted.items():
        r = requests.get(f"{server.url}/datastore/label", params={"label": image, "tag": "final"}, timeout=60)
        assert r.status_code == 200 and r.content == data

