"""Structured output helpers shared by the providers: wrapping a task's JSON Schema so that the
providers' structured-output features accept it, and unwrapping the answer again.

Both OpenAI ``response_format: json_schema`` and Anthropic tool ``input_schema`` need an
*object* at the root. A task whose schema is, say, an array is sent wrapped as
``{"type": "object", "properties": {WRAP_KEY: <schema>}, "required": [WRAP_KEY]}`` and the
answer is unwrapped, so ``raw_text`` always holds JSON that matches the task's own schema.
"""

from __future__ import annotations

import json
from typing import Any

WRAP_KEY = "value"
SCHEMA_NAME = "task_output"


def needs_wrapping(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return not (kind == "object" or (kind is None and "properties" in schema))


def provider_schema(schema: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """The schema to send and whether it was wrapped."""
    if not schema:
        return {"type": "object"}, False
    if needs_wrapping(schema):
        return {
            "type": "object",
            "properties": {WRAP_KEY: schema},
            "required": [WRAP_KEY],
            "additionalProperties": False,
        }, True
    return schema, False


def unwrap_json_text(value: Any, wrapped: bool) -> str:
    """The answer as JSON text in the task's own shape."""
    if wrapped and isinstance(value, dict) and WRAP_KEY in value:
        value = value[WRAP_KEY]
    return json.dumps(value, ensure_ascii=False)


def unwrap_text(text: str, wrapped: bool) -> str:
    """Unwrap an answer that arrived as JSON text (OpenAI); leave unparseable text alone so the
    task's parser reports it."""
    if not wrapped:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return unwrap_json_text(value, wrapped)


def is_strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts the schema as is: every object lists all its
    properties as required and sets ``additionalProperties: false``. We never rewrite a user's
    schema to force this (it would change its meaning); a schema that is not strict-compatible is
    sent with ``strict: false`` and the answer is validated by the task's parser instead."""
    if isinstance(schema, list):
        return all(is_strict_compatible(item) for item in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False:
            return False
        if set(schema.get("required") or []) != set(properties):
            return False
    for key, sub in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            if isinstance(sub, dict) and not all(
                is_strict_compatible(item) for item in sub.values()
            ):
                return False
        elif key in ("items", "anyOf", "allOf", "oneOf", "prefixItems", "not") and not (
            is_strict_compatible(sub)
        ):
            return False
    return True
