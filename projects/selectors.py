"""Reads, always scoped by the user's teams."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from projects.models import InputRow, Project
from teams.models import Team


def projects_for_team(*, team: Team) -> QuerySet[Project]:
    return team.projects.annotate(input_count=Count("inputs")).order_by("-created_at")


def inputs_for_project(
    *, project: Project, search: str = "", synthetic_only: bool = False
) -> QuerySet[InputRow]:
    rows = InputRow.objects.filter(project=project)
    if synthetic_only:
        rows = rows.filter(synthetic=True)
    if search.strip():
        needle = search.strip().lower()
        rows = rows.filter(Q(search_text__contains=needle) | Q(reference_output__icontains=needle))
    return rows.order_by("id")


def preview_row(*, project: Project, input_id: int | None = None) -> InputRow | None:
    rows = InputRow.objects.filter(project=project)
    if input_id:
        row = rows.filter(pk=input_id).first()
        if row:
            return row
    return rows.order_by("id").first()
