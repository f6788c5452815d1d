"""bench/gateway.py --real-student: the distilled BANKING77 student of bench/serve_student.py,
served by ``manage.py serve`` on the bench's database, behind every policy; the held-out rows'
gold labels stand in for the teacher (``gold_responder``, run by the fake provider)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.gateway import bench_database_url, start
from bench.shared_data import shared_data

_GOLD: dict[str, str] = {}


def gold_responder(request: Any) -> str:
    """The teacher of --real-student: the held-out row's gold label (a stand-in teacher)."""
    if not _GOLD:
        path = shared_data("banking77", "test.jsonl")
        for line in path.read_text().splitlines() if path.exists() else []:
            row = json.loads(line)
            _GOLD[row["text"].strip()] = str(row["label"])
    text = request.last_user_text.rsplit("Message: ", 1)[-1].split("\n")[0].strip()
    return _GOLD.get(text, "card_arrival")


def real_student_task(scratch: str, n: int) -> tuple[list[str], list[str], dict[str, Any]]:
    """--real-student: the served student's files in the scratch data dir, its task, and n
    held-out BANKING77 texts (the shared test split; the student trained on train rows)."""
    from bench.serve_student import STUDENT_CACHE, load_record

    record = load_record()
    if record is None:
        sys.exit("no trained student: run `nice .venv/bin/python bench/serve_student.py` first")
    shutil.copytree(
        STUDENT_CACHE / "model", Path(scratch) / "students" / "real", copy_function=os.link
    )
    path = shared_data("banking77", "test.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    texts = list(dict.fromkeys(r["text"].strip() for r in rows))
    if len(texts) < n:
        sys.exit(f"--real-student has {len(texts)} held-out texts: ask for fewer --requests")
    task = {"instruction": record["instruction_template"], "student_path": "students/real"}
    return texts[:n], list(record["label_set"]), task


def serve_process(redis_url: str) -> tuple[subprocess.Popen[str], str]:
    """``manage.py serve`` on the bench's database (the students served there)."""
    env = dict(
        os.environ,
        DATABASE_URL=bench_database_url(),
        REDIS_URL=redis_url,
        PYTHONUNBUFFERED="1",
    )
    proc, line = start(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", "0"],
        env=env,
        ready="listening on ",
    )
    return proc, line.split("listening on ", 1)[1].split()[0]
