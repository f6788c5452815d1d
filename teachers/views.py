"""Teacher run pages: start (with the estimate first), watch, pause/resume/cancel, import, prices.

Every view resolves its object through the user's team first (404 for outsiders), checks the
role, then calls one service or selector.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from distillery.uploads import upload_refused
from projects.access import project_for
from projects.forms import refuse_oversized_upload
from teachers import selectors, services
from teachers.forms import PriceForm, SynthesisForm, TeacherImportForm, TeacherRunForm
from teachers.imports import teacher_run_import
from teachers.models import PriceEntry, TeacherRun
from teams.access import AnyUser, object_for, scoped_get, signed_in_user, team_for
from teams.forms import apply_errors
from teams.models import Membership
from worker.ingest import IngestError, check_size
from worker.pricing import PRICES_AS_OF


def teacher_run_for(
    *, user: AnyUser, run_id: int, permission: str = "read"
) -> tuple[TeacherRun, Membership]:
    return object_for(
        TeacherRun.objects.select_related("project__team", "job", "credential", "job__created_by"),
        user=user,
        team_path="project__team",
        permission=permission,
        pk=run_id,
    )


@login_required
def run_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    return render(
        request,
        "teachers/teacher_run_list.html",
        {
            "project": project,
            "membership": membership,
            "runs": selectors.runs_for_project(project=project),
            "can_write": membership.can("write"),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def run_new(request: HttpRequest, project_id: int) -> HttpResponse:
    """GET: the form. POST action=estimate: the estimate, with a "Start" button. POST
    action=start: create the run (the estimate is computed again and stored on it)."""
    project, membership = project_for(user=request.user, project_id=project_id, permission="write")
    credentials = list(project.team.credentials.all())
    form = TeacherRunForm(request.POST or None, team=project.team, credentials=credentials)
    estimate = None
    if request.method == "POST" and form.is_valid():
        run_settings = form.run_settings()
        try:
            if request.POST.get("action") == "start":
                run = services.teacher_run_start(
                    project=project, user=signed_in_user(request), run_settings=run_settings
                )
                messages.success(request, "The teacher run is queued.")
                return redirect("teachers:teacher_run", run_id=run.pk)
            estimate = services.teacher_run_estimate(project=project, run_settings=run_settings)
        except ValidationError as exc:
            apply_errors(form, exc)
    return render(
        request,
        "teachers/teacher_run_new.html",
        {
            "project": project,
            "membership": membership,
            "form": form,
            "estimate": estimate,
            "has_credentials": bool(credentials),
            "input_count": project.inputs.count(),
        },
        status=400 if form.errors else 200,
    )


def parsed_shown(value: Any) -> str:
    """A parsed answer as the page shows it: JSON (indented) for objects and lists, the plain
    value for a label or text, never a Python repr."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, indent=2)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@login_required
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run, membership = teacher_run_for(user=request.user, run_id=run_id)
    problems_only = request.GET.get("problems") == "1"
    page = selectors.run_outputs(run=run, page=request.GET.get("page"), problems_only=problems_only)
    for output in page:
        output.parsed_shown = parsed_shown(output.parsed)
    return render(
        request,
        "teachers/teacher_run_detail.html",
        {
            "run": run,
            "project": run.project,
            "membership": membership,
            "progress": selectors.run_progress(run=run),
            "page": page,
            "problems_only": problems_only,
            "failed_calls": selectors.run_failed_calls(run=run),
            "can_write": membership.can("write"),
            "can_review": membership.can("review"),
            "input_fields": run.project.input_fields,
        },
    )


@login_required
def run_progress(request: HttpRequest, run_id: int) -> HttpResponse:
    """The fragment the run page polls (htmx) while the run is queued or running."""
    run, membership = teacher_run_for(user=request.user, run_id=run_id)
    return render(
        request,
        "teachers/teacher_run_progress.html",
        {
            "run": run,
            "progress": selectors.run_progress(run=run),
            "can_write": membership.can("write"),
            "can_review": membership.can("review"),
        },
    )


def _control(request: HttpRequest, run_id: int, action: str) -> HttpResponse:
    run, _ = teacher_run_for(user=request.user, run_id=run_id, permission="write")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        if action == "pause":
            services.teacher_run_pause(run=run)
            messages.success(request, "Pausing: calls already on their way are still recorded.")
        elif action == "resume":
            services.teacher_run_resume(run=run)
            messages.success(request, "Resumed: only the missing answers will be requested.")
        else:
            services.teacher_run_cancel(run=run)
            messages.success(request, "Cancelling the run.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("teachers:teacher_run", run_id=run.pk)


@login_required
def run_pause(request: HttpRequest, run_id: int) -> HttpResponse:
    return _control(request, run_id, "pause")


@login_required
def run_resume(request: HttpRequest, run_id: int) -> HttpResponse:
    return _control(request, run_id, "resume")


@login_required
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    return _control(request, run_id, "cancel")


@login_required
@require_http_methods(["GET", "POST"])
def run_import(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id, permission="write")
    form = TeacherImportForm(request.POST or None, request.FILES or None)
    if upload_refused(request) is not None:
        # The upload handler stopped reading the body: nothing of the file was kept.
        refuse_oversized_upload(form)
        return render(
            request,
            "teachers/teacher_run_import.html",
            {"project": project, "membership": membership, "form": form},
            status=413,
        )
    if request.method == "POST" and form.is_valid():
        uploaded = form.cleaned_data["file"]
        try:
            if not project.has_task:
                raise ValidationError("define the project's task before importing outputs")
            check_size(uploaded.name, uploaded.size, max_bytes=settings.MAX_UPLOAD_BYTES)
            with tempfile.TemporaryDirectory(prefix="teacher-import-") as scratch:
                path = Path(scratch) / "upload"
                with path.open("wb") as out:
                    for chunk in uploaded.chunks():
                        out.write(chunk)
                run = teacher_run_import(
                    project=project,
                    user=signed_in_user(request),
                    file_name=uploaded.name,
                    path=path,
                    output_column=form.cleaned_data.get("output_column") or "output",
                    model=form.cleaned_data.get("model") or "",
                )
            messages.success(
                request, f"Imported {run.job.progress_total} outputs from {run.source}."
            )
            return redirect("teachers:teacher_run", run_id=run.pk)
        except IngestError as exc:
            form.add_error("file", str(exc))
        except ValidationError as exc:
            apply_errors(form, exc)
    return render(
        request,
        "teachers/teacher_run_import.html",
        {"project": project, "membership": membership, "form": form},
        status=400 if form.errors else 200,
    )


# Prices ----------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def prices(request: HttpRequest, team_id: int) -> HttpResponse:
    team, membership = team_for(user=request.user, team_id=team_id)
    form = PriceForm(request.POST or None)
    if request.method == "POST":
        team_for(user=request.user, team_id=team_id, permission="manage")
        if form.is_valid():
            try:
                entry = services.price_entry_save(
                    team=team, user=signed_in_user(request), **form.cleaned_data
                )
                messages.success(request, f"Price for {entry.model} saved.")
                return redirect("teachers:prices", team_id=team.pk)
            except ValidationError as exc:
                apply_errors(form, exc)
    return render(
        request,
        "teachers/teacher_prices.html",
        {
            "team": team,
            "membership": membership,
            "rows": selectors.price_rows(team=team),
            "form": form,
            "prices_as_of": PRICES_AS_OF,
            "can_manage": membership.can("manage"),
        },
        status=400 if form.errors else 200,
    )


@login_required
def price_delete(request: HttpRequest, team_id: int, price_id: int) -> HttpResponse:
    team, _ = team_for(user=request.user, team_id=team_id, permission="manage")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    entry = scoped_get(PriceEntry.objects.filter(team=team), pk=price_id)
    services.price_entry_delete(entry=entry)
    messages.success(request, f"The team's price for {entry.model} was removed.")
    return redirect("teachers:prices", team_id=team.pk)


@login_required
@require_http_methods(["GET", "POST"])
def synthesis_new(request: HttpRequest, project_id: int) -> HttpResponse:
    """Synthetic inputs. GET: the form. POST action=estimate: the estimate, with a "Start"
    button. POST action=start: queue the job (estimated again) and show its job page."""
    from teachers import synthesis

    project, membership = project_for(user=request.user, project_id=project_id, permission="write")
    credentials = list(project.team.credentials.all())
    seeds, labels = selectors.synthesis_choices(project=project)
    form = SynthesisForm(request.POST or None, credentials=credentials, seeds=seeds, labels=labels)
    estimate = None
    if request.method == "POST" and form.is_valid():
        chosen = form.synthesis_settings()
        try:
            if request.POST.get("action") == "start":
                run = synthesis.synthesis_start(
                    project=project, user=signed_in_user(request), settings=chosen
                )
                messages.success(request, "The teacher is asked for new inputs.")
                return redirect("jobs:job_detail", job_id=run.job_id)
            estimate = synthesis.synthesis_estimate(project=project, settings=chosen)
        except ValidationError as exc:
            apply_errors(form, exc)
    return render(
        request,
        "teachers/synthesis_new.html",
        {
            "project": project,
            "membership": membership,
            "form": form,
            "estimate": estimate,
            "has_credentials": bool(credentials),
        },
        status=400 if form.errors else 200,
    )
