"""Production settings are chosen by the environment and pass Django's deploy checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

REPO = Path(__file__).resolve().parent.parent


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DISTILLERY_", "DJANGO_", "SECRET_KEY", "DEBUG"))
    }
    base.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=base,
        capture_output=True,
        text=True,
        check=False,
    )


def production_env(**extra: str) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "distillery.settings",
        "DISTILLERY_ENV": "production",
        "SECRET_KEY": "k" * 30 + Fernet.generate_key().decode(),
        "DISTILLERY_FERNET_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "distillery.example.com",
        "DISTILLERY_DATA_DIR": "/tmp/distillery-deploy-check",
    }
    env.update(extra)
    return env


def test_check_deploy_passes_with_production_settings():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", **production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_its_secrets():
    env = production_env()
    del env["DISTILLERY_FERNET_KEYS"]
    result = run_manage("check", **env)
    assert (
        result.returncode != 0
        and "DISTILLERY_FERNET_KEYS is required in production" in result.stderr
    )
    env = production_env(SECRET_KEY="short")
    result = run_manage("check", **env)
    assert result.returncode != 0 and "SECRET_KEY must be at least 50 characters" in result.stderr


def test_development_settings_would_fail_the_deploy_check():
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SETTINGS_MODULE="distillery.settings",
        DISTILLERY_DATA_DIR="/tmp/distillery-deploy-check",
    )
    assert result.returncode != 0
    assert "DEBUG" in result.stdout + result.stderr
