"""Trainer parts: clip sampling, prompt simulation, the loss, atomic publishing, DDP (CPU)."""

import threading

import numpy as np
import pytest
import torch

from conftest import REPO
from medsam2 import predictor
from medsam2.checkpoints import ModelSpec, build_model, save_checkpoint
from medsam2.phantoms import make_phantom
from medsam2.training.clips import ClipSampler, LabelledVolume
from medsam2.training.objective import ClipObjective
from medsam2.training.prompt_sim import PromptSettings, add_corrections, initial_points


@pytest.fixture(scope="module")
def volumes():
    return [LabelledVolume(p.image, p.label) for p in (make_phantom((48, 48, 20), seed=s) for s in (1, 2))]


def test_clips_are_consecutive_slices_starting_where_the_structure_is(volumes):
    sampler = ClipSampler(volumes, image_size=64, clip_len=6, max_objects=3, seed=0)
    directions = set()
    for _ in range(40):
        clip = sampler.sample()
        steps = set(np.diff(clip.slices))
        assert len(clip.slices) == 6 and steps in ({1}, {-1})
        directions |= steps
        assert clip.frames.shape == (6, 3, 64, 64) and clip.masks.shape == (6, len(clip.values), 64, 64)
        assert clip.masks[0, 0].any()  # the first object is visible on the prompted frame
        assert 1 <= len(clip.values) <= 3 and len(set(clip.values)) == len(clip.values)
    assert directions == {1, -1}


def test_clips_turn_around_at_the_end_of_the_volume_and_2d_images_give_one_frame(volumes):
    sampler = ClipSampler(volumes, image_size=32, clip_len=8)
    assert sampler.clip_slices(20, 18, reverse=False) == [18, 17, 16, 15, 14, 13, 12, 11]
    assert sampler.clip_slices(20, 2, reverse=True) == [2, 3, 4, 5, 6, 7, 8, 9]
    img = make_phantom((48, 48, 20), seed=3)
    flat = LabelledVolume(img.image[:, :, 10], img.label[:, :, 10])
    clip = ClipSampler([flat], image_size=32, clip_len=8).sample()
    assert clip.frames.shape[0] == 1 and clip.slices == [0]


def test_half_the_clips_run_past_the_end_of_the_structure(volumes):
    sampler = ClipSampler(volumes, image_size=32, clip_len=8, max_objects=1, seed=1, p_exit=0.5)
    leaves = 0
    for _ in range(60):
        clip = sampler.sample()
        leaves += int(not clip.masks[-1, 0].any())
    assert 10 <= leaves <= 50


def test_each_saved_structure_is_followed_as_often_as_any_other_however_the_labels_are_spread():
    """One image with one label and one with three: drawn by structure, each of the four leads a quarter of
    the clips; drawn by image (the default), the lone label leads half of them."""
    lone = np.zeros((24, 24, 6), np.int64)
    lone[4:10, 4:10, 1:5] = 1
    three = np.zeros_like(lone)
    three[4:10, 4:10, 1:5], three[14:20, 4:10, 1:5], three[4:10, 14:20, 1:5] = 1, 2, 3
    rng = np.random.default_rng(0)
    volumes = [LabelledVolume(rng.random(lab.shape).astype(np.float32), lab) for lab in (lone, three)]
    shares = {}
    for draw in ("structure", "image"):
        sampler = ClipSampler(volumes, image_size=32, clip_len=2, seed=0, draw=draw)
        firsts = [(c.volume, c.values[0]) for c in (sampler.sample() for _ in range(800))]
        shares[draw] = {s: firsts.count(s) / len(firsts) for s in [(0, 1), (1, 1), (1, 2), (1, 3)]}
    assert all(0.2 < share < 0.3 for share in shares["structure"].values()), shares
    assert 0.45 < shares["image"][(0, 1)] < 0.55, shares
    with pytest.raises(ValueError, match="draw must be one of structure, image"):
        ClipSampler(volumes, image_size=32, draw="volume")


def test_simulated_prompts_lie_on_the_structure_and_corrections_on_the_errors():
    rng = np.random.default_rng(0)
    truth = np.zeros((2, 32, 32), bool)
    truth[0, 5:15, 10:20] = True
    truth[1, 20:30, 0:8] = True
    clicks = initial_points(truth, "click", rng, PromptSettings())
    for n, (x, y) in enumerate(clicks["point_coords"][:, 0].tolist()):
        assert truth[n, int(y), int(x)] and clicks["point_labels"][n, 0] == 1
    boxes = initial_points(truth, "box", rng, PromptSettings(box_jitter=0.0))
    assert boxes["point_coords"][0].tolist() == [[10.0, 5.0], [20.0, 15.0]]
    assert boxes["point_labels"][0].tolist() == [2, 3]
    pred = truth.copy()
    pred[0, 5:15, 10:15] = False  # missed part of object 0; object 1 exact
    more = add_corrections(clicks, pred, truth)
    assert more["point_coords"].shape == (2, 2, 2)
    x, y = more["point_coords"][0, 1].tolist()
    assert more["point_labels"][0, 1] == 1 and 10 <= x < 15 and 5 <= y < 15
    assert more["point_labels"][1, 1] == -1  # nothing to correct: padding


def test_loss_is_near_zero_for_a_perfect_prediction_and_large_for_a_wrong_one():
    objective = ClipObjective(torch.nn.Linear(1, 1))
    truth = torch.zeros(2, 16, 16, dtype=torch.bool)
    truth[0, 4:12, 4:12] = True  # object 1 is absent on this frame

    def run(mask_logits, ious, obj_logits):
        predictor._captured.sam_outputs = (None, mask_logits, ious, None, None, None, obj_logits)
        return {k: float(v) for k, v in objective.frame_loss(truth).items()}

    perfect = torch.where(truth, 30.0, -30.0)[:, None].float()
    good = run(perfect, torch.tensor([[1.0], [1.0]]), torch.tensor([[20.0], [-20.0]]))
    assert good["mask"] < 1e-3 and good["iou"] < 1e-3 and good["object_score"] < 1e-3
    wrong = run(-perfect, torch.tensor([[1.0], [1.0]]), torch.tensor([[-20.0], [20.0]]))
    assert wrong["mask"] > 1.0 and wrong["iou"] > 0.9 and wrong["object_score"] > 10
    # the best of several candidates is the one scored
    two = torch.cat([-perfect, perfect], dim=1)
    assert run(two, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([[20.0], [-20.0]]))["mask"] < 1e-3


def test_a_2d_image_prompted_with_its_true_mask_is_a_step_with_nothing_to_learn_not_a_crash():
    """A one-frame clip whose prompt is the true mask gives no loss term (the mask is passed through as
    the output): the training step must go on, not fail on backward()."""
    from medsam2.training.loop import train_step

    torch.manual_seed(0)
    model = build_model(ModelSpec("sam2.1_hiera_micro"), for_training=True)
    img = make_phantom((48, 48, 20), seed=3)
    flat = LabelledVolume(img.image[:, :, 10], img.label[:, :, 10])
    sampler = ClipSampler([flat], image_size=model.image_size, clip_len=8, seed=0)
    objective = ClipObjective(model, prompts=PromptSettings(p_mask=1.0))
    parts = train_step(objective, sampler, np.random.default_rng(0), n_clips=2, autocast=torch.enable_grad)
    assert parts["loss"] == 0.0
    assert all(p.grad is None for p in model.parameters())


def test_publishing_is_atomic_for_a_concurrent_reader(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelSpec("sam2.1_hiera_micro"))
    path = save_checkpoint(model, tmp_path / "served.pt", meta={"n": 0})
    seen, errors, done = set(), [], threading.Event()

    def reader():
        while not done.is_set():
            try:
                seen.add(torch.load(path, weights_only=True)["meta"]["n"])
            except Exception as e:  # a partial file would land here
                errors.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    for n in range(1, 8):
        save_checkpoint(model, path, meta={"n": n})
    done.set()
    t.join()
    assert not errors and len(seen) >= 2
    assert not list(tmp_path.glob("*.part"))


def _deterministic_objective(seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelSpec("sam2.1_hiera_micro"), for_training=True)
    for m in model.modules():  # no dropout: both runs must see the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout_p"):
            m.dropout_p = 0.0
    return ClipObjective(model, prompts=PromptSettings(p_mask=0.0, p_two_cond_frames=0.0, max_corrections=1))


def _clips():
    volumes = [LabelledVolume(p.image, p.label) for p in (make_phantom((48, 48, 16), seed=s) for s in (5, 6))]
    sampler = ClipSampler(volumes, image_size=128, clip_len=3, max_objects=2, seed=3)
    return [sampler.sample(), sampler.sample()]


def _ddp_rank(rank, world, port, out):
    import os

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    objective = _deterministic_objective()
    ddp = torch.nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
    clip = _clips()[rank]
    ddp(clip, np.random.default_rng(100 + rank))["loss"].backward()
    if rank == 0:
        torch.save({n: p.grad.clone() for n, p in objective.model.named_parameters() if p.grad is not None}, out)
    torch.distributed.destroy_process_group()


def test_ddp_with_two_gloo_processes_gives_the_single_process_gradients(tmp_path):
    from conftest import free_port

    out = tmp_path / "ddp_grads.pt"
    torch.multiprocessing.spawn(_ddp_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    ddp_grads = torch.load(out, weights_only=True)

    objective = _deterministic_objective()
    clips = _clips()
    loss = sum(objective(c, np.random.default_rng(100 + r))["loss"] for r, c in enumerate(clips)) / 2
    loss.backward()
    single = {n: p.grad for n, p in objective.model.named_parameters() if p.grad is not None}
    assert set(single) == set(ddp_grads) and len(single) > 50
    for name, g in single.items():
        torch.testing.assert_close(ddp_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


# ---- does the loss teach the memory? (medsam2.training.diagnostics) -----------------------------

@pytest.fixture(scope="module")
def twin_clips():
    from medsam2.memory_phantoms import make_twins

    volumes = [LabelledVolume(p.image, p.label) for p in (make_twins(seed=s) for s in (3, 4))]
    sampler = ClipSampler(volumes, image_size=128, clip_len=6, max_objects=2, seed=0, p_exit=0.0)
    return [sampler.sample() for _ in range(2)]


@pytest.mark.parametrize("config", ["sam2.1_hiera_micro", "sam2.1_hiera_nano"])
def test_the_loss_on_tracked_slices_reaches_memory_attention_encoder_and_pointers(config, twin_clips):
    from medsam2.training.diagnostics import tracked_gradient_norms

    torch.manual_seed(0)
    model = build_model(ModelSpec(config), for_training=True)
    norms = tracked_gradient_norms(model, twin_clips, np.random.default_rng(0))
    assert norms["memory_attention"] > 1e-3 and norms["memory_encoder"] > 1e-3
    assert norms["mask_decoder"] > 1e-3 and norms["image_encoder"] > 1e-3
    if config == "sam2.1_hiera_micro":  # stock SAM 2.1 memory attention reads the object pointers
        assert norms["object_pointers"] > 1e-4
    assert all(p.grad is None for p in model.parameters())  # the measurement leaves no gradient behind


def test_the_prompted_slices_alone_teach_the_memory_nothing(twin_clips):
    """The measurement can tell the two apart: memory attention runs on tracked slices only, so a loss
    on prompted slices alone gives it no gradient (the tracked weight at 0)."""
    from medsam2.training.diagnostics import gradient_norms
    from medsam2.training.objective import LossWeights

    torch.manual_seed(0)
    model = build_model(ModelSpec("sam2.1_hiera_micro"), for_training=True)
    objective = ClipObjective(model, LossWeights(tracked=0.0), PromptSettings(p_mask=0.0))
    objective(twin_clips[0], np.random.default_rng(0))["loss"].backward()
    norms = gradient_norms(model)
    assert norms["memory_attention"] == 0.0 and norms["mask_decoder"] > 1e-3


def test_loss_parts_report_prompted_and_tracked_slices_and_pointer_distances_use_the_volume(twin_clips):
    torch.manual_seed(0)
    model = build_model(ModelSpec("sam2.1_hiera_micro"), for_training=True)
    seen = []
    original = model._prepare_memory_conditioned_features

    def spy(*args, **kwargs):
        seen.append(kwargs["num_frames"])
        return original(*args, **kwargs)

    model._prepare_memory_conditioned_features = spy
    parts = ClipObjective(model, prompts=PromptSettings(p_mask=0.0))(twin_clips[0], np.random.default_rng(0))
    assert {"loss", "mask", "iou", "object_score", "prompted_mask", "tracked_mask"} <= set(parts)
    assert parts["tracked_mask"] > 0 and parts["prompted_mask"] > 0
    # SAM 2 normalises pointer distances by min(num_frames, 16) - 1: the volume's 32 slices, not the clip's 6
    assert set(seen) == {32}


def test_teacher_forced_memories_are_the_true_masks_encoded(twin_clips):
    from medsam2.training.objective import LossWeights

    torch.manual_seed(0)
    model = build_model(ModelSpec("sam2.1_hiera_nano"), for_training=True).eval()
    objective = ClipObjective(model, LossWeights(), PromptSettings(p_mask=0.0, p_true_memory=1.0, p_two_cond_frames=0.0))
    clip = twin_clips[0]
    encoded = []
    original = model._encode_new_memory

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        encoded.append((kwargs["pred_masks_high_res"].detach(), kwargs["is_mask_from_pts"]))
        return out

    model._encode_new_memory = spy
    with torch.no_grad():
        objective(clip, np.random.default_rng(0))
    tracked = [m for m, from_pts in encoded if not from_pts][-(clip.frames.shape[0] - 1):]
    for t, masks in enumerate(tracked, start=1):  # the memory of tracked frame t: its true masks, +-20 logits
        assert torch.equal(masks > 0, clip.masks[t][:, None]) and masks.abs().min() == 20


def test_a_candidate_that_does_not_beat_the_served_model_by_the_margin_is_not_published(tmp_path):
    from medsam2.training.loop import TrainConfig, train

    pairs = [(p.image, p.label) for p in (make_phantom((32, 32, 8), seed=s) for s in (41, 42))]
    out = tmp_path / "finetuned.pt"
    cfg = TrainConfig(model_config="sam2.1_hiera_micro", out_checkpoint=out, max_steps=2, val_every=1, clip_len=3,
                      clips_per_step=1, warmup_steps=1, promote_margin=1.0)  # Dice can never gain 1.0
    result = train(cfg, pairs[:1], pairs[1:], log=lambda entry: None)
    assert result.published is None and not out.exists()
    assert "does not beat the served model" in result.not_promoted


def test_a_run_given_its_own_score_publishes_the_weights_that_score_best_not_the_last(tmp_path):
    """`train(..., score=)` (the demo recipe's stage 3 judges twin clicks with it): the score is asked
    at the start and at each validation, with the model in eval mode, and the weights it rated highest
    are the ones published."""
    from medsam2.training.loop import TrainConfig, train

    pairs = [(p.image, p.label) for p in (make_phantom((32, 32, 8), seed=s) for s in (41, 42))]
    ratings, seen = iter([0.2, 0.9, 0.5]), []  # start, step 1, step 2

    def score(model):
        assert not model.training
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return next(ratings)

    cfg = TrainConfig(model_config="sam2.1_hiera_micro", out_checkpoint=tmp_path / "out.pt", max_steps=2, val_every=1,
                      clip_len=3, clips_per_step=1, warmup_steps=1, lr=1e-3)
    result = train(cfg, pairs[:1], pairs[1:], log=lambda entry: None, score=score)
    assert len(seen) == 3 and (result.initial_dice, result.best_dice) == (0.2, 0.9)
    published = torch.load(result.published, weights_only=True)["model"]
    assert all(torch.equal(published[k], v) for k, v in seen[1].items())
    assert not all(torch.equal(published[k], v) for k, v in seen[2].items())


def test_a_time_limit_that_cannot_hold_the_steps_shortens_the_schedule_to_what_it_holds():
    from medsam2.training.schedule import TIME_SAFETY, StepPlan

    plan = StepPlan(max_steps=1000, max_minutes=14, warmup=20)
    assert plan.timed and plan.total == 1000
    # 1.26 s a step (the demo model on Colin27, 2 AMD cores), 815 s left after the warm-up, a 10-s
    # validation every 200 steps and one at the end
    assert [step for step in range(1, 400) if plan.due(step)] == [20, 120, 220, 320]
    total = plan.fit(20, 1.26, 815.0, validation_s=10.0, val_every=200)
    assert total == 20 + int((TIME_SAFETY * 815.0 - 10.0) / (1.26 + 10.0 / 200))
    assert plan.factor(20) == 1.0 and plan.factor(total) == 0.0 and 0 < plan.factor(total - 50) < 0.1
    assert plan.fit(120, 1.5, 500.0) == 120 + int(TIME_SAFETY * 500.0 / 1.5)  # slower steps: refitted shorter
    assert plan.fit(620, 1.5, 0.5) == 621  # never before the next step
    assert StepPlan(1000, 14, 20).fit(20, 0.5, 815.0) == 1000  # a fast machine runs every step
    assert not StepPlan(1000, None, 20).timed  # no limit: nothing timed, the same run on every machine


def test_a_run_with_a_time_limit_ends_its_schedule_inside_it(tmp_path, monkeypatch):
    """Far more steps than the limit holds: the run stops by its plan, with the learning rate annealed,
    not cut by the limit at its peak (what a run on a slow machine published before). The run's clock
    advances half a second each time it is read, so that the test does not depend on this machine's speed."""
    from medsam2.training import loop

    ticks = iter(range(10**6))
    monkeypatch.setattr(loop, "clock", lambda: 0.5 * next(ticks))
    pairs = [(p.image, p.label) for p in (make_phantom((32, 32, 8), seed=s) for s in (41, 42))]
    cfg = loop.TrainConfig(model_config="sam2.1_hiera_micro", out_checkpoint=tmp_path / "out.pt", max_steps=100_000,
                           max_minutes=0.5, clip_len=3, clips_per_step=1, warmup_steps=5, lr=1e-3)
    log = []
    result = loop.train(cfg, pairs, [], log=log.append)
    assert 5 < result.steps == result.chosen["planned_steps"] < 100_000
    assert log[-1]["lr"] < 0.05 * 1e-3 and log[-1]["elapsed_s"] < 30
    assert result.published is not None


def test_the_default_run_starts_from_the_served_model_and_trains_as_it_is_served(tmp_path):
    """`/train`'s TrainConfig (training/defaults.py): from the served weights and their input pipeline, a
    default-length run bounded by 14 minutes, and, where the server's field of view is on, validated with
    it and with half its clips in windows; a request's values win."""
    from medsam2.frames import Preprocess
    from medsam2.training.defaults import default_run

    spec = ModelSpec("sam2.1_hiera_micro", image_size=64, checkpoint=tmp_path / "served.pt",
                     preprocess=Preprocess(uint8=True, resize="pil_bicubic"))
    cfg = default_run(spec, tmp_path / "out.pt")
    assert (cfg.init_checkpoint, cfg.image_size, cfg.preprocess) == (spec.checkpoint, 64, spec.preprocess)
    assert (cfg.max_steps, cfg.max_minutes, cfg.clips_per_step) == (2000, 14.0, 2)
    assert cfg.field_of_view == "off" and cfg.augment.p_window == 0
    windowed = default_run(spec, tmp_path / "out.pt", "auto", max_steps=50, max_minutes=None)
    assert windowed.field_of_view == "auto" and windowed.augment.p_window == 0.5
    assert (windowed.max_steps, windowed.max_minutes) == (50, None)


def test_a_small_model_learns_to_track_as_the_demo_model_did_and_a_large_pretrained_one_as_sam2_does():
    """Fine-tuned on Colin27's left subcortical structures with SAM 2's own recipe, the demo model lost
    them while tracking (one-click Dice 0.45, right-side counterparts 0.66); with half the clips
    remembered from true masks and the memory modules at 3 times the lr, 0.64 and 0.74
    (benchmarks/fine_tune_tracking.py). A large pretrained SAM 2 keeps SAM 2's recipe."""
    from medsam2.training.loop import TrackingRecipe

    small = build_model(ModelSpec("sam2.1_hiera_nano"))
    large = build_model(ModelSpec("sam2.1_hiera_t", image_size=256))
    assert TrackingRecipe.for_model(small, from_checkpoint=True) == TrackingRecipe(p_true_memory=0.5, memory_lr_scale=3.0)
    assert TrackingRecipe.for_model(large, from_checkpoint=True) == TrackingRecipe(p_true_memory=0.0, memory_lr_scale=1.0)
    assert TrackingRecipe.for_model(large, from_checkpoint=False) == TrackingRecipe(p_true_memory=0.5, memory_lr_scale=3.0)


@pytest.mark.parametrize("explicit", [False, True])
def test_a_default_run_remembers_half_its_clips_from_true_masks_and_trains_memory_faster(monkeypatch, tmp_path, explicit):
    """What a run does with the recipe: the real train() on phantoms from random weights (a small
    model), watched at the two places the recipe acts. Settings given explicitly win."""
    from medsam2.training import loop
    from medsam2.training.loop import TrainConfig, train

    clips, scales = [], []
    forward, remember, groups = ClipObjective.forward, ClipObjective._remember_truth, loop.param_groups

    def watched_forward(self, clip, rng):
        clips.append(0)
        return forward(self, clip, rng)

    def watched_remember(self, *args):
        clips[-1] += 1
        return remember(self, *args)

    def watched_groups(model, lr, weight_decay, image_encoder_lr_scale=1.0, memory_lr_scale=1.0):
        scales.append(memory_lr_scale)
        return groups(model, lr, weight_decay, image_encoder_lr_scale, memory_lr_scale)

    monkeypatch.setattr(ClipObjective, "forward", watched_forward)
    monkeypatch.setattr(ClipObjective, "_remember_truth", watched_remember)
    monkeypatch.setattr(loop, "param_groups", watched_groups)
    pairs = [(p.image, p.label) for p in (make_phantom((32, 32, 12), seed=s) for s in (43, 44))]
    settings = dict(memory_lr_scale=1.0, prompts=PromptSettings(p_true_memory=0.0)) if explicit else {}
    cfg = TrainConfig(model_config="sam2.1_hiera_micro", out_checkpoint=tmp_path / "out.pt", max_steps=8, clip_len=3,
                      clips_per_step=2, warmup_steps=1, val_every=100, **settings)
    train(cfg, pairs, [], log=lambda entry: None)
    forced = sum(1 for n in clips if n)
    assert len(clips) == 16
    if explicit:
        assert forced == 0 and scales == [1.0]
    else:
        assert 4 <= forced <= 12 and scales == [3.0]


def test_a_run_told_to_train_only_the_mask_decoder_changes_nothing_else(tmp_path):
    """`TrainConfig.train_only` (benchmarks/demo_clicked_slice trains the demo model's mask decoder or
    IoU head alone): the real train() from a checkpoint; the published weights differ from the start
    in the named modules only."""
    from medsam2.training.loop import TrainConfig, train

    start = tmp_path / "start.pt"
    torch.save({"model": build_model(ModelSpec("sam2.1_hiera_micro")).state_dict()}, start)
    pairs = [(p.image, p.label) for p in (make_phantom((32, 32, 12), seed=s) for s in (45, 46))]
    cfg = TrainConfig(model_config="sam2.1_hiera_micro", init_checkpoint=start, out_checkpoint=tmp_path / "out.pt",
                      max_steps=3, clip_len=3, clips_per_step=1, warmup_steps=1, val_every=100, lr=1e-3,
                      train_only=("sam_mask_decoder.",))
    result = train(cfg, pairs, [], log=lambda entry: None)
    before = torch.load(start, weights_only=True)["model"]
    after = torch.load(result.published, weights_only=True)["model"]
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"sam_mask_decoder"}


def test_an_anchored_run_stays_nearer_its_start_and_needs_one(tmp_path):
    """`TrainConfig.anchor` (L2-SP, `/train {"anchor": N}`): the same real train() from a checkpoint,
    with and without the pull back toward the starting weights; every weight that moves, moves less."""
    from medsam2.training.loop import TrainConfig, train

    tmp = tmp_path
    start = tmp / "start.pt"
    torch.manual_seed(0)
    torch.save({"model": build_model(ModelSpec("sam2.1_hiera_micro")).state_dict()}, start)
    pairs = [(p.image, p.label) for p in (make_phantom((32, 32, 12), seed=s) for s in (47, 48))]
    before = torch.load(start, weights_only=True)["model"]
    distance = {}
    for anchor in (0.0, 300.0):
        cfg = TrainConfig(model_config="sam2.1_hiera_micro", init_checkpoint=start, out_checkpoint=tmp / f"{anchor}.pt",
                          max_steps=6, clip_len=3, clips_per_step=1, warmup_steps=1, val_every=100, lr=1e-3,
                          anchor=anchor)
        after = torch.load(train(cfg, pairs, [], log=lambda entry: None).published, weights_only=True)["model"]
        distance[anchor] = sum(float((after[k].float() - v.float()).norm()) for k, v in before.items()
                               if v.is_floating_point())
    assert 0 < distance[300.0] < 0.7 * distance[0.0], distance
    with pytest.raises(ValueError, match="needs one to start from"):
        train(TrainConfig(model_config="sam2.1_hiera_micro", out_checkpoint=tmp / "x.pt", anchor=1.0), pairs, [],
              log=lambda entry: None)


def test_a_click_outside_the_labels_is_pulled_into_its_answer_and_the_term_is_off_by_default(twin_clips):
    """`PromptSettings.p_unlabelled_click`: a clip also gets a positive click outside its labelled
    structures, and the answer must contain the clicked pixel. One optimiser step on that term alone
    raises the answer's logits at the clicked pixel. Off (the default), the objective reports no such
    part: a default run is the run it was before."""
    from medsam2.training.prompt_sim import unlabelled_click

    model = _deterministic_objective().model
    clip = twin_clips[0]
    objective = ClipObjective(model, prompts=PromptSettings(p_unlabelled_click=1.0, p_true_memory=0.0))
    truth = clip.masks
    point = unlabelled_click(truth[0].numpy(), np.random.default_rng(0))["point_coords"][0, 0]
    x, y = int(point[0]), int(point[1])
    assert not truth[0, :, y, x].any()  # the click is on no labelled structure

    def logit_at_click():
        loss = objective.click_kept_loss(model.forward_image(clip.frames), truth, 32, np.random.default_rng(0))
        return loss, float(predictor.last_decoder_outputs()[1][0, :, y, x].mean())

    loss, before = logit_at_click()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    _, after = logit_at_click()
    assert after > before + 0.1, (before, after)
    parts = objective(clip, np.random.default_rng(1))
    assert float(parts["unlabelled_click"]) > 0
    assert "unlabelled_click" not in ClipObjective(model)(clip, np.random.default_rng(1))


@pytest.mark.parametrize("slices", [1, 4])
def test_keeping_the_starts_answers_costs_nothing_at_the_start_and_pulls_a_drifted_model_back(tmp_path, slices):
    """`TrainConfig.keep_start` (`/train {"keep_start": x}`, keep_start.py): the term is 0 while the model
    is the start (same weights, same answers); once the weights have drifted (noise of 10 % of each
    tensor's spread), a few optimiser steps on the term alone bring the answers to the same clicks back
    toward the start's, on the clicked slice alone and on slices tracked after it
    (`TrainConfig.keep_start_slices`). It needs a checkpoint to start from."""
    from medsam2.checkpoints import resolve_spec
    from medsam2.training.keep_start import StartAnswers
    from medsam2.training.loop import TrainConfig, train
    from medsam2.training.prompt_sim import unlabelled_click

    spec = resolve_spec("demo", None, None, REPO / "model")
    unseen = make_phantom((32, 32, 12), seed=51)
    frames = ClipSampler([LabelledVolume(unseen.image, unseen.label, None, spec.preprocess)], spec.image_size,
                         clip_len=slices, seed=0, preprocess=spec.preprocess).sample().frames
    points = unlabelled_click(np.zeros((1,) + frames.shape[-2:], bool), np.random.default_rng(0), 16)
    model = build_model(spec, for_training=True).eval()  # memory attention's dropout off: the same answers
    start = StartAnswers(model, 1.0, slices=slices)

    def term():
        return start.loss(model, model.forward_image(frames), frames, list(range(slices)), points, 12)

    assert abs(float(term())) < 1e-4
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1:
                p.add_(0.1 * p.std() * torch.randn_like(p))
    drifted = float(term())
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(5):
        optimiser.zero_grad()
        term().backward()
        optimiser.step()
    assert float(term()) < 0.7 * drifted and drifted > 0.01, (drifted, float(term()))
    with pytest.raises(ValueError, match="needs one to start from"):
        train(TrainConfig(model_config="sam2.1_hiera_micro", out_checkpoint=tmp_path / "x.pt", keep_start=0.5),
              [(unseen.image, unseen.label)], [], log=lambda entry: None)


def test_keeping_the_starts_tracked_answers_sees_what_the_memory_forgets():
    """A run forgets tracking more than the clicked slice (docs/training.md, "Keeping the start's answers").
    With only the memory modules drifted, the clicked slice answers as before, so the term on it alone
    (`keep_start_slices` 1) sees nothing; on four slices it sees the drift, and a few optimiser steps on it
    bring the tracked answers back toward the start's."""
    from medsam2.checkpoints import resolve_spec
    from medsam2.training.keep_start import StartAnswers
    from medsam2.training.prompt_sim import unlabelled_click

    spec = resolve_spec("demo", None, None, REPO / "model")
    unseen = make_phantom((32, 32, 12), seed=51)
    frames = ClipSampler([LabelledVolume(unseen.image, unseen.label, None, spec.preprocess)], spec.image_size,
                         clip_len=4, seed=0, preprocess=spec.preprocess).sample().frames
    points = unlabelled_click(np.zeros((1,) + frames.shape[-2:], bool), np.random.default_rng(0), 16)
    model = build_model(spec, for_training=True).eval()
    clicked_only, tracked = StartAnswers(model, 1.0, slices=1), StartAnswers(model, 1.0, slices=4)

    def term(start):
        return start.loss(model, model.forward_image(frames), frames, list(range(start.slices)), points, 12)

    torch.manual_seed(0)
    memory = [p for name, p in model.named_parameters() if name.startswith(("memory_attention.", "memory_encoder."))]
    with torch.no_grad():
        for p in memory:
            if p.numel() > 1:
                p.add_(0.1 * p.std() * torch.randn_like(p))
    assert abs(float(term(clicked_only))) < 1e-4
    drifted = float(term(tracked))
    assert drifted > 0.003, drifted
    optimiser = torch.optim.SGD(memory, lr=1e-3)
    for _ in range(5):
        optimiser.zero_grad()
        term(tracked).backward()
        optimiser.step()
    assert float(term(tracked)) < 0.7 * drifted, (drifted, float(term(tracked)))


def test_keeping_the_start_leaves_out_clicks_on_what_the_run_learns():
    """Keeping the start's answers to clicks on the structure being learned keeps the run from learning it
    (docs/training.md: with the chest CT itself as the unlabelled image, the lung was not learned). Clicks
    that look like a labelled structure to the start's image encoder are left out (`keep_start.LabelledLook`,
    `TrainConfig.keep_start_spares_labelled`); those far from it are kept. A structure smaller than a
    feature cell is labelled too: with its look read at the cells' centres it had none (NaN), and every
    click was left out."""
    from scipy.ndimage import binary_dilation, binary_erosion

    from medsam2.checkpoints import resolve_spec
    from medsam2.frames import frames_from_scaled
    from medsam2.phantoms import PHANTOM_LABELS
    from medsam2.training.keep_start import StartAnswers

    spec = resolve_spec("demo", None, None, REPO / "model")
    case = make_phantom((64, 64, 32), seed=51)
    organ = case.label == PHANTOM_LABELS["organ"]
    k = int(np.argmax(organ.sum(axis=(0, 1))))
    labels = organ.astype(np.int16)
    i, j = (np.argwhere(binary_erosion(organ[:, :, k], iterations=4)).mean(axis=0) // 8 * 8 + 2).astype(int)
    labels[i:i + 2, j:j + 2, k - 1:k + 1] = 2  # 2x2 pixels, between the centres of the 8-pixel cells
    volume = LabelledVolume(case.image, labels, None, spec.preprocess)
    model = build_model(spec, for_training=True).eval()
    frames = frames_from_scaled(volume.scaled, [k], spec.image_size, preprocess=spec.preprocess)
    scale = spec.image_size / np.array(organ.shape[:2])  # (I, J) -> (x, y) in the model's pixels

    def clicks(mask, count=8):
        ij = np.argwhere(mask)[np.random.default_rng(0).choice(int(mask.sum()), count, replace=False)]
        return {"point_coords": torch.tensor((ij + 0.5) * scale, dtype=torch.float32)[:, None],
                "point_labels": torch.ones((count, 1), dtype=torch.int32)}

    inside = clicks(binary_erosion(organ[:, :, k], iterations=2))
    far = clicks(~binary_dilation(organ[:, :, k], iterations=12))
    sparing, keeping = StartAnswers(model, 1.0, slices=1, labelled=[volume]), StartAnswers(model, 1.0, slices=1)
    with torch.no_grad():
        features = sparing.model.forward_image(frames)["vision_features"]
    assert sparing.labelled.like_labelled(features, inside["point_coords"][:, 0]).all()
    assert not sparing.labelled.like_labelled(features, far["point_coords"][:, 0]).any()
    backbone = model.forward_image(frames)
    assert sparing.loss(model, backbone, frames, [0], inside, 32) is None
    assert keeping.loss(model, backbone, frames, [0], inside, 32) is not None
    assert sparing.loss(model, backbone, frames, [0], far, 32) is not None


def test_keeping_the_start_reads_each_images_labels_as_their_own_structures():
    """Label numbers are each image's own: an organ saved as 1 on one image and a vessel saved as 1 on
    another are two structures, and clicks on either must be left out. Read as one look (one mean for
    label 1), 86 % of the vessel's clicks read as outside and their start answers would be kept."""
    from scipy.ndimage import binary_erosion

    from medsam2.checkpoints import resolve_spec
    from medsam2.frames import frames_from_scaled
    from medsam2.phantoms import PHANTOM_LABELS
    from medsam2.training.keep_start import LabelledLook

    spec = resolve_spec("demo", None, None, REPO / "model")
    model = build_model(spec).eval()
    saved = [(make_phantom((64, 64, 32), seed=51), "organ"), (make_phantom((64, 64, 32), seed=52), "vessel")]
    volumes = [LabelledVolume(case.image, (case.label == PHANTOM_LABELS[name]).astype(np.int16), None, spec.preprocess)
               for case, name in saved]
    look = LabelledLook(model, volumes)
    for volume, (_, name) in zip(volumes, saved):
        like = []
        ks = np.nonzero(volume.label.any(axis=(0, 1)))[0]
        for k in ks[np.linspace(0, len(ks) - 1, 8).astype(int)]:
            inner = binary_erosion(volume.label[:, :, k] > 0)
            ij = np.argwhere(inner if inner.any() else volume.label[:, :, k] > 0)
            ij = ij[np.linspace(0, len(ij) - 1, min(20, len(ij))).astype(int)]
            xy = torch.tensor((ij + 0.5) * spec.image_size / np.array(volume.label.shape[:2]), dtype=torch.float32)
            frames = frames_from_scaled(volume.scaled, [int(k)], spec.image_size, preprocess=spec.preprocess)
            with torch.no_grad():
                like += look.like_labelled(model.forward_image(frames)["vision_features"], xy).tolist()
        assert np.mean(like) > 0.7, f"{np.mean(like):.0%} of the {name}'s clicks read as like a labelled structure"


def test_keeping_the_start_tells_a_labelled_lung_from_the_air_around_a_head():
    """Where the unlabelled images hold the structure being learned, keep_start must leave their clicks on
    it out, and only those: after a run on the chest CT's left lung, the right lung reads as like it, and
    the air around the head CT does not (with one mean for all that lies outside the lung, it did: 99 %,
    and the skull and the vessel were then forgotten; docs/training.md, "Leaving out the clicks on what
    the run learns")."""
    from scipy.ndimage import binary_dilation, binary_erosion

    from medsam2.checkpoints import resolve_spec
    from medsam2.evaluation import real_data
    from medsam2.frames import frames_from_scaled
    from medsam2.training.keep_start import LabelledLook

    try:
        chest = real_data.crop_to(real_data.chest_ct(), [1, 2], margin_mm=10)
        head = real_data.cranium()
    except real_data.DataUnavailable as e:
        pytest.skip(f"a real data set cannot be fetched here: {e}")
    spec = resolve_spec("demo", None, None, REPO / "model")
    model = build_model(spec).eval()
    left = (chest.label == chest.structures["lung_left"]).astype(np.int16)
    look = LabelledLook(model, [LabelledVolume(chest.image, left, None, spec.preprocess)])

    def share_like(image, mask, count=40):
        """The share of clicks spread over `mask`, on 8 of its slices, read as like the left lung."""
        scaled = LabelledVolume(image, mask.astype(np.int16), None, spec.preprocess).scaled
        ks = np.nonzero(mask.any(axis=(0, 1)))[0]
        like = []
        for k in ks[np.linspace(0, len(ks) - 1, 8).astype(int)]:
            frames = frames_from_scaled(scaled, [int(k)], spec.image_size, preprocess=spec.preprocess)
            ij = np.argwhere(mask[:, :, k])
            ij = ij[np.linspace(0, len(ij) - 1, min(count, len(ij))).astype(int)]
            xy = torch.tensor((ij + 0.5) * spec.image_size / np.array(mask.shape[:2]), dtype=torch.float32)
            with torch.no_grad():
                like += look.like_labelled(model.forward_image(frames)["vision_features"], xy).tolist()
        return float(np.mean(like))

    right = binary_erosion(chest.label == chest.structures["lung_right"], iterations=3)
    air = ~binary_dilation(head.label > 0, iterations=8)
    assert share_like(chest.image, right) > 0.5
    assert share_like(head.image, air) < 0.5
