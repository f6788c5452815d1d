"""The engine's errors as form errors: which field is at fault, and what is wrong with it."""

from __future__ import annotations


def field_and_message(exc: Exception) -> tuple[str | None, str]:
    """The field an engine exception names in its ``field`` attribute (None: no field) and its
    ``message`` (what is wrong, without the field; the exception's text when it has none).
    Every engine exception a form shows carries ``field`` (worker.taskspec's, worker.training's,
    worker.ingest's)."""
    field = getattr(exc, "field", None)
    message = getattr(exc, "message", None)
    return (field if isinstance(field, str) else None), str(message or exc)
