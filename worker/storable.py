"""Model text as the database can keep it.

PostgreSQL text and jsonb cannot hold NUL (U+0000), and a model can emit it (an untuned or
broken-quantised student answering garbage, a provider passing bytes through). Such text is kept
with U+FFFD in its place — visibly "not a character" — rather than failing the whole write.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


def storable_text(text: str) -> str:
    return text.replace("\x00", REPLACEMENT) if "\x00" in text else text


def storable(value: Any) -> Any:
    """``value`` with every string in it (dict keys included) made storable."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value
