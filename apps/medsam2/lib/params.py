"""Reading request params the way both clients send them (JSON booleans or strings)."""


def flag(value) -> bool:
    """True for true/1/yes (any case), False for anything else: a typo never becomes an error 500."""
    return str(value).strip().lower() in ("1", "true", "yes")
