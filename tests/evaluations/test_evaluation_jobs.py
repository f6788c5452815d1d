"""Evaluation jobs: the teacher (stored, called when missing, or references standing in), local
students on the tiny model, an OpenAI-compatible endpoint; every output stored and every number
recomputable from what was stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError

from evaluations import services as es
from evaluations.models import EvalCandidate, EvalOutput, Evaluation
from finetunes.models import StudentModel
from jobs.models import JobStatus
from teachers.models import LedgerEntry, LedgerStatus, TeacherRun
from tests.conftest import wait_until
from tests.evaluations.evaluation_support import (
    TEXTS,
    approve_all,
    freeze,
    label_project_with_references,
    place_model,
    run_teacher,
    teacher_responder,
)
from tests.factories import ProjectFactory
from tests.teachers.teacher_support import openai_credential
from worker import metrics
from worker.economics import weekend_verdict
from worker.taskspec import parse_output
from worker.training_loop import TRAINING_META_FILE

pytestmark = pytest.mark.django_db(transaction=True)


def run_here(evaluation: Evaluation) -> Evaluation:
    """The evaluation task's body, in this process (claim, run, finish), as a worker runs it."""
    from evaluations.tasks import evaluation as evaluation_task

    evaluation_task(evaluation.job_id)
    return Evaluation.objects.select_related("job").get(pk=evaluation.pk)


def outputs_of(candidate: EvalCandidate) -> list[EvalOutput]:
    return list(
        EvalOutput.objects.filter(candidate=candidate)
        .select_related("example")
        .order_by("example__position")
    )


@pytest.mark.slow
def test_an_evaluation_runs_end_to_end_through_a_real_worker(
    celery_worker, team, owner, fake_provider, tiny_model_dir
):  # type: ignore[no-untyped-def]
    fake_provider.responder = teacher_responder(wrong_on={"stolen"})
    project = label_project_with_references(team, owner)
    run_teacher(project, owner, fake_provider)
    approve_all(project)
    version = freeze(project, owner)
    path = place_model(tiny_model_dir, "tiny-eval")
    # A distilled student's folder carries the engine's training record; this one was trained
    # without the label list in its prompt, so it must be asked without it.
    distilled_path = place_model(tiny_model_dir, "tiny-distilled-no-label-list")
    (Path(settings.DATA_DIR) / distilled_path / TRAINING_META_FILE).write_text(
        json.dumps({"prompt_format": {"label_list": False}})
    )
    distilled = StudentModel.objects.create(
        team=team, name="tiny distilled", kind="distilled", source="fine_tune", path=distilled_path
    )
    endpoint = openai_credential(team, owner, fake_provider, name="vllm-endpoint")
    evaluation = es.evaluation_start(
        project=project,
        user=owner,
        teacher=es.TeacherChoice(),
        students=[
            es.StudentChoice("base", path=path),
            es.StudentChoice("distilled", student_model=distilled),
        ],
        endpoints=[es.EndpointChoice(credential=endpoint, model="served-model")],
        dataset_version=version,
        options=es.EvalOptions(latency_requests=3, batch_size=4),
    )
    assert evaluation.job.queue == "gpu"

    def finished():  # type: ignore[no-untyped-def]
        evaluation.job.refresh_from_db()
        return evaluation.job.is_terminal

    wait_until(finished, timeout=240, message="the evaluation to finish")
    job = evaluation.job
    assert job.status == JobStatus.SUCCEEDED, job.error + "".join(celery_worker.log[-30:])
    evaluation.refresh_from_db()

    examples = list(evaluation.examples.order_by("position"))
    test_items = version.items.filter(split="test").count()
    assert len(examples) == test_items > 0
    # The references are the inputs' human references (they exist and parse), and the page says so.
    assert {e.reference_source for e in examples} == {"human"}
    assert "human reference" in evaluation.summary["reference_sentence"]

    teacher, base, student, api = evaluation.candidates.order_by("position")
    assert [c.role for c in (teacher, base, student, api)] == [
        "teacher",
        "base",
        "distilled",
        "endpoint",
    ]
    for candidate in (teacher, base, student, api):
        assert candidate.status == "done"
        assert len(outputs_of(candidate)) == len(examples)

    # The teacher's stored answers were reused (no new call): it was wrong exactly on "stolen".
    expected_right = sum(1 for e in examples if "stolen" not in e.inputs["text"])
    assert teacher.metrics["quality"]["accuracy"]["k"] == expected_right
    assert teacher.headline == pytest.approx(expected_right / len(examples))
    assert teacher.performance["answered"] == len(examples)

    # Local students: throughput on batches, latency on single requests, the hardware.
    for candidate in (base, student):
        perf = candidate.performance
        assert perf["throughput"]["examples_per_s"] > 0
        assert perf["throughput"]["n"] == len(examples)
        assert perf["latency"]["n"] == min(3, len(examples))
        assert perf["latency"]["p50_ms"] <= perf["latency"]["p95_ms"]
        assert perf["latency"]["same_answers"] == perf["latency"]["n"]
        assert (
            "cores" in perf["hardware"]["description"] or "GPU" in perf["hardware"]["description"]
        )
        timed = [o for o in outputs_of(candidate) if o.latency_ms is not None]
        assert len(timed) == perf["latency"]["n"]
    assert student.student_model_id == distilled.pk
    # Each local model got the prompt it was trained with: the base the task's full prompt, the
    # distilled one the same prompt without the label list (shorter, and said so on the page).
    assert base.performance["prompt"]["label_list"] is True
    assert student.performance["prompt"]["label_list"] is False
    assert (
        0 < student.performance["prompt"]["mean_tokens"] < base.performance["prompt"]["mean_tokens"]
    )

    # The endpoint answered like the teacher (same loopback responder): full agreement.
    assert api.metrics["agreement"]["agree"] == len(examples)
    assert all(o.agrees_with_teacher for o in outputs_of(api))
    assert api.performance["calls"] == len(examples)

    # The headline is student ÷ teacher against the same reference.
    pct = student.metrics["percent_of_teacher"]
    assert pct == pytest.approx(100 * student.headline / teacher.headline)
    assert evaluation.summary["student"]["candidate_id"] == student.pk
    assert "of the teacher's quality" in evaluation.summary["headline_quality"]
    assert "agrees with the teacher on" in evaluation.summary["headline_agreement"]


def test_every_number_is_recomputable_from_the_stored_outputs(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    fake_provider.responder = teacher_responder(wrong_on={"stolen"})
    project = label_project_with_references(team, owner)
    run_teacher(project, owner, fake_provider)
    # A second endpoint that is wrong on other tickets plays the student.
    from tests.fakes.provider_server import FakeProviderServer

    with FakeProviderServer(teacher_responder(wrong_on={"top up", "arrive"})) as other:
        endpoint = openai_credential(team, owner, other, name="student-endpoint")
        evaluation = run_here(
            es.evaluation_start(
                project=project,
                user=owner,
                teacher=es.TeacherChoice(),
                endpoints=[es.EndpointChoice(credential=endpoint, model="small")],
                input_ids=list(project.inputs.values_list("id", flat=True)),
            )
        )
    assert evaluation.job.status == JobStatus.SUCCEEDED, evaluation.job.error
    spec = project.task_spec()
    teacher, student = evaluation.candidates.order_by("position")
    examples = list(evaluation.examples.order_by("position"))
    t_out, s_out = outputs_of(teacher), outputs_of(student)

    # Recompute with worker.metrics straight from the stored raw answers.
    refs = [e.reference for e in examples]
    again = metrics.label_metrics(spec, [o.raw_text for o in s_out], refs)
    assert again.to_dict()["accuracy"] == student.metrics["quality"]["accuracy"]
    assert again.macro_f1 == pytest.approx(student.metrics["quality"]["macro_f1"])
    assert sum(1 for o in s_out if o.correct) == again.accuracy.k
    agree = metrics.agreement(spec, [o.raw_text for o in s_out], [o.raw_text for o in t_out])
    assert student.metrics["agreement"]["agree"] == agree.agree
    assert sum(1 for o in s_out if o.agrees_with_teacher) == agree.agree
    # Hand count: the student is wrong on "top up"/"arrive" tickets, the teacher on "stolen".
    s_right = sum(
        1 for e in examples if not any(w in e.inputs["text"] for w in ("top up", "arrive"))
    )
    assert again.accuracy.k == s_right
    for o in s_out:
        assert o.parsed == parse_output(spec, o.raw_text).value

    # Scoring again from the same rows changes nothing.
    before = {c.pk: (c.metrics, c.headline) for c in evaluation.candidates.all()}
    summary = es.evaluation_score(evaluation=evaluation)
    after = {c.pk: (c.metrics, c.headline) for c in evaluation.candidates.all()}
    assert before == after
    assert summary["headline_quality"] == evaluation.summary["headline_quality"]


def test_inputs_without_a_stored_answer_go_to_the_teacher_through_a_metered_run(
    team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    fake_provider.responder = teacher_responder()
    project = label_project_with_references(team, owner, n=6)
    credential = openai_credential(team, owner, fake_provider)
    evaluation = run_here(
        es.evaluation_start(
            project=project,
            user=owner,
            teacher=es.TeacherChoice(credential=credential, model="gpt-4o-mini"),
            endpoints=[es.EndpointChoice(credential=credential, model="gpt-4o-mini")],
            input_ids=list(project.inputs.values_list("id", flat=True)),
        )
    )
    assert evaluation.job.status == JobStatus.SUCCEEDED, evaluation.job.error
    teacher = evaluation.candidates.get(role="teacher")
    run = TeacherRun.objects.get(pk=teacher.teacher_run_id)
    # A normal teacher run: its job finished, one ledger row per call, costs summed on the run.
    assert run.job.status == JobStatus.SUCCEEDED
    assert run.selection == {"kind": "evaluation", "evaluation_id": evaluation.pk}
    ledger = LedgerEntry.objects.filter(run=run, status=LedgerStatus.COMPLETED)
    assert ledger.count() == 6
    assert run.cost_usd == sum(e.cost_usd for e in ledger) > 0
    assert teacher.headline == 1.0
    assert all(not o.missing for o in outputs_of(teacher))


def test_human_references_can_stand_in_for_the_teacher_and_say_so(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    fake_provider.responder = teacher_responder(wrong_on={"card"})
    project = label_project_with_references(team, owner, n=5)
    endpoint = openai_credential(team, owner, fake_provider)
    evaluation = run_here(
        es.evaluation_start(
            project=project,
            user=owner,
            teacher=es.TeacherChoice(source="references"),
            endpoints=[es.EndpointChoice(credential=endpoint, model="small")],
            input_ids=list(project.inputs.values_list("id", flat=True)),
        )
    )
    teacher = evaluation.candidates.get(role="teacher")
    assert "stand-in for a teacher" in teacher.name and "no model was called" in teacher.name
    assert teacher.headline == 1.0
    assert fake_provider.count("openai.chat") == 5  # only the endpoint was called


def test_the_weekend_experiment_samples_inputs_and_gives_the_economics_verdict(
    team, owner, fake_provider, tiny_model_dir
):  # type: ignore[no-untyped-def]
    fake_provider.responder = teacher_responder()
    project = label_project_with_references(team, owner)
    run_teacher(project, owner, fake_provider)
    base = StudentModel.objects.create(
        team=team,
        name="tiny base",
        kind="base",
        source="local",
        path=place_model(tiny_model_dir, "tiny-exp"),
    )
    evaluation = es.experiment_start(
        project=project,
        user=owner,
        teacher=es.TeacherChoice(),
        base=es.StudentChoice("base", student_model=base),
        sample_size=10,
        seed=3,
        options=es.EvalOptions(latency_requests=2),
    )
    assert evaluation.job.kind == "experiment" and evaluation.job.queue == "gpu"
    assert evaluation.examples.count() == 10
    from evaluations.tasks import experiment

    experiment(evaluation.job_id)
    evaluation.refresh_from_db()
    assert evaluation.job.status == JobStatus.SUCCEEDED, evaluation.job.error
    student = evaluation.candidates.get(role="base")
    agree = student.metrics["agreement"]["agree"]
    assert agree == sum(1 for o in outputs_of(student) if o.agrees_with_teacher)
    verdict = weekend_verdict(agree, 10)
    assert evaluation.summary["verdict"] == {"level": verdict.level, "sentence": verdict.sentence}
    # Seeded: the same seed samples the same inputs.
    again = es.experiment_input_ids(
        project=project, teacher=es.TeacherChoice(), sample_size=10, seed=3
    )
    assert again == [e.input_row_id for e in evaluation.examples.order_by("position")]


def test_bad_choices_are_refused_by_field_before_anything_is_created(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=3, references=False)
    credential = openai_credential(team, owner, fake_provider)
    ids = list(project.inputs.values_list("id", flat=True))
    endpoint = es.EndpointChoice(credential=credential, model="m")

    def refused(**kwargs):  # type: ignore[no-untyped-def]
        with pytest.raises(ValidationError) as info:
            es.evaluation_start(project=project, user=owner, **kwargs)
        return info.value.message_dict

    assert "students" in refused(teacher=es.TeacherChoice(), input_ids=ids)
    assert "teacher" in refused(
        teacher=es.TeacherChoice(source="references"), endpoints=[endpoint], input_ids=ids
    )
    outside = refused(
        teacher=es.TeacherChoice(),
        students=[es.StudentChoice("base", path="/etc")],
        input_ids=ids,
    )
    assert "no model folder of this team there" in outside["base_model"][0]
    other = ProjectFactory(team=team)
    other_version = freeze_other(other, owner)
    assert "dataset_version" in refused(
        teacher=es.TeacherChoice(), endpoints=[endpoint], dataset_version=other_version
    )
    assert Evaluation.objects.count() == 0


def freeze_other(project, owner):  # type: ignore[no-untyped-def]
    from tests.factories import TeacherOutputFactory

    for text, label in TEXTS[:4]:
        from tests.factories import InputRowFactory

        TeacherOutputFactory(
            project=project,
            input=InputRowFactory(project=project, data={"text": text}),
            raw_text=label,
        )
    approve_all(project)
    return freeze(project, owner, name="other")


def test_a_local_students_label_answers_carry_its_confidence(
    team, owner, fake_provider, tiny_model_dir
):  # type: ignore[no-untyped-def]
    """Stored per example: P(answer, then end of turn) under the student, exactly what
    worker.inference gives for the same prompts; the teacher's rows have none."""
    import math

    from worker.inference import load_model

    fake_provider.responder = teacher_responder()
    project = label_project_with_references(team, owner)
    run_teacher(project, owner, fake_provider)
    approve_all(project)
    version = freeze(project, owner)
    path = place_model(tiny_model_dir, "tiny-confidence")
    student = StudentModel.objects.create(
        team=team, name="tiny distilled", kind="distilled", source="fine_tune", path=path
    )
    evaluation = run_here(
        es.evaluation_start(
            project=project,
            user=owner,
            teacher=es.TeacherChoice(),
            students=[es.StudentChoice("distilled", student_model=student)],
            dataset_version=version,
            options=es.EvalOptions(latency_requests=0, batch_size=4),
        )
    )
    assert evaluation.job.status == JobStatus.SUCCEEDED, evaluation.job.error
    teacher, distilled = evaluation.candidates.order_by("position")
    assert all(o.confidence is None for o in outputs_of(teacher))
    stored = outputs_of(distilled)
    model = load_model(Path(settings.DATA_DIR) / path)
    again = model.classify(
        [model.prompt(o.example.messages) for o in stored],
        project.task_spec().label_set,
        constrained=False,
        max_new_tokens=max(len(model.tokenizer(x)["input_ids"]) for x in project.label_set) + 4,
    )
    # (stored as the page shows it: a NUL the untuned model emits becomes U+FFFD)
    assert [o.raw_text for o in stored] == [a.replace("\x00", "\ufffd") for a in again.outputs]
    for o, logprob in zip(stored, again.logprobs, strict=True):
        assert 0 < o.confidence <= 1
        assert o.confidence == pytest.approx(math.exp(logprob), rel=1e-4)
