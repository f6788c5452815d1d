"""Keeps a task's JSON Schema local and finite.

A schema is user input that the worker applies to every teacher output and the web process to
every reviewer edit, so it must never make either of them fetch a URL or read a file (``$ref``
with a remote or ``file:`` URI), loop forever (a ``$ref`` cycle) or backtrack for minutes (a
``pattern`` such as ``(a+)+$``). ``schema_problem`` is the check made when a task is saved;
``local_validator`` is what applies a schema, and it can only resolve references inside the
schema itself whatever was saved before that check existed.
"""

from __future__ import annotations

import functools
import importlib
import json
from typing import Any

import jsonschema
import referencing.jsonschema
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

# A real output schema is a few hundred to a few thousand characters, a handful of levels deep
# (each level of nested objects is two here: the schema and its "properties"), with a few refs.
MAX_SCHEMA_CHARS = 100_000
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_REFS = 100
MAX_SCHEMA_PATTERN_CHARS = 1_000
# A repetition allowing more passes than this counts as unbounded when looking for
# repetitions nested inside one another (each nesting level multiplies the backtracking).
_BOUNDED_REPEAT = 10

# Keywords whose subschemas apply to the *same* instance: a $ref cycle through these alone never
# reaches a smaller part of the output, so validating would recurse until the stack overflows.
_SAME_INSTANCE_LISTS = ("allOf", "anyOf", "oneOf")
_SAME_INSTANCE_SCHEMAS = ("not", "if", "then", "else")
_SAME_INSTANCE_MAPS = ("dependentSchemas", "dependencies")
_UNSUPPORTED_REFS = ("$dynamicRef", "$recursiveRef")


class SchemaProblem(ValueError):
    """The schema cannot be used; ``message`` says why in words a task author understands."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _refuse_retrieval(uri: str) -> Resource[Any]:
    # Never fetched, never read: a reference that is not inside the schema does not resolve.
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs class


LOCAL_ONLY_REGISTRY: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def check_schema(schema: object) -> None:
    """Raise SchemaProblem unless ``schema`` is a valid, local, finite JSON Schema."""
    try:
        _check_schema(schema)
    except SchemaProblem:
        raise
    except Exception as exc:  # a shape the libraries trip over is refused, not a crash
        raise SchemaProblem(f"the schema could not be checked ({type(exc).__name__})") from exc


def _check_schema(schema: object) -> None:
    if not isinstance(schema, dict):
        raise SchemaProblem("a JSON Schema must be a JSON object")
    patterns, ref_count = _check_shape(schema)
    try:
        size = len(json.dumps(schema, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SchemaProblem("the schema is not plain JSON") from exc
    if size > MAX_SCHEMA_CHARS:
        raise SchemaProblem(
            f"the schema is {size:,} characters long; the limit is {MAX_SCHEMA_CHARS:,} characters"
        )
    if ref_count > MAX_SCHEMA_REFS:
        raise SchemaProblem(
            f"the schema has {ref_count} references ($ref); the limit is {MAX_SCHEMA_REFS}"
        )
    for pattern in patterns:
        _check_pattern(pattern)
    validator_cls = _validator_class(schema)
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaProblem(f"not a valid JSON Schema: {exc.message}") from None
    _check_refs(schema)


def schema_problem(schema: object) -> str | None:
    """The reason ``schema`` cannot be used, or None when it can."""
    try:
        check_schema(schema)
    except SchemaProblem as exc:
        return exc.message
    return None


def local_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A validator for a checked schema that resolves only references inside it.

    Raises SchemaProblem for a schema that fails ``check_schema`` (one saved before the check).
    Cached by the schema's JSON, since every output of a run is validated against one schema.
    """
    try:
        key = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SchemaProblem("the schema is not plain JSON") from exc
    return _local_validator(key)


@functools.lru_cache(maxsize=64)
def _local_validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    check_schema(schema)
    validator: jsonschema.protocols.Validator = _validator_class(schema)(
        schema, registry=LOCAL_ONLY_REGISTRY
    )
    return validator


def _validator_class(schema: dict[str, Any]) -> type[jsonschema.protocols.Validator]:
    if "$schema" in schema and not isinstance(schema["$schema"], str):
        raise SchemaProblem("$schema must be a string naming a published draft")
    if "$schema" not in schema:
        latest: type[jsonschema.protocols.Validator] = jsonschema.Draft202012Validator
        return latest
    found: type[jsonschema.protocols.Validator] | None = jsonschema.validators.validator_for(
        schema, default=None
    )
    if found is None:
        raise SchemaProblem(
            f"unknown $schema {str(schema['$schema'])[:80]!r}; "
            "leave it out or name a published draft"
        )
    return found


def _check_shape(schema: dict[str, Any]) -> tuple[list[str], int]:
    """Depth, plain JSON types and reference count, without recursion (the schema may be
    deep enough to overflow the stack). Returns the regular expressions and the $ref count."""
    patterns: list[str] = []
    refs = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list) and depth > MAX_SCHEMA_DEPTH:
            raise SchemaProblem(f"the schema is nested more than {MAX_SCHEMA_DEPTH} levels deep")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise SchemaProblem("the schema is not plain JSON")
                if key in _UNSUPPORTED_REFS:
                    raise SchemaProblem(f"{key} is not supported; use $ref")
                if key == "$ref":
                    refs += 1
                elif key == "pattern" and isinstance(item, str):
                    patterns.append(item)
                elif key == "patternProperties" and isinstance(item, dict):
                    patterns.extend(k for k in item if isinstance(k, str))
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif not isinstance(value, str | int | float | bool | None):
            raise SchemaProblem("the schema is not plain JSON")
    return patterns, refs


# Regular expressions ----------------------------------------------------------------------------

_sre_parser: Any = importlib.import_module("re._parser")
_MAXREPEAT: Any = importlib.import_module("re._constants").MAXREPEAT


def _check_pattern(pattern: str) -> None:
    shown = pattern if len(pattern) <= 40 else pattern[:37] + "..."
    if len(pattern) > MAX_SCHEMA_PATTERN_CHARS:
        raise SchemaProblem(
            f"the pattern {shown!r} is longer than {MAX_SCHEMA_PATTERN_CHARS:,} characters"
        )
    try:
        parsed = _sre_parser.parse(pattern)
    except Exception as exc:  # re.error, or RecursionError on absurd nesting
        raise SchemaProblem(f"the pattern {shown!r} is not a valid regular expression") from exc
    problem = _regex_problem(list(parsed), repeated=False)
    if problem:
        raise SchemaProblem(
            f"the pattern {shown!r} {problem}, which can take exponential time to match; "
            "write it without that"
        )


def _regex_problem(items: list[Any], *, repeated: bool) -> str | None:
    """Nested unbounded repetition, alternation under repetition, and backreferences: the shapes
    that make a backtracking matcher take exponential time."""
    for op, arg in items:
        name = str(op)
        if name.startswith("GROUPREF"):
            return "uses a backreference"
        problem: str | None = None
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = arg
            if repeated and low != high:
                return "repeats a repetition"
            unbounded = high is _MAXREPEAT or high > _BOUNDED_REPEAT
            problem = _regex_problem(list(sub), repeated=repeated or unbounded)
        elif name == "BRANCH":
            if repeated:
                return "repeats an alternation"
            for branch in arg[1]:
                problem = problem or _regex_problem(list(branch), repeated=repeated)
        elif name == "SUBPATTERN":
            problem = _regex_problem(list(arg[3]), repeated=repeated)
        elif name in ("ASSERT", "ASSERT_NOT"):
            problem = _regex_problem(list(arg[1]), repeated=repeated)
        elif name == "ATOMIC_GROUP":
            problem = _regex_problem(list(arg), repeated=repeated)
        if problem:
            return problem
    return None


# References -------------------------------------------------------------------------------------

_ON_PATH, _DONE = 1, 2


def _check_refs(schema: dict[str, Any]) -> None:
    """Every $ref resolves inside the schema, and no chain of them loops back to a schema that
    applies to the same part of the output (a reference back to an enclosing schema through
    ``properties`` or ``items`` is fine: the output is finite, so that recursion ends)."""
    specification = referencing.jsonschema.specification_with(
        str(schema.get("$schema", "")), default=referencing.jsonschema.DRAFT202012
    )
    resolver = LOCAL_ONLY_REGISTRY.resolver_with_root(specification.create_resource(schema))
    state: dict[int, int] = {}
    pending: list[tuple[Any, Any]] = [(schema, resolver)]
    path: list[tuple[dict[str, Any], Any]] = []

    def enter(node: dict[str, Any], resolver: Any) -> None:
        resolver = resolver.in_subresource(specification.create_resource(node))
        same = _same_instance_children(node, resolver)
        same_ids = {id(child) for child, _, _ in same}
        pending.extend(
            (child, resolver)
            for child in specification.subresources_of(node)
            if id(child) not in same_ids
        )
        state[id(node)] = _ON_PATH
        path.append((node, iter(same)))

    while pending:
        start, start_resolver = pending.pop()
        if not isinstance(start, dict) or id(start) in state:
            continue
        enter(start, start_resolver)
        while path:
            node, children = path[-1]
            step = next(children, None)
            if step is None:
                state[id(node)] = _DONE
                path.pop()
                continue
            child, child_resolver, via = step
            if not isinstance(child, dict):
                continue
            seen = state.get(id(child))
            if seen == _ON_PATH:
                raise SchemaProblem(
                    f"the reference {via!r} makes a cycle: it leads back to a schema for the same "
                    "part of the output, so checking an output would never end"
                )
            if seen is None:
                enter(child, child_resolver)


def _same_instance_children(node: dict[str, Any], resolver: Any) -> list[tuple[Any, Any, str]]:
    children: list[tuple[Any, Any, str]] = []
    for keyword in _SAME_INSTANCE_LISTS:
        if isinstance(node.get(keyword), list):
            children.extend((item, resolver, f"{keyword} ...") for item in node[keyword])
    for keyword in _SAME_INSTANCE_SCHEMAS:
        if keyword in node:
            children.append((node[keyword], resolver, f"{keyword} ..."))
    for keyword in _SAME_INSTANCE_MAPS:
        if isinstance(node.get(keyword), dict):
            children.extend((item, resolver, f"{keyword} ...") for item in node[keyword].values())
    ref = node.get("$ref")
    if ref is not None:
        if not isinstance(ref, str):
            raise SchemaProblem("$ref must be a string")
        try:
            resolved = resolver.lookup(ref)
        except Unresolvable:
            if ref.startswith("#"):
                raise SchemaProblem(
                    f"the reference {ref!r} points to nothing in the schema"
                ) from None
            raise SchemaProblem(
                f"the reference {ref!r} points outside the schema; only references inside it "
                "(such as #/$defs/name) are allowed"
            ) from None
        children.append((resolved.contents, resolved.resolver, ref))
    return children
