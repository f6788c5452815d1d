"""/api/v1/projects/{slug}/infer: call the task, not a model. The gateway renders the prompt
from the task spec and the project's routing policy decides who answers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.http import HttpRequest
from ninja import Field, Router, Schema

from gateway import routing, services
from projects.api import project_of
from projects.models import Project
from teams.api_kit import ApiError, auth_of, require_permission

router = Router(tags=["gateway"])

MAX_BATCH = 100


class InferIn(Schema):
    inputs: dict[str, Any] | list[dict[str, Any]] = Field(
        ..., description="The task's input fields, or a list of up to 100 of them."
    )
    deadline_ms: int = Field(
        30_000,
        ge=100,
        le=300_000,
        description="How long the teacher may take, retries included, before a 504.",
    )


class AnswerOut(Schema):
    answer: Any = Field(None, description="The parsed answer: a label, a JSON object or text.")
    answered_by: str = Field(..., description="teacher | student")
    latency_ms: float
    cost_usd: Decimal
    from_cache: bool
    reason: str = Field("", description="Why the policy's usual choice did not answer, if so.")
    confidence: float | None = None
    parse_error: str = ""


class InferOut(Schema):
    results: list[AnswerOut]


@router.post(
    "/{slug}/infer",
    response=InferOut,
    summary="Answer the task for one input or a batch of up to 100",
)
def infer(request: HttpRequest, slug: str, body: InferIn) -> dict[str, Any]:
    auth = auth_of(request)
    snap = routing.cached_snapshot(auth.team.pk, slug)
    if snap is not None:  # the project was found in this team moments ago: no lookup
        require_permission(auth, "serve")
    project: routing.Snapshot | Project = snap or project_of(request, slug, permission="serve")
    items = body.inputs if isinstance(body.inputs, list) else [body.inputs]
    if not items:
        raise ApiError(
            400,
            "inputs is empty",
            errors=[{"field": "inputs", "row": None, "message": "give at least one input"}],
        )
    if len(items) > MAX_BATCH:
        raise ApiError(
            400,
            f"at most {MAX_BATCH} inputs per request, got {len(items)}",
            errors=[{"field": "inputs", "row": None, "message": f"at most {MAX_BATCH} inputs"}],
        )
    header = request.headers.get("Authorization", "")
    token = header.split(" ", 1)[1].strip() if " " in header else ""
    try:
        answers = services.gateway_infer(
            project=project, token=token, inputs=items, deadline_s=body.deadline_ms / 1000
        )
    except services.GatewayError as exc:
        raise ApiError(
            exc.status,
            exc.message,
            errors=[{"field": exc.field, "row": None, "message": exc.message}],
        ) from exc
    return {"results": [a.__dict__ for a in answers]}
