"""JSON metrics: valid-JSON and schema-valid rates, whole-object exact match, and per-field
exact match and token F1 over dotted paths."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from worker.metrics.rates import Rate, same_length, wilson_rate
from worker.metrics.tokens import token_f1
from worker.taskspec import TaskSpec, parse_output


@dataclass(frozen=True)
class FieldScore:
    field: str  # dotted path: "total", "address.city", "items.0.name"
    n: int  # references that have this field
    exact_match: float
    token_f1: float


@dataclass(frozen=True)
class JsonMetrics:
    n: int
    valid_json: Rate
    schema_valid: Rate
    exact_match: Rate  # the whole object equals the reference
    field_exact_match: float  # micro average over every (row, reference field)
    field_f1: float  # micro average of token F1 over every (row, reference field)
    fields: list[FieldScore]
    per_example_field_f1: list[float]  # mean token F1 over the row's reference fields
    reference_source: str = ""
    kind: Literal["json"] = "json"

    @property
    def headline_name(self) -> str:
        return "field_f1"

    @property
    def headline(self) -> float:
        return self.field_f1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_MISSING = object()


def flatten_json(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a JSON value keyed by dotted path; list items by index ("items.0.name").

    Empty objects and arrays are leaves themselves, so ``{"a": {}}`` has the field ``a``.
    A bare scalar at the root is the field "" .
    """
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(flatten_json(child, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, child in enumerate(value):
            out.update(flatten_json(child, f"{prefix}.{index}" if prefix else str(index)))
        return out
    if not prefix and isinstance(value, (dict, list)):
        return {}  # {} or [] at the root has no fields
    return {prefix: value}


def _leaf_key(value: Any) -> str:
    """Canonical form for exact match: 1 == 1.0, but True != 1 and "1" != 1."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _leaf_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return _leaf_key(value)


def reference_value(ref: Any) -> Any:
    if isinstance(ref, str):
        text = ref.strip()
        fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.DOTALL)
        return json.loads(fenced.group(1) if fenced else text)
    return ref


def _row_field_scores(
    ref_fields: dict[str, Any], pred_fields: dict[str, Any]
) -> list[tuple[str, float, float]]:
    """(field, exact match, token F1) for each of one row's reference fields; a field the
    prediction lacks scores 0 on both."""
    scores: list[tuple[str, float, float]] = []
    for name, ref_leaf in ref_fields.items():
        pred_leaf = pred_fields.get(name, _MISSING)
        if pred_leaf is _MISSING:
            exact, f1 = 0.0, 0.0
        else:
            exact = 1.0 if _leaf_key(pred_leaf) == _leaf_key(ref_leaf) else 0.0
            f1 = 1.0 if exact else token_f1(_leaf_text(pred_leaf), _leaf_text(ref_leaf))
        scores.append((name, exact, f1))
    return scores


def json_metrics(
    spec: TaskSpec,
    outputs: Sequence[str],
    references: Sequence[Any],
    *,
    reference_source: str = "",
) -> JsonMetrics:
    """Metrics of raw model outputs against reference JSON values (objects or JSON strings).

    Fields are the reference's leaves; a field the prediction lacks (or an unparseable
    prediction) scores 0 on it. Fields only the prediction has are not scored here (the
    schema-valid rate is where extra keys show, if the schema forbids them).
    """
    same_length(outputs, references, "outputs", "references")
    valid = schema_ok = whole = 0
    totals: dict[str, list[float]] = {}  # field -> [n, exact, f1]
    all_exact: list[float] = []
    all_f1: list[float] = []
    per_example: list[float] = []
    for row, (out, ref) in enumerate(zip(outputs, references, strict=True)):
        try:
            ref_value = reference_value(ref)
        except json.JSONDecodeError as exc:
            raise ValueError(f"reference at row {row} is not valid JSON: {exc}") from exc
        parsed = parse_output(spec, out or "")
        pred_value = parsed.value
        if pred_value is not None:
            valid += 1
            if parsed.ok:
                schema_ok += 1
            if _leaf_key(pred_value) == _leaf_key(ref_value):
                whole += 1
        ref_fields = flatten_json(ref_value)
        pred_fields = flatten_json(pred_value) if pred_value is not None else {}
        row_f1: list[float] = []
        for name, exact, f1 in _row_field_scores(ref_fields, pred_fields):
            acc = totals.setdefault(name, [0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += exact
            acc[2] += f1
            all_exact.append(exact)
            all_f1.append(f1)
            row_f1.append(f1)
        if row_f1:
            per_example.append(sum(row_f1) / len(row_f1))
        else:  # an empty reference object: right only if the prediction is empty too
            per_example.append(1.0 if pred_value is not None and not pred_fields else 0.0)
    n = len(outputs)
    fields = [
        FieldScore(field=name, n=int(acc[0]), exact_match=acc[1] / acc[0], token_f1=acc[2] / acc[0])
        for name, acc in sorted(totals.items())
    ]
    return JsonMetrics(
        n=n,
        valid_json=wilson_rate(valid, n),
        schema_valid=wilson_rate(schema_ok, n),
        exact_match=wilson_rate(whole, n),
        field_exact_match=sum(all_exact) / len(all_exact) if all_exact else 0.0,
        field_f1=sum(all_f1) / len(all_f1) if all_f1 else 0.0,
        fields=fields,
        per_example_field_f1=per_example,
        reference_source=reference_source,
    )
