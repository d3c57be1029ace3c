"""Keeping the starting model's answers while fine-tuning: learning without forgetting (Li and Hoiem, 2016).

A run on one labelled structure erases what the served model could do elsewhere: from the demo model,
300 steps on a lung take the skull, the phantoms' organ and vessel and the twins to zero, with weight
changes of a few thousandths (docs/training.md, "What one run forgets"). Replay keeps only the data it
replays, and needs it; pulling the weights toward their start (`TrainConfig.anchor`) kept little. This
keeps the start's *answers* instead, on the run's own images: a frozen copy of the starting weights and
the model answer the same clicks at random pixels outside the labelled structures of one frame of a
clip, each decoded alone, and the model is pulled toward the start's answers. The labelled structures'
answers are free to change. Where the start answers nothing useful on the labelled images (the demo
model knows phantoms, not a chest CT), that keeps little of what it could do elsewhere; so half the
draws come from the images nobody has labelled yet, where they are given (`UnlabelledFrames`: the
server's other studies, which are what will be clicked next), with clicks anywhere. It needs no data
but what the server holds, for any checkpoint. Measured from the demo model on one lung: after 300 steps
it keeps the twins and part of the phantom organ, not the vessel or the skull, at a small cost to the
trained lung; after 1000 steps nothing (docs/training.md, "Keeping the start's answers"). Off by default.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..frames import Intensity, Preprocess, frames_from_scaled, scale_volume
from .objective import decode_alone


class UnlabelledFrames:
    """Single slices of images no one has labelled, fed as the model is fed (`preprocess`)."""

    def __init__(self, images: list, image_size: int, intensity=None, preprocess: Preprocess = Preprocess()):
        self.volumes = [scale_volume(img[..., None] if img.ndim == 2 else img, Intensity.parse(intensity),
                                     preprocess=preprocess) for img in images]
        self.image_size, self.preprocess = image_size, preprocess

    def sample(self, rng) -> tuple[torch.Tensor, int]:
        """(one frame (1, 3, S, S) at a random slice of a random image, that image's slice count)."""
        volume = self.volumes[int(rng.integers(len(self.volumes)))]
        k = int(rng.integers(volume.shape[2]))
        return frames_from_scaled(volume, [k], self.image_size, preprocess=self.preprocess), int(volume.shape[2])


class StartAnswers:
    """The weights a run started from, frozen, and how a clip asks them (`share`, `clicks`)."""

    def __init__(self, model: torch.nn.Module, share: float, unlabelled: UnlabelledFrames | None = None,
                 clicks: int = 3, candidates: int = 16):
        self.model = copy.deepcopy(model).eval()  # before the first step: the start's weights
        self.unlabelled = unlabelled  # where given, half the draws are on these frames (clicks anywhere)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.share = float(share)  # the share of clips that get the term (TrainConfig.keep_start)
        self.clicks = int(clicks)  # clicks a clip asks, each one object of one click, decoded together
        # random clicks the start answers first; the `clicks` it answers best are kept. Most random pixels
        # are background, where the start answers a few pixels that leave the click out: keeping its
        # answers to those would keep nothing of what it can segment (docs/training.md)
        self.candidates = int(candidates)

    @torch.no_grad()
    def answers(self, frame: torch.Tensor, points: dict, num_frames: int) -> dict:
        """The start's answers on one frame (1, 3, S, S) to `points` (one click an object), all of them."""
        backbone = self.model.forward_image(frame)
        _, masks, ious, _, _, _, score = decode_alone(self.model, backbone, 0, points, num_frames)
        return {"masks": masks.float(), "ious": ious.float(), "score": score.float()}

    def best_answered(self, start: dict, points: dict) -> torch.Tensor:
        """Indices of the `clicks` points the start answered best: its chosen candidate holds the click,
        ranked by predicted IoU x object-score probability (those that hold it first)."""
        masks, ious = start["masks"], start["ious"]
        chosen = masks[torch.arange(len(masks)), ious.argmax(dim=1)]  # (n, S, S)
        xy = points["point_coords"][:, 0].long().clamp(0, masks.shape[-1] - 1)
        holds = chosen[torch.arange(len(chosen)), xy[:, 1], xy[:, 0]] > 0
        rank = holds.float() * 2 + ious.max(dim=1).values * torch.sigmoid(start["score"][:, 0])
        return rank.argsort(descending=True)[: self.clicks]

    def loss(self, model: torch.nn.Module, backbone: dict, frames: torch.Tensor, t: int, points: dict,
             num_frames: int) -> torch.Tensor:
        """How far `model`'s answers to the best answered of `points` on frame t (its features in
        `backbone`) are from the start's: the Kullback-Leibler divergence of every pixel of every
        multimask candidate, and of the object score, from the start's (binary cross-entropy against the
        start's probabilities less the start's own entropy, so that the same answers cost 0), and L1
        between the predicted IoUs. Learning the start's answers as labels instead (its chosen mask
        through ClipObjective.frame_loss) cost the trained structure its fit (docs/training.md)."""
        with torch.no_grad():
            start = self.answers(frames[t : t + 1], points, num_frames)
            keep = self.best_answered(start, points)
            points = {k: v[keep] for k, v in points.items()}
            start_masks, start_ious, start_score = start["masks"][keep], start["ious"][keep], start["score"][keep]
            entropy = sum(F.binary_cross_entropy_with_logits(x, torch.sigmoid(x)) for x in (start_masks, start_score))
        _, masks, ious, _, _, _, score = decode_alone(model, backbone, t, points, num_frames)
        return (F.binary_cross_entropy_with_logits(masks.float(), torch.sigmoid(start_masks))
                + F.binary_cross_entropy_with_logits(score.float(), torch.sigmoid(start_score))
                - entropy + F.l1_loss(ious.float(), start_ious))
