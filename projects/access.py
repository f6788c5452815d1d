"""A project, reached through the user's team (teams.access.object_for)."""

from __future__ import annotations

from projects.models import Project
from teams.access import AnyUser, object_for
from teams.models import Membership


def project_for(
    *, user: AnyUser, project_id: int, permission: str = "read"
) -> tuple[Project, Membership]:
    return object_for(
        Project.objects.select_related("team"), user=user, permission=permission, pk=project_id
    )
