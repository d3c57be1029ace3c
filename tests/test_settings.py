"""The options: read once from --conf, refused with the reason, and documented from their declarations."""

from __future__ import annotations

import argparse

import pytest

from medsam2 import settings
from medsam2.settings import EngineSettings, ServerSettings, SettingsError


def test_conf_strings_become_typed_settings_for_the_engine_and_the_server():
    s = ServerSettings.from_conf({"settle_slices": "3", "cuda_graphs": "true", "encode_ahead": "no",
                                  "labels": '{"liver": 1, "spleen": 2}', "max_voxels": "512*512*10",
                                  "dicomweb_modalities": "ct, mr", "image_size": "512"})
    assert s.engine.settle_slices == 3 and s.engine.cuda_graphs is True and s.engine.encode_ahead is False
    assert s.engine.image_size == 512
    assert s.labels == {"liver": 1, "spleen": 2} and s.max_voxels == 512 * 512 * 10
    assert s.dicomweb_modalities == ("CT", "MR")
    assert ServerSettings.from_conf({}) == ServerSettings()  # nothing given: every default


@pytest.mark.parametrize("conf, says", [
    ({"memory_policy": "lifo"}, "memory_policy must be one of"),
    ({"settle_slices": "-2"}, "settle_slices must be at least 0"),
    ({"cache_mb": "lots"}, "--conf cache_mb 'lots'"),
    ({"cuda_graphs": "maybe"}, "expected true or false"),
    ({"encoder_runtime": "torch", "encoder_precision": "int8"}, "not available with torch"),
    ({"intensity": "ct:40"}, "--conf intensity"),
    ({"labels": "[1, 2]"}, "--conf labels"),
    ({"directions": "both"}, "directions must be one of"),
    ({"device": "gpu"}, "device must be"),
    ({"infer_concurrency": "0"}, "infer_concurrency must be at least 1"),
])
def test_a_value_that_makes_no_sense_is_refused_with_the_option_and_the_reason(conf, says):
    with pytest.raises(SettingsError, match=says.replace("(", r"\(")):
        ServerSettings.from_conf(conf)


def test_a_key_that_is_no_option_is_logged_not_silently_dropped(caplog):
    ServerSettings.from_conf({"memory_polcy": "fifo", "preload": "true"})
    assert "memory_polcy" in caplog.text and "preload" not in caplog.text  # preload is MONAI Label's own


def test_the_command_line_tools_take_the_same_options_with_the_same_meaning():
    ap = argparse.ArgumentParser()
    settings.add_arguments(ap, ("checkpoint", "settle_slices", "largest_component"), required=("checkpoint",))
    args = ap.parse_args(["--checkpoint", "demo", "--settle-slices", "4", "--largest-component", "TRUE"])
    assert settings.from_args(args) == EngineSettings(checkpoint="demo", settle_slices=4, largest_component="true")
    with pytest.raises(SettingsError, match="settle_slices"):
        settings.from_args(ap.parse_args(["--checkpoint", "demo", "--settle-slices", "-1"]))


def test_every_option_has_help_and_the_tables_in_readme_and_docs_are_the_generated_ones():
    fields = EngineSettings.options() + ServerSettings.options()
    assert all(f.metadata["help"].strip() for f in fields)
    for path, how in settings.TABLES.items():
        text = path.read_text()
        assert settings.with_table(text, settings.options_table(**how)) == text, (
            f"{path.name}: the options table differs from medsam2/settings.py; run python -m medsam2.settings --write")
    full = (settings.REPO / "docs" / "options.md").read_text()
    assert all(f"| `{f.name}` |" in full for f in fields)
