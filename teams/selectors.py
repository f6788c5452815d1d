"""Reads, always scoped by the user's teams."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from teams.models import Membership, Team


def teams_for_user(*, user: Any) -> QuerySet[Team]:
    return Team.objects.filter(memberships__user=user).order_by("name")


def current_team(*, request: Any) -> Team | None:
    teams = teams_for_user(user=request.user)
    team_id = request.session.get("team_id")
    team = teams.filter(pk=team_id).first() if team_id else None
    return team or teams.first()


def members_of(*, team: Team) -> QuerySet[Membership]:
    return team.memberships.select_related("user").order_by("user__username")
