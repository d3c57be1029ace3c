"""The long-lived part of the engine inside a server: the model and the opened volumes.

`ModelProvider` builds the model on first use (not at app start: MONAI Label builds the app again in
every training subprocess) and rebuilds it when the checkpoint file is replaced, so weights published
by the trainer are served on the next request without a restart. `InteractiveSegmenter` couples it
with the session cache: a request names a session key and the volume; encoder features are reused
while the same model version serves the same image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import hashlib
import logging
import re
import threading
import time
from pathlib import Path

from .checkpoints import CheckpointError, CheckpointMismatch, ModelSpec, build_model, resolve_spec
from .encode_ahead import EncodeAhead
from .encoder_runtime import EncoderChoice, choose_encoder
from .machine_choice import cpu_precision
from .propagation import Segmenter, SegmentationResult, pick_device
from .session import InteractiveSession, SessionState
from .sessions import SessionCache
from .settings import EngineSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadState:
    loaded: bool
    version: str | None  # version_id of the loaded weights
    error: str  # why the last load failed, "" when it did not


class ModelProvider:
    """The served model. Weights come from the fine-tuned checkpoint the trainer publishes for these
    settings (`finetuned_path`) when there is one, else from the configured checkpoint. Precision
    `auto` is bf16 on CUDA; on a CPU, bf16 where it has bf16 units and bf16 is clearly faster there,
    decided once per machine (machine_choice.py), fp32 elsewhere; the image encoder runs in the
    `encoder_runtime` (encoder_runtime.py)."""

    def __init__(self, settings: EngineSettings, model_dir: Path):
        self.settings = settings
        self.encoder: EncoderChoice | None = None  # what encodes for the loaded weights
        self.model_dir = Path(model_dir)
        self.device = pick_device(settings.device)
        self._lock = threading.Lock()
        self._base: ModelSpec | None = None
        self._segmenter: Segmenter | None = None
        self._version: tuple | None = None
        self._error = ""  # why the last load failed ("" when it did not)

    @property
    def model_choice(self) -> tuple:
        """(checkpoint, model_config, image_size) as configured: what resolve_spec is given."""
        return self.settings.checkpoint, self.settings.model_config, self.settings.image_size

    @property
    def finetuned_path(self) -> Path:
        checkpoint, model_config, image_size = self.model_choice
        slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{Path(str(checkpoint)).stem}__{model_config}__{image_size}")
        return self.model_dir / "finetuned" / f"{slug}.pt"

    def base_spec(self) -> ModelSpec:
        """The configured checkpoint, downloaded and verified once (raises CheckpointError)."""
        if self._base is None:
            self._base = resolve_spec(*self.model_choice, model_dir=self.model_dir)
        return self._base

    def check_at_startup(self) -> None:
        """Raise CheckpointMismatch now, not on the first click, when the configured checkpoint is there
        but the configured architecture cannot hold it (the file's tensors are read, nothing is built).
        A checkpoint not downloaded yet, or unreadable (perhaps being copied into place), is only
        logged: the first click fetches it or says what is wrong (HTTP 503)."""
        try:
            self._base = resolve_spec(*self.model_choice, model_dir=self.model_dir, fetch=False)
        except CheckpointMismatch:
            raise
        except CheckpointError as e:
            logger.warning("checkpoint not ready at start-up (the first click will retry): %s", e)

    def current_spec(self) -> ModelSpec:
        base = self.base_spec()
        if self.finetuned_path.exists():
            return dataclasses.replace(base, checkpoint=self.finetuned_path)
        return base

    @staticmethod
    def _file_version(spec: ModelSpec) -> tuple:
        if spec.checkpoint is None:
            return (spec.model_config, spec.image_size, None)
        st = Path(spec.checkpoint).stat()
        return (spec.model_config, spec.image_size, str(spec.checkpoint), st.st_mtime_ns, st.st_size)

    def load_state(self) -> "LoadState":
        """Whether the model is loaded (without loading it): for a readiness check."""
        version = self._version
        return LoadState(loaded=self._segmenter is not None, version=version_id(version) if version else None,
                         error=self._error)

    def get(self) -> tuple[Segmenter, tuple]:
        """(segmenter, version); the version changes whenever different weights are loaded."""
        try:
            result = self._get()
        except Exception as e:
            self._error = f"{type(e).__name__}: {e}"
            raise
        self._error = ""
        return result

    def _get(self) -> tuple[Segmenter, tuple]:
        with self._lock:
            spec = self.current_spec()
            version = self._file_version(spec)
            if self._segmenter is None or version != self._version:
                t0 = time.perf_counter()
                model = build_model(spec, device=self.device)
                settings = self.settings
                if settings.precision == "auto" and self.device.type == "cpu":
                    # timed once per machine (machine_choice.py)
                    settings = settings.replace(precision=cpu_precision(model))
                self.encoder = choose_encoder(model, settings.encoder_runtime, settings.encoder_precision,
                                              model_dir=self.model_dir)
                self._segmenter = Segmenter(model, settings, encoder=self.encoder.encoder)
                self._version = version
                logger.info("loaded %s (%s) on %s in %.1fs", spec.checkpoint or "random weights",
                            spec.model_config, self.device, time.perf_counter() - t0)
            return self._segmenter, self._version


def version_id(version: tuple) -> str:
    """A short name for a ModelProvider version (config, size, weights file and its mtime/size), so a
    client can tell which weights served a result without seeing server paths."""
    return hashlib.sha256(repr(version).encode()).hexdigest()[:12]


AHEAD = "encode-ahead"  # the client of a session encoded ahead of its first click ("encode-ahead:<user>")


@dataclass(frozen=True)
class ImageFile:
    """An image as a file: a file written again (another mtime) is another image."""
    path: str
    mtime_ns: int


@dataclass(frozen=True)
class OpenedImage:
    """What a session holds, whoever opened it: an image file, scaled with an intensity rule."""
    file: ImageFile
    intensity: str


@dataclass(frozen=True)
class SessionKey:
    """Whose session of which image under which weights (the session cache's key): a client's clicks on
    an image reuse its encoded slices until other weights are served."""
    client: str  # the request's client_id, or AHEAD:<user> while encoded ahead of a first click
    image: OpenedImage
    model_version: tuple  # ModelProvider.get()'s version


class InteractiveSegmenter:
    """The model and the open images of a server. A session is kept per (client, image); `encode_ahead`
    opens and encodes an image before its first click (encode_ahead.py), and that click adopts it."""

    def __init__(self, provider: ModelProvider, cache: SessionCache | None = None, encode_ahead: bool | None = None):
        """`cache` (the open images) and `encode_ahead` default to the provider's settings (cache_mb,
        cache_entries, encode_ahead); benchmarks and tests set them to compare."""
        settings = provider.settings
        self.provider = provider
        self.cache = cache if cache is not None else SessionCache(max_bytes=settings.cache_mb << 20,
                                                                  max_entries=settings.cache_entries)
        self.ahead = EncodeAhead(self.cache, self._is_open,
                                 enabled=settings.encode_ahead if encode_ahead is None else encode_ahead)

    def _is_open(self, image: OpenedImage) -> bool:
        return any(key.image == image for key in self.cache.keys())

    def _opener(self, segmenter, version, load, intensity):
        def opener():
            volume, header = load()
            # a GPU encodes every slice up front in batches (or alongside propagation); a CPU when needed
            # model_version is reported with each result; header: how the caller writes results
            return segmenter.open(volume, intensity, header=header, model_version=version_id(version))
        return opener

    def open(self, client: str, file: ImageFile, load, intensity=None) -> tuple[InteractiveSession, bool]:
        """(session, cached) for `client`'s session of `file`; on a cache miss the image's session
        encoded ahead is adopted if there is one, else `load()` gives (volume, header) and the header
        (geometry for writing the result) is kept with the session."""
        segmenter, version = self.provider.get()
        key = SessionKey(client, OpenedImage(file, str(intensity)), version)
        if self.cache.get(key) is None:
            claimed = self.ahead.claim(key.image, accept=lambda ahead_key: ahead_key.model_version == version)
            if claimed is not None and self.cache.rekey(claimed[1], key):
                claimed[0].state = SessionState.ADOPTED
        return self.cache.get_or_open(key, self._opener(segmenter, version, load, intensity))

    def encode_ahead(self, user: str, name: str, locate, intensity=None):
        """Open and encode image `name` for `user` in the background before their first click on it.
        `locate()` -> (ImageFile, load), load() -> (volume, header), all run in the worker. None when
        nothing was started (EncodeAhead.request)."""
        loaders = {}

        def image() -> OpenedImage:
            file, load = locate()
            loaders[file] = load
            return OpenedImage(file, str(intensity))

        def open_ahead(image: OpenedImage):
            segmenter, version = self.provider.get()
            session = self._opener(segmenter, version, loaders[image.file], intensity)()
            session.state = SessionState.ENCODING_AHEAD
            return session, SessionKey(f"{AHEAD}:{user}", image, version)

        return self.ahead.request(user, name, image, open_ahead)

    def run(self, session: InteractiveSession, objects, memory_policy_factory=None, cached: bool = False,
            largest_component: bool | None = None) -> tuple[SegmentationResult, dict]:
        """Segment `objects` on an opened session; returns the result and engine statistics
        (encode_s: image-encoder seconds this request paid, up front or during propagation;
        slices_encoded_before: slices already encoded when it started, by earlier clicks or ahead)."""
        encoded_before = session.encode_s if cached else 0.0
        slices_before = int(session.features.encoded.sum()) if cached else 0
        ahead = session.state is SessionState.ADOPTED  # only its first click was helped by encoding ahead
        session.state = SessionState.OPEN
        segmenter = session.segmenter
        result = session.segment(objects, memory_policy_factory, largest_component)
        self.cache.trim(keep=session)  # slices encoded on demand have grown the session: re-check the budget
        stats = {
            "cached_features": cached,
            "encoded_ahead": ahead,
            "slices_encoded_before": slices_before,
            "encode_s": round(session.encode_s - encoded_before, 4),
            "propagate_s": round(result.timings["propagate_s"], 4),
            "cache_entries": len(self.cache),
            "cache_mb": round(self.cache.nbytes / 2**20, 1),
            "device": str(segmenter.device),
            "encoder": self.provider.encoder.describe() if self.provider.encoder else "torch",
            "precision": "bf16" if segmenter.dtype is not None else "fp32",  # of everything but an exported encoder
            # slices tracked, and slices answered from this label's previous result (same prompts, or settled)
            "tracked_slices": result.timings.get("slices"),
            "reused_objects": result.timings.get("reused", 0),
            "settled_slices": result.timings.get("settled", 0),
            "windows": result.timings.get("windows", 0),  # objects segmented in a window (field_of_view.py)
            "model_version": session.model_version,
            "postprocess": {"fill_hole_area": segmenter.model.postprocess.fill_hole_area,
                            "largest_component": segmenter.model.postprocess.largest_component
                            if largest_component is None else largest_component},
        }
        return result, stats
