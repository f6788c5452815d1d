from typing import Any

from teams.selectors import current_team, teams_for_user


def teams(request: Any) -> dict[str, Any]:
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {
        "my_teams": teams_for_user(user=request.user),
        "current_team": current_team(request=request),
    }
