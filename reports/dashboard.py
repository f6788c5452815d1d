"""Plain function views: resolve through the user's team first, call one service, render."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from projects import selectors as project_selectors
from reports import selectors as report_selectors
from teams import selectors
from teams.access import team_for


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    team = selectors.current_team(request=request)
    if team is None:
        return redirect("teams:team_create")
    _, membership = team_for(user=request.user, team_id=team.pk)
    return render(
        request,
        "reports/dashboard.html",
        {
            "team": team,
            "membership": membership,
            "projects": project_selectors.projects_for_team(team=team),
            # Stage, latest verdict and projected savings per project.
            "rows": report_selectors.dashboard_rows(team=team),
        },
    )
