"""The review queue (keyboard-first), its bulk actions, automation (checks, judge, rules),
assignment and agreement, and the audit trail. Each view resolves the project through the
user's team first, then calls one service or selector."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from projects.access import project_for
from projects.models import Project
from review import selectors, services
from review.field_diff import value_from_fields
from review.forms import AssignForm, ChecksForm, JudgeSettingsForm, RuleForm
from review.models import AuditAction, ReviewRule
from teachers.models import TeacherOutput
from teams.access import scoped_get, signed_in_user
from teams.forms import apply_errors
from teams.models import Membership
from worker.checks import FLAG_CODES

FRAGMENT_HEADER = "X-Review-Fragment"


def _wants_fragment(request: HttpRequest) -> bool:
    return request.headers.get(FRAGMENT_HEADER) == "1"


def _back(request: HttpRequest, project: Project) -> HttpResponse:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return redirect(target)
    return redirect("review:review_queue", project_id=project.pk)


def _card_context(
    request: HttpRequest, project: Project, membership: Membership, output: TeacherOutput
) -> dict[str, Any]:
    spec = project.task_spec()
    return {
        "project": project,
        "card": selectors.card_for(
            project=project, spec=spec, output=output, user=signed_in_user(request)
        ),
        "can_review": membership.can("review"),
        "labels": selectors.labels_in_use(project=project),
        "flag_titles": FLAG_CODES,
    }


def _card_response(
    request: HttpRequest,
    project: Project,
    membership: Membership,
    output_id: int,
    *,
    status: int = 200,
    message: str = "",
    error: str = "",
    panel: str = "",
) -> HttpResponse:
    output = selectors.review_output(project=project, output_id=output_id)
    context = _card_context(request, project, membership, output)  # type: ignore[arg-type]
    context.update({"message": message, "error": error, "open_panel": panel, "current": True})
    response = render(request, "review/review_item.html", context, status=status)
    response["X-Output-Id"] = str(output_id)
    return response


# The queue -------------------------------------------------------------------------------------


@login_required
def review_queue(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    filters = selectors.ReviewFilters.from_query(request.GET)
    rows = selectors.outputs_for_review(
        project=project, user=signed_in_user(request), filters=filters
    )
    page = selectors.CappedPaginator(rows, selectors.PAGE_SIZE).get_page(request.GET.get("page"))
    outputs = list(
        selectors.with_review_details(
            TeacherOutput.objects.filter(pk__in=[o.pk for o in page.object_list])
        )
    )
    by_id = {o.pk: o for o in outputs}
    spec = project.task_spec()
    cards = [
        selectors.card_for(
            project=project, spec=spec, output=by_id[o.pk], user=signed_in_user(request)
        )
        for o in page.object_list
    ]
    reviewers = selectors.reviewers_of(project=project)
    return render(
        request,
        "review/review_queue.html",
        {
            "project": project,
            "membership": membership,
            "filters": filters,
            "page": page,
            "cards": cards,
            "can_review": membership.can("review"),
            "can_manage": membership.can("manage"),
            "labels": selectors.labels_in_use(project=project),
            "flag_titles": FLAG_CODES,
            "status_choices": selectors.STATUS_FILTERS,
            "sort_choices": selectors.SORTS,
            "reviewers": reviewers,
            "query": filters.query_string(),
            "query_without_page": filters.query_string(),
        },
    )


@login_required
def review_item(request: HttpRequest, project_id: int, output_id: int) -> HttpResponse:
    """One queue card (the keyboard script reloads a card with it)."""
    project, membership = project_for(user=request.user, project_id=project_id)
    scoped_get(TeacherOutput.objects.filter(project=project), pk=output_id)
    return _card_response(request, project, membership, output_id)


@login_required
def review_decide(request: HttpRequest, project_id: int, output_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id, permission="review")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    scoped_get(TeacherOutput.objects.filter(project=project), pk=output_id)
    action = request.POST.get("action", "")
    seen = request.POST.get("seen_version", "")
    if not seen.isdigit():
        return _card_response(
            request,
            project,
            membership,
            output_id,
            status=400,
            error="Reload the page and try again.",
        )
    try:
        # A flat JSON answer is edited one box per field; anything else as one text value.
        value = value_from_fields(request.POST) if action == "edit" else None
        services.output_decide(
            project=project,
            user=signed_in_user(request),
            output_id=output_id,
            action=action,
            seen_version=int(seen),
            value=request.POST.get("value", "") if value is None else value,
            reason=request.POST.get("reason", ""),
        )
    except ValidationError as exc:
        if not _wants_fragment(request):
            messages.error(request, " ".join(exc.messages))
            return _back(request, project)
        return _card_response(
            request,
            project,
            membership,
            output_id,
            status=400,
            error=" ".join(exc.messages),
            panel="edit" if action == "edit" else "",
        )
    except services.DecisionConflict as exc:
        if not _wants_fragment(request):
            messages.error(request, exc.message)
            return _back(request, project)
        return _card_response(
            request, project, membership, output_id, status=409, message=exc.message
        )
    if not _wants_fragment(request):
        return _back(request, project)
    return _card_response(request, project, membership, output_id)


@login_required
def review_undo(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id, permission="review")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        output = services.decision_undo_last(project=project, user=signed_in_user(request))
    except ValidationError as exc:
        if _wants_fragment(request):
            return HttpResponse(" ".join(exc.messages), status=400, content_type="text/plain")
        messages.error(request, " ".join(exc.messages))
        return _back(request, project)
    except services.DecisionConflict as exc:
        if _wants_fragment(request):
            return HttpResponse(exc.message, status=409, content_type="text/plain")
        messages.error(request, exc.message)
        return _back(request, project)
    if not _wants_fragment(request):
        messages.success(request, f"Undid your decision on output #{output.pk}.")
        return _back(request, project)
    return _card_response(
        request, project, membership, output.pk, message=f"Undid your decision on #{output.pk}."
    )


def _save_card_text(
    request: HttpRequest,
    project_id: int,
    output_id: int,
    *,
    save: Any,
    field: str,
    saved_page: str = "",
    saved_card: str = "",
) -> HttpResponse:
    """A reviewer's text on one output (a comment, a corrected rationale): the service ``save``
    stores ``request.POST[field]``; the card (or the page) answers with the error or the note."""
    project, membership = project_for(user=request.user, project_id=project_id, permission="review")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    scoped_get(TeacherOutput.objects.filter(project=project), pk=output_id)
    error = ""
    try:
        save(
            project=project,
            user=signed_in_user(request),
            output_id=output_id,
            text=request.POST.get(field, ""),
        )
    except ValidationError as exc:
        error = " ".join(exc.messages)
    if not _wants_fragment(request):
        if error:
            messages.error(request, error)
        elif saved_page:
            messages.success(request, saved_page)
        return _back(request, project)
    return _card_response(
        request,
        project,
        membership,
        output_id,
        status=400 if error else 200,
        error=error,
        message="" if error else saved_card,
    )


@login_required
def review_comment(request: HttpRequest, project_id: int, output_id: int) -> HttpResponse:
    return _save_card_text(request, project_id, output_id, save=services.comment_add, field="text")


@login_required
def review_rationale(request: HttpRequest, project_id: int, output_id: int) -> HttpResponse:
    """Save a reviewer's correction of the teacher's rationale (the answer is decided apart)."""
    return _save_card_text(
        request,
        project_id,
        output_id,
        save=services.rationale_edit,
        field="rationale",
        saved_page=f"Saved the rationale of output #{output_id}.",
        saved_card="Rationale saved.",
    )


@login_required
@require_http_methods(["GET", "POST"])
def review_bulk(request: HttpRequest, project_id: int) -> HttpResponse:
    """Bulk approve/reject over the current filter. GET: a confirmation stating the count."""
    project, _membership = project_for(
        user=request.user, project_id=project_id, permission="review"
    )
    data = request.POST if request.method == "POST" else request.GET
    filters = selectors.ReviewFilters.from_query(data)
    action = data.get("action", "")
    if action not in ("approve", "reject"):
        messages.error(request, "Choose approve or reject.")
        return redirect(
            reverse("review:review_queue", args=[project.pk]) + "?" + filters.query_string()
        )
    if request.method == "POST":
        expected = data.get("expected_count", "")
        try:
            count = services.bulk_decide(
                project=project,
                user=signed_in_user(request),
                filters=filters,
                action=action,
                expected_count=int(expected) if expected.isdigit() else -1,
                reason=data.get("reason", ""),
            )
            messages.success(request, f"{action.capitalize()}d {count:,} outputs.")
            return redirect(
                reverse("review:review_queue", args=[project.pk]) + "?" + filters.query_string()
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
    count = services.bulk_count(
        project=project, user=signed_in_user(request), filters=filters, action=action
    )
    ids = {int(v) for v in (filters.reviewer, filters.assigned) if v and v.isdigit()}
    return render(
        request,
        "review/review_bulk.html",
        {
            "project": project,
            "filters": filters,
            "action": action,
            "count": count,
            "description": filters.describe(usernames=selectors.usernames_for(ids)),
            "query": filters.query_string(),
            "hidden": filters.as_dict(),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def review_identical(request: HttpRequest, project_id: int, output_id: int) -> HttpResponse:
    """ "Apply this correction to all identical outputs", with a confirmation stating the count."""
    project, membership = project_for(user=request.user, project_id=project_id, permission="review")
    output = scoped_get(TeacherOutput.objects.filter(project=project), pk=output_id)
    if request.method == "POST":
        expected = request.POST.get("expected_count", "")
        try:
            count = services.correction_apply_to_identical(
                project=project,
                user=signed_in_user(request),
                output_id=output.pk,
                expected_count=int(expected) if expected.isdigit() else -1,
            )
            messages.success(
                request, f"Applied the decision of #{output.pk} to {count:,} identical outputs."
            )
            return _back(request, project)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
    output = selectors.review_output(project=project, output_id=output.pk)  # type: ignore[assignment]
    return render(
        request,
        "review/review_identical.html",
        {
            **_card_context(request, project, membership, output),
            "count": services.identical_count(project=project, output=output),
            "next": request.GET.get("next", ""),
        },
    )


# Automation: checks, the LLM judge, auto rules ------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def review_automation(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(
        user=signed_in_user(request),
        project_id=project_id,
        permission="write" if request.method == "POST" else "read",
    )
    settings_row = selectors.review_settings(project=project)
    credentials = project.team.credentials.all()
    judge_form = JudgeSettingsForm(
        request.POST if request.POST.get("form") == "judge" else None,
        credentials=credentials,
        initial={
            "rubric": settings_row.judge_rubric,
            "scale": settings_row.judge_scale,
            "pass_score": settings_row.judge_pass_score,
            "credential": settings_row.judge_credential_id,
            "model": settings_row.judge_model,
        },
    )
    checks_form = ChecksForm(request.POST if request.POST.get("form") == "checks" else None)
    if request.method == "POST":
        if request.POST.get("form") == "judge" and judge_form.is_valid():
            data = judge_form.cleaned_data
            try:
                services.judge_settings_update(
                    project=project,
                    user=signed_in_user(request),
                    rubric=data["rubric"],
                    scale=data["scale"],
                    pass_score=data["pass_score"],
                    credential=data["credential"],
                    model=data["model"],
                )
                messages.success(request, "Judge settings saved.")
                return redirect("review:review_automation", project_id=project.pk)
            except ValidationError as exc:
                apply_errors(judge_form, exc)
        elif request.POST.get("form") == "checks" and checks_form.is_valid():
            try:
                job = services.checks_start(
                    project=project,
                    user=signed_in_user(request),
                    judge=checks_form.cleaned_data["judge"],
                    apply_rules=checks_form.cleaned_data["apply_rules"],
                )
                return redirect("jobs:job_detail", job_id=job.pk)
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
    return render(
        request,
        "review/review_automation.html",
        {
            "project": project,
            "membership": membership,
            "judge_form": judge_form,
            "checks_form": checks_form,
            "rule_form": RuleForm(),
            "rules": [
                (rule, services.rule_title(rule.definition))
                for rule in selectors.rules_for(project=project)
            ],
            "flag_counts": selectors.flag_counts(project=project),
            "flag_titles": FLAG_CODES,
            "can_write": membership.can("write"),
            "can_manage": membership.can("manage"),
        },
    )


@login_required
def review_rule_create(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id, permission="manage")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    form = RuleForm(request.POST)
    if form.is_valid():
        try:
            rule = services.rule_create(
                project=project,
                user=signed_in_user(request),
                name=form.cleaned_data["name"],
                definition=form.definition(),
            )
            messages.success(request, f"Rule {rule.name!r} added. Apply it from this page.")
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
    else:
        messages.error(
            request,
            "; ".join(
                f"{k}: {' '.join(str(message) for message in v)}" for k, v in form.errors.items()
            ),
        )
    return redirect("review:review_automation", project_id=project.pk)


@login_required
def review_rule_delete(request: HttpRequest, project_id: int, rule_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id, permission="manage")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    rule = scoped_get(ReviewRule.objects.filter(project=project), pk=rule_id)
    services.rule_delete(project=project, user=signed_in_user(request), rule=rule)
    messages.success(request, f"Rule {rule.name!r} deleted.")
    return redirect("review:review_automation", project_id=project.pk)


@login_required
def review_rules_apply(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id, permission="manage")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    applied = services.rules_apply(project=project, user=signed_in_user(request))
    if applied:
        messages.success(
            request,
            "Auto rules decided "
            + ", ".join(f"{n:,} by {name!r}" for name, n in applied.items())
            + " (recorded as the rules' decisions).",
        )
    else:
        messages.info(request, "No unreviewed output matched an active rule.")
    return redirect("review:review_automation", project_id=project.pk)


# Assignment and agreement ----------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def review_assign(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id, permission="manage")
    reviewers = selectors.reviewers_of(project=project)
    form = AssignForm(request.POST or None, reviewers=reviewers)
    if request.method == "POST" and form.is_valid():
        chosen = [u for u in reviewers if str(u.pk) in form.cleaned_data["reviewers"]]
        try:
            result = services.assignments_create(
                project=project,
                user=signed_in_user(request),
                reviewers=chosen,
                overlap_percent=form.cleaned_data["overlap_percent"],
                seed=form.cleaned_data["seed"] or 0,
            )
            messages.success(
                request,
                f"Assigned {result['outputs']:,} outputs; {result['overlap_outputs']:,} go to two reviewers.",
            )
            return redirect("review:review_agreement", project_id=project.pk)
        except ValidationError as exc:
            apply_errors(form, exc)
    return render(
        request,
        "review/review_assign.html",
        {"project": project, "form": form, "progress": selectors.review_progress(project=project)},
    )


@login_required
def review_agreement(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    pairs, conflicts = selectors.review_agreement(project=project)
    return render(
        request,
        "review/review_agreement.html",
        {
            "project": project,
            "pairs": pairs,
            "conflicts": conflicts,
            "can_manage": membership.can("manage"),
            "labels": selectors.labels_in_use(project=project),
            "progress": selectors.review_progress(project=project),
        },
    )


@login_required
def review_resolve(request: HttpRequest, project_id: int, output_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id, permission="manage")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    scoped_get(TeacherOutput.objects.filter(project=project), pk=output_id)
    try:
        services.conflict_resolve(
            project=project,
            user=signed_in_user(request),
            output_id=output_id,
            action=request.POST.get("action", ""),
            value=request.POST.get("value", ""),
        )
        messages.success(request, f"Conflict on #{output_id} resolved.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("review:review_agreement", project_id=project.pk)


# Audit trail ------------------------------------------------------------------------------------


@login_required
def audit_log(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = project_for(user=request.user, project_id=project_id)
    filters = selectors.AuditFilters.from_query(request.GET)
    page = Paginator(
        selectors.audit_events(project=project, filters=filters), selectors.AUDIT_PAGE_SIZE
    ).get_page(request.GET.get("page"))
    return render(
        request,
        "review/review_audit.html",
        {
            "project": project,
            "page": page,
            "filters": filters,
            "actions": AuditAction.choices,
            "actors": selectors.audit_actors(project=project),
            "query": filters.query_string(),
        },
    )
