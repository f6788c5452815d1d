"""The REST API's tenancy sweep: every /api/v1/ route and method, called with a token of another
team (404), a revoked token (401), no token (401) and a token of the right team without the scope
the route needs (403) — and none of them changes anything.

Routes and their request bodies come from the OpenAPI schema itself, so a new route is swept the
moment it exists; a body the generator cannot make valid fails here until an example is added.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from distillery.api import api
from teams.api_tokens import api_token_create, api_token_revoke
from teams.models import Membership
from tests.helpers.api import Api
from tests.test_tenancy import EXEMPT, fill, object_url_patterns, victim_objects
from tests.test_tenancy import snapshot as full_snapshot

__all__ = ["victim_objects"]  # the fixture, shared with the pages' sweep

#: Routes a token with only the `serve` scope may call (inference); every other GET needs `read`.
SERVE_ROUTES: set[str] = {"/api/v1/projects/{slug}/infer"}
#: Request bodies the schema-driven generator cannot make valid (route, METHOD) → body.
EXAMPLE_BODIES: dict[tuple[str, str], Any] = {
    ("/api/v1/projects/{slug}/task", "PUT"): {
        "input_fields": ["text"],
        "instruction_template": "{{ text }}",
        "output_kind": "label",
        "label_set": ["a", "b"],
    },
    ("/api/v1/projects/{slug}/inputs", "POST"): {"rows": [{"inputs": {"text": "hello"}}]},
    ("/api/v1/projects/{slug}/infer", "POST"): {"inputs": {"text": "hello"}},
}


def snapshot() -> dict[str, list[dict[str, object]]]:
    """Every row, except the tokens' last-used time (a token's use is recorded by design)."""
    state = full_snapshot()
    for row in state["teams.ApiToken"]:
        row.pop("last_used_at")
    return state


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def example_of(schema: dict[str, Any], node: dict[str, Any]) -> Any:
    """A minimal valid value for a JSON schema node."""
    node = _resolve(schema, node)
    if "default" in node:
        return node["default"]
    if "enum" in node:
        return node["enum"][0]
    if "anyOf" in node:
        choices = [c for c in node["anyOf"] if c.get("type") != "null"]
        return example_of(schema, choices[0]) if choices else None
    kind = node.get("type")
    if kind == "object":
        required = set(node.get("required", ()))
        return {
            name: example_of(schema, prop)
            for name, prop in node.get("properties", {}).items()
            if name in required
        }
    if kind == "array":
        return [example_of(schema, node["items"])] * node.get("minItems", 0)
    if kind == "string":
        alternatives = re.fullmatch(r"\^\(([^()]*)\)\$", node.get("pattern", ""))
        return alternatives.group(1).split("|")[0] if alternatives else "x"
    return {"integer": 1, "number": 1.0, "boolean": False}.get(kind or "")


def api_operations() -> list[tuple[str, str, str]]:
    """(Django route, OpenAPI path, METHOD) for every API route with an object in its URL."""
    paths = api.get_openapi_schema()["paths"]
    found = []
    for route, _names in object_url_patterns(api=True):
        openapi_path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        assert openapi_path in paths, f"{openapi_path} is routed but not in the OpenAPI schema"
        found.extend((route, openapi_path, method.upper()) for method in paths[openapi_path])
    return found


def call(client: Api, route: str, openapi_path: str, method: str, ids: dict[str, Any]) -> Any:
    url = fill(route, ids)
    if method == "GET":
        return client.get(url)
    schema = api.get_openapi_schema()
    body_spec = schema["paths"][openapi_path][method.lower()].get("requestBody")
    if (openapi_path, method) in EXAMPLE_BODIES:
        body = EXAMPLE_BODIES[(openapi_path, method)]
    elif body_spec is None:
        body = None
    elif "multipart/form-data" in body_spec["content"]:
        from django.core.files.uploadedfile import SimpleUploadedFile

        form = example_of(schema, body_spec["content"]["multipart/form-data"]["schema"])
        files = {k: SimpleUploadedFile("t.csv", b"text\nhello\n") for k in form}
        return getattr(client.client, method.lower())(url, files, headers=client._headers(None))
    else:
        body = example_of(schema, body_spec["content"]["application/json"]["schema"])
    return client.send(method, url, body)


@pytest.fixture
def tokens(team, owner, outsider, victim_objects):  # type: ignore[no-untyped-def]
    def make(user: Any, name: str, scopes: list[str]) -> str:
        membership = Membership.objects.filter(user=user).first()
        assert membership is not None
        return api_token_create(team=membership.team, user=user, name=name, scopes=scopes)[1]

    revoked, revoked_raw = api_token_create(
        team=team, user=owner, name="revoked", scopes=["read", "write", "serve"]
    )
    api_token_revoke(token=revoked, user=owner)
    return {
        "outsider": make(outsider, "outsider-all", ["read", "write", "serve"]),
        "revoked": revoked_raw,
        "read_only": make(owner, "read-only", ["read"]),
        "serve_only": make(owner, "serve-only", ["serve"]),
    }


def test_every_api_route_is_in_the_sweep_and_the_schema(victim_objects):  # type: ignore[no-untyped-def]
    operations = api_operations()
    assert len(operations) >= 4
    uncovered = sorted(
        f"{route} ({name})"
        for route, names in object_url_patterns(api=True)
        for name in names
        if name not in victim_objects and name not in EXEMPT
    )
    assert not uncovered, "API URL arguments with no object in victim_objects: " + ", ".join(
        uncovered
    )


def test_another_teams_token_gets_404_everywhere_and_changes_nothing(tokens, victim_objects):  # type: ignore[no-untyped-def]
    before = snapshot()
    client = Api(tokens["outsider"])
    for route, path, method in api_operations():
        response = call(client, route, path, method, victim_objects)
        assert response.status_code == 404, (
            f"{method} {path} → {response.status_code}: {response.content[:300]!r}"
        )
        assert response.json()["detail"] == "not found"
    assert snapshot() == before


@pytest.mark.parametrize("who", ["revoked", "anonymous"])
def test_revoked_or_missing_tokens_get_401_everywhere(tokens, victim_objects, who):  # type: ignore[no-untyped-def]
    before = snapshot()
    client = Api(tokens["revoked"] if who == "revoked" else None)
    for route, path, method in api_operations():
        response = call(client, route, path, method, victim_objects)
        assert response.status_code == 401, f"{method} {path} → {response.status_code}"
        json.loads(response.content)  # JSON, never the HTML page
    assert snapshot() == before


def test_a_token_without_the_scope_gets_403_and_changes_nothing(tokens, victim_objects):  # type: ignore[no-untyped-def]
    before = snapshot()
    for route, path, method in api_operations():
        if method == "GET":
            if path in SERVE_ROUTES:
                continue
            client = Api(tokens["serve_only"])
        else:
            client = Api(tokens["read_only"])  # writes and inference both need more than read
        response = call(client, route, path, method, victim_objects)
        assert response.status_code == 403, (
            f"{method} {path} → {response.status_code}: {response.content[:300]!r}"
        )
        assert "this token may not" in response.json()["detail"]
    assert snapshot() == before


def test_unknown_api_paths_answer_json_404(tokens):  # type: ignore[no-untyped-def]
    response = Api(tokens["read_only"]).get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert "no API route" in response.json()["detail"]
