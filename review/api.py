"""/api/v1 review: a project's teacher outputs with their flags and decisions; decide one
(approve / reject / edit) or many by filter — the review queue's and bulk page's services.

Filters are the review queue's query parameters (``status``, ``flag``, ``label``, ``conf_min``,
``conf_max``, ``q``, ``reviewer``, ``assigned``), with the same meaning. A decision names the
``seen_version`` (the output's ``review_version`` when it was read): if someone decided it since,
the answer is 409 and nothing is written, as on the page.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.pagination import paginate

from projects.api import project_of
from review import selectors, services
from teachers.models import OutputFlag, ReviewStatus, TeacherOutput
from teams.api_kit import ApiError, Page, auth_of
from teams.api_kit import team_object as _team_object

router = Router(tags=["review"])


class FlagOut(Schema):
    code: str
    message: str
    score: float | None


class OutputOut(Schema):
    id: int
    run_id: int
    input_id: int
    inputs: dict[str, Any]
    raw_text: str
    parsed: Any
    parse_error: str
    confidence: float | None
    flags: list[FlagOut]
    review_status: str
    #: The answer a dataset version would take: the edit when edited, else the teacher's.
    answer: Any
    edited_value: Any
    review_version: int
    review_conflict: bool
    reviewed_by: str | None
    reviewed_at: datetime | None
    decided_by_rule_id: int | None
    judge_score: float | None
    created_at: datetime

    @staticmethod
    def resolve_inputs(obj: TeacherOutput) -> dict[str, Any]:
        return dict(obj.input.data)

    @staticmethod
    def resolve_flags(obj: TeacherOutput) -> list[OutputFlag]:
        return list(obj.flags.all())

    @staticmethod
    def resolve_answer(obj: TeacherOutput) -> Any:
        return obj.edited_value if obj.review_status == ReviewStatus.EDITED else obj.parsed

    @staticmethod
    def resolve_reviewed_by(obj: TeacherOutput) -> str | None:
        return obj.reviewed_by.username if obj.reviewed_by else None


class ReviewFiltersIn(Schema):
    status: str = Field(
        default="", description="unreviewed, approved, rejected, edited, decided, conflict"
    )
    flag: str = Field(default="", description="a flag code, any or none")
    label: str = ""
    conf_min: float | None = None
    conf_max: float | None = None
    q: str = Field(default="", description="text in the input or answer, or #<output id>")
    reviewer: str = Field(default="", description="a user id, or rule")
    assigned: str = Field(default="", description="me, todo, or a user id")


class DecisionIn(Schema):
    action: str = Field(..., pattern="^(approve|reject|edit)$")
    seen_version: int = Field(..., description="the output's review_version when it was read")
    value: Any = Field(None, description="action=edit: the corrected answer (text or JSON)")
    reason: str = ""


class BulkDecisionIn(Schema):
    action: str = Field(..., pattern="^(approve|reject)$")
    filters: ReviewFiltersIn = ReviewFiltersIn()
    expected_count: int | None = Field(
        None,
        description="the count a dry run showed: if the filter now matches another number, "
        "nothing is written (409); omitted: whatever matches now",
    )
    dry_run: bool = Field(False, description="only count what the action would change")
    reason: str = ""


class BulkDecisionOut(Schema):
    action: str
    matched: int
    changed: int
    dry_run: bool
    filter: list[str]


def _filters(data: dict[str, Any]) -> selectors.ReviewFilters:
    filters = selectors.ReviewFilters.from_query({k: v for k, v in data.items() if v is not None})
    if filters.errors:
        raise ApiError(
            400,
            "; ".join(filters.errors),
            errors=[{"field": None, "message": error} for error in filters.errors],
        )
    return filters


def _with_details(rows: QuerySet[TeacherOutput]) -> QuerySet[TeacherOutput]:
    return rows.select_related("input", "reviewed_by").prefetch_related(
        Prefetch("flags", queryset=OutputFlag.objects.order_by("code"))
    )


def _output_of(request: HttpRequest, slug: str, output_id: int, permission: str) -> TeacherOutput:
    project = project_of(request, slug, permission=permission)
    return _team_object(
        _with_details(TeacherOutput.objects.filter(project=project)),
        auth_of(request),
        team_path="project__team",
        permission=permission,
        pk=output_id,
    )


@router.get(
    "/{slug}/outputs",
    response=list[OutputOut],
    summary="List a project's teacher outputs with flags and decisions (the review queue's filters)",
)
@paginate(Page, ordering=("pk",), page_size=50, max_page_size=500)
def list_outputs(
    request: HttpRequest,
    slug: str,
    status: str = "",
    flag: str = "",
    label: str = "",
    conf_min: float | None = None,
    conf_max: float | None = None,
    q: str = "",
    reviewer: str = "",
    assigned: str = "",
) -> QuerySet[TeacherOutput]:
    """In queue order (oldest first). The filters are ReviewFiltersIn's (the queue page's)."""
    project = project_of(request, slug)
    wanted = ReviewFiltersIn(
        status=status,
        flag=flag,
        label=label,
        conf_min=conf_min,
        conf_max=conf_max,
        q=q,
        reviewer=reviewer,
        assigned=assigned,
    )
    rows = selectors.outputs_for_review(
        project=project, user=auth_of(request).user, filters=_filters(wanted.dict())
    )
    return _with_details(rows)


# Before /outputs/{output_id}: Django tries the URL patterns in order.
@router.post(
    "/{slug}/outputs/bulk-decision",
    response=BulkDecisionOut,
    summary="Approve or reject every output a filter matches (dry_run: count only)",
)
def bulk_decision(request: HttpRequest, slug: str, payload: BulkDecisionIn) -> dict[str, Any]:
    project = project_of(request, slug, permission="review")
    user = auth_of(request).user
    filters = _filters(payload.filters.dict())
    matched = services.bulk_count(
        project=project, user=user, filters=filters, action=payload.action
    )
    changed = 0
    if not payload.dry_run and matched:
        expected = matched if payload.expected_count is None else payload.expected_count
        try:
            changed = services.bulk_decide(
                project=project,
                user=user,
                filters=filters,
                action=payload.action,
                expected_count=expected,
                reason=payload.reason,
            )
        except ValidationError as exc:
            # The filter matches another number than the caller confirmed: nothing written.
            raise ApiError(409, " ".join(exc.messages)) from exc
    elif not payload.dry_run and payload.expected_count not in (None, 0):
        raise ApiError(409, "the filter now matches no output to change; nothing was written")
    return {
        "action": payload.action,
        "matched": matched,
        "changed": changed,
        "dry_run": payload.dry_run,
        "filter": filters.describe(),
    }


@router.get("/{slug}/outputs/{output_id}", response=OutputOut, summary="One teacher output")
def get_output(request: HttpRequest, slug: str, output_id: int) -> TeacherOutput:
    return _output_of(request, slug, output_id, "read")


@router.post(
    "/{slug}/outputs/{output_id}/decision",
    response=OutputOut,
    summary="Approve, reject or edit one output (409 if it changed since seen_version)",
)
def decide_output(
    request: HttpRequest, slug: str, output_id: int, payload: DecisionIn
) -> TeacherOutput:
    output = _output_of(request, slug, output_id, "review")
    value = payload.value
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    try:
        services.output_decide(
            project=output.project,
            user=auth_of(request).user,
            output_id=output.pk,
            action=payload.action,
            seen_version=payload.seen_version,
            value=text,
            reason=payload.reason,
        )
    except services.DecisionConflict as exc:
        current = exc.output.review_version
        raise ApiError(
            409,
            exc.message,
            errors=[
                {"field": "seen_version", "message": f"the output is now at version {current}"}
            ],
        ) from exc
    return _with_details(TeacherOutput.objects.filter(pk=output.pk)).get()
