"""The OpenAPI schema is valid OpenAPI 3, lists every route, and is served with its docs page."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from tests.factories import MembershipFactory
from tests.helpers.api import Api, token_for
from tests.test_tenancy import iter_patterns

pytestmark = pytest.mark.django_db


def test_the_served_schema_is_valid_openapi_3_and_lists_every_route(client):
    from django.urls import get_resolver

    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    validate(schema)
    assert schema["openapi"].startswith("3.")
    assert schema["components"]["securitySchemes"]["TokenAuth"]["scheme"] == "bearer"
    routed = {
        "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        for _, route in iter_patterns(get_resolver())
        if route.startswith("api/v1/")
        and route not in ("api/v1/", "api/v1/openapi.json", "api/v1/docs")
    }
    assert routed and routed <= set(schema["paths"]), routed - set(schema["paths"])
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"


def test_the_docs_page_loads_its_scripts_from_this_server(client):
    response = client.get("/api/v1/docs")
    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui-bundle.js" in page and "cdn" not in page.lower()


def test_lists_are_cursor_paginated():
    owner = MembershipFactory()
    api = Api(token_for(owner))
    for n in range(5):
        assert api.post("/api/v1/projects", {"name": f"P{n}"}).status_code == 201
    seen: list[str] = []
    page = api.get("/api/v1/projects", page_size=2).json()
    while True:
        seen += [p["slug"] for p in page["results"]]
        if not page["next"]:
            break
        assert page["next"].startswith("http://testserver/api/v1/projects?")
        page = api.get(page["next"]).json()
    assert seen == ["p4", "p3", "p2", "p1", "p0"]
