"""The installed `distillery` command against a real server process on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from projects.models import InputRow
from tests.factories import MembershipFactory, ProjectFactory
from tests.helpers.api import token_for

pytestmark = pytest.mark.slow

DISTILLERY = shutil.which("distillery", path=str(Path(sys.executable).parent))


def run_cli(
    *args: str, server=None, token: str | None = None, home: Path | None = None, check=True
):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    if server is not None:
        env["DISTILLERY_URL"] = server.url
    if token is not None:
        env["DISTILLERY_TOKEN"] = token
    if home is not None:
        env["DISTILLERY_CONFIG"] = str(home / "config.json")
    assert DISTILLERY, "the distillery command is installed with the package"
    result = subprocess.run(
        [DISTILLERY, *args], env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def owner_token(transactional_db):  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    return owner, token_for(owner)


def test_login_stores_the_config_privately_and_projects_lists(web_server, owner_token, tmp_path):  # type: ignore[no-untyped-def]
    owner, token = owner_token
    ProjectFactory(team=owner.team, name="Support intents")
    result = run_cli("login", "--url", web_server.url, "--token", token, home=tmp_path)
    assert "signed in" in result.stdout
    config = tmp_path / "config.json"
    assert config.stat().st_mode & 0o777 == 0o600
    listed = run_cli("projects", "--json", home=tmp_path)
    assert [p["slug"] for p in json.loads(listed.stdout)] == ["support-intents"]
    human = run_cli("projects", home=tmp_path)
    assert "SLUG" in human.stdout and "support-intents" in human.stdout


def test_missing_configuration_and_refused_tokens_say_why(web_server, tmp_path):  # type: ignore[no-untyped-def]
    unconfigured = run_cli("projects", home=tmp_path, check=False)
    assert unconfigured.returncode == 2
    assert "set DISTILLERY_URL and DISTILLERY_TOKEN" in unconfigured.stderr
    refused = run_cli("projects", server=web_server, token="dst_nope", home=tmp_path, check=False)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr


def test_inputs_push_checks_the_file_first_and_pushes_in_batches(web_server, owner_token, tmp_path):  # type: ignore[no-untyped-def]
    owner, token = owner_token
    project = ProjectFactory(team=owner.team)
    good = tmp_path / "tickets.csv"
    good.write_text("body,intent\n" + "".join(f"card {n},card_arrival\n" for n in range(25)))
    pushed = run_cli(
        "inputs",
        "push",
        str(good),
        "--project",
        project.slug,
        "--map",
        "text=body",
        "--reference-column",
        "intent",
        "--batch-size",
        "10",
        "--json",
        server=web_server,
        token=token,
    )
    assert json.loads(pushed.stdout) == {
        "received": 25,
        "created": 25,
        "duplicates_in_batch": 0,
        "already_present": 0,
    }
    assert InputRow.objects.filter(project=project, reference_output="card_arrival").count() == 25
    again = run_cli(
        "inputs",
        "push",
        str(good),
        "-p",
        project.slug,
        "--map",
        "text=body",
        server=web_server,
        token=token,
    )
    assert "0 new inputs from 25 rows (25 already in the project" in again.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    refused = run_cli(
        "inputs", "push", str(bad), "-p", project.slug, server=web_server, token=token, check=False
    )
    assert refused.returncode == 1
    assert "bad.jsonl, line 2: no 'text' column" in refused.stderr
    assert InputRow.objects.filter(project=project).count() == 25
