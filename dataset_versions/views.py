"""Dataset versions: the list, the freeze form, the stats page and the downloads."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from dataset_versions import services
from dataset_versions.forms import FreezeForm
from dataset_versions.models import DatasetVersion
from projects.access import project_for
from teams.access import scoped_get, signed_in_user
from teams.forms import apply_errors
from worker import datasets


@login_required
def datasets_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    return render(
        request,
        "dataset_versions/dataset_list.html",
        {
            "project": project,
            "versions": services.versions_for(project=project),
            "can_write": membership.can("write"),
            "candidates": services.freeze_candidates_count(
                project=project, include_references=True
            ),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def dataset_new(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id, permission="write")
    form = FreezeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            options = form.freeze_options()
            job = services.dataset_freeze_start(
                project=project, user=signed_in_user(request), options=options
            )
            return redirect("jobs:job_detail", job_id=job.pk)
        except ValidationError as exc:
            apply_errors(form, exc)
    return render(
        request,
        "dataset_versions/dataset_new.html",
        {
            "project": project,
            "form": form,
            "candidates": services.freeze_candidates_count(
                project=project, include_references=True
            ),
        },
    )


@login_required
def dataset_detail(request: HttpRequest, project_id: int, version_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id)
    version = scoped_get(DatasetVersion.objects.filter(project=project), pk=version_id)
    split = request.GET.get("split", "")
    rows = Paginator(services.items_query(version=version, split=split), 25).get_page(
        request.GET.get("page")
    )
    stats = version.stats
    labels = sorted({label for per in stats.get("labels", {}).values() for label in per})
    charts = {
        "splits": list(datasets.SPLITS),
        "labels": labels,
        "label_counts": {
            s: [stats.get("labels", {}).get(s, {}).get(label, 0) for label in labels]
            for s in datasets.SPLITS
        },
        "length_edges": stats.get("length_edges", []),
        "length_counts": stats.get("length_counts", {}),
    }
    same_hash = (
        DatasetVersion.objects.filter(project=project, content_hash=version.content_hash)
        .exclude(pk=version.pk)
        .values_list("name", flat=True)
    )
    return render(
        request,
        "dataset_versions/dataset_detail.html",
        {
            "project": project,
            "version": version,
            "rows": rows,
            "split": split,
            "charts": charts,
            "charts_json": json.dumps(charts),
            "formats": services.EXPORT_FORMATS,
            "splits": datasets.SPLITS,
            "same_hash": list(same_hash),
            "leakage": version.leakage,
        },
    )


@login_required
def dataset_export(request: HttpRequest, project_id: int, version_id: int) -> FileResponse:
    project, _ = project_for(user=request.user, project_id=project_id)
    version = scoped_get(DatasetVersion.objects.filter(project=project), pk=version_id)
    try:
        path, filename = services.export_file(
            version=version,
            fmt=request.GET.get("format", "openai"),
            split=request.GET.get("split", "all"),
        )
    except ValidationError as exc:
        raise Http404(" ".join(exc.messages)) from None
    if not path.exists():
        raise Http404("the export file is missing from the data directory")
    content_type = "text/csv; charset=utf-8" if filename.endswith(".csv") else "application/jsonl"
    return FileResponse(
        path.open("rb"), as_attachment=True, filename=filename, content_type=content_type
    )
