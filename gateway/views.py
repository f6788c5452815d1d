"""The gateway page: the routing policy (engineers change it; every change audited), the live
figures, charts, drift and the cascade threshold suggestion."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render

from gateway import selectors, services
from gateway.forms import PolicyForm
from projects.access import project_for
from serving.views import endpoint_url


@login_required
def gateway_page(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    policy = services.policy_for(project=project)
    curve = selectors.threshold_curve(
        project=project, target_percent=policy.agreement_target_percent
    )
    eval_curve = selectors.evaluation_threshold_curve(project=project, policy=policy)
    return render(
        request,
        "gateway/gateway.html",
        {
            "project": project,
            "policy": policy,
            "form": PolicyForm(instance=policy, project=project),
            "can_change": membership.can("write"),
            "figures": selectors.traffic_figures(project=project),
            "drift": selectors.drift(project=project, policy=policy),
            "curve": curve,
            "eval_curve": eval_curve,
            # Traffic's suggestion is the one offered once enough requests were both answered.
            "traffic_enough": curve["n"] >= selectors.TRAFFIC_CURVE_MIN_PAIRS,
            "traffic_min_pairs": selectors.TRAFFIC_CURVE_MIN_PAIRS,
            "charts": {
                "series": selectors.series(project=project),
                "curve": curve["points"],
                "eval_curve": eval_curve["points"] if eval_curve else [],
            },
            "drops": selectors.drops(project=project),
            "changes": selectors.policy_changes(policy=policy),
            "endpoint": request.build_absolute_uri(f"/api/v1/projects/{project.slug}/infer"),
            "student_endpoint": endpoint_url(request),
        },
    )


@login_required
def policy_edit(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id, permission="write")
    if request.method != "POST":  # after the lookup: an outsider gets 404 whatever the method
        return HttpResponseNotAllowed(["POST"])
    policy = services.policy_for(project=project)
    form = PolicyForm(request.POST, instance=policy, project=project)
    if not form.is_valid():
        errors = "; ".join(f"{k}: {' '.join(str(e) for e in v)}" for k, v in form.errors.items())
        messages.error(request, f"The policy was not changed: {errors}")
        return redirect("gateway:gateway", project_id=project.pk)
    # The form filled the instance in place; the service compares against the stored row.
    services.policy_update(project=project, user=request.user, values=form.cleaned_data)
    messages.success(request, "Policy saved: running gateways use it within a few seconds.")
    return redirect("gateway:gateway", project_id=project.pk)
