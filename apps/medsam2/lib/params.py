"""Reading request params the way both clients send them (JSON booleans or strings), within limits.

Label names: Slicer sends the name of the user's current segment as `label`, whatever the user typed
("Segment_1", "Niere links"), so a name need not be one of `--conf labels` (those only fix the value
written for a known name). A name must still be text that can be shown and stored: at most 64
characters (a DICOM-SEG SegmentLabel), no control characters, no backslash (DICOM's value separator).
Clicks: both clients resend every click of the current segment; more than `max_clicks` in one request
is not an annotation (each click is a token of SAM 2's decoder on its slice: 70 000 clicks took
four minutes and 2.5 GB on the small test model) and is refused with 413.
"""

from __future__ import annotations

import unicodedata

from fastapi import HTTPException

from medsam2.settings import ServerSettings

MAX_LABEL_LENGTH = 64
DEFAULT_MAX_CLICKS = ServerSettings.__dataclass_fields__["max_clicks"].default  # --conf max_clicks


def flag(value) -> bool:
    """True for true/1/yes (any case), False for anything else: a typo never becomes an error 500."""
    return str(value).strip().lower() in ("1", "true", "yes")


def optional_flag(value, name: str) -> bool | None:
    """None for auto (or nothing), True/False for true/false, 1/0, yes/no; else HTTP 400: an option that
    changes the answer is never guessed."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    if text in ("1", "true", "yes", "0", "false", "no"):
        return text in ("1", "true", "yes")
    raise HTTPException(status_code=400, detail=f"'{name}' must be true, false or auto, got {value!r}")


def has_control_characters(value: str) -> bool:
    """Control characters or lone surrogates: nothing a name shown to users or stored on disk may hold."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in value)


def label_name(value, what: str = "label") -> str:
    """`value` if it is a usable segment name, else HTTP 400 saying why."""
    if not isinstance(value, str):
        raise HTTPException(status_code=400, detail=f"'{what}' must be a text name, got {type(value).__name__}")
    if not value.strip() or len(value) > MAX_LABEL_LENGTH:
        raise HTTPException(status_code=400, detail=f"'{what}' must be 1 to {MAX_LABEL_LENGTH} characters, "
                                                    f"got {len(value)}")
    if "\\" in value or has_control_characters(value):
        raise HTTPException(status_code=400, detail=f"'{what}' {value!r} holds a backslash or control characters")
    return value


def check_label_names(request: dict) -> None:
    """Every label name a 3D request carries (`label`, `objects[].label`) is usable or HTTP 400."""
    if request.get("label") not in (None, ""):  # absent or empty: the default name
        label_name(request["label"])
    objects = request.get("objects")
    if isinstance(objects, list):
        for n, spec in enumerate(objects):
            if isinstance(spec, dict) and spec.get("label") not in (None, ""):
                label_name(spec["label"], f"objects[{n}].label")


def check_click_count(request: dict, max_clicks: int = DEFAULT_MAX_CLICKS) -> None:
    """HTTP 413 when the request holds more than `max_clicks` clicks (top level and in `objects`)."""
    objects = request.get("objects")
    specs = [request] + ([o for o in objects if isinstance(o, dict)] if isinstance(objects, list) else [])
    count = sum(len(s[key]) for s in specs for key in ("foreground", "background") if isinstance(s.get(key), list))
    if count > max_clicks:
        raise HTTPException(status_code=413, detail=f"{count} clicks in one request, more than this server's limit of "
                                                    f"{max_clicks} (--conf max_clicks)")
