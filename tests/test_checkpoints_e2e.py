"""Checkpoints through the real server: a SAM 2 file served without naming its config, a config that
contradicts the file refused at start-up with what the file holds, post-processing per request."""

from __future__ import annotations

import pytest

from conftest import start_server, stop_server
from medsam2.phantoms import write_studies

pytestmark = pytest.mark.e2e

QUIET = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
CLICK = {"foreground": [[16, 16, 4]]}


def test_a_sam2_file_is_served_with_the_config_its_tensors_match(tmp_path, random_checkpoint):
    studies = tmp_path / "studies"
    write_studies(studies, 1, shape=(32, 32, 8), seed=630)
    server = start_server(studies, {"checkpoint": random_checkpoint, "model_dir": tmp_path / "model"},
                          tmp_path / "server.log", QUIET)  # no model_config: found from the file
    try:
        r = server.post_infer("phantom_630", CLICK, output="json")
        assert r.status_code == 200, r.text
        assert r.json()["engine"]["postprocess"] == {"fill_hole_area": 8, "largest_component": False}
        r = server.post_infer("phantom_630", {**CLICK, "largest_component": True}, output="json")
        assert r.status_code == 200 and r.json()["engine"]["postprocess"]["largest_component"] is True
        r = server.post_infer("phantom_630", {**CLICK, "largest_component": "perhaps"}, output="json")
        assert r.status_code == 400 and "largest_component" in r.json()["detail"]
        assert "config sam2.1_hiera_micro found from its tensors" in server.log.read_text()
    finally:
        stop_server(server.proc)


def test_a_config_that_contradicts_the_checkpoint_stops_the_server_at_start_up(tmp_path, random_checkpoint):
    studies = tmp_path / "studies"
    write_studies(studies, 1, shape=(32, 32, 8), seed=630)
    with pytest.raises(RuntimeError) as e:
        start_server(studies, {"checkpoint": random_checkpoint, "model_config": "sam2.1_hiera_t",
                               "model_dir": tmp_path / "model"}, tmp_path / "server.log", QUIET)
    log = str(e.value)
    assert "server exited" in log
    assert "holds a SAM 2.1 Hiera (width 32, stages 1-1-2-1" in log and "--conf model_config sam2.1_hiera_micro" in log


def test_an_option_that_makes_no_sense_stops_the_server_with_its_name_and_what_it_accepts(tmp_path):
    studies = tmp_path / "studies"
    write_studies(studies, 1, shape=(32, 32, 8), seed=630)
    with pytest.raises(RuntimeError) as e:
        start_server(studies, {"checkpoint": "demo", "memory_policy": "lifo", "model_dir": tmp_path / "model"},
                     tmp_path / "server.log", QUIET)
    assert "server exited" in str(e.value)
    assert "--conf memory_policy must be one of self_sorting, fifo; got 'lifo'" in str(e.value)
