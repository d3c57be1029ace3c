"""The image encoder run by ONNX Runtime or OpenVINO (medsam2/encoder_runtime.py) on the demo model:
masks within the stated tolerance of PyTorch fp32, one export per weights and size, and PyTorch with
the reason logged when the exported encoder cannot be trusted. Then the option through the server."""

import logging

import numpy as np
import onnx
import pytest
import requests
import torch

from medsam2.checkpoints import ModelSpec, build_model
from medsam2.clicks import interior_point
from medsam2.encoder_runtime import choose_encoder, weights_digest
from medsam2.phantoms import PHANTOM_LABELS, SAMPLE_SHAPE, make_phantom
from medsam2.propagation import Segmenter
from medsam2.settings import EngineSettings
from medsam2.prompts import parse_objects
from medsam2.evaluation.metrics import dice

from conftest import DEMO_CONFIG, SAMPLE_PHANTOM, start_server, stop_server

# the tolerance stated in docs/speed.md: fp32 runtimes give PyTorch's masks (at most 0.01 % of voxels
# differ); reduced precision (ONNX Runtime int8, OpenVINO bf16) Dice >= 0.98 with PyTorch fp32
TOLERANCE = {"fp32": (0.999, 1e-4), "reduced": (0.98, 5e-3)}


@pytest.fixture(scope="module")
def model(trained_checkpoint):
    return build_model(ModelSpec(DEMO_CONFIG, checkpoint=trained_checkpoint))


@pytest.fixture(scope="module")
def case():
    """The bundled sample's phantom_000 and a click on its organ's middle slice."""
    ph = make_phantom(SAMPLE_SHAPE, seed=0)
    organ = ph.label == PHANTOM_LABELS["organ"]
    ks = np.nonzero(organ.any(axis=(0, 1)))[0]
    k = int(ks[len(ks) // 2])
    i, j = interior_point(organ[:, :, k].T)
    return ph.image, parse_objects({"foreground": [[i, j, k]]}, ph.image.shape)


def segment(model, encoder, case, precision="fp32"):
    image, objects = case
    seg = Segmenter(model, EngineSettings(precision=precision), encoder=encoder)
    return seg.segment(seg.open(image), objects).label == 1


@pytest.fixture(scope="module")
def reference(model, case):
    return segment(model, None, case)


@pytest.mark.parametrize("runtime, precision, model_precision, tolerance", [
    ("onnxruntime", "fp32", "fp32", "fp32"), ("openvino", "fp32", "fp32", "fp32"),
    ("onnxruntime", "int8", "fp32", "reduced"), ("openvino", "auto", "fp32", "reduced"),
    ("torch", "auto", "bf16", "reduced"),  # the whole model in bf16 (the server's default on CPUs with AMX)
    ("openvino", "auto", "bf16", "reduced"),  # both: the server's defaults where OpenVINO is timed fastest on an AMX CPU
])
def test_masks_are_within_the_tolerance_of_pytorch_fp32(model, case, reference, tmp_path_factory, runtime, precision,
                                                        model_precision, tolerance):
    choice = choose_encoder(model, runtime, precision, model_dir=tmp_path_factory.mktemp("exports"))
    assert choice.runtime == runtime and choice.fallback is None
    assert (choice.encoder is None) == (runtime == "torch")
    mask = segment(model, choice.encoder, case, model_precision)
    least_dice, most_differing = TOLERANCE[tolerance]
    assert reference.sum() > 1000
    assert dice(mask, reference) >= least_dice and (mask != reference).mean() <= most_differing, \
        (choice.describe(), dice(mask, reference), (mask != reference).mean())


def test_one_export_per_weights_and_a_new_checkpoint_gets_its_own(model, trained_checkpoint, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medsam2.encoder_runtime")
    first = choose_encoder(model, "onnxruntime", "fp32", model_dir=tmp_path)
    exports = sorted((tmp_path / "exported").glob("*.onnx"))
    assert len(exports) == 1 and weights_digest(model) in exports[0].name and "128px" in exports[0].name
    stamp = exports[0].stat().st_mtime_ns
    caplog.clear()
    again = choose_encoder(model, "onnxruntime", "fp32", model_dir=tmp_path)
    assert again.fallback is None and "exported" not in caplog.text  # read back, not exported again
    assert exports[0].stat().st_mtime_ns == stamp

    # fine-tuned weights (one encoder weight changed): another export, whose features follow the new weights
    tuned = build_model(ModelSpec(DEMO_CONFIG, checkpoint=trained_checkpoint))
    with torch.no_grad():
        tuned.image_encoder.trunk.patch_embed.proj.weight.mul_(1.5)
    choice = choose_encoder(tuned, "onnxruntime", "fp32", model_dir=tmp_path)
    assert choice.fallback is None and len(list((tmp_path / "exported").glob("*.onnx"))) == 2
    frames = torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        new = tuned.forward_image(frames)["backbone_fpn"][-1]
        old = model.forward_image(frames)["backbone_fpn"][-1]
    out = choice.encoder.forward_image(frames)["backbone_fpn"][-1]
    assert torch.allclose(out, new, atol=1e-4) and not torch.allclose(out, old, atol=1e-2)


def test_an_export_that_disagrees_with_pytorch_falls_back_to_pytorch_and_says_why(model, case, reference, tmp_path,
                                                                                    caplog):
    choose_encoder(model, "onnxruntime", "fp32", model_dir=tmp_path)
    path = next((tmp_path / "exported").glob("*.onnx"))
    graph = onnx.load(str(path))  # a damaged export: its largest weight scaled
    largest = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = onnx.numpy_helper.to_array(largest) * 3.0
    largest.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), largest.name))
    onnx.save(graph, str(path))
    caplog.set_level(logging.WARNING, logger="medsam2.encoder_runtime")
    choice = choose_encoder(model, "onnxruntime", "fp32", model_dir=tmp_path)
    assert choice.runtime == "torch" and choice.encoder is None and "differs from PyTorch" in choice.fallback
    assert "PyTorch encodes instead" in caplog.text and "differs from PyTorch" in caplog.text
    assert np.array_equal(segment(model, choice.encoder, case), reference)


def test_auto_serves_the_fastest_exact_runtime_and_keeps_the_choice_for_the_machine(model, trained_checkpoint, tmp_path,
                                                                                     monkeypatch, caplog):
    import json

    from medsam2.machine_choice import pick

    monkeypatch.setenv("MEDSAM2_CHOICES", str(tmp_path / "choices.json"))
    caplog.set_level(logging.INFO, logger="medsam2.encoder_runtime")
    choice = choose_encoder(model, "auto", model_dir=tmp_path / "model_a")
    (entry,) = json.loads((tmp_path / "choices.json").read_text())["encoder_runtime"].values()
    timed = entry["ms_per_slice"]
    exact = {name for name in timed if name.endswith("(fp32)") or name.endswith("(f32)")}
    assert len(exact) == 3 and len(timed) >= 4 and choice.fallback is None
    assert choice.describe() == pick(timed, exact)
    # a restart with a fresh model folder (and fine-tuned weights: speed does not depend on them) takes
    # the recorded choice without timing again: the same runtime, the same masks
    caplog.clear()
    tuned = build_model(ModelSpec(DEMO_CONFIG, checkpoint=trained_checkpoint))
    with torch.no_grad():
        tuned.image_encoder.trunk.patch_embed.proj.weight.mul_(1.5)
    again = choose_encoder(tuned, "auto", model_dir=tmp_path / "model_b")
    assert again.describe() == choice.describe() and "ms per slice" not in caplog.text


def test_unknown_runtimes_and_precisions_are_refused_with_what_is_available(model):
    with pytest.raises(ValueError, match="encoder_runtime must be one of"):
        choose_encoder(model, "tensorrt", "auto")
    with pytest.raises(ValueError, match="not available with auto"):
        choose_encoder(model, "auto", "int8")
    with pytest.raises(ValueError, match="not available with openvino"):
        choose_encoder(model, "openvino", "int8")


@pytest.mark.e2e
def test_the_server_encodes_with_the_runtime_it_was_started_with(studies, trained_checkpoint, tmp_path):
    server = start_server(studies, {"checkpoint": trained_checkpoint, "model_config": DEMO_CONFIG,
                                    "model_dir": tmp_path / "model", "encoder_runtime": "onnxruntime"},
                          tmp_path / "server.log")
    try:
        r = server.post_infer(SAMPLE_PHANTOM, {"foreground": [[60, 60, 24]]}, output="json")
        assert r.status_code == 200, r.text
        assert r.json()["engine"]["encoder"] == "onnxruntime (fp32)"
        assert len(list((tmp_path / "model" / "exported").glob("*.onnx"))) == 1
        info = requests.get(f"{server.url}/info/", timeout=30)
        assert info.status_code == 200
    finally:
        stop_server(server.proc)
    with pytest.raises(RuntimeError, match="encoder_runtime must be one of"):
        start_server(studies, {"checkpoint": trained_checkpoint, "model_config": DEMO_CONFIG,
                               "model_dir": tmp_path / "model", "encoder_runtime": "tensorrt"}, tmp_path / "bad.log")
