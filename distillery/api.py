"""The REST API, /api/v1/: one NinjaAPI; each stage's routes live in its app's ``api.py``.

Its OpenAPI 3 schema is served at /api/v1/openapi.json and browsable at /api/v1/docs.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI

from gateway.api import router as gateway_router
from projects.api import router as projects_router
from teams.api_kit import TokenAuth, error_response, install_error_handlers

api = NinjaAPI(
    title="Distillery API",
    version="1",
    description=(
        "Everything the pages do, for scripts and pipelines. Authenticate with a team API token "
        "(Authorization: Bearer dst_…, created on the team's API tokens page). Lists are "
        "cursor-paginated (`next` / `previous`); writes that start work accept an "
        "`Idempotency-Key` header; errors are JSON `{detail, errors: [{field, row, message}]}`."
    ),
    auth=TokenAuth(),
    urls_namespace="api-v1",
    docs_url="/docs",
    openapi_url="/openapi.json",
)
install_error_handlers(api)

api.add_router("/projects", projects_router)
api.add_router("/projects", gateway_router)


def api_not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Unknown paths under /api/ answer JSON too, never the HTML 404 page."""
    return error_response(404, f"no API route {request.path}; see /api/v1/docs")
