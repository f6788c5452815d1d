"""Helpers for the teacher-run tests: projects with inputs, credentials that point at the loopback
provider server, and running a run's task in this process (the same code a worker runs)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from jobs.models import Job
from projects import services as project_services
from projects.models import InputRow, Project
from teachers import services as teacher_services
from teachers.models import TeacherRun
from teams import services as team_services
from teams.models import ProviderCredential
from tests.factories import ProjectFactory

LABELS = ["card_arrival", "lost_or_stolen_card", "top_up_failed"]
API_KEY = "sk-test-teacher-1234"


def add_inputs(project: Project, texts: list[str], references: list[str] | None = None) -> None:
    rows = []
    for i, text in enumerate(texts):
        data = {"text": text}
        rows.append(
            InputRow(
                project=project,
                data=data,
                content_hash=project_services.content_hash(data),
                search_text=text.lower(),
                reference_output=references[i] if references else None,
            )
        )
    InputRow.objects.bulk_create(rows)


def label_project(team: Any, owner: Any, n: int = 5, name: str = "Ticket intents") -> Project:
    project = ProjectFactory(team=team, created_by=owner, name=name, label_set=list(LABELS))
    add_inputs(project, [f"Ticket {i}: where is my new card?" for i in range(n)])
    return project


def openai_credential(
    team: Any, owner: Any, server: Any, name: str = "prod-openai", key: str = API_KEY
) -> ProviderCredential:
    return team_services.credential_create(
        team=team,
        user=owner,
        name=name,
        provider="openai",
        api_key=key,
        base_url=server.openai_base_url,
        allow_private_network=True,
    )


def anthropic_credential(
    team: Any, owner: Any, server: Any, name: str = "prod-anthropic"
) -> ProviderCredential:
    return team_services.credential_create(
        team=team,
        user=owner,
        name=name,
        provider="anthropic",
        api_key=API_KEY,
        base_url=server.anthropic_base_url,
        allow_private_network=True,
    )


def start(
    project: Project,
    owner: Any,
    credential: ProviderCredential | None,
    *,
    model: str = "gpt-4o-mini",
    batch_poll_s: float | None = None,
    **settings: Any,
) -> TeacherRun:
    if "budget_usd" in settings and settings["budget_usd"] is not None:
        settings["budget_usd"] = Decimal(str(settings["budget_usd"]))
    run_settings = teacher_services.RunSettings(model=model, credential=credential, **settings)
    return teacher_services.teacher_run_start(
        project=project, user=owner, run_settings=run_settings, batch_poll_s=batch_poll_s
    )


def execute(run: TeacherRun) -> TeacherRun:
    """Run the run's Celery task body here (claim, execute, finish) and reload the run."""
    from teachers.tasks import teacher_run

    teacher_run(run.job_id)
    return reload(run)


def reload(run: TeacherRun) -> TeacherRun:
    return TeacherRun.objects.select_related("job").get(pk=run.pk)


def job_of(run: TeacherRun) -> Job:
    return Job.objects.get(pk=run.job_id)
