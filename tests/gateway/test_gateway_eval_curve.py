"""Before any traffic, the gateway page offers the cascade threshold from the served student's
latest evaluation on the frozen test split: its confidence/agreement curve, recomputable from
the evaluation's stored per-example rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

from dataset_versions import services as dataset_services
from evaluations import services as es
from evaluations.answers import store_answers
from evaluations.models import EvalOutput, Evaluation
from finetunes.models import StudentKind, StudentModel, StudentSource
from gateway.models import GatewayPolicy, GatewayRequest
from jobs import services as job_services
from tests.teachers.teacher_support import add_inputs

pytestmark = pytest.mark.django_db(transaction=True)

TICKETS = [
    (f"my card has not arrived, order {i}", "card_arrival")
    if i % 3 == 0
    else (f"my top up failed, attempt {i}", "top_up_failed")
    if i % 3 == 1
    else (f"my card was stolen on day {i}", "lost_or_stolen_card")
    for i in range(24)
]


def evaluated(project, owner, student: StudentModel) -> Evaluation:  # type: ignore[no-untyped-def]
    """A finished evaluation on the frozen test split: human references as the teacher, and the
    student confident and right, except on its two least confident answers (wrong)."""
    folder = Path(settings.DATA_DIR) / student.path  # never loaded: the answers are stored here
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    add_inputs(project, [t for t, _ in TICKETS], [label for _, label in TICKETS])
    version = dataset_services.dataset_version_create(
        project=project,
        user=owner,
        options=dataset_services.freeze_options(
            name="v1", train=0.5, validation=0.0, test=0.5, include_references=True
        ),
    )
    evaluation = es.evaluation_start(
        project=project,
        user=owner,
        teacher=es.TeacherChoice(source="references"),
        students=[es.StudentChoice("distilled", student_model=student)],
        dataset_version=version,
    )
    job = job_services.job_claim(job_id=evaluation.job_id)
    assert job is not None
    teacher, distilled = evaluation.candidates.order_by("position")
    examples = list(evaluation.examples.order_by("position"))
    spec = project.task_spec()
    store_answers(teacher, examples, spec, [e.reference for e in examples])
    confidences = [round(0.40 + 0.05 * i, 2) for i in range(len(examples))]
    wrong = {"card_arrival": "top_up_failed"}
    answers = [
        wrong.get(e.reference, "card_arrival") if i < 2 else e.reference
        for i, e in enumerate(examples)
    ]
    store_answers(distilled, examples, spec, answers, confidences=confidences)
    es.evaluation_score(evaluation=evaluation)
    job_services.job_succeed(job=job)
    return evaluation


def recomputed(evaluation: Evaluation, target: int) -> tuple[float | None, list[str]]:
    """The curve a user computes by hand from the stored rows: per threshold, the share the
    student keeps and its agreement among those; the lowest threshold reaching the target."""
    rows = list(
        EvalOutput.objects.filter(
            candidate__evaluation=evaluation, candidate__role="distilled"
        ).values_list("confidence", "agrees_with_teacher")
    )
    suggested, lines = None, []
    for step in range(0, 101, 5):
        kept = [agrees for confidence, agrees in rows if confidence >= step / 100]
        if kept:
            agreement = 100 * sum(kept) / len(kept)
            lines.append(f"{step / 100}|{100 * len(kept) / len(rows):.1f} %|{agreement:.1f} %")
            if suggested is None and agreement >= target:
                suggested = step / 100
    return suggested, lines


def table_of(html: str) -> list[str]:
    table = html.split('data-testid="eval-curve-table"')[1].split("</table>")[0]
    return [
        "|".join(re.findall(r"<td>(.*?)</td>", row))
        for row in re.findall(r"<tr><td>.*?</tr>", table, flags=re.S)
    ]


def test_before_traffic_the_page_offers_the_evaluations_threshold(gw, client_for):  # type: ignore[no-untyped-def]
    gw.policy(mode="cascade", agreement_target_percent=95)
    served = GatewayPolicy.objects.get(project=gw.project).served_model.student
    evaluation = evaluated(gw.project, gw.owner, served)
    n = evaluation.examples.count()
    assert n >= 5 and not GatewayRequest.objects.filter(project=gw.project).exists()

    html = client_for(gw.owner).get(f"/projects/{gw.project.pk}/gateway/").content.decode()

    suggested, lines = recomputed(evaluation, 95)
    assert suggested == 0.5  # the two wrong answers were the two least confident (0.40, 0.45)
    assert f'data-testid="eval-suggested-threshold">{suggested}</strong>' in html
    assert "Suggested threshold" in html  # the evaluation's is the one offered...
    assert 'data-testid="suggested-threshold"' not in html  # ...there is no traffic's yet
    assert f"evaluation #{evaluation.pk}</a> on the frozen test split" in html
    assert f"{n} examples" in html and "the served student" in html
    assert f"keeps {100 * (n - 2) / n:.1f} % of them, agreeing on 100.0 %" in html
    assert table_of(html) == lines
    assert '"eval_curve": [{"threshold": 0.0' in html  # and drawn, next to traffic's curve


def test_without_an_evaluation_of_the_served_student_the_latest_distilled_one_is_named(
    gw, client_for
):  # type: ignore[no-untyped-def]
    other = StudentModel.objects.create(
        team=gw.project.team,
        name="Older student",
        kind=StudentKind.DISTILLED,
        source=StudentSource.LOCAL,
        path="students/older",
        project=gw.project,
    )
    evaluation = evaluated(gw.project, gw.owner, other)
    html = client_for(gw.owner).get(f"/projects/{gw.project.pk}/gateway/").content.decode()
    assert f"evaluation #{evaluation.pk}</a>" in html
    assert "Not the served student" in html and "Older student" in html
    assert 'data-testid="eval-suggested-threshold">0.5</strong>' in html


def test_no_evaluation_and_no_traffic_says_what_the_curve_needs(gw, client_for):  # type: ignore[no-untyped-def]
    html = client_for(gw.owner).get(f"/projects/{gw.project.pk}/gateway/").content.decode()
    assert "eval-suggested-threshold" not in html
    assert "or an evaluation of a distilled student on the frozen test split" in html
