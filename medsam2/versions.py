"""Every model a fine-tuning run published, kept as a version, and the way back to any of them.

The provider serves one file (`ModelProvider.finetuned_path`, or the configured checkpoint when there
is none). Each publish is also kept as `versions/<id>.pt` with `versions/<id>.json` (when, how many
training images, its validation Dice and its parent's on the same images, the run's settings, its
sha256); `versions/served.json` names the version being served ("base": the configured checkpoint).
`rollback(id)` puts that version's file in place atomically (the provider serves it from the next
request) after checking its sha256, so a damaged or unknown version changes nothing. Old versions are
pruned to `keep`, never the served one nor its parent.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .checkpoints import sha256_of

BASE = "base"  # the configured checkpoint, served when no fine-tuned file is in place


class VersionError(ValueError):
    """A rollback that cannot be done; nothing was changed."""


class UnknownVersion(VersionError):
    pass


class DamagedVersion(VersionError):
    pass


@dataclass(frozen=True)
class ModelVersion:
    id: str  # <UTC time>-<sha256 prefix>
    created: str  # ISO time of the publish
    sha256: str
    train_images: int
    val_dice: float | None  # on the run's validation images
    parent: str  # the version served when the run started (BASE: the configured checkpoint)
    parent_val_dice: float | None  # the parent's Dice on the same images, measured at the run's start
    settings: dict = field(default_factory=dict)  # the run's request params


class VersionStore:
    def __init__(self, folder: Path, served_path: Path, keep: int = 10):
        self.folder = Path(folder)
        self.served_path = Path(served_path)  # what the provider serves
        self.keep = max(2, int(keep))

    # --------------------------------------------------------------------------------- reading

    def served(self) -> str:
        try:
            return json.loads((self.folder / "served.json").read_text())["id"]
        except (OSError, ValueError, KeyError):
            return BASE  # nothing published since versions are kept: the configured checkpoint

    def list(self) -> list[ModelVersion]:
        """Every kept version, oldest first."""
        versions = []
        for meta in sorted(self.folder.glob("*.json")):
            if meta.name == "served.json":
                continue
            try:
                versions.append(ModelVersion(**json.loads(meta.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # a damaged record is not a version
        return sorted(versions, key=lambda v: v.created)

    def describe(self) -> dict:
        """What /info and GET /model/<name>/versions show."""
        return {"served": self.served(), "versions": [asdict(v) for v in self.list()]}

    # --------------------------------------------------------------------------------- writing

    def record(self, published: Path, train_images: int, val_dice, parent_val_dice, settings: dict) -> ModelVersion:
        """Keep the file a run has just published (at `published`, the served path) as a new version."""
        digest = sha256_of(published)
        now = datetime.datetime.now(datetime.timezone.utc)
        version = ModelVersion(id=f"{now:%Y%m%dT%H%M%SZ}-{digest[:8]}", created=now.isoformat(timespec="microseconds"),
                               sha256=digest,
                               train_images=int(train_images), val_dice=_number(val_dice),
                               parent=self.served(), parent_val_dice=_number(parent_val_dice),
                               settings={k: v for k, v in settings.items() if isinstance(v, (str, int, float, bool))})
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_copy(published, self.folder / f"{version.id}.pt")
        _atomic_text(self.folder / f"{version.id}.json", json.dumps(asdict(version), indent=1))
        self._mark_served(version.id)
        self.prune()
        return version

    def rollback(self, version_id: str) -> str:
        """Serve `version_id` (or BASE) from the next request; VersionError when it is unknown or its file
        is not the one recorded (nothing changes then)."""
        if version_id == BASE:
            if self.served_path.exists():
                self.served_path.unlink()
            self._mark_served(BASE)
            return BASE
        by_id = {v.id: v for v in self.list()}
        if not re.fullmatch(r"[0-9TZ]+-[0-9a-f]{8}", str(version_id)) or version_id not in by_id:
            raise UnknownVersion(f"no version {version_id!r}; kept: {', '.join(by_id) or 'none'} (and {BASE!r})")
        path = self.folder / f"{version_id}.pt"
        if not path.exists() or sha256_of(path) != by_id[version_id].sha256:
            raise DamagedVersion(f"version {version_id!r} is damaged (its file is missing or not the one recorded); "
                               "nothing was changed")
        _atomic_copy(path, self.served_path)
        self._mark_served(version_id)
        return version_id

    def prune(self) -> list[str]:
        """Remove the oldest versions beyond `keep`, never the served one nor its parent."""
        versions = self.list()
        served = self.served()
        protected = {served} | {v.parent for v in versions if v.id == served}
        removable = [v for v in versions if v.id not in protected]  # oldest first
        removed = []
        while removable and len(versions) - len(removed) > self.keep:
            v = removable.pop(0)
            for suffix in (".pt", ".json"):
                (self.folder / f"{v.id}{suffix}").unlink(missing_ok=True)
            removed.append(v.id)
        return removed

    def _mark_served(self, version_id: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_text(self.folder / "served.json", json.dumps({"id": version_id}))


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # nan: not measured


def _atomic_copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _atomic_text(dest: Path, text: str) -> None:
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, dest)
