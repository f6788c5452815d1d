"""Resolve objects through the user's teams: the one way a view reaches a tenant object.

An outsider gets 404 (the object is filtered by the user's memberships in the query itself); a
member whose role lacks the permission gets 403, with the role named.
"""

from __future__ import annotations

from functools import reduce
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest

from teams.models import Membership, Team

M = TypeVar("M", bound=Model)
AnyUser = AbstractBaseUser | AnonymousUser


def signed_in_user(request: HttpRequest) -> User:
    """The user of a login_required view, as the account services record (``created_by``)."""
    if not isinstance(request.user, User):
        raise PermissionDenied("sign in first")
    return request.user


def membership_for(*, user: AnyUser, team: Team | int) -> Membership | None:
    if not user.is_authenticated:
        return None
    team_id = team.pk if isinstance(team, Team) else team
    return (
        Membership.objects.filter(team_id=team_id, user_id=user.pk).select_related("team").first()
    )


def require(membership: Membership | None, permission: str) -> Membership:
    if membership is None:
        raise Http404
    if not membership.can(permission):
        raise PermissionDenied(f"your role ({membership.get_role_display()}) cannot do this")
    return membership


def team_for(*, user: AnyUser, team_id: int, permission: str = "read") -> tuple[Team, Membership]:
    membership = require(membership_for(user=user, team=team_id), permission)
    return membership.team, membership


def object_for(
    queryset: QuerySet[M],
    *,
    user: AnyUser,
    team_path: str = "team",
    permission: str = "read",
    **lookup: Any,
) -> tuple[M, Membership]:
    """The object matching `lookup` in one of the user's teams, and the user's membership there.

    `team_path` is the lookup from the object to its team ("team", "project__team",
    "run__project__team"). 404 for anyone outside the team, 403 for a role without `permission`.
    """
    if not user.is_authenticated:
        raise Http404
    mine = Membership.objects.filter(user_id=user.pk).values("team_id")
    obj = queryset.filter(**lookup).filter(**{f"{team_path}_id__in": mine}).first()
    if obj is None:
        raise Http404
    *hops, last = team_path.split("__")
    team_id = getattr(reduce(getattr, hops, obj), f"{last}_id")
    return obj, require(membership_for(user=user, team=team_id), permission)


def scoped_get(queryset: QuerySet[M], **lookup: Any) -> M:
    """Fetch one object from an already team-scoped queryset, or 404."""
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise Http404
    return obj
