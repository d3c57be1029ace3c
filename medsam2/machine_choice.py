"""Speed choices timed once per machine and kept, so that a restart never changes an answer.

Two `auto` settings are decided by timing on this CPU: which runtime runs the image encoder
(`encoder_runtime`, encoder_runtime.py) and whether the model runs in bf16 (`precision`, service.py).
A timing comes out either way when two options are close, and the options do not all give the same
masks: a reduced precision (bf16, int8) moves a few voxels (OpenVINO bf16 against ONNX Runtime fp32:
54 of 114,688 voxels on one test series, on an AMD EPYC where the two timed within noise). So:
- exact (fp32) options compete on speed alone (their outputs agree to about 1e-6);
- a reduced precision is chosen only when it is at least REDUCED_MARGIN times faster than the best
  exact option: a clear win, not a race;
- a choice is made once per machine, model config and size, threads and torch version, and recorded
  in one file outside any model folder (~/.cache/medsam2/machine-choices.json; MEDSAM2_CHOICES names
  another), under a lock so that servers starting together make it once. Every later start reuses
  it. Delete the file (or the entry) to measure again.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch

REDUCED_MARGIN = 1.5  # how much faster a reduced precision must be than the best exact option
_FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


@functools.lru_cache(maxsize=None)
def cpu_info(field: str) -> str:
    """A field of the first CPU in /proc/cpuinfo ("model name", "flags"); "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.split(":", 1)[0].strip() == field), "")
    except OSError:
        return ""
    return line.split(":", 1)[1].strip() if ":" in line else ""


def record_path() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medsam2" / "machine-choices.json"
    return Path(os.environ.get("MEDSAM2_CHOICES") or default)


def machine_key(*parts) -> str:
    """A key for one decision on this machine: the CPU (name and the flags that change speed), threads,
    torch's version and whatever else the caller names (config, image size)."""
    flags = sorted(set(cpu_info("flags").split()) & set(_FLAGS_THAT_MATTER))
    what = (cpu_info("model name"), flags, torch.get_num_threads(), torch.__version__.split("+")[0], parts)
    return hashlib.sha256(repr(what).encode()).hexdigest()[:16]


def decide(name: str, key: str, measure: Callable[[], dict]) -> dict:
    """The recorded decision `name`/`key`, or `measure()` recorded now (a dict with at least "chosen").
    Serialised across processes by a lock beside the record."""
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = _read(path)
        entry = record.get(name, {}).get(key)
        if entry is not None:
            return entry
        entry = measure()
        record = _read(path)
        record.setdefault(name, {})[key] = entry
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(tmp, path)
        return entry


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def pick(ms: dict[str, float], exact: set[str]) -> str:
    """The fastest exact option, unless a reduced one is REDUCED_MARGIN times faster than it."""
    best_exact = min((n for n in ms if n in exact), key=ms.get, default=None)
    best_reduced = min((n for n in ms if n not in exact), key=ms.get, default=None)
    if best_exact is None:
        return best_reduced
    if best_reduced is not None and ms[best_exact] >= REDUCED_MARGIN * ms[best_reduced]:
        return best_reduced
    return best_exact


def cpu_has_bf16_units() -> bool:
    """Whether the CPU computes in bf16 natively (AMX tiles or AVX-512 BF16); elsewhere bf16 is emulated
    and never the faster choice."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_info("flags").split()))


def cpu_precision(model) -> str:
    """`precision auto` on a CPU: "bf16" where the CPU has bf16 units and the model's image encoder (most
    of a click's arithmetic) runs REDUCED_MARGIN times faster under bf16 autocast than in fp32, timed
    once per machine and model (median of 3 after a warm-up); "fp32" otherwise. bf16 masks are within
    the tolerance tests/test_speed_equivalence.py states (about 2 % Dice)."""
    import time

    if not cpu_has_bf16_units():
        return "fp32"
    size = int(model.image_size)

    def measure() -> dict:
        frame = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        ms = {}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            context = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
            times = []
            with torch.inference_mode(), context:
                for n in range(4):
                    t0 = time.perf_counter()
                    model.forward_image(frame)
                    times.append(time.perf_counter() - t0)
            ms[name] = round(1000 * sorted(times[1:])[1], 1)
        return {"chosen": pick(ms, {"fp32"}), "ms_per_slice": ms, "threads": torch.get_num_threads()}

    key = machine_key(type(model.image_encoder.trunk).__name__, sum(p.numel() for p in model.parameters()), size)
    return decide("precision", key, measure)["chosen"]
