"""Serving pages: the team's served students (serve / stop, with who and when), and each served
model's figures, request log and how to call it. The endpoint itself is serving.server."""

from __future__ import annotations

import os

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render

from finetunes.models import StudentModel
from serving import selectors, services
from serving.models import ServedModel
from teams.access import AnyUser, object_for, signed_in_user, team_for
from teams.models import Membership


def served_for(
    *, user: AnyUser, served_id: int, permission: str = "read"
) -> tuple[ServedModel, Membership]:
    return object_for(
        ServedModel.objects.select_related("team", "student", "project", "served_by"),
        user=user,
        permission=permission,
        pk=served_id,
    )


def endpoint_url(request: HttpRequest) -> str:
    """Where clients reach the serving process (DISTILLERY_SERVE_URL, else this host, port 8001)."""
    configured = os.environ.get("DISTILLERY_SERVE_URL", "").rstrip("/")
    if configured:
        return configured if configured.endswith("/v1") else configured + "/v1"
    host = request.get_host().split(":")[0]
    return f"http://{host}:{os.environ.get('DISTILLERY_SERVE_PORT', '8001')}/v1"


@login_required
def serving_page(request: HttpRequest, team_id: int) -> HttpResponse:
    team, membership = team_for(user=request.user, team_id=team_id)
    served = list(selectors.served_models_for_team(team=team))
    figures = {s.pk: selectors.serving_figures(served=s) for s in served}
    return render(
        request,
        "serving/serving.html",
        {
            "team": team,
            "rows": [(s, figures[s.pk]) for s in served],
            "students": selectors.students_to_serve(team=team),
            "can_write": membership.can("write"),
            "endpoint": endpoint_url(request),
        },
    )


@login_required
def student_serve(request: HttpRequest, student_id: int) -> HttpResponse:
    student, _ = object_for(
        StudentModel.objects.select_related("team", "project"),
        user=request.user,
        permission="write",
        pk=student_id,
    )
    if request.method != "POST":  # after the lookup: an outsider gets 404 whatever the method
        return HttpResponseNotAllowed(["POST"])
    try:
        served = services.student_serve(student=student, user=signed_in_user(request))
    except services.ServingError as exc:
        messages.error(request, exc.message)
        return redirect("serving:serving", team_id=student.team_id)
    messages.success(request, f"{student.name} is served as model “{served.slug}”.")
    return redirect("serving:served_detail", served_id=served.pk)


@login_required
def served_detail(request: HttpRequest, served_id: int) -> HttpResponse:
    served, membership = served_for(user=request.user, served_id=served_id)
    return render(
        request,
        "serving/served_detail.html",
        {
            "served": served,
            "team": served.team,
            "figures": selectors.serving_figures(served=served),
            "requests": selectors.recent_requests(served=served),
            "changes": served.changes.select_related("user")[:20],
            "can_write": membership.can("write"),
            "endpoint": endpoint_url(request),
        },
    )


@login_required
def served_stop(request: HttpRequest, served_id: int) -> HttpResponse:
    served, _ = served_for(user=request.user, served_id=served_id, permission="write")
    if request.method != "POST":  # after the lookup: an outsider gets 404 whatever the method
        return HttpResponseNotAllowed(["POST"])
    services.served_stop(served=served, user=signed_in_user(request))
    messages.success(request, f"Stopped serving “{served.slug}”: calls to it now get 404.")
    return redirect("serving:served_detail", served_id=served.pk)


@login_required
def served_settings(request: HttpRequest, served_id: int) -> HttpResponse:
    served, _ = served_for(user=request.user, served_id=served_id, permission="write")
    if request.method != "POST":  # after the lookup: an outsider gets 404 whatever the method
        return HttpResponseNotAllowed(["POST"])
    services.served_log_inputs_set(
        served=served,
        user=signed_in_user(request),
        log_inputs=request.POST.get("log_inputs") == "on",
    )
    return redirect("serving:served_detail", served_id=served.pk)
