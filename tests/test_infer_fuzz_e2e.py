"""Property-based fuzzing of /infer on the real server: whatever params a client sends, the answer is a
result (200) or a 4xx with a message, never an error 500, and the server keeps answering.

Hypothesis generates the `params` field for both infer tasks: the keys the clients send with values of
every JSON type (huge integers, NaN and Infinity as JSON literals and as text, paths, nested objects),
usable prompts with arbitrary label names and options (so that real inferences run too), and sometimes
text that is not JSON at all. The number of examples is fixed so the test stays under a minute on two cores;
the counts of examples and of each answer are printed and recorded (junit property `fuzz_counts`).
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bad_files
from conftest import start_server, stop_server
from medsam2.phantoms import make_phantom, write_studies

pytestmark = pytest.mark.e2e
QUIET = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}  # no scoring run at start-up competing for the CPU

EXAMPLES = 150
SHAPE = (32, 32, 8)

leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=10), st.sampled_from(["nan", "Infinity", "-1e309", "../../x", "", "organ", "\\"]))
anything = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=10)
coordinate = st.one_of(st.integers(-3, 40), st.floats(-3, 40), leaf)
point = st.one_of(st.lists(st.integers(0, 7), min_size=3, max_size=3),  # inside the volume (k < 8)
                  st.lists(coordinate, min_size=2, max_size=4), anything)
points = st.one_of(st.lists(point, max_size=4), anything)
roi = st.one_of(st.lists(coordinate, min_size=4, max_size=6), anything)
label = st.one_of(st.sampled_from(["organ", "lesion", "Segment_1", "a/b", "../x", "x" * 70]), leaf)
one_object = st.fixed_dictionaries({}, optional={"label": label, "foreground": points, "background": points,
                                                 "roi": roi})
params = st.fixed_dictionaries({}, optional={
    "foreground": points, "background": points, "roi": roi, "label": label,
    "objects": st.one_of(st.lists(one_object, max_size=3), anything),
    "intensity": st.one_of(st.sampled_from(["auto", "lung", "ct:40,400", "ct:40,-1", "percentile"]), anything),
    "memory_policy": st.one_of(st.sampled_from(["fifo", "self_sorting"]), leaf),
    "result_extension": st.one_of(st.sampled_from([".nrrd", ".nii.gz", ".nii"]), leaf),
    "result_dtype": st.one_of(st.sampled_from(["uint8", "uint16", "float32"]), leaf),
    "client_id": st.one_of(st.sampled_from(["slicer", "ohif"]), leaf),
    "slice": st.one_of(st.integers(-2, 10), leaf),
    "add_to_bank": anything, "clear_bank": st.one_of(st.just(False), leaf),
    "label_tag": st.one_of(st.sampled_from(["final", "original", "../../../x", ".hidden"]), leaf),
    "save_label": st.one_of(st.just(False), leaf),
}).flatmap(lambda p: st.dictionaries(st.text(max_size=8), anything, max_size=2).map(lambda extra: {**extra, **p}))
inside = st.lists(st.integers(0, 7), min_size=3, max_size=3)
usable = st.fixed_dictionaries({"foreground": st.lists(inside, min_size=1, max_size=3)}, optional={
    "background": st.lists(inside, max_size=2), "label": st.one_of(st.sampled_from(["organ", "lesion"]),
                                                                   st.text(min_size=1, max_size=12)),
    "memory_policy": st.sampled_from(["fifo", "self_sorting"]), "roi": st.lists(st.integers(-2, 40), min_size=6,
                                                                                max_size=6),
    "intensity": st.sampled_from(["auto", "lung", "ct:40,400", "percentile", "mr"]),
    "result_extension": st.sampled_from([".nrrd", ".nii.gz", ".nii"]), "client_id": st.sampled_from(["a", "b"]),
}).flatmap(lambda p: st.dictionaries(st.text(max_size=8), anything, max_size=1).map(lambda extra: {**extra, **p}))
body = st.one_of(usable.map(json.dumps), params.map(json.dumps), params.map(json.dumps), st.text(max_size=30))
target = st.sampled_from([("medsam2", "phantom_610"), ("medsam2", "phantom_610"), ("medsam2_oneprompt", "flat2d"),
                          ("medsam2_oneprompt", "phantom_610"), ("medsam2", "flat2d")])


@pytest.fixture(scope="module")
def fuzz_server(random_checkpoint, tmp_path_factory):
    studies = tmp_path_factory.mktemp("fuzz_studies")
    write_studies(studies, 1, shape=SHAPE, seed=610)
    bad_files.nifti(studies / "flat2d.nii.gz", make_phantom(SHAPE, seed=611).image[:, :, 4].astype(np.int16))
    s = start_server(studies, {"checkpoint": random_checkpoint, "model_config": "sam2.1_hiera_micro",
                               "model_dir": tmp_path_factory.mktemp("fuzz_model")},
                     tmp_path_factory.mktemp("fuzz_logs") / "server.log", QUIET)
    s.studies_dir = studies
    yield s
    stop_server(s.proc)


def test_any_params_get_a_result_or_a_4xx_with_a_message(fuzz_server, record_property):
    counts: Counter = Counter()
    failures = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body, target)
    def send(text, model_image):
        model, image = model_image
        r = requests.post(f"{fuzz_server.url}/infer/{model}", params={"image": image, "output": "json"},
                          files={"params": (None, text)}, timeout=300)
        counts[r.status_code] += 1
        counts["examples"] += 1
        if r.status_code != 200:
            ok = 400 <= r.status_code < 500 and isinstance(r.json().get("detail"), str) and r.json()["detail"]
            if not ok:
                failures.append((r.status_code, model, image, text[:300], r.text[:300]))
            assert ok, (r.status_code, text[:300], r.text[:300])

    try:
        send()
    finally:
        summary = {"examples": counts.pop("examples", 0), **{str(k): v for k, v in sorted(counts.items())}}
        record_property("fuzz_counts", json.dumps(summary))
        print(f"\n/infer fuzz: {summary}")
    assert not failures
    assert summary.get("200", 0) > 0 and sum(v for k, v in summary.items() if k.startswith("4")) > 0
    assert requests.get(f"{fuzz_server.url}/info/", timeout=30).status_code == 200
    escaped = fuzz_server.studies_dir.parent.parent / "x"
    assert not escaped.exists()
