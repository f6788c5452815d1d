"""The engine's errors as form errors: which field is at fault, and what is wrong with it."""

from __future__ import annotations


def field_and_message(exc: Exception) -> tuple[str | None, str]:
    """The field an engine exception names in its ``field`` attribute (None: no field) and its
    ``message`` (what is wrong, without the field).

    An exception class that does not carry them yet (worker.taskspec's and worker.training's
    are getting them) still says "field: message" in its text; that is read until it does.
    """
    field = getattr(exc, "field", None)
    message = getattr(exc, "message", None)
    if hasattr(exc, "field"):
        return (field if isinstance(field, str) else None), str(message or exc)
    name, sep, rest = str(exc).partition(": ")
    return (name, rest) if sep and name.isidentifier() else (None, str(exc))
