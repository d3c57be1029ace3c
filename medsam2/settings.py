"""Every option of the engine and of the server in two frozen objects, parsed and checked in one place.

`EngineSettings` holds what changes a mask or how it is computed (the model, precision, memory,
propagation, caching); `ServerSettings` adds what only the MONAI Label app needs (labels offered,
request limits, the PACS) and carries one `EngineSettings`. Both are read once from `--conf` at start-up
(`ServerSettings.from_conf`), handed whole to the model provider, the engine and the infer tasks, and
refused with the reason when a value makes no sense. The command-line tools build them from their
arguments (`add_arguments` / `from_args`), so `--settle-slices 3` means what `--conf settle_slices 3`
means. Each field is declared with its default and one line of help; the README's options table and
`docs/options.md` are generated from them (`python -m medsam2.settings --write`; a test fails when
they drift).

Adding an option: a field here (default, help, checks), the code that reads it, a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

DIRECTIONS = ("independent", "sequential")  # tracker.py: how the two directions from a key slice are run
ENGINES = ("batched", "plain")  # propagation.py: the product, and the reference the tests compare it with
# encoder_runtime.py: which precisions each runtime can run the image encoder in
ENCODER_PRECISIONS = {"auto": ("auto",), "torch": ("auto", "fp32"), "onnxruntime": ("auto", "fp32", "int8"),
                      "openvino": ("auto", "fp32", "bf16")}
TRISTATE = ("auto", "true", "false")
# keys MONAI Label itself reads from --conf: not ours, not a typo
MONAI_LABEL_KEYS = {"server_mode", "preload", "auth_token", "skip_scoring", "skip_strategies", "skip_trainers"}


class SettingsError(ValueError):
    """An option whose value makes no sense; the message names the option and says what it accepts."""


def option(default, help: str, *, choices=(), minimum=None, parse=None, main: bool = False, conf: bool = True):
    """A settings field: its default, one line of help (the options table's), the values it accepts
    (`choices`, or a number at least `minimum`), how a --conf string becomes its value (`parse`; by
    default from the field's type), whether the README lists it (`main`), and whether --conf sets it
    (`conf=False`: set by code only, such as the reference engine the tests use)."""
    meta = {"help": help, "choices": tuple(choices), "minimum": minimum, "parse": parse, "main": main, "conf": conf}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=meta)
    return field(default=default, metadata=meta)


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_product(text: str) -> int:
    """A number or a product such as 512*512*1000 (or 512x512x1000)."""
    return math.prod(int(n) for n in str(text).lower().replace("x", "*").split("*"))


def parse_json_labels(text: str) -> dict:
    labels = json.loads(text) if isinstance(text, str) else text
    if not isinstance(labels, dict) or not labels or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0 for k, v in labels.items()):
        raise ValueError('expected a JSON object of names and positive label values, such as {"liver": 1}')
    return labels


def _json_object(text: str) -> dict:
    value = json.loads(text) if isinstance(text, str) else text
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(m.strip().upper() for m in str(text).split(",") if m.strip())


def _parser_for(hint) -> typing.Callable[[str], object]:
    """How a --conf string becomes a value of the field's type (None for '', 'none' or 'auto' where the
    type allows None)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = args[0] if optional and len(args) == 1 else hint
    convert = {bool: parse_bool, int: int, float: float, str: str}.get(base, str)
    if not optional:
        return convert
    return lambda text: None if str(text).strip().lower() in ("", "none", "auto") else convert(text)


class _Options:
    """What both settings classes share: reading --conf, checking values, describing themselves."""

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.metadata.get("conf")]

    @classmethod
    def parse_value(cls, name: str, text):
        f = cls.__dataclass_fields__[name]
        parse = f.metadata.get("parse") or _parser_for(typing.get_type_hints(cls)[name])
        if not isinstance(text, str):
            return text  # already a value (a caller in Python, not --conf)
        try:
            return parse(text)
        except (ValueError, TypeError) as e:
            raise SettingsError(f"--conf {name} {text!r}: {e} ({f.metadata['help']})") from None

    @classmethod
    def values_from(cls, conf: typing.Mapping) -> dict:
        return {f.name: cls.parse_value(f.name, conf[f.name]) for f in cls.options() if conf.get(f.name) is not None}

    def check(self) -> None:
        """Every field within its declared choices and minimum, then the class's own rules."""
        for f in self.options():
            value = getattr(self, f.name)
            choices, minimum = f.metadata["choices"], f.metadata["minimum"]
            if choices and value not in choices:
                raise SettingsError(f"--conf {f.name} must be one of {', '.join(map(str, choices))}; got {value!r}")
            if minimum is not None and value is not None and value < minimum:
                raise SettingsError(f"--conf {f.name} must be at least {minimum}; got {value!r}")

    def __post_init__(self):
        self.check()

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class EngineSettings(_Options):
    """What the engine is told: the model it serves and how it propagates, caches and computes."""

    # the model
    checkpoint: str = option("sam2.1_hiera_tiny", "manifest name (`model/manifest.json`: `sam2.1_hiera_tiny`, "
                             "`medsam2`, `medsam2_zhu`, `demo`, ...) or a SAM 2 `.pt` file (its config is read from "
                             "its tensors)", main=True)
    model_config: str | None = option(None, "SAM 2 config (`sam2.1_hiera_t`), project config (`sam2.1_hiera_nano`) "
                                      "or a `.yaml`; default: from the manifest or the file's tensors", main=True)
    image_size: int | None = option(None, "input resolution in pixels; default: from the manifest or the config",
                                    minimum=32)
    device: str = option("auto", "`cuda`, `cpu` or `auto` (CUDA when there is a GPU)", main=True,
                         parse=lambda s: str(s).strip().lower())
    precision: str = option("auto", "`auto` (bf16 on CUDA; on a CPU with bf16 units only if 1.5x faster, timed once "
                            "per machine), `bf16`, `fp32`", choices=("auto", "bf16", "fp32"), main=True)
    encoder_runtime: str = option("auto", "who runs the image encoder on a CPU: `auto` (the fastest fp32 runtime, a "
                                  "reduced precision only if 1.5x faster; timed once per machine and kept, so a "
                                  "restart never changes a mask), `torch`, `onnxruntime`, `openvino` "
                                  "([speed](speed.md))", choices=tuple(ENCODER_PRECISIONS), main=True)
    encoder_precision: str = option("auto", "`auto`, `fp32`, `int8` (onnxruntime) or `bf16` (openvino)",
                                    choices=("auto", "fp32", "int8", "bf16"))
    encode_batch: int | None = option(None, "slices per image-encoder batch; default: 8 on a GPU, 1 on a CPU",
                                      minimum=1)
    # the answers
    intensity: str = option("auto", "`auto` (CT soft-tissue window for HU, else 0.5-99.5 percentiles), "
                            "`percentile`, a CT preset (`lung`, `bone`, `brain`, `liver`, `abdomen`, `mediastinum`, "
                            "`soft_tissue`) or `ct:<level>,<width>`; also per request", main=True)
    memory_policy: str = option("self_sorting", "which past slices each slice attends to: `self_sorting` "
                                "(MedSAM-2's bank) or `fifo` (SAM 2's last six); also per request",
                                choices=("self_sorting", "fifo"), main=True)
    memory_capacity: int = option(16, "entries of a self-sorting memory bank (3D and One-Prompt)", minimum=1)
    memory_keep_last: int = option(1, "slices just before the current one that a self-sorting bank always keeps in "
                                   "its first slots (0: MedSAM-2's pure bank)", choices=tuple(range(7)))
    largest_component: str = option("auto", "keep each structure's largest 3D piece: `auto` (as the checkpoint's "
                                    "reference, on for `medsam2`), `true`, `false`; also per request",
                                    choices=TRISTATE, parse=lambda s: str(s).strip().lower(), main=True)
    field_of_view: str = option("off", "`off` (every slice whole at the model's input size) or `auto` (a small "
                                "structure segmented in a window around it, widened when its mask reaches the "
                                "window's edge; measured in [training](training.md))",
                                choices=("off", "auto"), parse=lambda s: str(s).strip().lower())
    directions: str = option("independent", "`independent` (both directions from the key slice at once) or "
                             "`sequential` (stock SAM 2's order)", choices=DIRECTIONS)
    stop_after_empty: int = option(0, "stop a direction after this many empty slices (0: never)", minimum=0)
    settle_slices: int = option(0, "a correction re-propagates only until this many slices come out unchanged "
                                "(0: to the ends)", minimum=0)
    # speed on a GPU (off until measured on one)
    cuda_graphs: bool = option(False, "replay the propagation step as CUDA graphs (GPU only; unmeasured)")
    overlap_encoding: bool = option(False, "encode slices alongside propagation (GPU only; unmeasured)")
    # what the server keeps between clicks
    cache_mb: int = option(4096, "memory budget of cached encoder features, in MB", minimum=1, main=True)
    cache_entries: int = option(8, "most images kept open at once", minimum=1, main=True)
    encode_ahead: bool = option(True, "encode an image when a client fetches it, before the first click (one image "
                                "per user, paused while any click runs)", main=True)
    # set by code only: the tests and benchmarks
    engine: str = option("batched", "`batched` (the product) or `plain` (the reference)", choices=ENGINES,
                         conf=False)
    settle_tolerance: float = option(0.01, "share of a slice's pixels that may differ and still count as "
                                     "unchanged (settle_slices)", conf=False)
    offload_levels: tuple = option((), "feature-pyramid levels kept in pinned host memory (GPU)", conf=False)

    def check(self) -> None:
        super().check()
        from .frames import Intensity

        if self.encoder_precision not in ENCODER_PRECISIONS[self.encoder_runtime]:
            raise SettingsError(f"--conf encoder_precision {self.encoder_precision!r} is not available with "
                                f"{self.encoder_runtime}: use one of {', '.join(ENCODER_PRECISIONS[self.encoder_runtime])}")
        if self.device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise SettingsError(f"--conf device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        try:
            Intensity.parse(self.intensity)
        except ValueError as e:
            raise SettingsError(f"--conf intensity: {e}") from None

    @classmethod
    def from_conf(cls, conf: typing.Mapping) -> "EngineSettings":
        return cls(**cls.values_from(conf))


DEFAULT_LABELS = {"organ": 1, "vessel": 2, "lesion": 3}


@dataclass(frozen=True)
class ServerSettings(_Options):
    """What the MONAI Label app adds to the engine's settings: the labels it offers, the limits it puts on
    requests, the PACS series it lists, where the model folder is."""

    labels: dict = option(DEFAULT_LABELS, "JSON `{name: value}` offered to the clients", parse=parse_json_labels,
                          main=True)
    max_voxels: int = option(1024 * 1024 * 2000, "largest image read, from its header (a number or a product such "
                             "as `512*512*1000`)", parse=parse_product, minimum=1)
    max_clicks: int = option(1000, "most clicks in one request (more is answered 413)", minimum=1)
    infer_concurrency: int = option(2, "3D inferences running at once ([deployment](deployment.md))", minimum=1,
                                    main=True)
    dicomweb_modalities: tuple = option(("CT", "MR", "PT"), "the series of a PACS offered as images",
                                        parse=parse_names, main=True)
    model_dir: str | None = option(None, "the model folder (manifest, downloads, fine-tuned weights); default: the "
                                   "repository's `model/`")
    train_every: int = option(0, "start a fine-tuning run by itself after this many new saved final labels (0: off) "
                              "([training](training.md))", minimum=0)
    train_at: str = option("", "start a fine-tuning run by itself once a day at this time, `HH:MM`, when a new label "
                           "exists (empty: off)", parse=str.strip)
    auto_train_params: dict = option({}, "JSON of the `/train` params those runs take, without spaces (the `monailabel` "
                                     "script splits arguments on them), such as `{\"max_steps\":500}`",
                                     parse=_json_object)
    mlflow_uri: str = option("", "where fine-tuning runs are tracked: an MLflow tracking URI; empty: `model/mlflow.db` "
                             "([training](training.md))", parse=str.strip)
    keep_versions: int = option(10, "fine-tuned versions kept in `model/versions/` (never the served one nor its "
                                "parent) ([training](training.md))", minimum=2)
    replica: str = option("", "this replica's name behind a balancer: sent as `X-Replica` on every answer, the model "
                          "loaded at start (`GET /ready`) ([deployment](deployment.md))", parse=str.strip)
    balancer_url: str = option("", "the balancer in front of the replicas: Next Sample's image is encoded ahead on "
                               "the replica its clicks will reach", parse=lambda s: str(s).strip().rstrip("/"))
    engine: EngineSettings = option(None, "the engine's settings", conf=False)

    def __post_init__(self):
        if self.engine is None:
            object.__setattr__(self, "engine", EngineSettings())
        super().__post_init__()

    def check(self) -> None:
        super().check()
        if self.train_at and not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", self.train_at):
            raise SettingsError(f"--conf train_at must be a time of day as HH:MM (00:00 to 23:59); got {self.train_at!r}")

    @classmethod
    def from_conf(cls, conf: typing.Mapping) -> "ServerSettings":
        """Both objects from MONAI Label's --conf mapping; unknown keys (a typo) are logged."""
        unknown = set(conf) - {f.name for f in cls.options() + EngineSettings.options()} - MONAI_LABEL_KEYS
        if unknown:
            logger.warning("--conf %s: not an option of this app (see docs/options.md)", ", ".join(sorted(unknown)))
        return cls(engine=EngineSettings.from_conf(conf), **cls.values_from(conf))


# --- the command-line tools -------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, names: typing.Iterable[str], required=()) -> None:
    """`--settle-slices` and the like for these EngineSettings fields, with their help and defaults."""
    for name in names:
        f = EngineSettings.__dataclass_fields__[name]
        flag = "--" + name.replace("_", "-")
        if name in required:
            parser.add_argument(flag, required=True, help=f.metadata["help"])
        else:
            parser.add_argument(flag, default=None, help=f"{f.metadata['help']} [{_shown(f.default)}]")


def from_args(args: argparse.Namespace, **changes) -> EngineSettings:
    """EngineSettings from the arguments `add_arguments` declared (the rest at their defaults)."""
    given = {name: getattr(args, name) for name in EngineSettings.__dataclass_fields__
             if getattr(args, name, None) is not None}
    return EngineSettings(**{**EngineSettings.values_from({k: str(v) for k, v in given.items()}), **changes})


# --- the options tables -----------------------------------------------------------------------------

def _shown(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def options_table(main_only: bool = False, link_prefix: str = "") -> str:
    """The markdown table of every --conf option (or the README's main ones); `link_prefix` makes the
    relative links in help texts right from where the table is placed."""
    rows = ["| `--conf` | meaning | default |", "|---|---|---|"]
    for cls in (EngineSettings, ServerSettings):
        for f in cls.options():
            if main_only and not f.metadata["main"]:
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            help_text = re.sub(r"\]\((?!http)([^)]+)\)", rf"]({link_prefix}\1)", f.metadata["help"])
            rows.append(f"| `{f.name}` | {help_text} | `{_shown(default)}` |")
    return "\n".join(rows) + "\n"


BEGIN = "<!-- options: generated by `python -m medsam2.settings --write` from medsam2/settings.py -->\n"
END = "<!-- /options -->\n"
REPO = Path(__file__).resolve().parents[1]
TABLES = {REPO / "README.md": dict(main_only=True, link_prefix="docs/"), REPO / "docs" / "options.md": {}}


def with_table(text: str, table: str) -> str:
    """`text` with what lies between the BEGIN and END markers replaced by `table`."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + table + text[end:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medsam2.settings", description="print or write the options tables")
    ap.add_argument("--write", action="store_true", help="rewrite the tables in README.md and docs/options.md")
    args = ap.parse_args(argv)
    if not args.write:
        print(options_table(), end="")
        return 0
    for path, how in TABLES.items():
        path.write_text(with_table(path.read_text(), options_table(**how)))
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
