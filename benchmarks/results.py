"""Where a benchmark's figures go: one JSON file under bench-results/ (gitignored), next to the table it prints."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(path: Path, data, default=None, note: str = "") -> Path:
    """`data` as indented JSON at `path` (its folder made), then "wrote PATH" and `note` printed; `default`:
    json.dumps' converter for values JSON has no type for."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=default) + "\n")
    print(f"wrote {path}{note}")
    return path
