"""The REST API, /api/v1/: one NinjaAPI; each stage's routes live in its app's ``api.py``.

Its OpenAPI 3 schema is served at /api/v1/openapi.json and browsable at /api/v1/docs.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI

from dataset_versions.api import router as dataset_versions_router
from evaluations.api import router as evaluations_router
from finetunes.api import router as finetunes_router
from gateway.api import router as gateway_router
from jobs.api import router as jobs_router
from projects.api import router as projects_router
from reports.api import router as reports_router
from review.api import router as review_router
from teachers.api import router as teachers_router
from teams.api import router as credentials_router
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

api.add_router("/credentials", credentials_router)
api.add_router("/jobs", jobs_router)
api.add_router("/projects", projects_router)
# Teacher runs live both under a project (/projects/{slug}/teacher-runs) and on their own
# (/teacher-runs/{run_id}); outputs under their project (/projects/{slug}/outputs).
api.add_router("", teachers_router)
api.add_router("/projects", review_router, url_name_prefix="review")
# Later stages: a project's collections under /projects/{slug}/…, an object by its id at
# /<kind>/{id} (versions, finetunes, students, evaluations) — the paths are in each router.
api.add_router("", dataset_versions_router)
api.add_router("", finetunes_router)
api.add_router("", evaluations_router)
api.add_router("", reports_router)
# The task gateway: /projects/{slug}/infer (scope serve).
api.add_router("/projects", gateway_router)


def api_not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Unknown paths under /api/ answer JSON too, never the HTML 404 page."""
    return error_response(404, f"no API route {request.path}; see /api/v1/docs")
