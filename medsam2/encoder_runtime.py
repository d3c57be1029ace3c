"""SAM 2's image encoder run by a CPU inference runtime (ONNX Runtime or OpenVINO) instead of PyTorch.

On a CPU the image encoder is most of a first click. The encoder (Hiera, its FPN neck and the mask
decoder's conv_s0 / conv_s1 projections: what `SAM2Base.forward_image` returns) is exported once to
ONNX with PyTorch's exporter and run by:
- `onnxruntime`: fp32, or int8 (dynamic quantisation of the weights, `reduce_range`: without it the
  finest level was 34 % off on an AVX2 CPU);
- `openvino`: reads the same ONNX file; `auto` precision is OpenVINO's own choice for the CPU (bf16 on
  CPUs with bf16 units such as AMX, f32 elsewhere), `fp32` forces f32, `bf16` asks for bf16.
`auto` (the server's default) times the candidates on this CPU once per machine and serves the fastest
exact (fp32) one, a reduced precision (int8, bf16) only when it is clearly faster (machine_choice.py:
the masks must not change with a timing race or a restart); on a GPU it is PyTorch. The rest of the model (prompts, memory attention, decoder, memory encoder) stays in
PyTorch.

Exports are kept in `<model_dir>/exported/`, named by a digest of the encoder's weights and the image
size (and the exporter's version), so a new or fine-tuned checkpoint gets its own export and an old
one is never used for it. Anything that fails (an exporter or runtime missing, an export error, outputs
that disagree with PyTorch on a test input) falls back to PyTorch, with the reason logged and
reported (`EncoderChoice.fallback`). The positional encodings depend on the image size only; they are
taken from one PyTorch pass at load, which is also the reference for that check.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .machine_choice import REDUCED_MARGIN, cpu_info, decide, machine_key, pick
from .settings import ENCODER_PRECISIONS

logger = logging.getLogger(__name__)

RUNTIMES = tuple(ENCODER_PRECISIONS)
PRECISIONS = ("auto", "fp32", "int8", "bf16")
SUPPORTED = ENCODER_PRECISIONS  # settings.py: which precisions each runtime runs
# what `auto` measures on a CPU: each is within the masks' tolerance of PyTorch fp32 (tests/test_encoder_runtime.py)
# exact ones (fp32) first; a reduced one (int8, OpenVINO's bf16) is chosen only by a clear margin (machine_choice.py)
AUTO_CANDIDATES = (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8"),
                   ("openvino", "bf16"))
# the check at load catches a broken export (errors near 100 %), not rounding: relative error per level.
# Measured on the demo model: fp32 3e-7, ORT int8 1-2 %, OpenVINO bf16 0.4-6 % (its coarsest level).
CHECK_TOLERANCE = {"fp32": 1e-3, "int8": 0.1, "bf16": 0.15, "auto": 0.15}


class _ForwardImage(torch.nn.Module):
    """What SAM2Base.forward_image computes, as a module with tensor outputs (for the exporter)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, frames):
        return tuple(self.model.forward_image(frames)["backbone_fpn"])


def check_choice(runtime: str, precision: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"encoder_runtime must be one of {RUNTIMES}, got {runtime!r}")
    if precision not in SUPPORTED[runtime]:
        raise ValueError(f"encoder_precision {precision!r} is not available with {runtime}: "
                         f"use one of {SUPPORTED[runtime]}")


def weights_digest(model) -> str:
    """sha256 of the encoder's weights (and the two projections of its output), in a fixed order."""
    h = hashlib.sha256()
    for prefix, module in (("image_encoder", model.image_encoder), ("conv_s0", model.sam_mask_decoder.conv_s0),
                           ("conv_s1", model.sam_mask_decoder.conv_s1)):
        for name, tensor in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def export_onnx(model, path: Path) -> Path:
    """SAM 2's forward_image for one frame at the model's size, as ONNX at `path` (written atomically)."""
    size = int(model.image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(_ForwardImage(model).eval(), (torch.zeros(1, 3, size, size),), tmp, dynamo=True,
                              external_data=False, optimize=True, verbose=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def quantize_int8(fp32: Path, path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        quantize_dynamic(str(fp32), tmp, weight_type=QuantType.QInt8, reduce_range=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class ExportedEncoder:
    """`forward_image(frames)` as FrameFeatures calls it, run by an exported model one frame at a time."""

    def __init__(self, run, pos: list[torch.Tensor], description: str):
        self._run = run  # float32 array (1, 3, S, S) -> list of float32 arrays, one per level
        self.pos = pos  # per level (1, C, H, W)
        self.description = description

    def forward_image(self, frames: torch.Tensor) -> dict:
        levels = [[] for _ in self.pos]
        array = frames.detach().float().cpu().numpy()
        for b in range(array.shape[0]):
            for n, out in enumerate(self._run(array[b : b + 1])):
                levels[n].append(torch.from_numpy(np.asarray(out, dtype=np.float32)))
        fpn = [torch.cat(level).to(frames.device) for level in levels]
        return {"backbone_fpn": fpn, "vision_pos_enc": [p.expand(len(array), -1, -1, -1) for p in self.pos]}


def _onnxruntime(path: Path, threads: int, precision: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x}), "int8" if precision == "int8" else "fp32"


def _openvino(path: Path, threads: int, precision: str, cache_dir: Path):
    import openvino as ov

    core = ov.Core()
    core.set_property({"CACHE_DIR": str(cache_dir)})  # compiled blobs: a restart skips the compilation
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision in ("fp32", "bf16"):
        config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
    compiled = core.compile_model(str(path), "CPU", config)
    local = threading.local()  # an infer request is not for two threads at once: one per thread

    def run(x):
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        request.infer([x])
        return [request.get_output_tensor(n).data.copy() for n in range(len(compiled.outputs))]

    return run, compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


@dataclass
class EncoderChoice:
    """Which encoder serves, and why (reported with each result and in the log)."""

    runtime: str  # what runs: torch, onnxruntime or openvino
    precision: str  # as the runtime reports it
    encoder: ExportedEncoder | None  # None: the model's own forward_image
    fallback: str | None = None  # why the asked-for runtime is not the one running
    load_s: float = 0.0

    def describe(self) -> str:
        text = f"{self.runtime} ({self.precision})"
        return text + (f", fallback: {self.fallback}" if self.fallback else "")


def choose_encoder(model, runtime: str = "torch", precision: str = "auto", model_dir: Path | None = None,
                   threads: int | None = None) -> EncoderChoice:
    """The encoder for `model`: PyTorch, or an exported one (built or taken from `model_dir/exported`)."""
    check_choice(runtime, precision)
    if runtime == "torch" or (runtime == "auto" and model.device.type != "cpu"):
        return EncoderChoice("torch", "fp32", None)
    if runtime == "auto":
        return _measured_choice(model, Path(model_dir or tempfile.gettempdir()), threads or torch.get_num_threads())
    if model.device.type != "cpu":
        return EncoderChoice("torch", "fp32", None, fallback=f"{runtime} runs on the CPU; the model is on "
                                                            f"{model.device.type}")
    t0 = time.perf_counter()
    try:
        encoder, actual = _exported(model, runtime, precision, Path(model_dir or tempfile.gettempdir()),
                                    threads or torch.get_num_threads())
    except Exception as e:  # noqa: BLE001 (any failure of an optional runtime: serve with torch, say why)
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        logger.warning("encoder_runtime %s (%s) not used, PyTorch encodes instead: %s", runtime, precision, reason)
        return EncoderChoice("torch", "fp32", None, fallback=reason, load_s=time.perf_counter() - t0)
    choice = EncoderChoice(runtime, actual, encoder, load_s=time.perf_counter() - t0)
    logger.info("image encoder: %s, ready in %.1fs", choice.describe(), choice.load_s)
    return choice


def cpu_name() -> str:
    """The CPU's model name (what a measured choice is valid for)."""
    return cpu_info("model name") or platform.processor() or platform.machine()


def _measured_choice(model, model_dir: Path, threads: int) -> EncoderChoice:
    """`encoder_runtime auto` on a CPU: the fastest of AUTO_CANDIDATES (median of 3 encodes of one slice
    after a warm-up), a reduced precision only by a clear margin, decided once per machine, config and
    size and kept (machine_choice.py: a restart or a fresh model folder never changes the masks).
    Speed does not depend on the weights: fine-tuned weights reuse the choice."""
    size = int(model.image_size)
    key = machine_key(type(model.image_encoder.trunk).__name__, sum(p.numel() for p in model.parameters()), size,
                      threads)
    built: dict[tuple[str, str], EncoderChoice] = {}  # (runtime, precision asked) -> built while measuring

    def measure() -> dict:
        frame = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        ms, exact, asked = {}, set(), {}
        for runtime, precision in AUTO_CANDIDATES:
            choice = choose_encoder(model, runtime, precision, model_dir=model_dir, threads=threads)
            if choice.fallback is not None:
                continue
            encode = choice.encoder.forward_image if choice.encoder is not None else model.forward_image
            with torch.inference_mode():
                encode(frame)
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    encode(frame)
                    times.append(time.perf_counter() - t0)
            name = f"{runtime} ({choice.precision})"
            if name in ms:  # OpenVINO's bf16 is f32 on a CPU without bf16 units: the same option twice
                continue
            ms[name] = round(1000 * sorted(times)[1], 1)
            built[(runtime, precision)], asked[name] = choice, (runtime, precision)
            if choice.precision in ("fp32", "f32"):
                exact.add(name)
        best = pick(ms, exact)
        runtime, precision = asked[best]
        logger.info("encoder_runtime auto on %s, %d threads: %s (ms per slice: %s; a reduced precision must be "
                    "%.1fx faster than fp32)", cpu_name(), threads, best, ms, REDUCED_MARGIN)
        return {"chosen": [runtime, precision], "ms_per_slice": ms, "cpu": cpu_name(), "threads": threads,
                "image_size": size}

    chosen = decide("encoder_runtime", key, measure)
    runtime, precision = chosen["chosen"]
    if (runtime, precision) in built:  # measured just now: serve the instance already built
        return built[(runtime, precision)]
    choice = choose_encoder(model, runtime, precision, model_dir=model_dir, threads=threads)
    if choice.fallback is not None:
        logger.warning("encoder_runtime auto: the recorded choice %s (%s) is not available here now (%s)",
                       runtime, precision, choice.fallback)
    return choice


def _exported(model, runtime: str, precision: str, model_dir: Path, threads: int):
    folder = model_dir / "exported"
    size = int(model.image_size)
    stem = f"encoder-{weights_digest(model)}-{size}px-torch{torch.__version__.split('+')[0]}"
    fp32 = folder / f"{stem}.onnx"
    if not fp32.exists():
        t0 = time.perf_counter()
        export_onnx(model, fp32)
        logger.info("exported the image encoder to %s in %.1fs", fp32, time.perf_counter() - t0)
    path = fp32
    if runtime == "onnxruntime" and precision == "int8":
        path = folder / f"{stem}-int8.onnx"
        if not path.exists():
            quantize_int8(fp32, path)
    if runtime == "onnxruntime":
        run, actual = _onnxruntime(path, threads, precision)
    else:
        # one cache folder per precision: OpenVINO's blob cache answered an f32 request with a bf16 blob
        run, actual = _openvino(path, threads, precision, folder / "openvino-cache" / precision)

    # the reference pass: positional encodings, and the exported outputs checked against PyTorch
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(1, 3, size, size, generator=generator) * 4 - 2
    with torch.inference_mode():
        reference = model.forward_image(frames.to(model.device))
    outputs = run(frames.numpy())
    for n, (ref, out) in enumerate(zip(reference["backbone_fpn"], outputs)):
        ref = ref.float().cpu()
        error = float((ref - torch.from_numpy(np.asarray(out, dtype=np.float32))).norm() / ref.norm().clamp_min(1e-12))
        if not error <= CHECK_TOLERANCE[precision]:
            raise ValueError(f"the exported encoder's level {n} differs from PyTorch by {error:.1%} "
                             f"(more than {CHECK_TOLERANCE[precision]:.1%})")
    pos = [p[:1].detach().float().clone() for p in reference["vision_pos_enc"]]
    return ExportedEncoder(run, pos, f"{runtime} ({actual})"), actual
