"""Image-encoder features of every slice of one volume, computed once and kept for later clicks.

SAM2's image encoder is the costliest part of segmenting a volume, and it does not depend on the
prompts: each slice is encoded once, in batches, and reused by every click on the same image.
Only the feature pyramid is kept per slice (after SAM2's `conv_s0`/`conv_s1` projections, as
`forward_image` returns it); the positional encodings are the same for every slice and kept once.
The normalised frames are built batch by batch from the scaled volume and dropped after encoding.

On a GPU the encoder can run on a stream of its own (`schedule`), in the order propagation will
need the slices, while propagation runs on the main stream and waits only for the slices it is
about to use (`wait_for`): encoding and propagation overlap. `offload_levels` keeps the named
pyramid levels (the largest is level 0) in pinned host memory instead of on the GPU; propagation
copies one slice back per step. That halves the GPU memory a 1024 px volume needs.
"""

from __future__ import annotations

import threading
import time

import torch

from .frames import frames_from_scaled


class FrameFeatures:
    def __init__(self, model, scaled_volume: torch.Tensor, batch_size: int = 8, offload_levels=(), encoder=None,
                 keep_scaled: bool = False):
        self.model = model
        self.keep_scaled = keep_scaled  # keep the scaled volume once every slice is encoded (windows are cut from it)
        # SAM2's forward_image, or an exported encoder's (encoder_runtime.py): the same outputs
        self.forward_image = encoder.forward_image if encoder is not None else model.forward_image
        self.scaled = scaled_volume  # (I, J, K) in [0, 1], on the compute device
        self.device = scaled_volume.device
        self.num_frames = int(scaled_volume.shape[2])
        self.batch_size = max(1, int(batch_size))
        self.offload_levels = tuple(offload_levels) if self.device.type == "cuda" else ()
        self.levels: list[torch.Tensor] | None = None  # per level: (K, C, H, W)
        self.pos: list[torch.Tensor] | None = None  # per level: (1, C, H, W)
        self.encoded = torch.zeros(self.num_frames, dtype=torch.bool)  # encoded, or enqueued on the stream
        self.embeddings: torch.Tensor | None = None  # (K, C) pooled lowest-resolution features
        self.encode_s = 0.0  # seconds spent in (or enqueueing) the image encoder
        self._lock = threading.RLock()
        self._stream: torch.cuda.Stream | None = None
        self._ready: dict[int, torch.cuda.Event] = {}  # frame -> event recorded after its batch

    # ------------------------------------------------------------------------------------ encoding

    def frames(self, ks: list[int]) -> torch.Tensor:
        """The image encoder's input for slices `ks`: made as the checkpoint's own pipeline made its
        inputs (`model.preprocess`, frames.py)."""
        return frames_from_scaled(self.scaled, ks, self.model.image_size, preprocess=self.model.preprocess)

    def _encode(self, ks: list[int]) -> None:
        out = self.forward_image(self.frames(ks))
        fpn = out["backbone_fpn"]
        if self.levels is None:
            self._allocate(fpn, out["vision_pos_enc"])
        idx = torch.tensor(ks, device=self.device)
        for n, (level, f) in enumerate(zip(self.levels, fpn)):
            if n in self.offload_levels:
                for row, k in enumerate(ks):
                    level[k].copy_(f[row], non_blocking=True)
            else:
                level[idx] = f
        self.embeddings[idx] = fpn[-1].float().mean(dim=(2, 3))
        self.encoded[ks] = True

    def _allocate(self, fpn, pos) -> None:
        self.levels = []
        for n, f in enumerate(fpn):
            shape = (self.num_frames, *f.shape[1:])
            if n in self.offload_levels:
                self.levels.append(torch.empty(shape, dtype=f.dtype, pin_memory=True))
            else:
                self.levels.append(torch.empty(shape, dtype=f.dtype, device=f.device))
        self.pos = [p[:1].clone() for p in pos]
        self.embeddings = torch.zeros((self.num_frames, fpn[-1].shape[1]), dtype=torch.float32, device=self.device)

    @torch.inference_mode()
    def ensure(self, frame_indices=None) -> None:
        """Encode the given frames (all when None) that are not encoded yet, in batches, now."""
        wanted = range(self.num_frames) if frame_indices is None else sorted(set(int(k) for k in frame_indices))
        with self._lock:
            todo = [k for k in wanted if not self.encoded[k]]
            if not todo:
                return
            t0 = time.perf_counter()
            for start in range(0, len(todo), self.batch_size):
                self._encode(todo[start : start + self.batch_size])
            self.encode_s += time.perf_counter() - t0
            self._drop_scaled_when_done()

    @torch.inference_mode()
    def schedule(self, order) -> None:
        """On CUDA: enqueue encoding of the frames in `order` (skipping encoded ones) on the encoder
        stream, batch by batch, without waiting. Elsewhere: nothing (frames are encoded on demand)."""
        if self.device.type != "cuda":
            return
        with self._lock:
            todo = [int(k) for k in order if not self.encoded[int(k)]]
            if not todo:
                return
            if self.levels is None:  # allocate the buffers on the main stream: encode one frame now
                self.ensure(todo[:1])
                todo = todo[1:]
            t0 = time.perf_counter()
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=self.device)
            main = torch.cuda.current_stream(self.device)
            self._stream.wait_stream(main)  # the scaled volume and the feature buffers were made on main
            with torch.cuda.stream(self._stream):
                for start in range(0, len(todo), self.batch_size):
                    ks = todo[start : start + self.batch_size]
                    self._encode(ks)
                    event = torch.cuda.Event()
                    event.record(self._stream)
                    for k in ks:
                        self._ready[k] = event
            if self.scaled is not None:
                self.scaled.record_stream(self._stream)
            self.encode_s += time.perf_counter() - t0
            self._drop_scaled_when_done()

    def wait_for(self, frame_indices) -> None:
        """Make the current stream wait until the given frames are encoded (encoding what is missing)."""
        missing = [k for k in frame_indices if not self.encoded[k]]
        if missing:
            self.ensure(missing)
        if self._ready:
            stream = torch.cuda.current_stream(self.device)
            for event in {id(e): e for e in (self._ready.get(k) for k in frame_indices) if e is not None}.values():
                stream.wait_event(event)

    def synchronize(self) -> None:
        """Wait for scheduled encoding (before the features are used from another thread)."""
        if self._stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
            self._ready.clear()

    def _drop_scaled_when_done(self) -> None:
        if bool(self.encoded.all()) and not self.keep_scaled:
            self.scaled = None  # every slice is encoded: the scaled volume is not needed any more

    # ------------------------------------------------------------------------------------ reading

    def backbone_out(self, frame_idx: int) -> dict:
        """SAM2's backbone output for one frame (as `forward_image` gives it), on the compute device."""
        self.wait_for([frame_idx])
        return {
            "backbone_fpn": [level[frame_idx : frame_idx + 1].to(self.device, non_blocking=True)
                             for level in self.levels],
            "vision_pos_enc": list(self.pos),
        }

    def gather(self, level: int, frame_indices: torch.Tensor, frames_cpu: list[int], out: torch.Tensor | None = None):
        """Level `level` of the given frames as one (B, C, H, W) tensor (into `out` when given)."""
        src = self.levels[level]
        if level in self.offload_levels:
            out = out if out is not None else torch.empty((len(frames_cpu), *src.shape[1:]), dtype=src.dtype,
                                                          device=self.device)
            for row, k in enumerate(frames_cpu):
                out[row].copy_(src[k], non_blocking=True)
            return out
        return torch.index_select(src, 0, frame_indices, out=out) if out is not None else src[frame_indices]

    @property
    def nbytes(self) -> int:
        """Bytes held on the compute device (what the session cache budgets)."""
        n = sum(t.numel() * t.element_size() for n, t in enumerate(self.levels or []) if n not in self.offload_levels)
        n += sum(t.numel() * t.element_size() for t in self.pos or [])
        if self.embeddings is not None:
            n += self.embeddings.numel() * self.embeddings.element_size()
        scaled = self.scaled  # read once: a request encoding the last slice may drop it meanwhile
        if scaled is not None:
            n += scaled.numel() * scaled.element_size()
        return n

    @property
    def host_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for n, t in enumerate(self.levels or []) if n in self.offload_levels)
