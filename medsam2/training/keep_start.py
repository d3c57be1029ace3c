"""Keeping the starting model's answers while fine-tuning: learning without forgetting (Li and Hoiem, 2016).

A run on one labelled structure erases what the served model could do elsewhere: from the demo model,
300 steps on a lung take the skull, the phantoms' organ and vessel and the twins to zero, with weight
changes of a few thousandths (docs/training.md, "What one run forgets"). Replay keeps only the data it
replays, and needs it; pulling the weights toward their start (`TrainConfig.anchor`) kept little. This
keeps the start's *answers* instead: a frozen copy of the starting weights and the model answer the
same random clicks, and the model is pulled toward the start's answers. The clicks are drawn anywhere on
the images nobody has labelled yet, where the run has them (`UnlabelledFrames`: the server's other
studies, which are what will be clicked next; UNLABELLED_SHARE), else outside the labelled
structures of a frame of the clip, so that the labelled structures' answers are free to change. Each
answer is kept on the clicked slice and on the slices tracked after it by memory (`StartAnswers.slices`):
a run forgets tracking more than the clicked slice. It needs no data but what the server holds, for any
checkpoint. Measured from the demo model on one lung, 1000 steps, three seeds (docs/training.md, "Keeping
the start's answers"): the phantom organ 0.75-0.82, the vessel 0.58-0.86, the twins 0.58-0.80 and the skull
0.31-0.41 are kept where the default leaves 0.00-0.07 (the demo model: 0.48-0.98), the trained lung is
learned as without it (0.92-0.93). On the clicked slice alone it kept nothing after 1000 steps; with half
the draws on the lung's own slices the lung's click lost its clicked slice. Where the unlabelled images
hold the structure being learned (the chest CT itself as the unlabelled image), the lung was not learned
at all, until the clicks that look like a labelled structure to the start's image encoder were left out
(`LabelledLook`): 0.74 since. Off by default.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from ..frames import Intensity, Preprocess, frames_from_scaled, scale_volume
from .clips import LabelledVolume
from .objective import decode_alone, prompt_and_track
from .prompt_sim import unlabelled_click

# the share of draws on the unlabelled images where a run has them (the rest: the labelled clip's
# own frames, outside the labels). Half, at first: after 1000 steps the trained lung's clicked slice then
# picked a wrong candidate (3D 0.68-0.75 against 0.92-0.93 with every draw there; docs/training.md). Kept
# as a draw so that those runs reproduce.
UNLABELLED_SHARE = 1.0


class UnlabelledFrames:
    """Runs of slices of images no one has labelled, fed as the model is fed (`preprocess`)."""

    def __init__(self, images: list, image_size: int, intensity=None, preprocess: Preprocess = Preprocess()):
        self.volumes = [scale_volume(img[..., None] if img.ndim == 2 else img, Intensity.parse(intensity),
                                     preprocess=preprocess) for img in images]
        self.image_size, self.preprocess = image_size, preprocess

    def sample(self, rng, length: int = 1) -> tuple[torch.Tensor, int]:
        """(up to `length` consecutive frames (L, 3, S, S) from a random slice of a random image, in either
        direction, that image's slice count)."""
        volume = self.volumes[int(rng.integers(len(self.volumes)))]
        k = int(rng.integers(volume.shape[2]))
        slices = list(range(k, min(volume.shape[2], k + length)))
        if length > 1 and rng.random() < 0.5:  # one slice draws nothing more, as before tracking was kept
            slices = [k - i for i in range(length) if k - i >= 0]
        return frames_from_scaled(volume, slices, self.image_size, preprocess=self.preprocess), int(volume.shape[2])


class LabelledLook:
    """What each labelled structure looks like to the start's image encoder, to tell a click on something like
    it. SAM 2's deepest image features (`vision_features`, unit length) over up to `slices` of each structure's
    slices give one mean per structure of each image, and `kinds` means of what lies outside them all (k-means:
    outside a lung lie air, soft tissue, bone, the table; with one outside mean the air around a head read as
    lung). A click is like a labelled structure where its feature, or one `reach` feature cells from it, is
    nearest one of the structures' means. Keeping the start's answers to such clicks keeps the run from learning
    them: with the chest CT itself as the unlabelled image, a run on its left lung did not learn the lung
    (0.002); leaving them out, it did (0.735; docs/training.md, "Leaving out the clicks on what the run
    learns")."""

    def __init__(self, model: torch.nn.Module, volumes: list[LabelledVolume], slices: int = 16, kinds: int = 4,
                 reach: float = 0.5):
        """`model`: the start, in eval mode (its `image_size` and `preprocess` feed the frames)."""
        # per (volume, value): the features' sum, each cell weighted by its share. Per volume: label numbers
        # are each image's own, and the chest CT's 1 (a lung) and Colin27's 1 (a caudate) are not one look
        inside: dict[tuple[int, int], torch.Tensor] = {}
        outside = []
        device = next(model.parameters()).device
        for vi, volume in enumerate(volumes):
            chosen = {}  # per value: up to `slices` of its slices, spread over them
            for value in volume.values:
                present = volume.present[value]
                chosen[value] = [int(k) for k in present[np.linspace(0, len(present) - 1,
                                                                     min(slices, len(present))).astype(int)]]
            # each slice encoded once, however many structures it was chosen for
            every = sorted(set().union(*chosen.values()))
            if not every:  # a volume with no label: nothing to read
                continue
            features_of = slice_features(model, volume.scaled, every)
            grid = features_of[every[0]].shape[-2:]
            for value, ks in chosen.items():
                features = torch.stack([features_of[k] for k in ks])
                # by share, not by the cell's centre: a small structure falls between the centres of 8x8 cells
                inside[vi, value] = torch.einsum("kchw,khw->c", features,
                                                 cell_cover(volume.label[:, :, ks] == value, grid).to(device))
            # the outside once per slice: a slice chosen for several structures counts once in the k-means
            untouched = cell_cover(volume.label[:, :, every] != 0, grid).to(device) == 0
            outside.append(torch.stack([features_of[k] for k in every]).permute(0, 2, 3, 1)[untouched])
        self.outside = kmeans(torch.cat(outside), kinds)  # rows: the kinds of outside
        self.means = torch.cat([self.outside] + [F.normalize(v, dim=0)[None] for v in inside.values()])
        self.image_size = int(model.image_size)
        # how far around a click, in feature cells, its look is read: half a cell. With one outside mean, a
        # quarter let the lung be learned too (0.908) and half cost the skull and the vessel (docs/training.md)
        self.reach = float(reach)

    def like_labelled(self, features: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """(n,) bool: which of the clicks `xy` (n, 2) in image pixels (x, y) are like a labelled structure
        at the click or `reach` feature cells from it in any of 8 directions, read from one frame's
        `vision_features` (1, C, h, w). The click alone let through the structure's rim: with the chest CT
        as the unlabelled image 11 of 90 kept clicks were on a lung, and the lung was not learned."""
        cell = self.image_size / features.shape[-1]
        offsets = torch.tensor([(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)], dtype=torch.float32)
        offsets = offsets * cell * self.reach
        around = (xy.float()[:, None] + offsets[None]).clamp(0, self.image_size - 1)  # (n, 9, 2)
        grid = (around.to(features.device) / self.image_size * 2 - 1)[None]  # (1, n, 9, 2)
        at = F.grid_sample(features.float(), grid, mode="bilinear", align_corners=False)[0]  # (C, n, 9)
        nearest = torch.einsum("cnk,mc->nkm", F.normalize(at, dim=0), self.means.to(at.device)).argmax(dim=2)
        return (nearest >= len(self.outside)).any(dim=1)


def cell_cover(mask: np.ndarray, grid) -> torch.Tensor:
    """(k, h, w): the share of each cell of an h x w `grid` laid over each slice of `mask` (I, J, k) that
    the mask covers, the slice stretched as a frame is."""
    mask = torch.from_numpy(np.ascontiguousarray(mask)).permute(2, 1, 0)[:, None].float()
    return F.interpolate(mask, size=tuple(grid), mode="area")[:, 0]


def slice_features(model: torch.nn.Module, scaled: torch.Tensor, ks: list[int], batch: int = 16) -> dict:
    """{k: (C, h, w)} `model`'s deepest image features (`vision_features`), unit length, of slices `ks` of
    a scaled volume, fed as the model is fed, `batch` slices at a time."""
    device = next(model.parameters()).device
    out = {}
    for i in range(0, len(ks), batch):
        frames = frames_from_scaled(scaled, ks[i:i + batch], model.image_size, preprocess=model.preprocess)
        with torch.no_grad():
            features = F.normalize(model.forward_image(frames.to(device))["vision_features"].float(), dim=1)
        out.update(zip(ks[i:i + batch], features))
    return out


def kmeans(x: torch.Tensor, k: int, iters: int = 20) -> torch.Tensor:
    """(k, C) unit means of the unit rows of `x` (n, C), by cosine: spherical k-means, started from the
    row nearest their mean and then each row farthest from those chosen (no random draw: the same
    labels give the same means). None of `x`: no row, and every click is like a labelled structure."""
    if not len(x):
        return x
    chosen = [x[(x @ F.normalize(x.mean(0), dim=0)).argmax()]]
    for _ in range(min(k, len(x)) - 1):
        chosen.append(x[(x @ torch.stack(chosen).T).max(dim=1).values.argmin()])
    means = torch.stack(chosen)
    for _ in range(iters):
        nearest = (x @ means.T).argmax(dim=1)
        means = torch.stack([F.normalize(x[nearest == j].mean(0), dim=0) if (nearest == j).any() else means[j]
                             for j in range(len(means))])
    return means


class StartAnswers:
    """The weights a run started from, frozen, and how a clip asks them (`share`, `clicks`)."""

    def __init__(self, model: torch.nn.Module, share: float, unlabelled: UnlabelledFrames | None = None,
                 clicks: int = 3, candidates: int = 16, slices: int = 4, labelled: list[LabelledVolume] | None = None):
        self.model = copy.deepcopy(model).eval()  # before the first step: the start's weights
        # where given, the draws are on these frames, clicks anywhere (UNLABELLED_SHARE)
        self.unlabelled = unlabelled
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.share = float(share)  # the share of clips that get the term (TrainConfig.keep_start)
        self.clicks = int(clicks)  # clicks a clip asks, each one object of one click, decoded together
        # random clicks the start answers first; the `clicks` it answers best are kept. Most random pixels
        # are background, where the start answers a few pixels that leave the click out: keeping its
        # answers to those would keep nothing of what it can segment (docs/training.md)
        self.candidates = int(candidates)
        # slices each draw is answered on: the clicked one, then those after it tracked by memory (1: the
        # clicked slice alone). A fine-tuning run forgets tracking more than the clicked slice: from the demo
        # model on one lung, kept on the clicked slice alone, the phantom organ's clicked slice stayed at
        # 0.95 after 300 steps while its 3D Dice fell to 0.23 (docs/training.md)
        self.slices = int(slices)
        # where the run's labelled volumes are given, clicks on something like one of their structures are
        # left out (None: every click is kept; volumes with no structure leave the error to the clip sampler)
        self.labelled = LabelledLook(self.model, labelled) if labelled and any(v.values for v in labelled) else None

    def clip_loss(self, model: torch.nn.Module, backbone: dict, frames: torch.Tensor, truth: torch.Tensor,
                  num_frames: int, rng: np.random.Generator, train_image_encoder: bool) -> torch.Tensor | None:
        """The term on one clip (`frames`, their features in `backbone`, their labels `truth`): clicks anywhere
        on a slice of an unlabelled image (where the run has them: UNLABELLED_SHARE), or else outside the
        labelled structures of one random frame of the clip, answered by `model` and by the start on that
        frame and on up to `slices` - 1 frames tracked after it (`loss`); None where the labels cover the frame."""
        if self.unlabelled is not None and rng.random() < UNLABELLED_SHARE:
            frames, num_frames = self.unlabelled.sample(rng, self.slices)
            frames = frames.to(truth.device)
            with torch.set_grad_enabled(train_image_encoder and torch.is_grad_enabled()):
                backbone = model.forward_image(frames)
            t, labelled = 0, np.zeros((1,) + tuple(frames.shape[-2:]), dtype=bool)
        else:
            t = int(rng.integers(len(frames)))
            labelled = truth[t].cpu().numpy()
        points = unlabelled_click(labelled, rng, self.candidates)
        if points is None:
            return None
        tracked = list(range(t, min(len(frames), t + self.slices)))
        return self.loss(model, backbone, frames, tracked, points, num_frames)

    def best_answered(self, start: tuple, points: dict) -> torch.Tensor:
        """Indices of the `clicks` points the start answered best (`start`: its decoder outputs on the
        clicked frame): its chosen candidate holds the click, ranked by predicted IoU x object-score
        probability (those that hold it first)."""
        _, masks, ious, _, _, _, score = start
        chosen = masks[torch.arange(len(masks)), ious.argmax(dim=1)]  # (n, S, S)
        xy = points["point_coords"][:, 0].long().clamp(0, masks.shape[-1] - 1)
        holds = chosen[torch.arange(len(chosen)), xy[:, 1], xy[:, 0]] > 0
        rank = holds.float() * 2 + ious.float().max(dim=1).values * torch.sigmoid(score[:, 0].float())
        return rank.argsort(descending=True)[: self.clicks]

    def loss(self, model: torch.nn.Module, backbone: dict, frames: torch.Tensor, tracked: list[int], points: dict,
             num_frames: int) -> torch.Tensor | None:
        """How far `model`'s answers to the best answered of `points` (those not like a labelled structure:
        LabelledLook; None where none is left), on frame `tracked[0]` and tracked
        from it through the rest of `tracked` (the frames' features in `backbone`), are from the start's,
        each tracking from its own answers. Per frame: the Kullback-Leibler divergence of every pixel of
        every multimask candidate, and of the object score, from the start's (binary cross-entropy
        against the start's probabilities less the start's own entropy, so that the same answers cost 0),
        and L1 between the predicted IoUs; the mean over the frames. Learning the start's answers as
        labels instead (its chosen mask through ClipObjective.frame_loss) cost the trained structure its
        fit (docs/training.md)."""
        with torch.no_grad():
            start_backbone = self.model.forward_image(frames[tracked])
            if self.labelled is not None:
                spared = ~self.labelled.like_labelled(start_backbone["vision_features"][:1],
                                                      points["point_coords"][:, 0])
                if not spared.any():
                    return None
                points = {k: v[spared.to(v.device)] for k, v in points.items()}
            keep = self.best_answered(decode_alone(self.model, start_backbone, 0, points, num_frames), points)
            points = {k: v[keep] for k, v in points.items()}
            start = prompt_and_track(self.model, start_backbone, points, num_frames, list(range(len(tracked))))
        ours = prompt_and_track(model, backbone, points, num_frames, tracked)
        return sum(divergence(o, s) for o, s in zip(ours, start)) / len(tracked)


def divergence(ours: tuple, start: tuple) -> torch.Tensor:
    """One frame's distance of our decoder outputs from the start's (StartAnswers.loss). Logits are
    clamped to +-20: SAM 2 writes -1024 into the masks of an object it calls absent, which would weigh
    a thousand times a real difference while passing no gradient."""
    def logits(outputs):
        _, masks, ious, _, _, _, score = outputs
        return masks.float().clamp(-20, 20), ious.float(), score.float().clamp(-20, 20)

    (masks, ious, score), (start_masks, start_ious, start_score) = logits(ours), logits(start)
    with torch.no_grad():
        entropy = sum(F.binary_cross_entropy_with_logits(x, torch.sigmoid(x)) for x in (start_masks, start_score))
    return (F.binary_cross_entropy_with_logits(masks, torch.sigmoid(start_masks))
            + F.binary_cross_entropy_with_logits(score, torch.sigmoid(start_score))
            - entropy + F.l1_loss(ious, start_ious))
