"""The demo model's recipe (medsam2/demo_model.py): which cases each stage sees, and where a stage starts."""

import pytest
import torch

from medsam2 import demo_model


@pytest.mark.parametrize("stage_pairs", [demo_model.stage1_pairs, demo_model.stage2_pairs])
def test_a_stage_with_phantoms_of_four_sizes_adds_them_to_the_shipped_cases(stage_pairs):
    shipped, sized = stage_pairs("shipped"), stage_pairs("sized")
    assert {img.shape for img, _ in shipped} == {demo_model.SHAPE}
    assert {img.shape for img, _ in sized} == {demo_model.SHAPE, *demo_model.PHANTOM_SHAPES}
    assert len(sized) == len(shipped) + len(demo_model.BROAD_PHANTOMS)
    with pytest.raises(ValueError, match="shipped, sized"):
        stage_pairs("phantoms")


def test_stage_2_on_phantoms_of_four_sizes_validates_on_a_held_out_phantom_of_each_size():
    """Its best weights are chosen where organ clicks of every size count, on phantoms it never saw."""
    shipped, sized = demo_model.stage2_validation_pairs("shipped"), demo_model.stage2_validation_pairs("sized")
    assert len(shipped) == len(demo_model.VALIDATION)
    added = sized[len(shipped):]
    assert sorted(img.shape for img, _ in added) == sorted(demo_model.PHANTOM_SHAPES)
    trained = {img.tobytes() for img, _ in demo_model.stage2_pairs("sized")}
    assert not any(img.tobytes() in trained for img, _ in added)


def test_stage_2_from_a_given_stage_1_model_starts_from_its_weights(tmp_path, trained_checkpoint):
    """`demo-model OUT --from-stage1 M` trains no stage 1: stage 2 starts from M (no stage 3 here: it
    would add its 1000 default steps to the suite). Given the shipped demo
    model as M, stage 2's validation starts where that tracking model is (about 0.85), not where a
    one-step stage 1 from random weights would leave it. One step does not beat M by the promotion
    margin; the model written is then M's weights (in fp16), not nothing."""
    out = tmp_path / "demo.pt"
    r = demo_model.train_demo_model(out, demo_model.DemoRecipe(prompt_steps=1, track_steps=1, stage3_steps=0,
                                                                  from_stage1=trained_checkpoint), log=lambda e: None)
    assert r.initial_dice > 0.7, r.initial_dice
    assert not out.with_name("demo_stage1.pt").exists()
    assert r.published == out and r.best_dice < r.initial_dice + 0.01
    written = torch.load(out, weights_only=True)["model"]
    start = torch.load(trained_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(written[k], v.half() if v.is_floating_point() else v) for k, v in start.items())


def test_stage_2_with_twins_counted_twice_keeps_them_most_of_the_clips():
    """`sized+twins` lists every training twin twice, so that they are most of what stage 2 samples (a
    measured try: docs/demo-model.md, "Stage 2 on phantoms of four sizes")."""
    sized, doubled = demo_model.stage2_pairs("sized"), demo_model.stage2_pairs("sized+twins")
    twins = {img.tobytes() for img, _ in demo_model.twin_pairs()}
    count = lambda pairs: sum(img.tobytes() in twins for img, _ in pairs)  # noqa: E731
    assert count(sized) == len(twins) and count(doubled) == 2 * len(twins)
    assert count(doubled) / len(doubled) > 0.6 > count(sized) / len(sized)


@pytest.mark.parametrize("wrong, choices", [({"stage2_mix": "sized_twins"}, "shipped, sized, sized\\+twins"),
                                            ({"stage3_mix": "twin"}, "broad, twins")])
def test_a_wrong_later_stage_mix_is_refused_before_stage_1_trains(tmp_path, wrong, choices):
    """Stage 1 takes minutes and stages 1 and 2 an hour; a mistyped later mix must not be found after them."""
    out = tmp_path / "demo.pt"
    with pytest.raises(ValueError, match=choices):
        demo_model.train_demo_model(out, demo_model.DemoRecipe(prompt_steps=1, track_steps=1, stage3_steps=1, **wrong),
                                    log=lambda e: None)
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


def test_the_recipe_writes_its_last_stage_to_out_and_hands_each_stage_the_last_ones_file(tmp_path):
    """The reproduce command (`demo-model model/demo/medsam2_demo.pt`) runs three stages; each starts
    from the previous one's file and the last writes OUT. With `--stage3-steps 0` stage 2 writes OUT."""
    out = tmp_path / "demo.pt"
    prompting, tracking, stage3 = demo_model.stage_configs(out)
    assert demo_model.DemoRecipe().stage3_steps > 0 and stage3.out_checkpoint == out
    assert tracking.init_checkpoint == prompting.out_checkpoint != out
    assert stage3.init_checkpoint == tracking.out_checkpoint != out
    _, tracking, _ = demo_model.stage_configs(out, demo_model.DemoRecipe(stage3_steps=0))
    assert tracking.out_checkpoint == out


def test_the_command_says_what_is_wrong_with_a_recipe_and_trains_nothing(tmp_path, capsys):
    from medsam2.__main__ import main

    assert main(["demo-model", str(tmp_path / "demo.pt"), "--stage3-mix", "twin"]) == 2
    assert "stage 3 mix 'twin': one of broad, twins" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
