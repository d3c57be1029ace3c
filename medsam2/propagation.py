"""Segment a volume from prompts: the engine both the infer task and the benchmarks run.

An `InteractiveSession` (session.py) is one opened image: its scaled volume, the encoder features of
its slices (kept for later clicks on the same image) and what each label was last prompted with.
`Segmenter.segment` takes the prompts of one request and returns a label volume. Each object's prompted slices are segmented from their prompts by SAM2's
own code; the object is then tracked from its first prompted slice to the end of the volume and
from the same slice back to the start, the other prompted slices acting as extra conditioning
frames, by a `Propagator` (propagators.py: the batched product, or SAM 2's own propagation as the
reference; the same masks up to float rounding). The tracks become the label here (`_assemble`).
`directions` chooses whether the backward pass sees the forward pass's slices (tracker.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .features import FrameFeatures
from .field_of_view import segment_in_windows
from .frames import Intensity, scale_volume
from .postprocess import fill_holes, largest_component
from .predictor import VolumePredictor, corrections_as_conditioning
from .prompts import ObjectPrompt
from .propagators import PropagationContext, TrackRequest, make_propagator
from .session import InteractiveSession, ObjectTrack
from .settings import EngineSettings
from .tracker import UNTRACKED


def pick_device(requested: str | None = None) -> torch.device:
    if requested and requested not in ("auto", ""):
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class ObjectResult:
    label: str
    value: int
    slices: list[int]  # slices with a nonzero mask
    object_scores: np.ndarray  # (K,) object-score logits per slice
    ious: np.ndarray  # (K,) predicted IoU per slice (nan where not tracked)


@dataclass
class SegmentationResult:
    label: np.ndarray  # (I, J, K) uint8/uint16
    objects: list[ObjectResult]
    timings: dict[str, float] = field(default_factory=dict)


class Segmenter:
    """Runs a VolumePredictor on volumes: opening (encoding) and prompting/propagating, as its
    EngineSettings say (settings.py). What the settings that shape propagation mean here:

    precision: "auto" = bf16 autocast on CUDA, fp32 on CPU; "bf16" also on CPU (on CPUs with AMX bf16
    units the whole model about 2x faster: docs/speed.md; the server decides by a timing kept per
    machine, machine_choice.py); "fp32".
    bf16 masks are within ~2 % Dice of fp32 (tests/test_speed_equivalence.py).
    stop_after_empty: stop a direction after this many consecutive slices without the object (0 = never):
    the slices beyond are left empty and never encoded, but a structure that reappears is missed.
    engine: "batched" or "plain" (propagators.py).
    encoder: an exported image encoder run by ONNX Runtime or OpenVINO (encoder_runtime.py); None: PyTorch.
    directions: "independent" (the two directions do not see each other) or "sequential" (stock SAM2).
    settle_slices: after a correction, a direction stops once this many consecutive slices come out as
    they were in the label's previous result (at most `settle_tolerance` of their pixels differing, no
    prompted slice still ahead) and keeps the previous masks beyond (0 = always re-propagate to the end;
    batched engine only). The same prompts again are always answered from the previous result.
    GPU-only options, off by default because no GPU was available to verify them yet (check them with
    `python -m benchmarks.speed --paths plain,engine,engine-graphs`, which reports their masks' Dice
    against the plain path): cuda_graphs replays the batched step as CUDA graphs; overlap_encoding
    encodes slices on a second stream while propagation runs (otherwise a GPU encodes every slice up
    front); offload_levels keeps those feature-pyramid levels in pinned host memory (features.py).
    """

    def __init__(self, model: VolumePredictor, settings: EngineSettings | None = None, encoder=None):
        self.model = model.eval()
        self.settings = settings = settings or EngineSettings()
        self.encoder = encoder  # an exported image encoder (encoder_runtime.py), or None: the model's own
        self.device = model.device
        on_gpu = self.device.type == "cuda"
        # batching the image encoder pays on a GPU; on a CPU one slice at a time is as fast and lighter
        self.encode_batch_size = settings.encode_batch or (8 if on_gpu else 1)
        self.intensity = Intensity.parse(settings.intensity)
        precision = settings.precision
        self.dtype = torch.bfloat16 if (precision == "bf16" or (precision == "auto" and on_gpu)) else None
        self.use_graphs = settings.cuda_graphs and on_gpu
        self.overlap_encoding = settings.overlap_encoding and on_gpu
        self.propagator = make_propagator(PropagationContext(
            model=self.model, settings=settings, autocast=self.autocast, prompt=self._prompt, dtype=self.dtype,
            use_graphs=self.use_graphs, overlap_encoding=self.overlap_encoding))

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def open(self, volume, intensity=None, encode: bool | None = None, header=None,
             model_version: str | None = None) -> InteractiveSession:
        """Scale the volume on the compute device; with `encode`, also encode all its slices now, in
        batches (otherwise each slice is encoded when first needed). By default a GPU encodes up front
        (unless it overlaps encoding with propagation) and a CPU on demand. `header` and
        `model_version` are kept with the session (session.py)."""
        if encode is None:
            encode = self.device.type == "cuda" and not self.overlap_encoding
        t0 = time.perf_counter()
        rule = Intensity.parse(intensity) if intensity is not None else self.intensity
        scaled = scale_volume(volume, rule, self.device, self.model.preprocess)
        features = self.features_of(scaled, keep_scaled=self.settings.field_of_view != "off")
        if encode:
            with self.autocast():
                features.ensure()
        return InteractiveSession(shape=tuple(int(s) for s in scaled.shape), features=features, segmenter=self,
                                  opened_s=time.perf_counter() - t0, header=header, model_version=model_version)

    def features_of(self, scaled: torch.Tensor, keep_scaled: bool = False) -> FrameFeatures:
        """The encoder features of a scaled (I, J, K) volume, encoded by this engine's encoder as needed;
        `keep_scaled`: keep the volume once every slice is encoded (windows are cut from it)."""
        return FrameFeatures(self.model, scaled, self.encode_batch_size, self.settings.offload_levels, self.encoder,
                             keep_scaled=keep_scaled)

    @torch.inference_mode()
    def segment(self, session: InteractiveSession, objects: list[ObjectPrompt],
                memory_policy_factory=None, largest_component: bool | None = None) -> SegmentationResult:
        """Prompt and propagate every object (`segment_whole`); with the field of view on, a small
        structure in a window around it (field_of_view.py)."""
        if self.settings.field_of_view == "auto" and session.window is None and objects:
            return segment_in_windows(self, session, objects, memory_policy_factory, largest_component)
        return self.segment_whole(session, objects, memory_policy_factory, largest_component)

    @torch.inference_mode()
    def segment_whole(self, session: InteractiveSession, objects: list[ObjectPrompt],
                      memory_policy_factory=None, largest_component: bool | None = None) -> SegmentationResult:
        """Prompt and propagate every object on the session's whole slices; returns the label volume in
        (I, J, K) order, post-processed as the checkpoint's reference does (`model.postprocess`: holes filled; with `largest_component`,
        None: the checkpoint's default, only each object's largest 3D component kept).

        An object prompted exactly as last time on this session is not tracked again. timings:
        prompted_s (until the prompted slices' masks exist, the GPU synchronised), propagate_s (the
        whole call, including encoding slices that were not encoded yet); batched engine: steps, slices
        (tracked, all lanes), settled (given their previous masks)."""
        t0 = time.perf_counter()
        I, J, K = session.shape
        signatures = [self._signature(obj, memory_policy_factory) for obj in objects]
        previous = [session.tracks.get(obj.label) for obj in objects]
        todo = [n for n, (sig, prev) in enumerate(zip(signatures, previous)) if prev is None or prev.signature != sig]
        with self.autocast():
            states = {n: self._prompt(session, objects[n], memory_policy_factory) for n in todo}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        prompted_s = time.perf_counter() - t0
        per_object = {n: prev.track for n, prev in enumerate(previous) if n not in states}
        exact = {n: states[n].get("exact", {}) if n in states else previous[n].exact for n in range(len(objects))}
        counts = {"reused": len(objects) - len(todo)}
        if todo:
            requests = [TrackRequest(objects[n], states[n], previous[n].track if previous[n] and
                                     self.settings.settle_slices else None) for n in todo]
            tracks, stats = self.propagator.track(session, requests, memory_policy_factory)
            per_object.update(zip(todo, tracks))
            counts.update(stats.as_dict())
        for n in todo:  # reused objects keep the track they were answered from
            session.tracks[objects[n].label] = ObjectTrack(signatures[n], per_object[n], exact=exact[n])
        per_object = [per_object[n] for n in range(len(objects))]
        if largest_component is None:
            largest_component = self.model.postprocess.largest_component
        label, results = self._assemble(session, objects, per_object, [exact[n] for n in range(len(objects))],
                                        largest_component)
        return SegmentationResult(label=label, objects=results,
                                  timings={"prompted_s": prompted_s, "propagate_s": time.perf_counter() - t0, **counts})

    def _signature(self, obj: ObjectPrompt, memory_policy_factory) -> tuple:
        """Everything that decides an object's track: its prompts and the settings that shape propagation."""
        clicks = tuple((k, tuple(v)) for k, v in sorted(obj.clicks.items()))
        return (clicks, obj.box, obj.roi, obj.mask_signature(), repr(memory_policy_factory), self.settings.engine,
                self.settings.directions, self.settings.stop_after_empty, self.settings.settle_slices, self.settings.settle_tolerance, str(self.dtype))

    # ---------------------------------------------------------------------------------- prompting

    def _prompt(self, session: InteractiveSession, obj: ObjectPrompt, memory_policy_factory=None) -> dict:
        """A SAM2 state holding the object's prompted slices, segmented and memory-encoded by SAM2.

        A slice with a box or a positive click is segmented from its own prompts, as SAM does. A slice
        with background clicks only is a correction of what was tracked there: decoded on its own, a
        lone background click gives whatever SAM makes of it (an empty mask, or another structure),
        and that propagated to the neighbours (one background click took a twin from Dice 0.99 to
        0.12 under the CVPR 2025 protocol). SAM2's interactive predictor tracks to such a slice first and decodes
        the clicks with the tracked mask as mask input; `_correct_tracked` does the same. A painted slice
        is SAM2's mask prompt (`add_new_mask`: with SAM 2.1's configs the mask itself is the slice's output
        and its memory); clicks on a painted slice refine the paint (`_prompt_painted`)."""
        I, J, K = session.shape
        policy = memory_policy_factory() if memory_policy_factory else None
        state = self.model.init_volume_state(session.features, height=J, width=I, memory_policy=policy)
        initial = obj.initial_frames or obj.frames
        for k in initial:
            points, labels, box = obj.frame_inputs(k)
            if k in obj.masks:
                self._prompt_painted(state, obj.masks[k], k, points, labels, box)
                continue
            self.model.add_new_points_or_box(state, frame_idx=k, obj_id=1, points=points, labels=labels, box=box)
        for k in obj.correction_frames if obj.initial_frames else []:
            self._correct_tracked(state, obj, k, initial)
        self.model.propagate_in_video_preflight(state)
        return state

    def _prompt_painted(self, state: dict, painted: np.ndarray, k: int, points, labels, box) -> None:
        """A painted slice is SAM2's mask prompt. Clicks (or a box) on it are decoded with the painted
        mask as mask input, as SAM2 decodes clicks on a slice it already has a mask for; then foreground
        clicks only add to the paint and background clicks only take from it (the union, the
        intersection; with both kinds, SAM2's answer), and the slice is prompted with that mask: a
        click never undoes what the user painted elsewhere on the slice."""
        self.model.add_new_mask(state, frame_idx=k, obj_id=1, mask=torch.from_numpy(painted))
        state.setdefault("exact", {})[k] = painted
        if points is None and box is None:
            return
        _, _, video_res = self.model.add_new_points_or_box(state, frame_idx=k, obj_id=1, points=points,
                                                           labels=labels, box=box)
        decoded = (video_res[0, 0] > 0).cpu()
        paint = torch.from_numpy(painted)
        kinds = set(labels.tolist()) if labels is not None else {1}
        if box is not None:
            kinds.add(1)
        merged = paint | decoded if kinds == {1} else paint & decoded if kinds == {0} else decoded
        self.model.add_new_mask(state, frame_idx=k, obj_id=1, mask=merged)
        state["exact"][k] = merged.numpy()

    def _correct_tracked(self, state: dict, obj: ObjectPrompt, k: int, initial: list[int]) -> None:
        """SAM2's click on a tracked slice: track from the nearest initial slice to k (SAM2's own
        memory rule: a memory policy's bank is left untouched), then decode k's clicks with the mask
        tracked there as mask input, and keep k as a conditioning slice for the propagation."""
        nearest = min(initial, key=lambda f: (abs(f - k), f))
        self.model.propagate_in_video_preflight(state)
        policy, state["memory_policy"] = state.get("memory_policy"), None
        try:
            for _ in self.model.propagate_in_video(state, start_frame_idx=nearest,
                                                   max_frame_num_to_track=abs(k - nearest), reverse=k < nearest):
                pass
        finally:
            state["memory_policy"] = policy
        points, labels, box = obj.frame_inputs(k)
        with corrections_as_conditioning():
            self.model.add_new_points_or_box(state, frame_idx=k, obj_id=1, points=points, labels=labels, box=box)

    # ---------------------------------------------------------------------------------- the label

    def _assemble(self, session: InteractiveSession, objects, per_object, exact, keep_largest: bool = False,
                  chunk: int = 32):
        """Low-resolution logits -> the label at the image's size: small holes filled and upsampled
        as SAM2 does, bounded by a 3D roi, overlapping objects resolved by the larger logit; in chunks
        of slices. `exact` holds each object's painted slices, which come back exactly as prompted
        (SAM2 keeps a mask prompt only at its low resolution), also when only the largest component
        of each object is kept (`keep_largest`)."""
        I, J, K = session.shape
        fill_area = int(self.model.postprocess.fill_hole_area)
        dtype = torch.uint8 if max(o.value for o in objects) < 256 else torch.int32
        label = torch.zeros((K, J, I), dtype=dtype, device=self.device)
        present = torch.zeros((len(objects), K), dtype=torch.bool, device=self.device)
        for a in range(0, K, chunk):
            b = min(K, a + chunk)
            best = None
            for n, (obj, track) in enumerate(zip(objects, per_object)):
                logits = F.interpolate(fill_holes(track.lowres[a:b], fill_area), size=(J, I), mode="bilinear",
                                       align_corners=False)[:, 0]
                if obj.roi is not None and obj.roi[5] > obj.roi[4]:
                    i0, i1, j0, j1, k0, k1 = obj.roi  # a 3D roi bounds the structure
                    keep = torch.zeros_like(logits, dtype=torch.bool)
                    keep[max(k0 - a, 0) : max(k1 + 1 - a, 0), j0 : j1 + 1, i0 : i1 + 1] = True
                    logits = torch.where(keep, logits, torch.full_like(logits, UNTRACKED))
                mask = logits > 0
                if len(objects) > 1:
                    if best is None:
                        best = torch.full_like(logits, UNTRACKED)
                    mask &= logits > best
                    best = torch.where(mask, logits, best)
                label[a:b][mask] = obj.value
                for k, painted in exact[n].items():  # the user's painted slices, exactly as painted
                    if a <= k < b:
                        painted = torch.from_numpy(painted).to(self.device)
                        mask[k - a] = painted
                        label[k][label[k] == obj.value] = 0
                        label[k][painted] = obj.value
                present[n, a:b] = mask.flatten(1).any(dim=1)
        if keep_largest:
            label = self._keep_largest(label, objects, exact, present)
        present = present.cpu().numpy()
        results = [ObjectResult(obj.label, obj.value, np.nonzero(present[n])[0].tolist(), track.scores, track.ious)
                   for n, (obj, track) in enumerate(zip(objects, per_object))]
        return label.permute(2, 1, 0).cpu().numpy(), results

    @staticmethod
    def _keep_largest(label: torch.Tensor, objects, exact, present: torch.Tensor) -> torch.Tensor:
        """Each object's largest 3D component of the (K, J, I) label (MedSAM2's post-processing), its
        painted slices put back exactly as painted; `present` updated."""
        out = label.cpu().numpy()
        for n, obj in enumerate(objects):
            mask = out == obj.value
            out[mask & ~largest_component(mask)] = 0
            for k, painted in exact[n].items():
                out[k][out[k] == obj.value] = 0
                out[k][painted] = obj.value
            present[n] = torch.from_numpy((out == obj.value).reshape(out.shape[0], -1).any(axis=1))
        return torch.from_numpy(out).to(label.device)
