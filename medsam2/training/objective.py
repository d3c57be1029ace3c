"""The training objective: run SAM2's own `track_step` over a clip and score every frame.

`ClipObjective` is an nn.Module so that DistributedDataParallel can wrap it: its forward takes one
clip and returns the loss, going through the same memory attention / memory encoder the engine uses
at inference. Loss per frame (SAM2 and MedSAM2 recipe): focal + Dice on the mask (the best of the
multimask candidates), L1 on the predicted IoU of every candidate, and binary cross-entropy on the object score. The
object-score term is not optional: without it a fresh model predicts "no object", its masks are
replaced by a constant and receive no gradient at all.

Terms on prompted frames (one per prompt and per corrective click) and on tracked frames (segmented
from memory alone) are weighted separately (`LossWeights.prompted`, `.tracked`; 1 and 1 by default):
only the tracked terms teach the memory, and training/diagnostics.py weights the prompted ones 0 to
measure what the memory modules learn from. The parts also report the mean mask loss of each kind.
Pointer distances are scaled by the source volume's slice count (`num_frames`), as at inference,
not by the clip's length. With `PromptSettings.p_true_memory` a clip's tracked frames are remembered
from their true masks instead of the predictions (teacher forcing of the memory), so that early in
training the memory attention learns from clean memories; the losses are the model's own predictions. With `PromptSettings.p_unlabelled_click` a clip also gets
one click outside its labels, whose answer must contain the clicked pixel (`click_kept_loss`). With a
`start` (keep_start.StartAnswers) a share of clips also pulls the answers to random clicks (on unlabelled
images, else outside the labels), on the clicked slice and the slices tracked after it, toward those of
the weights the run started from (`StartAnswers.clip_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss

from ..predictor import last_decoder_outputs
from .clips import Clip
from .prompt_sim import PromptSettings, add_corrections, choose_kind, initial_points, unlabelled_click

if TYPE_CHECKING:
    from .keep_start import StartAnswers


@dataclass
class LossWeights:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    object_score: float = 1.0
    prompted: float = 1.0  # weight of each term on a prompted frame (a prompt, a correction)
    tracked: float = 1.0  # weight of each term on a frame segmented from memory alone
    # the click-outside-the-labels term (PromptSettings.p_unlabelled_click); a missed pixel costs about 8
    # nats on the demo model at first, against a mask loss of 0.1-0.9
    unlabelled_click: float = 0.2
    keep_start: float = 1.0  # the keep-the-start's-answers term (keep_start.py), on the clips that have it


class ClipObjective(torch.nn.Module):
    def __init__(self, model, weights: LossWeights | None = None, prompts: PromptSettings | None = None,
                 train_image_encoder: bool = True, start: "StartAnswers | None" = None):
        super().__init__()
        self.model = model
        self.weights = weights or LossWeights()
        self.prompts = prompts or PromptSettings()
        self.train_image_encoder = train_image_encoder
        # the starting weights' answers and the share of clips that keeps them (None: off); a plain
        # attribute, not a submodule, so that DDP and the published state dict never see its weights
        self.start = start
        self.focal = FocalLoss(use_softmax=False, gamma=2.0, alpha=0.25, reduction="none")
        self.dice = DiceLoss(sigmoid=True, reduction="none")

    def frame_loss(self, truth: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss of the latest track step against truth (N, S, S) bool."""
        _, high, ious, _, _, _, obj_logits = last_decoder_outputs()  # high: (N, M, S, S) mask logits
        target = truth[:, None].float().expand_as(high)
        present = truth.flatten(1).any(dim=1).float()  # (N,)
        focal = self.focal(high, target).mean(dim=(2, 3))  # (N, M)
        dice = self.dice(high, target).flatten(2).mean(dim=2)  # (N, M)
        combo = self.weights.focal * focal + self.weights.dice * dice
        best = combo.argmin(dim=1)
        rows = torch.arange(len(best), device=best.device)
        with torch.no_grad():
            pred = high > 0
            inter = (pred & (target > 0)).flatten(2).sum(-1).float()
            union = (pred | (target > 0)).flatten(2).sum(-1).float()
            actual_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        # every candidate's IoU is supervised: at inference the decoder picks the candidate by it
        iou_loss = F.l1_loss(ious.float(), actual_iou, reduction="none").mean(dim=1)
        obj = F.binary_cross_entropy_with_logits(obj_logits[:, 0].float(), present, reduction="none")
        n_present = present.sum().clamp(min=1)
        return {
            "mask": (present * combo[rows, best]).sum() / n_present,
            "iou": (present * iou_loss).sum() / n_present,
            "object_score": obj.mean(),
        }

    def _remember_truth(self, out: dict, truth: torch.Tensor, step: dict) -> None:
        """Replace the frame's memory by one encoded from its true masks (teacher forcing)."""
        present = truth.flatten(1).any(dim=1)
        logits = torch.where(truth[:, None], 20.0, -20.0).to(out["pred_masks_high_res"].dtype)
        score = torch.where(present, 10.0, -10.0)[:, None].to(logits.dtype)
        out["maskmem_features"], out["maskmem_pos_enc"] = self.model._encode_new_memory(
            current_vision_feats=step["current_vision_feats"], feat_sizes=step["feat_sizes"],
            pred_masks_high_res=logits, object_score_logits=score, is_mask_from_pts=False)

    def click_kept_loss(self, backbone: dict, truth: torch.Tensor, num_frames: int,
                        rng: np.random.Generator) -> torch.Tensor | None:
        """One positive click on the first frame outside its labelled structures, decoded alone (no
        memory kept): binary cross-entropy pulling every candidate's logits on the clicked pixel's 3 x 3
        neighbourhood, and the object score, to "object". None where the labels cover the frame."""
        points = unlabelled_click(truth[0].cpu().numpy(), rng)
        if points is None:
            return None
        _, high, _, _, _, _, obj_logits = decode_alone(self.model, backbone, 0, points, num_frames)  # (1, M, S, S)
        x, y = (int(c) for c in points["point_coords"][0, 0])
        size = high.shape[-1]
        patch = high[..., max(0, y - 1):min(size, y + 2), max(0, x - 1):min(size, x + 2)].float()
        score = obj_logits[:, 0].float()
        return (F.binary_cross_entropy_with_logits(patch, torch.ones_like(patch))
                + F.binary_cross_entropy_with_logits(score, torch.ones_like(score)))

    def forward(self, clip: Clip, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        model = self.model
        device = next(model.parameters()).device
        frames = clip.frames.to(device)
        truth = clip.masks.to(device)  # (L, N, S, S)
        L, N = truth.shape[:2]
        num_frames = max(L, int(clip.num_slices or 0))  # pointer distances scaled as in the whole volume
        with torch.set_grad_enabled(self.train_image_encoder and torch.is_grad_enabled()):
            backbone = model.forward_image(frames)
        cond = [0] + ([1] if L > 1 and rng.random() < self.prompts.p_two_cond_frames else [])
        true_memory = rng.random() < (self.prompts.p_true_memory or 0.0)  # None: not set by train(), none
        memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        terms: list[tuple[bool, dict[str, torch.Tensor]]] = []  # (prompted, loss parts)
        for t in range(L):
            feats, pos, sizes = frame_features(model, backbone, t, N)
            step = dict(frame_idx=t, current_vision_feats=feats, current_vision_pos_embeds=pos, feat_sizes=sizes,
                        output_dict=memory, num_frames=num_frames)
            if t in cond:
                kind = choose_kind(rng, self.prompts)
                if kind == "mask":
                    out = model.track_step(is_init_cond_frame=True, point_inputs=None,
                                           mask_inputs=truth[t][:, None].float(), **step)
                else:
                    points = {k: v.to(device) for k, v in initial_points(truth[t].cpu().numpy(), kind, rng,
                                                                          self.prompts).items()}
                    n_corr = int(rng.integers(self.prompts.max_corrections + 1))
                    out = model.track_step(is_init_cond_frame=True, point_inputs=points, mask_inputs=None,
                                           run_mem_encoder=n_corr == 0, **step)
                    for c in range(n_corr):
                        terms.append((True, self.frame_loss(truth[t])))
                        pred = (out["pred_masks_high_res"][:, 0] > 0).detach().cpu().numpy()
                        points = add_corrections(points, pred, truth[t].cpu().numpy())
                        out = model.track_step(is_init_cond_frame=True, point_inputs=points, mask_inputs=None,
                                               run_mem_encoder=c == n_corr - 1,
                                               prev_sam_mask_logits=out["pred_masks"], **step)
                memory["cond_frame_outputs"][t] = out
                if kind == "mask":
                    continue  # the mask is passed through as the output: nothing to learn on this frame
                terms.append((True, self.frame_loss(truth[t])))
            else:
                out = model.track_step(is_init_cond_frame=False, point_inputs=None, mask_inputs=None,
                                       run_mem_encoder=not true_memory, **step)
                terms.append((False, self.frame_loss(truth[t])))
                if true_memory:
                    self._remember_truth(out, truth[t], step)
                memory["non_cond_frame_outputs"][t] = out
        parts = self._combine(terms, device)
        p_click = self.prompts.p_unlabelled_click
        if p_click > 0:  # off: no draw from rng, so that a run without it is the run it was before
            kept = self.click_kept_loss(backbone, truth, num_frames, rng) if rng.random() < p_click else None
            parts["unlabelled_click"] = kept.detach() if kept is not None else torch.zeros((), device=device)
            if kept is not None:
                parts["loss"] = parts["loss"] + self.weights.unlabelled_click * kept
        if self.start is not None:  # off: no draw from rng, as above
            kept = self.start.clip_loss(self.model, backbone, frames, truth, num_frames, rng,
                                        self.train_image_encoder) if rng.random() < self.start.share else None
            parts["keep_start"] = kept.detach() if kept is not None else torch.zeros((), device=device)
            if kept is not None:
                parts["loss"] = parts["loss"] + self.weights.keep_start * kept
        return parts

    def _combine(self, terms, device) -> dict[str, torch.Tensor]:
        """Weighted mean of the terms; also the mean mask loss of prompted and of tracked frames."""
        zero = torch.zeros((), device=device)
        weights = [self.weights.prompted if prompted else self.weights.tracked for prompted, _ in terms]
        total = sum(weights)
        parts = {k: (sum(w * t[k] for w, (_, t) in zip(weights, terms) if w) / total if total else zero)
                 for k in ("mask", "iou", "object_score")}
        parts["loss"] = parts["mask"] + self.weights.iou * parts["iou"] + self.weights.object_score * parts["object_score"]
        for name, flag in (("prompted_mask", True), ("tracked_mask", False)):
            group = [t["mask"].detach() for prompted, t in terms if prompted == flag]
            parts[name] = sum(group) / len(group) if group else zero
        return parts


def frame_features(model, backbone: dict, t: int, n: int):
    """Frame t's (vision feats, positional encodings, feature sizes) for n objects, SAM 2's layout."""
    frame_out = {"backbone_fpn": [f[t : t + 1].expand(n, -1, -1, -1) for f in backbone["backbone_fpn"]],
                 "vision_pos_enc": [p[t : t + 1].expand(n, -1, -1, -1) for p in backbone["vision_pos_enc"]]}
    _, feats, pos, sizes = model._prepare_backbone_features(frame_out)
    return feats, pos, sizes


def prompt_and_track(model, backbone: dict, points: dict, num_frames: int, frames: list[int]) -> list[tuple]:
    """`frames[0]` prompted with `points` (one object per row), then each of `frames[1:]` in turn segmented
    from memory alone, as the engine tracks; SAM 2's decoder outputs of each (predictor.last_decoder_outputs:
    multimask logits, IoUs, object score, ...). Nothing is remembered from before `frames[0]`."""
    n = len(points["point_labels"])
    memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    outputs = []
    for i, t in enumerate(frames):
        feats, pos, sizes = frame_features(model, backbone, t, n)
        step = dict(frame_idx=i, current_vision_feats=feats, current_vision_pos_embeds=pos, feat_sizes=sizes,
                    output_dict=memory, num_frames=num_frames, run_mem_encoder=i < len(frames) - 1)
        if i == 0:
            device = feats[-1].device
            out = model.track_step(is_init_cond_frame=True, point_inputs={k: v.to(device) for k, v in points.items()},
                                   mask_inputs=None, **step)
            memory["cond_frame_outputs"][i] = out
        else:
            out = model.track_step(is_init_cond_frame=False, point_inputs=None, mask_inputs=None, **step)
            memory["non_cond_frame_outputs"][i] = out
        outputs.append(last_decoder_outputs())
    return outputs


def decode_alone(model, backbone: dict, t: int, points: dict, num_frames: int) -> tuple:
    """Frame t prompted with `points` (one object per row), decoded with nothing remembered; SAM 2's
    decoder outputs (predictor.last_decoder_outputs: multimask logits, IoUs, object score, ...)."""
    return prompt_and_track(model, backbone, points, num_frames, [t])[0]
