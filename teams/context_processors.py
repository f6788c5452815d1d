from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest

from teams.selectors import current_team, teams_for_user


def teams(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if not isinstance(user, User):  # anonymous, or a request without auth middleware
        return {}
    return {
        "my_teams": teams_for_user(user=user),
        "current_team": current_team(request=request),
    }
