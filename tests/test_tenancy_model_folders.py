"""Model folders a user types, and the files a student serves, stay inside the team's own area.

An engineer of team B who types team A's fine-tuned model folder (`finetunes/team-<A>/…/merged`,
which is easy to guess) to register it as a student or to use it as a local teacher is refused
with the same message as for a folder that does not exist; a student row that points there
anyway (stored before the check, or edited by hand) serves no file to B.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.urls import reverse

from finetunes.models import StudentKind, StudentModel, StudentSource
from teachers.models import TeacherRun
from teams.models import Role
from tests.factories import MembershipFactory, ProjectFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_dir(tmp_path, settings):  # type: ignore[no-untyped-def]
    settings.DATA_DIR = tmp_path / "data"
    settings.STUDENT_MODEL_ROOTS = []
    settings.TEACHER_LOCAL_MODEL_ROOTS = []
    return settings.DATA_DIR


@pytest.fixture
def victims_model(team, data_dir) -> str:  # type: ignore[no-untyped-def]
    """Team A's merged fine-tune, as the data directory lays it out."""
    relative = f"finetunes/team-{team.pk}/project-1/finetune-1/merged"
    folder = Path(data_dir) / relative
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"team A's weights")
    (folder / "tokenizer.json").write_text("{}")
    return relative


@pytest.fixture
def engineer_b(db):  # type: ignore[no-untyped-def]
    return MembershipFactory(role=Role.ENGINEER, user__username="bea", team__name="Team B").user


def missing_twin(relative: str) -> str:
    return relative.replace("finetune-1", "finetune-404")


def test_another_teams_folder_cannot_be_registered_as_a_student(
    client_for, engineer_b, victims_model
):  # type: ignore[no-untyped-def]
    team_b = engineer_b.memberships.get().team
    client = client_for(engineer_b)
    url = reverse("finetunes:students", args=[team_b.pk])

    errors = {}
    for text in (victims_model, missing_twin(victims_model)):
        response = client.post(url, {"name": "borrowed", "path": text})
        assert response.status_code == 400
        (message,) = response.context["form"].errors["path"]
        errors[text] = message.replace(text, "<path>")
    # Refused, and the refusal does not tell an existing folder from a missing one.
    assert errors[victims_model] == errors[missing_twin(victims_model)]
    assert "no model folder of this team there" in errors[victims_model]
    assert not StudentModel.objects.filter(team=team_b).exists()


def test_another_teams_folder_cannot_be_a_local_teacher(client_for, engineer_b, victims_model):  # type: ignore[no-untyped-def]
    team_b = engineer_b.memberships.get().team
    project_b = ProjectFactory(team=team_b, created_by=engineer_b)
    client = client_for(engineer_b)
    url = reverse("teachers:teacher_run_new", args=[project_b.pk])

    errors = {}
    for text in (victims_model, missing_twin(victims_model)):
        response = client.post(
            url,
            {
                "action": "start",
                "teacher": "local",
                "local_model_path": text,
                "selection": "all",
                "temperature": "0",
                "max_tokens": "16",
                "samples_per_input": "1",
                "concurrency": "1",
                "mode": "live",
            },
        )
        (message,) = response.context["form"].errors["local_model_path"]
        errors[text] = message.replace(text, "<path>")
    assert errors[victims_model] == errors[missing_twin(victims_model)]
    assert "no model folder of this team there" in errors[victims_model]
    assert not TeacherRun.objects.exists()


def test_a_student_row_pointing_at_another_teams_folder_serves_nothing(
    client, team, owner, engineer_b, victims_model
):  # type: ignore[no-untyped-def]
    def student_of(team_):  # type: ignore[no-untyped-def]
        return StudentModel.objects.create(
            team=team_,
            name="merged",
            kind=StudentKind.BASE,
            source=StudentSource.LOCAL,
            path=victims_model,
        )

    theirs = student_of(engineer_b.memberships.get().team)
    client.force_login(engineer_b)
    for url in (
        reverse("finetunes:student_download", args=[theirs.pk, "model"]),
        reverse("finetunes:student_file", args=[theirs.pk, "model", "model.safetensors"]),
    ):
        assert client.get(url).status_code == 404, url
    assert (
        b"model.safetensors"
        not in client.get(reverse("finetunes:student_detail", args=[theirs.pk])).content
    )

    # Team A still downloads its own weights.
    mine = student_of(team)
    client.force_login(owner)
    response = client.get(
        reverse("finetunes:student_file", args=[mine.pk, "model", "model.safetensors"])
    )
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"team A's weights"
