"""`make run`'s supervisor: one SIGTERM stops the web server and the Celery worker (with its pool
processes) once and cleanly, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> set[int]:
    """Every live process whose ancestry leads to `pid` (zombies don't count: they are gone)."""
    return set(still_running({child.pid for child in psutil.Process(pid).children(recursive=True)}))


def still_running(pids: set[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_one_sigterm_stops_web_and_worker_and_leaves_nothing(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}} | {
        "DISTILLERY_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "distillery.settings",
    }
    launcher = subprocess.Popen(
        [sys.executable, "-m", "distillery.launcher", "--port", str(port), "--concurrency", "2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: healthy(port), timeout=120, message="the web server")
        wait_until(lambda: len(descendants(launcher.pid)) >= 4, timeout=120, message="worker pool")
        children = descendants(launcher.pid)
        launcher.send_signal(signal.SIGTERM)
        output, _ = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0
    assert "Distillery stopped" in output
    assert output.count("Warm shutdown") + output.count("Cold shutdown") <= 2
    assert "Segmentation fault" not in output
    assert still_running(children) == []
