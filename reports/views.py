"""The go/no-go report: the page, its settings, the live break-even calculator, the secret share
link and the read-only shared page (which needs no sign-in: the link is the credential)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from projects.access import project_for
from reports import selectors, services
from reports.forms import ReportSettingsForm
from reports.models import ReportSettings
from teams.access import require, signed_in_user
from teams.forms import apply_errors

MAX_VOLUME = services.MAX_MONTHLY_VOLUME


def _initial(settings: ReportSettings) -> dict[str, Any]:
    return {
        "evaluation": settings.evaluation_id,
        "serving_mode": settings.serving_mode,
        "serving_hourly_usd": settings.serving_hourly_usd,
        "managed_input_usd_per_mtok": settings.managed_input_usd_per_mtok,
        "managed_output_usd_per_mtok": settings.managed_output_usd_per_mtok,
        "training_hourly_usd": settings.training_hourly_usd,
        "teacher_usd_per_1k": settings.teacher_usd_per_1k,
        "monthly_volume": settings.monthly_volume,
        "quality_target_percent": settings.quality_target_percent,
    }


def _context(request: HttpRequest, report: selectors.Report, **extra: Any) -> dict[str, Any]:
    return {
        "report": report,
        "project": report.project,
        "break_even": selectors.break_even_payload(report, int(report.settings.monthly_volume)),
        **extra,
    }


@login_required
def report(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    data = selectors.report_for(project=project)
    form = ReportSettingsForm(initial=_initial(data.settings), project=project)
    share_url = (
        request.build_absolute_uri(
            reverse("reports:shared_report", args=[data.settings.share_token])
        )
        if data.settings.share_token and membership.can("manage")
        else ""
    )
    return render(
        request,
        "reports/report_detail.html",
        _context(
            request,
            data,
            membership=membership,
            form=form,
            can_write=membership.can("write"),
            can_manage=membership.can("manage"),
            share_url=share_url,
            break_even_url=reverse("reports:report_break_even", args=[project.pk]),
        ),
    )


@login_required
def report_settings(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id, permission="write")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    form = ReportSettingsForm(request.POST, project=project)
    if form.is_valid():
        try:
            services.report_settings_update(
                project=project, user=signed_in_user(request), **form.cleaned_data
            )
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            messages.success(request, "Report settings saved.")
            return redirect("reports:report", project_id=project.pk)
    data = selectors.report_for(project=project)
    return render(
        request,
        "reports/report_detail.html",
        _context(
            request,
            data,
            membership=membership,
            form=form,
            can_write=True,
            can_manage=membership.can("manage"),
            share_url="",
            break_even_url=reverse("reports:report_break_even", args=[project.pk]),
        ),
        status=400,
    )


def _volume(request: HttpRequest) -> int | None:
    try:
        volume = int(request.GET.get("volume", ""))
    except ValueError:
        return None
    return volume if 0 <= volume <= MAX_VOLUME else None


def _break_even_response(request: HttpRequest, data: selectors.Report) -> JsonResponse:
    volume = _volume(request)
    if volume is None:
        return JsonResponse(
            {"error": "the monthly volume must be a whole number of requests, 0 or more"},
            status=400,
        )
    return JsonResponse(selectors.break_even_payload(data, volume))


@login_required
def report_break_even(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    return _break_even_response(request, selectors.report_for(project=project))


@login_required
def report_share(request: HttpRequest, project_id: int) -> HttpResponse:
    """Owners create, replace or revoke the secret link to the read-only report."""
    project, membership = project_for(user=request.user, project_id=project_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    require(membership, "manage")
    if request.POST.get("action") == "disable":
        services.report_share_disable(project=project, user=signed_in_user(request))
        messages.success(request, "The share link is revoked.")
    else:
        services.report_share_enable(project=project, user=signed_in_user(request))
        messages.success(request, "A new share link is ready; any older link no longer works.")
    return redirect("reports:report", project_id=project.pk)


def _shared(share_token: str) -> selectors.Report:
    project = selectors.report_by_share_token(token=share_token)
    if project is None:
        raise Http404
    return selectors.report_for(project=project)


@never_cache
@require_GET
def shared_report(request: HttpRequest, share_token: str) -> HttpResponse:
    data = _shared(share_token)
    response = render(
        request,
        "reports/report_shared.html",
        _context(
            request,
            data,
            shared=True,
            break_even_url=reverse("reports:shared_break_even", args=[share_token]),
        ),
    )
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "no-referrer"
    return response


@never_cache
@require_GET
def shared_break_even(request: HttpRequest, share_token: str) -> JsonResponse:
    return _break_even_response(request, _shared(share_token))
