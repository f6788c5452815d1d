"""Helpers for the report tests: a metered teacher ledger and a trained (distilled) student."""

from __future__ import annotations

from decimal import Decimal

from finetunes.models import FineTune, StudentModel
from jobs.models import Job
from teachers.models import LedgerEntry, LedgerStatus, TeacherRun


def metered_teacher(project, calls=8, cost="0.00125", tokens=(400, 5)):  # type: ignore[no-untyped-def]
    """A teacher run whose ledger holds `calls` completed calls of `cost` dollars each."""
    job = Job.objects.create(
        team=project.team, project=project, kind="teacher_run", status="succeeded"
    )
    run = TeacherRun.objects.create(
        job=job, project=project, provider="openai", model="gpt-4o-mini"
    )
    LedgerEntry.objects.bulk_create(
        LedgerEntry(
            run=run,
            cache_key=f"k{i}",
            status=LedgerStatus.COMPLETED,
            cost_usd=Decimal(cost),
            input_tokens=tokens[0],
            output_tokens=tokens[1],
        )
        for i in range(calls)
    )
    return run


def trained_student(project, owner, seconds=5400.0, n_train=1):  # type: ignore[no-untyped-def]
    """A distilled student whose fine-tuning job measured `seconds` of training on `n_train`
    reviewed examples."""
    student = StudentModel.objects.create(
        team=project.team, name="tickets-v1", kind="distilled", source="fine_tune", path="models/x"
    )
    from dataset_versions import services as dataset_services
    from tests.evaluations.evaluation_support import approve_all
    from tests.factories import TeacherOutputFactory

    TeacherOutputFactory(project=project, input=project.inputs.first(), raw_text="card_arrival")
    approve_all(project)
    version = dataset_services.dataset_version_create(
        project=project, user=owner, options=dataset_services.freeze_options(name="v1")
    )
    FineTune.objects.create(
        job=Job.objects.create(
            team=project.team, project=project, kind="fine_tune", status="succeeded"
        ),
        project=project,
        dataset_version=version,
        base_model_name="SmolLM2-135M-Instruct",
        method="lora",
        output_dir="finetunes/x",
        train_seconds=seconds,
        n_train=n_train,
        result_model=student,
    )
    return student
