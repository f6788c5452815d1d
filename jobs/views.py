from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render

from jobs import services
from jobs.models import Job
from teams.access import AnyUser, membership_for, object_for


def job_for(*, user: AnyUser, job_id: int, permission: str = "read") -> Job:
    job, _ = object_for(
        Job.objects.select_related("project", "team"), user=user, permission=permission, pk=job_id
    )
    return services.job_live_view(job)


@login_required
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_for(user=request.user, job_id=job_id)
    membership = membership_for(user=request.user, team=job.team_id)
    return render(request, "jobs/job_detail.html", {"job": job, "membership": membership})


@login_required
def job_status(request: HttpRequest, job_id: int) -> HttpResponse:
    """The small fragment the job page polls (htmx) until the job ends."""
    job = job_for(user=request.user, job_id=job_id)
    return render(request, "jobs/_job_status.html", {"job": job})


@login_required
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_for(user=request.user, job_id=job_id, permission="write")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    services.job_request_cancel(job=job)
    return redirect("jobs:job_detail", job_id=job.pk)
