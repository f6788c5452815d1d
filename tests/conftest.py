"""People and places every test can use: an owner, a teammate, an outsider, and real services."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from teams.models import Role
from tests.factories import MembershipFactory, ProjectFactory, TeamFactory

pytest_plugins = ["tests.helpers.fixtures", "tests.fakes.fixtures"]

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery"


@pytest.fixture
def team(db):  # type: ignore[no-untyped-def]
    return TeamFactory(name="Acme Support")


@pytest.fixture
def owner(team):  # type: ignore[no-untyped-def]
    return MembershipFactory(team=team, role=Role.OWNER, user__username="olive").user


@pytest.fixture
def teammate(team):  # type: ignore[no-untyped-def]
    return MembershipFactory(team=team, role=Role.ENGINEER, user__username="ted").user


@pytest.fixture
def outsider(db):  # type: ignore[no-untyped-def]
    """A user with a team of their own, and no link to `team`."""
    return MembershipFactory(role=Role.OWNER, user__username="oscar", team__name="Other Co").user


@pytest.fixture
def member_with_role(team):  # type: ignore[no-untyped-def]
    def make(role: str):  # type: ignore[no-untyped-def]
        return MembershipFactory(team=team, role=role, user__username=f"{role}-user").user

    return make


@pytest.fixture
def project(team, owner):  # type: ignore[no-untyped-def]
    return ProjectFactory(team=team, created_by=owner, name="Support ticket intents")


@pytest.fixture
def client_for(client):  # type: ignore[no-untyped-def]
    def login(user):  # type: ignore[no-untyped-def]
        client.force_login(user)
        return client

    return login


def database_url_for_subprocess() -> str:
    """The URL of the database the test run is using (pytest-django's test_ database)."""
    from django.db import connection

    s = connection.settings_dict
    user = s.get("USER") or "postgres"
    auth = f"{user}:{s['PASSWORD']}@" if s.get("PASSWORD") else f"{user}@"
    return f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


class WorkerProcess:
    """A real `celery worker` subprocess on the test database and broker."""

    def __init__(
        self,
        queues: str = "default,gpu",
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.queues = queues
        self.extra_env = extra_env or {}
        self.concurrency = concurrency
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._ready = threading.Event()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "distillery.settings_test",
                "DATABASE_URL": database_url_for_subprocess(),
                "REDIS_URL": settings.REDIS_URL,
                "DISTILLERY_DATA_DIR": str(settings.DATA_DIR),
                "CACHE_KEY_PREFIX": settings.CACHES["default"].get("KEY_PREFIX", ""),
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        return env

    def start(self, timeout: float = 60) -> WorkerProcess:
        from distillery.celery import app

        app.control.purge()
        self._ready.clear()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "distillery",
                "worker",
                "-Q",
                self.queues,
                "--concurrency",
                str(self.concurrency),
                "--pool",
                "prefork",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "info",
                "-n",
                f"test-{os.getpid()}@%h",
            ],
            cwd=REPO,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError("celery worker did not start:\n" + "".join(self.log[-40:]))
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.log.append(line)
            if " ready." in line:
                self._ready.set()

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and its pool), as a crash would."""
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def celery_worker(transactional_db) -> Iterator[WorkerProcess]:  # type: ignore[no-untyped-def]
    worker = WorkerProcess().start()
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def worker_factory(transactional_db) -> Iterator:  # type: ignore[no-untyped-def]
    """Start workers with custom settings; all are stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(**kwargs):  # type: ignore[no-untyped-def]
        worker = WorkerProcess(**kwargs).start()
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def wait_until(predicate, timeout: float = 60, interval: float = 0.1, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll a condition with a deadline (tests synchronise on state, never on sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        threading.Event().wait(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


@pytest.fixture
def web_server(transactional_db) -> Iterator:  # type: ignore[no-untyped-def]
    """A real gunicorn process on loopback serving the test database (tests.helpers.web_process)."""
    from tests.helpers.web_process import WebProcess

    server = WebProcess().start()
    try:
        yield server
    finally:
        server.stop()
