"""A real web server process (gunicorn) on loopback, on the test database: what the CLI, the
serving clients and other out-of-process callers talk to in tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from django.conf import settings

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebProcess:
    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(settings.DATA_DIR) / f"web-{self.port}.log"

    def env(self) -> dict[str, str]:
        from tests.conftest import database_url_for_subprocess

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

    def start(self, timeout: float = 60) -> WebProcess:
        from tests.conftest import wait_until

        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "distillery.wsgi",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "--threads",
                "4",
                "--timeout",
                "120",
            ],
            cwd=REPO,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"web server exited:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/api/v1/openapi.json", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=timeout, message=f"the web server on {self.url}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
