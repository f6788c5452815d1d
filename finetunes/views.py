"""Fine-tuning pages: start from a dataset version, watch the loss live, cancel/resume, and the
team's student model registry with downloads.

Every view resolves its object through the user's team first (404 for outsiders), checks the
role, then calls one service or selector.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from dataset_versions.models import DatasetVersion
from finetunes import gpu_plans, selectors, services
from finetunes.forms import FineTuneForm, RegisterStudentForm
from finetunes.models import ExportBundle, FineTune, StudentModel
from finetunes.signals import training_signals
from finetunes.signals_form import TrainingSignalsForm
from projects.access import project_for
from teams.access import AnyUser, object_for, require, scoped_get, signed_in_user, team_for
from teams.forms import apply_errors
from teams.models import Membership


def fine_tune_for(
    *, user: AnyUser, finetune_id: int, permission: str = "read"
) -> tuple[FineTune, Membership]:
    return object_for(
        FineTune.objects.select_related(
            "project__team",
            "job",
            "job__created_by",
            "dataset_version",
            "base_model",
            "result_model",
        ),
        user=user,
        team_path="project__team",
        permission=permission,
        pk=finetune_id,
    )


def student_for(
    *, user: AnyUser, student_id: int, permission: str = "read"
) -> tuple[StudentModel, Membership]:
    return object_for(
        StudentModel.objects.select_related(
            "team", "base_model", "dataset_version", "project", "created_by"
        ),
        user=user,
        permission=permission,
        pk=student_id,
    )


@login_required
@require_http_methods(["GET", "POST"])
def finetune_new(request: HttpRequest, project_id: int, version_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id, permission="write")
    version = scoped_get(DatasetVersion.objects.filter(project=project), pk=version_id)
    hardware = selectors.hardware_status()
    counts = services.split_counts(version)
    suggested = services.suggested_preset(n_train=counts.get("train", 0), gpu=hardware["has_gpu"])
    form = FineTuneForm(
        request.POST or None,
        team=project.team,
        students=selectors.students_to_train(team=project.team),
        has_gpu=hardware["has_gpu"],
        suggested_preset=suggested,
        label_task=project.output_kind == "label",
        n_train=counts.get("train", 0),
    )
    presets = services.preset_table(n_train=counts.get("train", 0), gpu=hardware["has_gpu"])
    target = gpu_plans.gpu_target()
    epochs = next((p["epochs"] for p in presets if p["preset"] == suggested), 1.0)
    plans = (
        gpu_plans.student_plans(
            list(form.students.values()),
            target=target,
            samples_to_train=epochs * counts.get("train", 0),
        )
        if target
        else []
    )
    signals_form = TrainingSignalsForm(
        request.POST or None, signals=training_signals(version=version)
    )
    if request.method == "POST" and form.is_valid() and signals_form.is_valid():
        settings = form.fine_tune_settings()
        settings.hyperparameters.update(signals_form.hyperparameters())
        try:
            fine_tune = services.fine_tune_start(
                project=project,
                version=version,
                user=signed_in_user(request),
                settings=settings,
            )
        except ValidationError as exc:
            signal_errors = getattr(exc, "error_dict", {})
            if set(signal_errors) & set(signals_form.fields):
                apply_errors(signals_form, exc)
            else:
                apply_errors(form, exc)
        else:
            messages.success(request, "The fine-tuning job is queued for a gpu-queue worker.")
            return redirect("finetunes:finetune_detail", finetune_id=fine_tune.pk)
    return render(
        request,
        "finetunes/finetune_new.html",
        {
            "project": project,
            "version": version,
            "membership": membership,
            "form": form,
            "signals_form": signals_form,
            "hardware": hardware,
            "counts": counts,
            "presets": presets,
            "suggested_preset": suggested,
            "gpu_target": target,
            "gpu_plans": plans,
        },
        status=400 if form.errors or signals_form.errors else 200,
    )


@login_required
def finetune_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    return render(
        request,
        "finetunes/finetune_list.html",
        {
            "project": project,
            "membership": membership,
            "fine_tunes": selectors.fine_tunes_for_project(project=project),
            "versions": DatasetVersion.objects.filter(project=project),
            "can_write": membership.can("write"),
        },
    )


@login_required
def finetune_detail(request: HttpRequest, finetune_id: int) -> HttpResponse:
    fine_tune, membership = fine_tune_for(user=request.user, finetune_id=finetune_id)
    return render(
        request,
        "finetunes/finetune_detail.html",
        {
            "ft": fine_tune,
            "project": fine_tune.project,
            "membership": membership,
            "live": selectors.fine_tune_live(fine_tune=fine_tune),
            "can_write": membership.can("write"),
            "student": fine_tune.result_model,
            "artifacts": services.student_artifacts(student=fine_tune.result_model)
            if fine_tune.result_model
            else [],
        },
    )


@login_required
def finetune_status(request: HttpRequest, finetune_id: int) -> HttpResponse:
    """The status card the job page polls (htmx) while the job is queued or running."""
    fine_tune, membership = fine_tune_for(user=request.user, finetune_id=finetune_id)
    return render(
        request,
        "finetunes/finetune_status.html",
        {
            "ft": fine_tune,
            "live": selectors.fine_tune_live(fine_tune=fine_tune),
            "can_write": membership.can("write"),
        },
    )


@login_required
def finetune_points(request: HttpRequest, finetune_id: int) -> JsonResponse:
    """Chart points after ``?after=STEP`` and the live figures (the chart polls this)."""
    fine_tune, _ = fine_tune_for(user=request.user, finetune_id=finetune_id)
    try:
        after = int(request.GET.get("after", "-1"))
    except ValueError:
        after = -1
    live = selectors.fine_tune_live(fine_tune=fine_tune)
    return JsonResponse(
        {
            "status": live["status"],
            "is_live": live["is_live"],
            "step": live["step"],
            "total_steps": live["total_steps"],
            "attempts": live["attempts"],
            "points": selectors.training_points(fine_tune=fine_tune, after_step=after),
        }
    )


def _control(request: HttpRequest, finetune_id: int, action: str) -> HttpResponse:
    fine_tune, _ = fine_tune_for(user=request.user, finetune_id=finetune_id, permission="write")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        if action == "cancel":
            services.fine_tune_cancel(fine_tune=fine_tune)
            messages.success(
                request, "Cancelling: training stops after the current step and keeps a checkpoint."
            )
        else:
            services.fine_tune_resume(fine_tune=fine_tune)
            messages.success(request, "Queued again: training resumes from the latest checkpoint.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("finetunes:finetune_detail", finetune_id=fine_tune.pk)


@login_required
def finetune_cancel(request: HttpRequest, finetune_id: int) -> HttpResponse:
    return _control(request, finetune_id, "cancel")


@login_required
def finetune_resume(request: HttpRequest, finetune_id: int) -> HttpResponse:
    return _control(request, finetune_id, "resume")


# Student registry ------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def students(request: HttpRequest, team_id: int) -> HttpResponse:
    team, membership = team_for(user=request.user, team_id=team_id)
    form = RegisterStudentForm(request.POST or None)
    if request.method == "POST":
        require(membership, "write")
        if form.is_valid():
            try:
                student = services.student_register_local(
                    team=team,
                    user=signed_in_user(request),
                    name=form.cleaned_data["name"],
                    path_text=form.cleaned_data["path"],
                )
            except ValidationError as exc:
                apply_errors(form, exc)
            else:
                messages.success(request, f"Registered {student.name}.")
                return redirect("finetunes:students", team_id=team.pk)
    return render(
        request,
        "finetunes/students_list.html",
        {
            "team": team,
            "membership": membership,
            "students": selectors.students_for_team(team=team),
            "form": form,
            "can_write": membership.can("write"),
            "hardware": selectors.hardware_status(),
        },
        status=400 if form.errors else 200,
    )


@login_required
def student_detail(request: HttpRequest, student_id: int) -> HttpResponse:
    student, membership = student_for(user=request.user, student_id=student_id)
    return render(
        request,
        "finetunes/students_detail.html",
        {
            "student": student,
            "team": student.team,
            "membership": membership,
            "artifacts": services.student_artifacts(student=student),
            "fine_tune": FineTune.objects.filter(result_model=student)
            .select_related("job", "dataset_version")
            .first(),
            "derived": student.derived.all(),
            "export_bundles": selectors.export_bundles_for_student(student=student),
            "can_write": membership.can("write"),
        },
    )


@login_required
def student_download(request: HttpRequest, student_id: int, artifact: str) -> StreamingHttpResponse:
    """One artifact (model, adapter, tokenizer) as a zip, streamed."""
    student, _ = student_for(user=request.user, student_id=student_id)
    files = services.student_artifact_files(student=student, artifact=artifact)
    if not files:
        raise Http404
    folder = services.artifact_folder_name(student=student, artifact=artifact)
    response = StreamingHttpResponse(
        services.zip_stream(files, folder_name=folder), content_type="application/zip"
    )
    response["Content-Disposition"] = f'attachment; filename="{folder}.zip"'
    return response


@login_required
def student_file(
    request: HttpRequest, student_id: int, artifact: str, filename: str
) -> FileResponse:
    """One file of an artifact, e.g. the merged model's model.safetensors."""
    student, _ = student_for(user=request.user, student_id=student_id)
    path = services.student_artifact_files(student=student, artifact=artifact).get(filename)
    if path is None:
        raise Http404
    return FileResponse(path.open("rb"), as_attachment=True, filename=filename)


# Export bundles ---------------------------------------------------------------------------------


def export_for(
    *, user: AnyUser, export_id: int, permission: str = "read"
) -> tuple[ExportBundle, Membership]:
    return object_for(
        ExportBundle.objects.select_related("student__team", "job", "created_by"),
        user=user,
        team_path="student__team",
        permission=permission,
        pk=export_id,
    )


@login_required
def export_start(request: HttpRequest, student_id: int) -> HttpResponse:
    student, _ = student_for(user=request.user, student_id=student_id, permission="write")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        bundle = services.export_start(student=student, user=signed_in_user(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("finetunes:student_detail", student_id=student.pk)
    messages.success(request, "The export bundle is queued for a gpu-queue worker.")
    return redirect("finetunes:export_detail", export_id=bundle.pk)


@login_required
def export_detail(request: HttpRequest, export_id: int) -> HttpResponse:
    bundle, membership = export_for(user=request.user, export_id=export_id)
    return render(
        request,
        "finetunes/export_detail.html",
        {
            "bundle": bundle,
            "student": bundle.student,
            "team": bundle.student.team,
            "membership": membership,
            "live": selectors.export_live(bundle=bundle),
            "quant_rows": selectors.export_quant_rows(bundle=bundle),
            "can_write": membership.can("write"),
        },
    )


@login_required
def export_status(request: HttpRequest, export_id: int) -> HttpResponse:
    """The status card the export page polls (htmx) while the job is queued or running."""
    bundle, membership = export_for(user=request.user, export_id=export_id)
    return render(
        request,
        "finetunes/export_status.html",
        {
            "bundle": bundle,
            "live": selectors.export_live(bundle=bundle),
            "can_write": membership.can("write"),
        },
    )


@login_required
def export_cancel(request: HttpRequest, export_id: int) -> HttpResponse:
    bundle, _ = export_for(user=request.user, export_id=export_id, permission="write")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    services.export_cancel(bundle=bundle)
    messages.success(request, "Cancelling: the export stops at its next step.")
    return redirect("finetunes:export_detail", export_id=bundle.pk)


@login_required
def export_file(request: HttpRequest, export_id: int, name: str) -> FileResponse:
    """One file of a bundle, by the name its manifest lists."""
    bundle, _ = export_for(user=request.user, export_id=export_id)
    path = services.export_bundle_file(bundle=bundle, name=name)
    if path is None:
        raise Http404
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)
