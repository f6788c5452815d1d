"""`manage.py load_demo` (what `make run` calls): the demo team, user and BANKING77 project."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from projects.models import Project
from teams.models import Membership, Role

pytestmark = pytest.mark.django_db(transaction=True)

DEMO_TRAIN = "projects/demo_data/banking77/train.jsonl"


def load(*args: str) -> str:
    out = io.StringIO()
    call_command("load_demo", *args, stdout=out)
    return out.getvalue()


def test_load_demo_creates_a_usable_project_and_prints_the_password_once() -> None:
    first = load("--url", "http://127.0.0.1:8123")
    match = re.search(r"sign in at http://127\.0\.0\.1:8123 as demo / (\S+)", first)
    assert match, first
    password = match.group(1)

    project = Project.objects.get(name="Support ticket intents (BANKING77)")
    user = get_user_model().objects.get(username="demo")
    assert Membership.objects.get(team=project.team, user=user).role == Role.OWNER
    lines = Path(DEMO_TRAIN).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    distinct = {r["text"] for r in rows}
    assert project.inputs.count() == len(distinct)
    assert project.output_kind == "label"
    assert sorted(project.label_set) == sorted({r["label"] for r in rows})
    # The gold labels are the human reference outputs.
    sample = rows[0]
    row = project.inputs.get(data__text=sample["text"])
    assert row.reference_output == sample["label"]

    client = Client()
    assert client.login(username="demo", password=password)
    assert "Support ticket intents (BANKING77)" in client.get("/").content.decode()

    # Running it again (every `make run`) keeps the data and never prints a password again.
    second = load()
    assert "sign in" not in second and password not in second
    assert "already loaded" in second
    assert Project.objects.filter(name=project.name).count() == 1
    assert project.inputs.count() == len(distinct)
