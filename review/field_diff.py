"""JSON answers field by field on a review card: the teacher's value next to the reference's (or
the reviewer's edit), and per-field inputs for editing a flat JSON object.

Fields are the dotted leaf paths the JSON metrics score (``worker.metrics.json_fields``), so what a
reviewer sees differ is what the evaluation will count as a differing field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from worker.metrics.json_fields import flatten_json
from worker.taskspec import TaskSpec, parse_output

#: POST key naming the per-field inputs of a JSON edit, and the prefix of each input's name.
FIELDS_KEY = "json_fields"
FIELD_PREFIX = "field."

_MISSING = object()


@dataclass(frozen=True)
class FieldRow:
    """One leaf field: the teacher's value and the other side's, as shown, and whether they match."""

    field: str
    teacher: str
    other: str
    same: bool


@dataclass(frozen=True)
class EditField:
    """One input of a flat JSON edit: its key, the text in the box, and whether the text is a
    JSON literal (numbers, booleans, null) or a plain string."""

    key: str
    text: str
    literal: bool


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "—"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _key(value: Any) -> str:
    # 1 and 1.0 are the same field value; True and 1 are not (as in the JSON metrics).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def reference_value(spec: TaskSpec, reference: str | None) -> Any:
    """The parsed human reference of a JSON task, or None when there is none or it is not JSON."""
    if spec.output_kind != "json" or not reference:
        return None
    parsed = parse_output(spec, reference)
    return parsed.value if parsed.value is not None else None


def field_rows(teacher: Any, other: Any) -> list[FieldRow]:
    """Every leaf field of either value, in the teacher's order, then the other's new fields."""
    mine = flatten_json(teacher) if teacher is not None else {}
    theirs = flatten_json(other) if other is not None else {}
    names = list(mine) + [name for name in theirs if name not in mine]
    rows = []
    for name in names:
        a = mine.get(name, _MISSING)
        b = theirs.get(name, _MISSING)
        same = a is not _MISSING and b is not _MISSING and _key(a) == _key(b)
        rows.append(
            FieldRow(field=name or "(value)", teacher=_shown(a), other=_shown(b), same=same)
        )
    return rows


def edit_fields(value: Any) -> list[EditField] | None:
    """Inputs for a flat JSON object (every value a string, number, boolean or null); None for
    anything nested, which is edited as JSON text instead."""
    if not isinstance(value, dict) or not value:
        return None
    if any(isinstance(v, (dict, list)) for v in value.values()):
        return None
    return [
        EditField(
            key=str(k),
            text=v if isinstance(v, str) else json.dumps(v, ensure_ascii=False),
            literal=not isinstance(v, str),
        )
        for k, v in value.items()
    ]


def value_from_fields(post: Mapping[str, str]) -> str | None:
    """The JSON text of a per-field edit (None when the form was the plain text box).

    ``json_fields`` lists the keys and whether each box holds a JSON literal; a literal box that
    does not parse is refused naming its field, a plain string box is taken as typed.
    """
    spec_text = post.get(FIELDS_KEY)
    if not spec_text:
        return None
    try:
        fields = json.loads(spec_text)
    except json.JSONDecodeError as exc:
        raise ValidationError("Reload the page and try again.") from exc
    value: dict[str, Any] = {}
    for key, literal in fields:
        text = post.get(f"{FIELD_PREFIX}{key}", "")
        if not literal:
            value[key] = text
            continue
        try:
            value[key] = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"{key}: {text!r} is not a number, true, false or null (quote it for a string)",
                code="field",
                params={"field": key},
            ) from exc
    return json.dumps(value, ensure_ascii=False)
