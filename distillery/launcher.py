"""`make run`'s process supervisor: the web server and one Celery worker, stopped cleanly by
one Ctrl-C or SIGTERM.

Each child runs in its own process group. On the first signal the worker gets one SIGTERM
(a soft shutdown: running tasks get CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT seconds, then go back
to the queue) and the web server's group gets SIGTERM; whatever is still alive after the grace
period is killed with its whole group, so no pool process or training child is left behind.
A second signal skips the wait.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

GRACE_S = 20.0


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="8000")
    parser.add_argument("--concurrency", default="2")
    parser.add_argument("--grace", type=float, default=GRACE_S)
    parser.add_argument(
        "--follow-demo",
        action="store_true",
        help="also run `manage.py load_demo --follow` (the demo's fine-tune and evaluation), "
        "stopped with the rest",
    )
    return parser.parse_args(argv)


def _start_worker(bindir: Path, data_dir: str, concurrency: str) -> subprocess.Popen[bytes]:
    """The Celery worker with its beat, on both queues, in a session of its own."""
    worker_env = {**os.environ, "REMAP_SIGTERM": "SIGQUIT"}  # TERM → soft, bounded shutdown
    return subprocess.Popen(
        [
            str(bindir / "celery"),
            "-A",
            "distillery",
            "worker",
            "-B",
            "-Q",
            "default,gpu",
            "--concurrency",
            concurrency,
            "-l",
            "info",
            "-s",
            str(Path(data_dir) / "celerybeat-schedule"),
        ],
        env=worker_env,
        start_new_session=True,
    )


def _start_demo_follower(
    python: str, data_dir: str, host: str, port: str
) -> subprocess.Popen[bytes]:
    """`manage.py load_demo --follow` against the web server, logging to demo-journey.log."""
    log = Path(data_dir) / "demo-journey.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [python, "manage.py", "load_demo", "--follow", "--url", f"http://{host}:{port}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_then_kill(
    children: list[subprocess.Popen[bytes]],
    helpers: list[subprocess.Popen[bytes]],
    *,
    grace: float,
    stopping: list[int],
) -> None:
    """Give the children ``grace`` seconds to stop (a second signal cuts it short), then kill
    every process group, including pool processes and training children left in them."""
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in children) and time.monotonic() < deadline and len(stopping) < 2:
        time.sleep(0.2)
    everyone = [*children, *helpers]
    for proc in everyone:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    for proc in everyone:  # pool processes and training children of a group
        deadline = time.monotonic() + 5
        while not _group_gone(proc.pid) and time.monotonic() < deadline:
            _signal_group(proc, signal.SIGKILL)
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    python = sys.executable
    data_dir = os.environ.get("DISTILLERY_DATA_DIR", ".data")
    worker = _start_worker(Path(python).parent, data_dir, args.concurrency)
    web = subprocess.Popen(
        [python, "manage.py", "runserver", "--noreload", f"{args.host}:{args.port}"],
        start_new_session=True,
    )
    children = [worker, web]
    helpers: list[subprocess.Popen[bytes]] = []
    if args.follow_demo:
        helpers.append(_start_demo_follower(python, data_dir, args.host, args.port))
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        if len(stopping) == 1:
            if _alive(worker):
                worker.send_signal(signal.SIGTERM)
            for proc in [web, *helpers]:
                _signal_group(proc, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    while not stopping and all(_alive(p) for p in children):
        time.sleep(0.5)
    if not stopping:  # a child died on its own: take the other one down too
        stop(signal.SIGTERM, None)
    _wait_then_kill(children, helpers, grace=args.grace, stopping=stopping)
    print("Distillery stopped (web and worker).", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
