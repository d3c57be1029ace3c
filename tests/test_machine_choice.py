"""Speed choices made once per machine (medsam2/machine_choice.py): a reduced precision only by a clear
margin, one measurement however many servers start together, the record reused after a restart."""

import threading
import time

import pytest

from medsam2 import machine_choice
from medsam2.machine_choice import REDUCED_MARGIN, decide, pick


def test_exact_options_race_and_a_reduced_one_needs_a_clear_margin():
    exact = {"torch (fp32)", "onnxruntime (fp32)"}
    assert pick({"torch (fp32)": 100, "onnxruntime (fp32)": 90, "openvino (bf16)": 85}, exact) == "onnxruntime (fp32)"
    fast = 90 / REDUCED_MARGIN
    assert pick({"torch (fp32)": 100, "onnxruntime (fp32)": 90, "openvino (bf16)": fast}, exact) == "openvino (bf16)"
    assert pick({"openvino (bf16)": 50}, exact) == "openvino (bf16)"  # nothing exact available
    assert pick({"fp32": 100, "bf16": 98}, {"fp32"}) == "fp32"  # the AMD EPYC case: within noise, exact wins


def test_servers_starting_together_measure_once_and_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM2_CHOICES", str(tmp_path / "choices.json"))
    calls, answers = [], []

    def measure():
        calls.append(1)
        time.sleep(0.3)  # long enough for the other starts to arrive while it runs
        return {"chosen": f"option {len(calls)}"}

    threads = [threading.Thread(target=lambda: answers.append(decide("x", "k", measure)["chosen"])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and answers == ["option 1"] * 4
    assert decide("x", "k", lambda: pytest.fail("measured again"))["chosen"] == "option 1"  # a restart
    assert decide("x", "other key", lambda: {"chosen": "new"})["chosen"] == "new"


def test_precision_auto_is_fp32_without_bf16_units_and_measured_once_with_them(tmp_path, monkeypatch, random_checkpoint):
    from medsam2.checkpoints import ModelSpec, build_model

    monkeypatch.setenv("MEDSAM2_CHOICES", str(tmp_path / "choices.json"))
    model = build_model(ModelSpec("sam2.1_hiera_micro", checkpoint=random_checkpoint))
    monkeypatch.setattr(machine_choice, "cpu_has_bf16_units", lambda: False)
    assert machine_choice.cpu_precision(model) == "fp32" and not (tmp_path / "choices.json").exists()
    monkeypatch.setattr(machine_choice, "cpu_has_bf16_units", lambda: True)
    first = machine_choice.cpu_precision(model)
    import json

    (entry,) = json.loads((tmp_path / "choices.json").read_text())["precision"].values()
    assert first == entry["chosen"] == pick(entry["ms_per_slice"], {"fp32"})
    assert machine_choice.cpu_precision(model) == first
