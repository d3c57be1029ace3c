"""The long-lived part of the engine inside a server: the model and the opened volumes.

`ModelProvider` builds the model on first use (not at app start: MONAI Label builds the app again in
every training subprocess) and rebuilds it when the checkpoint file is replaced, so weights published
by the trainer are served on the next request without a restart. `InteractiveSegmenter` couples it
with the session cache: a request names a session key and the volume; encoder features are reused
while the same model version serves the same image.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from pathlib import Path

from .checkpoints import ModelSpec, build_model, resolve_spec
from .propagation import Segmenter, SegmentationResult, pick_device
from .sessions import SessionCache

logger = logging.getLogger(__name__)


class ModelProvider:
    """The served model. Weights come from the fine-tuned checkpoint the trainer publishes for these
    settings (`finetuned_path`) when there is one, else from the configured checkpoint."""

    def __init__(self, checkpoint: str | None, model_config: str | None, image_size: int | None,
                 model_dir: Path, device: str | None = None, intensity=None, **segmenter_options):
        self.settings = (checkpoint, model_config, image_size)
        self.model_dir = Path(model_dir)
        self.device = pick_device(device)
        self.intensity = intensity
        self.segmenter_options = segmenter_options  # see Segmenter: encode_batch_size, precision, ...
        self._lock = threading.Lock()
        self._base: ModelSpec | None = None
        self._segmenter: Segmenter | None = None
        self._version: tuple | None = None

    @property
    def finetuned_path(self) -> Path:
        checkpoint, model_config, image_size = self.settings
        slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{Path(str(checkpoint)).stem}__{model_config}__{image_size}")
        return self.model_dir / "finetuned" / f"{slug}.pt"

    def base_spec(self) -> ModelSpec:
        """The configured checkpoint, downloaded and verified once (raises CheckpointError)."""
        if self._base is None:
            self._base = resolve_spec(*self.settings, model_dir=self.model_dir)
        return self._base

    def current_spec(self) -> ModelSpec:
        base = self.base_spec()
        if self.finetuned_path.exists():
            return ModelSpec(base.model_config, base.image_size, self.finetuned_path)
        return base

    @staticmethod
    def _file_version(spec: ModelSpec) -> tuple:
        if spec.checkpoint is None:
            return (spec.model_config, spec.image_size, None)
        st = Path(spec.checkpoint).stat()
        return (spec.model_config, spec.image_size, str(spec.checkpoint), st.st_mtime_ns, st.st_size)

    def get(self) -> tuple[Segmenter, tuple]:
        """(segmenter, version); the version changes whenever different weights are loaded."""
        with self._lock:
            spec = self.current_spec()
            version = self._file_version(spec)
            if self._segmenter is None or version != self._version:
                t0 = time.perf_counter()
                model = build_model(spec, device=self.device)
                self._segmenter = Segmenter(model, intensity=self.intensity, **self.segmenter_options)
                self._version = version
                logger.info("loaded %s (%s) on %s in %.1fs", spec.checkpoint or "random weights",
                            spec.model_config, self.device, time.perf_counter() - t0)
            return self._segmenter, self._version


def version_id(version: tuple) -> str:
    """A short name for a ModelProvider version (config, size, weights file and its mtime/size), so a
    client can tell which weights served a result without seeing server paths."""
    return hashlib.sha256(repr(version).encode()).hexdigest()[:12]


class InteractiveSegmenter:
    def __init__(self, provider: ModelProvider, cache: SessionCache):
        self.provider = provider
        self.cache = cache

    def open(self, session_key, load, intensity=None):
        """(segmenter, session, cached) for `session_key`; on a cache miss `load()` gives (volume,
        header) and the header (geometry for writing the result) is kept with the session."""
        segmenter, version = self.provider.get()

        def opener():
            volume, header = load()
            # a GPU encodes every slice up front in batches (or alongside propagation); a CPU when needed
            session = segmenter.open(volume, intensity)
            session.header = header
            session.model_version = version_id(version)  # reported with each result
            return session

        session, cached = self.cache.get_or_open((session_key, version, str(intensity)), opener)
        return segmenter, session, cached

    def run(self, segmenter: Segmenter, session, objects, memory_policy_factory=None, cached: bool = False
            ) -> tuple[SegmentationResult, dict]:
        """Segment `objects` on an opened session; returns the result and engine statistics
        (encode_s: image-encoder seconds this request paid, up front or during propagation)."""
        encoded_before = session.features.encode_s if cached else 0.0
        result = segmenter.segment(session, objects, memory_policy_factory)
        self.cache.trim(keep=session)  # slices encoded on demand have grown the session: re-check the budget
        stats = {
            "cached_features": cached,
            "encode_s": round(session.features.encode_s - encoded_before, 4),
            "propagate_s": round(result.timings["propagate_s"], 4),
            "cache_entries": len(self.cache),
            "cache_mb": round(self.cache.nbytes / 2**20, 1),
            "device": str(segmenter.device),
            # slices tracked, and slices answered from this label's previous result (same prompts, or settled)
            "tracked_slices": result.timings.get("slices"),
            "reused_objects": result.timings.get("reused", 0),
            "settled_slices": result.timings.get("settled", 0),
            "model_version": getattr(session, "model_version", None),
        }
        return result, stats
