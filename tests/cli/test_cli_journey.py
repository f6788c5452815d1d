"""A whole journey from the shell, as a nightly pipeline would run it: push inputs, run the teacher
(the real openai SDK against the loopback provider), approve, freeze, export, read the report as
JSON — the installed `distillery` command against a real server and a real Celery worker."""

from __future__ import annotations

import json

import pytest

from dataset_versions.models import DatasetVersion
from teachers.models import TeacherOutput
from tests.cli.test_cli import run_cli
from tests.factories import MembershipFactory, ProjectFactory
from tests.helpers.api import token_for
from tests.teachers.teacher_support import LABELS, openai_credential

pytestmark = pytest.mark.slow


def test_push_teach_approve_freeze_export_and_report(
    web_server, celery_worker, fake_provider, tmp_path
):  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    project = ProjectFactory(team=owner.team, label_set=list(LABELS), name="Ticket intents")
    openai_credential(owner.team, owner.user, fake_provider)
    env = {"server": web_server, "token": token_for(owner)}
    tickets = tmp_path / "tickets.jsonl"
    tickets.write_text(
        "".join(json.dumps({"text": f"Ticket {n}: where is my card?"}) + "\n" for n in range(12))
    )
    pushed = json.loads(
        run_cli("inputs", "push", str(tickets), "-p", project.slug, "--json", **env).stdout
    )
    assert pushed["created"] == 12

    run = json.loads(
        run_cli(
            "teacher",
            "run",
            "-p",
            project.slug,
            "-c",
            "prod-openai",
            "-m",
            "gpt-4o-mini",
            "--budget",
            "5",
            "--wait",
            "--json",
            **env,
        ).stdout
    )
    assert run["status"] == "succeeded" and run["progress"]["done"] == 12
    assert fake_provider.count("openai.chat") == 12
    assert TeacherOutput.objects.filter(project=project).count() == 12

    approved = json.loads(
        run_cli(
            "review",
            "approve",
            "-p",
            project.slug,
            "--filter",
            "status=unreviewed",
            "--yes",
            "--json",
            **env,
        ).stdout
    )
    assert approved["changed"] == 12

    version = json.loads(
        run_cli("dataset", "freeze", "-p", project.slug, "--name", "v1", "--json", **env).stdout
    )
    stored = DatasetVersion.objects.get(project=project, name="v1")
    assert version["id"] == stored.pk

    export = tmp_path / "v1.jsonl"
    run_cli("export", "--version", str(stored.pk), "--format", "openai", "-o", str(export), **env)
    lines = export.read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["messages"][-1]["content"] in LABELS

    report = json.loads(run_cli("report", "-p", project.slug, "--json", **env).stdout)
    assert report["project"] == project.slug
    assert report["verdict"]["level"] == "pending"  # no evaluation yet: the report says so
    assert report["costs"]["teacher_calls"] == 12


def test_a_failed_job_exits_3_with_its_error(web_server, celery_worker, fake_provider):  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    project = ProjectFactory(team=owner.team, label_set=list(LABELS))
    openai_credential(owner.team, owner.user, fake_provider, key="sk-wrong-key-0000")
    fake_provider.api_keys = {"sk-the-right-key"}
    tickets_env = {"server": web_server, "token": token_for(owner)}
    from tests.teachers.teacher_support import add_inputs

    add_inputs(project, ["where is my card?"])
    failed = run_cli(
        "teacher",
        "run",
        "-p",
        project.slug,
        "-c",
        "prod-openai",
        "-m",
        "gpt-4o-mini",
        "--wait",
        **tickets_env,
        check=False,
    )
    assert failed.returncode == 3, failed.stderr
    assert "failed" in failed.stderr


def test_upload_imports_and_a_bad_file_is_refused_naming_its_line(
    web_server, celery_worker, tmp_path
):  # type: ignore[no-untyped-def]
    from projects.models import InputRow

    owner = MembershipFactory()
    project = ProjectFactory(team=owner.team, label_set=list(LABELS))
    env = {"server": web_server, "token": token_for(owner)}
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"body": f"ticket {n}"}) + "\n" for n in range(5)))
    job = json.loads(
        run_cli(
            "inputs", "upload", str(good), "-p", project.slug, "--map", "text=body", "--json", **env
        ).stdout
    )
    assert job["status"] == "succeeded" and job["result"]["imported"] == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "one more"}\n{"body": \n')
    failed = run_cli(
        "inputs", "upload", str(bad), "-p", project.slug, "--map", "text=body", **env, check=False
    )
    # The server checks the file before it starts the import: refused at once, line named.
    assert failed.returncode == 1, failed.stderr
    assert "bad.jsonl, line 2: not valid JSON" in failed.stderr
    assert InputRow.objects.filter(project=project).count() == 5
