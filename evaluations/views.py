"""Evaluation pages: start, results, the side-by-side comparison with votes, the DPO export, and
the weekend experiment. Every view resolves its object through the user's team first."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    QueryDict,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from evaluations import selectors, services
from evaluations.figures import figures_for
from evaluations.forms import EvaluationForm, ExperimentForm, LearningCurveForm, VoteForm
from evaluations.learning_curve import curve_for
from evaluations.models import EvalCandidate, EvalExample, Evaluation, EvaluationKind, VoteChoice
from jobs.models import JobStatus
from jobs.services import job_live_view, job_request_cancel
from projects.access import project_for
from teams.access import AnyUser, object_for, require, scoped_get, signed_in_user
from teams.forms import apply_errors
from teams.models import Membership


def evaluation_for(
    *, user: AnyUser, evaluation_id: int, permission: str = "read"
) -> tuple[Evaluation, Membership]:
    evaluation, membership = object_for(
        Evaluation.objects.select_related("project__team", "job", "dataset_version", "created_by"),
        user=user,
        team_path="project__team",
        permission=permission,
        pk=evaluation_id,
    )
    job_live_view(evaluation.job)
    return evaluation, membership


@login_required
def evaluation_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id)
    return render(
        request,
        "evaluations/evaluation_list.html",
        {
            "project": project,
            "membership": membership,
            "evaluations": selectors.evaluations_for_project(project=project),
            "can_write": membership.can("write"),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def evaluation_new(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id, permission="write")
    form = EvaluationForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        try:
            evaluation = form.start(project=project, user=signed_in_user(request))
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            messages.success(request, "The evaluation is queued on the GPU queue.")
            return redirect("evaluations:evaluation", evaluation_id=evaluation.pk)
    return render(
        request,
        "evaluations/evaluation_new.html",
        {"project": project, "membership": membership, "form": form},
        status=400 if form.errors else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def learning_curve_new(request: HttpRequest, project_id: int) -> HttpResponse:
    project, membership = project_for(user=request.user, project_id=project_id, permission="write")
    form = LearningCurveForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        try:
            evaluation = services.learning_curve_start(
                project=project,
                user=signed_in_user(request),
                fine_tune=form.cleaned_data["fine_tune"],
                teacher=form.teacher(),
                percents=form.cleaned_data["percents"],
                seed=form.cleaned_data["seed"],
                options=form.options(),
                name=form.cleaned_data.get("name") or "",
            )
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            messages.success(request, "The learning curve is queued on the GPU queue.")
            return redirect("evaluations:evaluation", evaluation_id=evaluation.pk)
    return render(
        request,
        "evaluations/learning_curve_new.html",
        {"project": project, "membership": membership, "form": form},
        status=400 if form.errors else 200,
    )


@login_required
def evaluation_detail(request: HttpRequest, evaluation_id: int) -> HttpResponse:
    evaluation, membership = evaluation_for(user=request.user, evaluation_id=evaluation_id)
    results = selectors.candidate_results(evaluation=evaluation)
    student_id = (evaluation.summary.get("student") or {}).get("candidate_id")
    student = next((r for r in results if r.candidate.pk == student_id), None)
    return render(
        request,
        "evaluations/evaluation_detail.html",
        {
            "evaluation": evaluation,
            "project": evaluation.project,
            "membership": membership,
            "job": evaluation.job,
            "results": results,
            "figures": figures_for(evaluation=evaluation, results=results),
            "confusion": selectors.confusion_for(candidate=student.candidate) if student else None,
            "student": student,
            "curve": curve_for(evaluation=evaluation),
        },
    )


def _pair_and_candidates(
    evaluation: Evaluation, params: QueryDict
) -> tuple[selectors.Pair | None, list[EvalCandidate]]:
    candidates = selectors.candidates_of(evaluation=evaluation)
    pair = selectors.vote_pair(
        evaluation=evaluation, candidates=candidates, a_id=params.get("a"), b_id=params.get("b")
    )
    return pair, candidates


@login_required
def evaluation_compare(request: HttpRequest, evaluation_id: int) -> HttpResponse:
    evaluation, membership = evaluation_for(user=request.user, evaluation_id=evaluation_id)
    pair, candidates = _pair_and_candidates(evaluation, request.GET)
    filter_name = request.GET.get("show", "all")
    label = request.GET.get("label", "")
    page, rows = selectors.comparison(
        evaluation=evaluation,
        user=request.user,
        filter_name=filter_name,
        label=label,
        page=request.GET.get("page"),
        pair=pair,
        candidates=candidates,
    )
    counts = selectors.filter_counts(evaluation=evaluation, candidates=candidates, pair=pair)
    votes_open = evaluation.job.status == "succeeded"
    blind = bool(pair and membership.can("vote") and votes_open and request.GET.get("vote") == "1")
    return render(
        request,
        "evaluations/evaluation_compare.html",
        {
            "evaluation": evaluation,
            "project": evaluation.project,
            "membership": membership,
            "candidates": candidates,
            "pair": pair,
            "rows": rows,
            "page": page,
            "filter_name": filter_name if filter_name in selectors.FILTERS else "all",
            "filters": [(key, text, counts[key]) for key, text in selectors.FILTERS.items()],
            "label": label,
            "labels": selectors.labels_in(evaluation=evaluation),
            "totals": selectors.vote_totals(evaluation=evaluation, pair=pair) if pair else None,
            "choices": VoteChoice.choices,
            "can_vote": membership.can("vote"),
            "votes_open": votes_open,
            # Votes are cast blind (?vote=1): the pair's answers are "A" and "B" only, without
            # the highlights that would give the teacher away, until you have voted on a row.
            "blind": blind,
        },
    )


@login_required
def evaluation_vote(request: HttpRequest, evaluation_id: int, example_id: int) -> HttpResponse:
    """Any member with the "vote" permission (every role, viewers included) may vote."""
    evaluation, _ = evaluation_for(
        user=request.user, evaluation_id=evaluation_id, permission="vote"
    )
    example = scoped_get(EvalExample.objects.filter(evaluation=evaluation), pk=example_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    form = VoteForm(request.POST)
    candidates = {c.pk: c for c in selectors.candidates_of(evaluation=evaluation)}
    if not form.is_valid():
        return HttpResponse("choose A better, B better, both acceptable or both wrong", status=400)
    a = candidates.get(form.cleaned_data["a"])
    b = candidates.get(form.cleaned_data["b"])
    if a is None or b is None:
        return HttpResponse("compare two candidates of this evaluation", status=400)
    user = signed_in_user(request)
    stored_a, stored_b, same_way = selectors.stored_order(example=example, user=user, a=a, b=b)
    try:
        services.vote_cast(
            evaluation=evaluation,
            example=example,
            user=user,
            candidate_a=stored_a,
            candidate_b=stored_b,
            choice=selectors.oriented(form.cleaned_data["choice"], same_way),
        )
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    # The fragment answers in the order the form posted (the page's left-to-right order).
    pair = selectors.Pair(a=a, b=b)
    if request.headers.get("HX-Request"):
        _, rows = selectors.comparison(
            evaluation=evaluation,
            user=request.user,
            pair=pair,
            page=1,
            candidates=list(candidates.values()),
            only_example=example,
        )
        return render(
            request,
            "evaluations/_evaluation_vote.html",
            {
                "evaluation": evaluation,
                "row": rows[0],
                "pair": pair,
                "choices": VoteChoice.choices,
                "can_vote": True,
                "votes_open": True,
                "totals": selectors.vote_totals(evaluation=evaluation, pair=pair),
                "oob_totals": True,
                "blind": True,
            },
        )
    compare = reverse("evaluations:evaluation_compare", args=[evaluation.pk])
    return redirect(f"{compare}?a={pair.a.pk}&b={pair.b.pk}&vote=1#example-{example.pk}")


@login_required
def evaluation_dpo(request: HttpRequest, evaluation_id: int) -> StreamingHttpResponse:
    evaluation, _ = evaluation_for(user=request.user, evaluation_id=evaluation_id)
    response = StreamingHttpResponse(
        selectors.dpo_jsonl(evaluation=evaluation), content_type="application/jsonl"
    )
    response["Content-Disposition"] = (
        f'attachment; filename="evaluation-{evaluation.pk}-dpo-pairs.jsonl"'
    )
    return response


@login_required
@require_http_methods(["GET", "POST"])
def experiment(request: HttpRequest, project_id: int) -> HttpResponse:
    """The weekend experiment: the latest one's results, and the button to run one."""
    project, membership = project_for(user=request.user, project_id=project_id)
    form = ExperimentForm(request.POST or None, project=project)
    if request.method == "POST":
        require(membership, "write")
        if form.is_valid():
            try:
                evaluation = services.experiment_start(
                    project=project,
                    user=signed_in_user(request),
                    teacher=form.experiment_teacher(),
                    base=form.base(),
                    sample_size=form.cleaned_data["sample_size"],
                    seed=form.cleaned_data["seed"],
                    options=form.options(),
                )
            except ValidationError as exc:
                apply_errors(form, exc)
            else:
                messages.success(request, "The weekend experiment is queued.")
                return redirect("evaluations:evaluation", evaluation_id=evaluation.pk)
    latest = selectors.latest_experiment(project=project)
    return render(
        request,
        "evaluations/evaluation_experiment.html",
        {
            "project": project,
            "membership": membership,
            "form": form,
            "latest": latest,
            "results": (
                results := selectors.candidate_results(evaluation=latest) if latest else []
            ),
            "figures": figures_for(evaluation=latest, results=results) if latest else [],
            "can_write": membership.can("write"),
            "input_count": project.inputs.count(),
            "kind": EvaluationKind.EXPERIMENT,
        },
        status=400 if form.errors else 200,
    )


@login_required
def evaluation_cancel(request: HttpRequest, evaluation_id: int) -> HttpResponse:
    """Engineers and owners stop an evaluation: a queued one at once, a running one after the
    batch it is answering (the answers so far are kept). The object is resolved first, so an
    outsider gets 404 whatever the method."""
    evaluation, _ = evaluation_for(
        user=request.user, evaluation_id=evaluation_id, permission="write"
    )
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    job = job_request_cancel(job=evaluation.job)
    if job.status == JobStatus.CANCELLED:
        messages.success(request, "The evaluation is cancelled.")
    elif job.cancel_requested:
        messages.success(request, "Cancelling: the evaluation stops after the current batch.")
    else:
        messages.error(request, "The evaluation has already finished.")
    return redirect("evaluations:evaluation", evaluation_id=evaluation.pk)
