from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from projects.models import InputRow, Project
from projects.services import content_hash
from teams.models import Membership, Role, Team


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("correct-horse-battery")


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team

    name = factory.Sequence(lambda n: f"Team {n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    team = factory.SubFactory(TeamFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.OWNER


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"Project {n}")
    input_fields = ["text"]
    instruction_template = "Classify this ticket: {{ text }}"
    output_kind = "label"
    label_set = ["card_arrival", "lost_or_stolen_card", "top_up_failed"]


class InputRowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InputRow

    project = factory.SubFactory(ProjectFactory)
    data = factory.Sequence(lambda n: {"text": f"Where is my card? ({n})"})
    content_hash = factory.LazyAttribute(lambda o: content_hash(o.data))
    search_text = factory.LazyAttribute(lambda o: " ".join(o.data.values()).lower())


# Review and datasets: teacher runs and their outputs -------------------------------------------


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "jobs.Job"

    team = factory.LazyAttribute(lambda o: o.project.team if o.project else TeamFactory())
    project = factory.SubFactory(ProjectFactory)
    kind = "teacher_run"
    status = "succeeded"


class TeacherRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "teachers.TeacherRun"

    project = factory.SubFactory(ProjectFactory)
    job = factory.LazyAttribute(lambda o: JobFactory(project=o.project, team=o.project.team))
    provider = "openai"
    model = "gpt-4o-mini"


class TeacherOutputFactory(factory.django.DjangoModelFactory):
    """A teacher's answer to an input. Pass `raw_text`; `parsed` follows the project's task."""

    class Meta:
        model = "teachers.TeacherOutput"

    project = factory.SubFactory(ProjectFactory)
    run = factory.LazyAttribute(lambda o: TeacherRunFactory(project=o.project))
    input = factory.LazyAttribute(lambda o: InputRowFactory(project=o.project))
    raw_text = factory.LazyAttribute(lambda o: (o.project.label_set or ["ok"])[0])
    parsed = factory.LazyAttribute(lambda o: _parse(o.project, o.raw_text).value)
    parse_error = factory.LazyAttribute(lambda o: _parse(o.project, o.raw_text).error)


def _parse(project, raw):  # type: ignore[no-untyped-def]
    from worker.taskspec import parse_output

    return parse_output(project.task_spec(), raw)
