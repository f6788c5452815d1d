"""Plain function views: resolve through the user's team first, call one service, render."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from distillery.uploads import upload_refused
from projects import forms, selectors, services
from projects.access import project_for
from teams.access import scoped_get, signed_in_user, team_for
from teams.forms import apply_errors
from worker.ingest import IngestError, check_size
from worker.taskspec import SpecError, TaskSpec, TemplateError, teacher_messages

# Credentials -----------------------------------------------------------------------------------


# Projects --------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def project_create(request: HttpRequest, team_id: int) -> HttpResponse:
    team, _ = team_for(user=request.user, team_id=team_id, permission="write")
    form = forms.ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        project = services.project_create(
            team=team, user=signed_in_user(request), **form.cleaned_data
        )
        return redirect("projects:task_edit", project_id=project.pk)
    return render(request, "projects/project_create.html", {"team": team, "form": form})


@login_required
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    spec_error = ""
    if project.has_task:
        try:
            project.task_spec().validate()
        except (SpecError, TemplateError) as exc:
            spec_error = str(exc)
    return render(
        request,
        "projects/project_detail.html",
        {
            "project": project,
            "membership": membership,
            "input_count": project.inputs.count(),
            "reference_count": project.inputs.filter(reference_output__isnull=False).count(),
            "jobs": project.jobs.select_related("created_by")[:10],
            "spec_error": spec_error,
            "can_write": membership.can("write"),
        },
    )


def _task_form_initial(project: Any) -> dict[str, Any]:
    import json

    return {
        "input_fields": ", ".join(project.input_fields),
        "instruction_template": project.instruction_template,
        "system_prompt": project.system_prompt,
        "output_kind": project.output_kind,
        "label_set": "\n".join(project.label_set or []),
        "json_schema": json.dumps(project.json_schema, indent=2) if project.json_schema else "",
        "ask_rationale": project.ask_rationale,
    }


@login_required
@require_http_methods(["GET", "POST"])
def task_edit(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    if request.method == "POST":
        project_for(user=request.user, project_id=project_id, permission="write")
    form = forms.TaskSpecForm(request.POST or None, initial=_task_form_initial(project))
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services.project_update_task(
                project=project,
                input_fields=services.parse_input_fields(data["input_fields"]),
                instruction_template=data["instruction_template"],
                system_prompt=data["system_prompt"],
                output_kind=data["output_kind"],
                label_set=services.parse_label_set(data["label_set"]),
                json_schema=data["json_schema"],
                ask_rationale=bool(data.get("ask_rationale")),
            )
            messages.success(request, "Task saved.")
            return redirect("projects:project_detail", project_id=project.pk)
        except ValidationError as exc:
            apply_errors(form, exc)
    return render(
        request,
        "projects/task_edit.html",
        {
            "project": project,
            "membership": membership,
            "form": form,
            "can_write": membership.can("write"),
        },
    )


@login_required
def task_preview(request: HttpRequest, project_id: int) -> HttpResponse:
    """htmx: render the prompt the form would produce, on a real input row. Writes nothing, but
    renders a template the user typed: an engineer's action, like saving it."""
    project, _ = project_for(user=request.user, project_id=project_id, permission="write")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    data = request.POST
    kind = data.get("output_kind", project.output_kind)
    error = ""
    schema = None
    if kind == "json" and data.get("json_schema", "").strip():
        import json

        try:
            schema = json.loads(data["json_schema"])
        except json.JSONDecodeError as exc:
            error = f"json_schema: not valid JSON: {exc.msg}"
    spec = TaskSpec(
        instruction_template=data.get("instruction_template", ""),
        output_kind=kind if kind in {"label", "json", "text"} else "text",  # type: ignore[arg-type]
        input_fields=tuple(services.parse_input_fields(data.get("input_fields", ""))),
        system_prompt=data.get("system_prompt", ""),
        label_set=tuple(services.parse_label_set(data.get("label_set", ""))),
        json_schema=schema if isinstance(schema, dict) else None,
        rationale=bool(data.get("ask_rationale")),
    )
    input_id = data.get("preview_input_id", "")
    row = selectors.preview_row(
        project=project, input_id=int(input_id) if input_id.isdigit() else None
    )
    rendered: list[dict[str, str]] = []
    if not error:
        try:
            spec.validate()
            if row is not None:
                rendered = teacher_messages(spec, row.data)
        except (SpecError, TemplateError) as exc:
            error = str(exc)
    return render(
        request,
        "projects/_task_preview.html",
        {"row": row, "messages_out": rendered, "error": error},
    )


# Inputs ----------------------------------------------------------------------------------------


@login_required
def inputs_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    search = request.GET.get("q", "")
    synthetic_only = request.GET.get("synthetic") == "1"
    rows = selectors.inputs_for_project(
        project=project, search=search, synthetic_only=synthetic_only
    )
    page = Paginator(rows, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "projects/inputs_list.html",
        {
            "project": project,
            "membership": membership,
            "page": page,
            "q": search,
            "synthetic_only": synthetic_only,
        },
    )


@login_required
def input_detail(request: HttpRequest, project_id: int, input_id: int) -> HttpResponse:
    project, _membership = project_for(user=request.user, project_id=project_id)
    row = scoped_get(project.inputs.all(), pk=input_id)
    return render(request, "projects/input_detail.html", {"project": project, "row": row})


@login_required
@require_http_methods(["GET", "POST"])
def inputs_upload(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _membership = project_for(user=request.user, project_id=project_id, permission="write")
    form = forms.UploadForm(request.POST or None, request.FILES or None)
    if upload_refused(request) is not None:
        # The upload handler stopped reading the body: nothing of the file was kept.
        forms.refuse_oversized_upload(form)
        return render(
            request, "projects/inputs_upload.html", {"project": project, "form": form}, status=413
        )
    if request.method == "POST" and form.is_valid():
        uploaded = form.cleaned_data["file"]
        try:
            # Before anything is stored: an oversized file is refused without a copy.
            check_size(uploaded.name, uploaded.size, max_bytes=settings.MAX_UPLOAD_BYTES)
            upload = services.input_upload_create(
                project=project,
                user=signed_in_user(request),
                file_name=uploaded.name,
                source=uploaded,
            )
            return redirect("projects:upload_map", project_id=project.pk, upload_id=upload.pk)
        except IngestError as exc:
            form.add_error("file", str(exc))
    return render(
        request,
        "projects/inputs_upload.html",
        {"project": project, "form": form},
        status=400 if form.errors else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def upload_map(request: HttpRequest, project_id: int, upload_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id, permission="write")
    upload = scoped_get(project.uploads.all(), pk=upload_id)
    if upload.job_id:
        return redirect("jobs:job_detail", job_id=upload.job_id)
    form = forms.MappingForm(
        request.POST or None,
        input_fields=project.input_fields,
        columns=upload.columns,
        initial_map=services.suggested_mapping(project=project, columns=upload.columns),
    )
    if request.method == "POST" and form.is_valid():
        try:
            job = services.input_import_start(
                upload=upload,
                user=signed_in_user(request),
                field_map=form.field_map(),
                reference_column=form.cleaned_data.get("reference_column", ""),
            )
            return redirect("jobs:job_detail", job_id=job.pk)
        except ValidationError as exc:
            apply_errors(form, exc)
    return render(
        request, "projects/upload_map.html", {"project": project, "upload": upload, "form": form}
    )
