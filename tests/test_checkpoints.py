"""Manifest, downloads that fail offline, weights-only loading, config mismatch (fast)."""

import json
from pathlib import Path

import pytest
import torch

from medsam2.checkpoints import (CheckpointError, ModelSpec, build_model, load_manifest, load_model_config,
                                 resolve_spec, save_checkpoint)

REPO = Path(__file__).resolve().parent.parent


def test_manifest_names_every_supported_checkpoint_with_url_and_config():
    manifest = load_manifest(REPO / "model")
    for name in ["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large",
                 "medsam2_zhu", "medsam2"]:
        entry = manifest[name]
        assert entry["url"].startswith("https://") and entry["file"] and entry["model_config"]
        assert "sha256" in entry
        # every config it names is one the builder can load
        assert load_model_config(entry["model_config"]).model.image_encoder


def test_an_unreachable_download_says_what_failed_and_where_to_put_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"x": {
        "url": "http://127.0.0.1:9/x.pt", "file": "x.pt", "sha256": None, "model_config": "sam2.1_hiera_t"}}))
    with pytest.raises(CheckpointError) as e:
        resolve_spec("x", None, None, tmp_path)
    msg = str(e.value)
    assert "http://127.0.0.1:9/x.pt" in msg and str(tmp_path / "x.pt") in msg and "--conf checkpoint" in msg
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "x.pt").exists()


def test_the_shipped_demo_model_is_in_the_manifest_verified_and_builds_with_its_config():
    from medsam2.checkpoints import sha256_of

    entry = load_manifest(REPO / "model")["demo"]
    path = REPO / "model" / entry["file"]
    assert entry["url"] is None and entry["file"].startswith("demo/") and entry["model_config"] == "sam2.1_hiera_nano"
    assert path.stat().st_size <= 8 * 2**20 and sha256_of(path) == entry["sha256"]
    assert "python -m medsam2 demo-model" in entry["reproduce"]
    spec = resolve_spec("demo", None, None, REPO / "model")
    assert spec.checkpoint == path and spec.image_size == entry["image_size"] == 128
    model = build_model(spec)  # strict: every tensor fits the config
    assert sum(p.numel() for p in model.parameters()) < 4e6


def test_a_shipped_checkpoint_that_is_missing_or_altered_says_how_to_get_it_back(tmp_path, random_checkpoint):
    from medsam2.checkpoints import sha256_of

    entry = {"url": None, "file": "demo/d.pt", "sha256": sha256_of(random_checkpoint), "model_config": "sam2.1_hiera_micro",
             "reproduce": "python -m medsam2 demo-model model/demo/d.pt"}
    (tmp_path / "manifest.json").write_text(json.dumps({"d": entry}))
    with pytest.raises(CheckpointError) as e:
        resolve_spec("d", None, None, tmp_path)
    assert "git checkout -- model/demo/d.pt" in str(e.value) and entry["reproduce"] in str(e.value)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "d.pt").write_bytes(random_checkpoint.read_bytes())
    assert resolve_spec("d", None, None, tmp_path).checkpoint == tmp_path / "demo" / "d.pt"
    (tmp_path / "demo" / "d.pt").write_bytes(random_checkpoint.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="sha256"):
        resolve_spec("d", None, None, tmp_path)


def test_unknown_checkpoint_name_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="sam2.1_hiera_tiny"):
        resolve_spec("no-such-model", None, None, REPO / "model")


def test_unknown_model_config_is_refused_clearly():
    with pytest.raises(CheckpointError, match="unknown model_config"):
        build_model(ModelSpec("sam3_hiera_giant"))


def test_a_verified_manifest_file_with_a_wrong_digest_is_refused(tmp_path, random_checkpoint):
    target = tmp_path / "m.pt"
    target.write_bytes(random_checkpoint.read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps({"m": {
        "url": "http://127.0.0.1:9/m.pt", "file": "m.pt", "sha256": "0" * 64, "model_config": "sam2.1_hiera_micro"}}))
    with pytest.raises(CheckpointError, match="sha256"):
        resolve_spec("m", None, None, tmp_path)


class Payload:
    def __reduce__(self):  # would run code if the checkpoint were unpickled
        return (Path("/tmp/medsam2-pwned").touch, ())


def test_checkpoints_are_loaded_weights_only_so_pickled_code_never_runs(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        torch.save({"model": Payload()}, f)
    Path("/tmp/medsam2-pwned").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="weights-only"):
        build_model(ModelSpec("sam2.1_hiera_micro", checkpoint=evil))
    assert not Path("/tmp/medsam2-pwned").exists()


def test_truncated_and_mismatched_checkpoints_are_refused(tmp_path, random_checkpoint):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(random_checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        build_model(ModelSpec("sam2.1_hiera_micro", checkpoint=cut))
    with pytest.raises(CheckpointError, match="does not fit the model config"):
        build_model(ModelSpec("sam2.1_hiera_t", image_size=256, checkpoint=random_checkpoint))


def test_saved_checkpoints_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_model(ModelSpec("sam2.1_hiera_micro"))
    path = save_checkpoint(model, tmp_path / "a.pt", meta={"steps": 3})
    again = build_model(ModelSpec("sam2.1_hiera_micro", checkpoint=path))
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.load(path, weights_only=True)["meta"]["steps"] == 3


# ---------------------------------------------------------------- the public releases, in their own layouts

from release_layouts import RELEASES, write_release  # noqa: E402


def manifest_with(tmp_path, name: str, **changes) -> dict:
    """`name`'s manifest entry (changed by `changes`) in a model folder of its own under tmp_path."""
    entry = {**load_manifest(REPO / "model")[name], **changes}
    (tmp_path / "manifest.json").write_text(json.dumps({name: entry}))
    return entry


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_every_release_loads_strictly_through_its_manifest_entry_from_a_file_in_its_published_layout(tmp_path, name):
    from medsam2 import architecture

    config, dtype = RELEASES[name]
    entry = manifest_with(tmp_path, name)
    path = write_release(tmp_path / entry["file"], config, dtype)
    spec = resolve_spec(name, None, None, tmp_path, fetch=False)
    model = build_model(spec)  # strict: every key and shape of the release fits the entry's config
    stored = torch.load(path, weights_only=True)["model"]
    assert all(torch.equal(v.float(), stored[k].float()) for k, v in model.state_dict().items())
    assert spec.image_size == entry["image_size"] and model.image_size == entry["image_size"]
    held = architecture.of_state_dict(stored).describe()
    assert held.startswith("SAM 2.0 Hiera-Tiny" if name == "medsam2_zhu" else "SAM 2.1 Hiera-")


def test_a_release_of_another_architecture_is_refused_naming_what_the_file_holds(tmp_path):
    from medsam2.checkpoints import CheckpointMismatch

    entry = manifest_with(tmp_path, "medsam2_zhu")
    write_release(tmp_path / entry["file"], *RELEASES["sam2.1_hiera_small"])
    with pytest.raises(CheckpointMismatch) as e:
        resolve_spec("medsam2_zhu", None, None, tmp_path, fetch=False)
    message = str(e.value)
    assert "holds a SAM 2.1 Hiera-Small (width 96, stages 1-2-11-2)" in message
    assert "sam2_hiera_t builds a SAM 2.0 Hiera-Tiny" in message and "--conf model_config sam2.1_hiera_s" in message


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_a_release_file_given_as_a_path_is_served_with_the_config_its_tensors_match(tmp_path, name):
    config, dtype = RELEASES[name]
    path = write_release(tmp_path / "any_name.pt", config, dtype)
    spec = resolve_spec(str(path), None, None, tmp_path)
    assert spec.model_config == Path(config).stem
    assert spec.preprocess.resize == "pil_bicubic" and spec.postprocess.fill_hole_area == 8  # SAM 2's pipeline
    build_model(spec)


def test_this_projects_checkpoints_name_their_config_size_and_pipeline_in_the_file(tmp_path):
    from medsam2.frames import Preprocess
    from medsam2.postprocess import Postprocess

    spec = ModelSpec("sam2.1_hiera_nano", 96, None, Preprocess(percentiles_of="nonzero"), Postprocess(0, True))
    path = save_checkpoint(build_model(spec), tmp_path / "fine_tuned.pt")
    again = resolve_spec(str(path), None, None, tmp_path)
    assert (again.model_config, again.image_size) == ("sam2.1_hiera_nano", 96)
    assert again.preprocess == spec.preprocess and again.postprocess == spec.postprocess


def test_a_file_no_known_config_builds_is_refused_with_its_architecture(tmp_path):
    from medsam2.checkpoints import CheckpointMismatch

    state = torch.load(write_release(tmp_path / "t.pt", *RELEASES["sam2.1_hiera_tiny"]), weights_only=True)["model"]
    state = {k: v for k, v in state.items() if ".blocks.11." not in k}  # a Hiera with one block fewer
    torch.save({"model": state}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointMismatch, match=r"holds a SAM 2.1 Hiera \(width 96, stages 1-2-7-1\), which none"):
        resolve_spec(str(tmp_path / "odd.pt"), None, None, tmp_path)
    with pytest.raises(CheckpointMismatch, match="not a SAM 2 checkpoint"):
        torch.save({"model": {"weight": torch.zeros(3)}}, tmp_path / "other.pt")
        resolve_spec(str(tmp_path / "other.pt"), None, None, tmp_path)
