from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from projects.models import InputRow, Membership, Project, Role, Team
from projects.services import content_hash


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
