"""API writes that a page makes through a Django form use the SAME form: the JSON body becomes the
form's data, so every rule (ranges, choices, cross-field checks) is the page's, and a refusal
names the form's field.

A body field left out (or null) takes the form's own initial value, as an untouched form would.
"""

from __future__ import annotations

from typing import Any

from django import forms
from ninja import Schema

from teams.api_kit import ApiError


def form_data(form_class: type[forms.Form], payload: Schema) -> dict[str, Any]:
    """The form's initial values overlaid with what the body gave (None: keep the initial)."""
    data: dict[str, Any] = {}
    for name, field in form_class.base_fields.items():
        initial = field.initial() if callable(field.initial) else field.initial
        if initial is not None:
            data[name] = initial
    for name, value in payload.dict().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = [str(v) for v in value]
        data[name] = value
    return data


def checked(form: forms.Form) -> forms.Form:
    """The form if it is valid; else 400 with one error per field, in the form's words."""
    if form.is_valid():
        return form
    errors: list[dict[str, Any]] = []
    parts: list[str] = []
    for field, messages in form.errors.items():
        for message in messages:
            named = None if field == "__all__" else field
            errors.append({"field": named, "message": str(message)})
            parts.append(f"{named}: {message}" if named else str(message))
    raise ApiError(400, "; ".join(parts), errors=errors)
