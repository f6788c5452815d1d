"""Reads, always scoped by the user's teams."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest

from teams.models import Membership, Team


def teams_for_user(*, user: User) -> QuerySet[Team]:
    return Team.objects.filter(memberships__user=user).order_by("name")


def current_team(*, request: HttpRequest) -> Team | None:
    if not isinstance(request.user, User):
        return None
    teams = teams_for_user(user=request.user)
    team_id = request.session.get("team_id")
    team = teams.filter(pk=team_id).first() if team_id else None
    return team or teams.first()


def members_of(*, team: Team) -> QuerySet[Membership]:
    return team.memberships.select_related("user").order_by("user__username")
