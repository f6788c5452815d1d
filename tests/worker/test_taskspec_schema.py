"""A task's JSON Schema never reaches the network or the disk, and a hostile schema is refused
when the task is saved; parsing a teacher output (or a reviewer's edit) with any stored schema
never raises."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from worker.taskspec import (
    MAX_SCHEMA_CHARS,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_REFS,
    SpecError,
    TaskSpec,
    check_output_schema,
    parse_output,
)

SECRET = "internal-secret-7f3a"


class _SchemaServer:
    """A loopback server that would hand out a schema leaking SECRET, and counts its requests."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                body = json.dumps({"enum": [SECRET]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/schema+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/schema.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def schema_server() -> Iterator[_SchemaServer]:
    server = _SchemaServer()
    yield server
    server.close()


def json_spec(schema: dict[str, Any]) -> TaskSpec:
    return TaskSpec("Read: {{ text }}", "json", ("text",), json_schema=schema)


def refused(schema: Any) -> SpecError:
    with pytest.raises(SpecError) as caught:
        check_output_schema(schema)
    assert caught.value.field == "json_schema"
    return caught.value


# Remote references ------------------------------------------------------------------------------


def remote_schemas(url: str) -> list[dict[str, Any]]:
    return [
        {"$ref": url},
        {"type": "object", "properties": {"total": {"$ref": url}}},
        {"allOf": [{"$ref": url}]},
        {"$id": url, "$ref": "other.json"},
    ]


def test_a_remote_ref_is_refused_when_saved_without_a_request(schema_server):  # type: ignore[no-untyped-def]
    for schema in remote_schemas(schema_server.url):
        error = refused(schema)
        assert "outside the schema" in error.message, schema
        with pytest.raises(SpecError) as caught:
            json_spec(schema).validate()
        assert caught.value.field == "json_schema"
    assert schema_server.requests == []


def test_parsing_with_a_remote_ref_fetches_nothing_and_leaks_nothing(schema_server):  # type: ignore[no-untyped-def]
    for schema in remote_schemas(schema_server.url):
        for raw in ('{"total": 12}', "12", '"x"'):
            parsed = parse_output(json_spec(schema), raw)
            assert not parsed.ok, (schema, raw)
            assert SECRET not in parsed.error
    assert schema_server.requests == []


def test_a_file_ref_is_refused_and_never_read(tmp_path):  # type: ignore[no-untyped-def]
    target = tmp_path / "schema.json"
    target.write_text(json.dumps({"enum": [SECRET]}))
    schema = {"$ref": target.as_uri()}
    assert "outside the schema" in refused(schema).message
    parsed = parse_output(json_spec(schema), "12")
    assert not parsed.ok
    assert SECRET not in parsed.error


def test_a_ref_to_a_published_meta_schema_is_refused_too() -> None:
    refused({"$ref": "https://json-schema.org/draft/2020-12/schema"})


# Local references -------------------------------------------------------------------------------


def test_local_refs_resolve_and_validate() -> None:
    schema = {
        "$defs": {"amount": {"type": "number", "minimum": 0}},
        "definitions": {"merchant": {"type": "string"}},
        "type": "object",
        "properties": {
            "total": {"$ref": "#/$defs/amount"},
            "merchant": {"$ref": "#/definitions/merchant"},
        },
        "required": ["total"],
    }
    check_output_schema(schema)
    json_spec(schema).validate()
    assert parse_output(json_spec(schema), '{"total": 3, "merchant": "Tesco"}').ok
    parsed = parse_output(json_spec(schema), '{"total": "three"}')
    assert parsed.error == "does not match the schema at total: 'three' is not of type 'number'"


def test_a_recursive_schema_that_descends_into_the_output_is_allowed() -> None:
    tree = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#"}},
        },
        "required": ["name"],
    }
    check_output_schema(tree)
    spec = json_spec(tree)
    assert parse_output(spec, '{"name": "a", "children": [{"name": "b", "children": []}]}').ok
    parsed = parse_output(spec, '{"name": "a", "children": [{"children": []}]}')
    assert parsed.error == "does not match the schema at children/0: 'name' is a required property"


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"allOf": [{"$ref": "#"}]},
        {"anyOf": [{"type": "string"}, {"not": {"$ref": "#"}}]},
        {
            "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
            "properties": {"x": {"$ref": "#/$defs/a"}},
        },
        {"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
        {"properties": {"x": {"$ref": "#/properties/x"}}},
    ],
    ids=["root", "all-of", "not", "a-b-a", "self-all-of", "self-property"],
)
def test_a_ref_cycle_is_refused_when_saved_and_parsing_never_raises(schema) -> None:  # type: ignore[no-untyped-def]
    assert "cycle" in refused(schema).message
    for raw in ('{"x": 1}', "1", "[]"):
        parsed = parse_output(json_spec(schema), raw)
        assert not parsed.ok
        assert "recursion" not in parsed.error


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#/$defs/missing"},
        {"properties": {"x": {"$ref": "#/properties/y"}}},
        {"$ref": 12},
        {"$dynamicRef": "#meta"},
    ],
    ids=["missing-def", "missing-property", "not-a-string", "dynamic-ref"],
)
def test_an_unresolvable_ref_is_refused_when_saved_and_parsing_never_raises(schema) -> None:  # type: ignore[no-untyped-def]
    refused(schema)
    parsed = parse_output(json_spec(schema), '{"x": 1}')
    assert not parsed.ok


# Pathological schemas ---------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def test_a_reasonably_nested_schema_is_allowed() -> None:
    check_output_schema(nested(MAX_SCHEMA_DEPTH // 2 - 1))


def test_an_absurdly_deep_schema_is_refused() -> None:
    assert "nested" in refused(nested(MAX_SCHEMA_DEPTH)).message
    # Even one deep enough to break the validator itself.
    assert "nested" in refused(nested(5000)).message


def test_an_absurdly_large_schema_is_refused() -> None:
    schema = {
        "type": "object",
        "properties": {f"field_{i}": {"type": "string"} for i in range(MAX_SCHEMA_CHARS // 20)},
    }
    assert "characters" in refused(schema).message


def test_too_many_refs_are_refused() -> None:
    schema = {
        "$defs": {"s": {"type": "string"}},
        "type": "object",
        "properties": {f"f{i}": {"$ref": "#/$defs/s"} for i in range(MAX_SCHEMA_REFS + 1)},
    }
    assert "references" in refused(schema).message


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^(a+)+$"},
        {"type": "string", "pattern": "^(a|aa)*(b|c)*$"},
        {"type": "string", "pattern": "(x*)*y"},
        {"type": "string", "pattern": "^(\\w+\\s?)*$"},
        {"type": "object", "patternProperties": {"^(a*)*$": {"type": "string"}}},
        {"type": "string", "pattern": "a" * 2000},
        {"type": "string", "pattern": "(unclosed"},
        {"type": "string", "pattern": "^(a)\\1$"},
    ],
    ids=[
        "nested-plus",
        "alternation-star",
        "star-star",
        "words",
        "pattern-properties",
        "long",
        "invalid",
        "backreference",
    ],
)
def test_a_regex_that_could_backtrack_catastrophically_is_refused(schema) -> None:  # type: ignore[no-untyped-def]
    assert "pattern" in refused(schema).message


def test_ordinary_patterns_are_allowed() -> None:
    for pattern in (
        "^[A-Z]{3}-\\d{4}$",
        "^\\d+(\\.\\d{1,2})?$",
        "^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$",
        "^(GBP|EUR|USD)$",
        "^(\\d{3}-)?\\d{4}$",
    ):
        check_output_schema({"type": "string", "pattern": pattern})


def test_a_schema_that_is_not_an_object_or_not_a_schema_is_refused() -> None:
    refused(["type", "object"])
    assert "not a valid JSON Schema" in refused({"type": "objekt"}).message
    for dialect in ({"a": 1}, 5, "http://127.0.0.1:9/meta"):
        schema = {"$schema": dialect, "type": "object"}
        assert "$schema" in refused(schema).message
        assert not parse_output(json_spec(schema), "{}").ok


def test_parsing_a_hostile_output_never_raises() -> None:
    spec = json_spec({"type": "array"})
    deep = "[" * 200_000 + "]" * 200_000
    parsed = parse_output(spec, deep)
    assert not parsed.ok
    assert parsed.value is None
    tree = json_spec(
        {"type": "array", "items": {"$ref": "#"}},
    )
    deep_but_parseable = "[" * 5000 + "]" * 5000
    assert not parse_output(tree, deep_but_parseable).ok
