"""Resolve objects through the user's teams. An outsider gets 404; a member without the
permission gets 403. Views call these first and never fetch a tenant object any other way."""

from __future__ import annotations

from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404

from projects.models import Membership, Project, Team

M = TypeVar("M", bound=Model)


def membership_for(*, user: Any, team: Team | int) -> Membership | None:
    if not user.is_authenticated:
        return None
    team_id = team.pk if isinstance(team, Team) else team
    return Membership.objects.filter(team_id=team_id, user=user).select_related("team").first()


def require(membership: Membership | None, permission: str) -> Membership:
    if membership is None:
        raise Http404
    if not membership.can(permission):
        raise PermissionDenied(f"your role ({membership.get_role_display()}) cannot do this")
    return membership


def team_for(*, user: Any, team_id: int, permission: str = "read") -> tuple[Team, Membership]:
    membership = require(membership_for(user=user, team=team_id), permission)
    return membership.team, membership


def project_for(
    *, user: Any, project_id: int, permission: str = "read"
) -> tuple[Project, Membership]:
    project = (
        Project.objects.filter(pk=project_id, team__memberships__user=user)
        .select_related("team")
        .first()
    )
    if project is None:
        raise Http404
    membership = require(membership_for(user=user, team=project.team_id), permission)
    return project, membership


def scoped_get(queryset: QuerySet[M], **lookup: Any) -> M:
    """Fetch one object from an already team-scoped queryset, or 404."""
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise Http404
    return obj
