"""A real serving process (``manage.py serve``) on loopback, on the test database, and students
built from the tiny test model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from django.conf import settings

from tests.conftest import REPO, database_url_for_subprocess

TINY_DIR = "students/tiny-served"


def tiny_student_folder() -> str:
    """The tiny model in the data dir (built once per data dir), relative to DATA_DIR."""
    from tests.helpers.tiny_model import build_tiny_model

    dest = Path(settings.DATA_DIR) / TINY_DIR
    if not (dest / "config.json").is_file():
        build_tiny_model(dest)
    return TINY_DIR


class ServingProcess:
    """``manage.py serve --port 0`` as a subprocess; ``base_url`` once it listens."""

    def __init__(self, **env: str) -> None:
        self.extra_env = env
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self.base_url = ""
        self._ready = threading.Event()

    def start(self, timeout: float = 60) -> ServingProcess:
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "distillery.settings_test",
                "DATABASE_URL": database_url_for_subprocess(),
                "REDIS_URL": settings.REDIS_URL,
                "DISTILLERY_DATA_DIR": str(settings.DATA_DIR),
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", "0"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError("serving process did not start:\n" + "".join(self.log[-40:]))
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.log.append(line)
            found = re.search(r"listening on (http://\S+/v1)", line)
            if found:
                self.base_url = found.group(1)
                self._ready.set()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def client(self, api_key: str, **kwargs: Any) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=60, **kwargs)
