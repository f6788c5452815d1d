"""Push 100,000 input rows through the REST API over real HTTP, and import the same rows by
file upload, in one run.

    .venv/bin/python bench/api_ingest.py            # 100,000 rows, batches of 10,000
    .venv/bin/python bench/api_ingest.py --quick    # 10,000 rows, for a smoke run

Rows: BANKING77 (bench/shared_data.py, or the demo sample in the repo), each text suffixed with a
counter so every row is unique, with its label as the reference output.

A real server on loopback: gunicorn (one sync worker, the WSGI app) started on a throwaway
database (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/distillery_bench_api, created
when missing). Timed, each from the client's side:

- API: POST /api/v1/projects/{slug}/inputs, batches of --batch rows as JSON (requests, one
  keep-alive connection), each one all-or-nothing write;
- upload (the baseline): the same rows as one CSV, POST /api/v1/projects/{slug}/inputs/upload
  (store, validate, start the import job), then the import job's task body run in this process
  (as bench/import_inputs.py does: no worker needed), until the job has succeeded.

rows_equal is 1 when both projects hold exactly the same (inputs, reference) rows.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from import_inputs import ensure_database  # bench/ is on sys.path when a benchmark runs
from shared_data import shared_data

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/distillery_bench_api"
DEMO = REPO / "projects" / "demo_data" / "banking77" / "train.jsonl"
SHARED = shared_data("banking77", "train.jsonl")


def make_rows(source: Path, count: int) -> list[tuple[str, str]]:
    """`count` unique (text, label) rows, cycling through the source file."""
    base = []
    with source.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                base.append((item["text"], str(item["label"])))
    return [(f"{base[i % len(base)][0]} (#{i + 1})", base[i % len(base)][1]) for i in range(count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    command = [
        str(gunicorn),
        "distillery.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--timeout",
        "300",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for_server(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import requests

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            requests.get(f"{base}/api/v1/no-such-route", timeout=30)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)  # a process starting up, not a test: nothing to wait on but time
    raise SystemExit(f"the server did not answer in 60 s:\n{log.read_text()[-3000:]}")


def push_batches(
    session: Any, base: str, slug: str, rows: list[tuple[str, str]], batch: int
) -> float:
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        body = {
            "rows": [
                {"inputs": {"text": text}, "reference_output": label}
                for text, label in rows[i : i + batch]
            ]
        }
        response = session.post(f"{base}/api/v1/projects/{slug}/inputs", json=body, timeout=300)
        if response.status_code != 201:
            raise SystemExit(
                f"batch {i // batch + 1}: {response.status_code} {response.text[:500]}"
            )
        created = response.json()["created"]
        if created != len(body["rows"]):
            raise SystemExit(f"batch {i // batch + 1}: {created} created of {len(body['rows'])}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="10,000 rows")
    parser.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else DEMO)
    args = parser.parse_args()
    if args.quick:
        args.rows = 10_000

    os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
    os.environ["DJANGO_SETTINGS_MODULE"] = "distillery.settings"
    os.environ.setdefault("DEBUG", "0")  # DEBUG keeps every query in memory
    work = Path(tempfile.mkdtemp(prefix="distillery-bench-api-"))
    # Uploads and the (unused) filesystem broker go to a scratch folder shared with the server;
    # the import job's message is never consumed: its task body runs here.
    os.environ["DISTILLERY_DATA_DIR"] = str(work / "data")
    os.environ["REDIS_URL"] = ""
    os.environ["DISTILLERY_API_RATE_PER_MINUTE"] = "100000"
    sys.path.insert(0, str(REPO))
    ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    import requests
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from jobs.models import Job, JobStatus
    from projects import services
    from projects.tasks import import_inputs
    from teams import services as team_services
    from teams.api_tokens import api_token_create

    call_command("migrate", verbosity=0)
    rows = make_rows(args.data, args.rows)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    user, _ = get_user_model().objects.get_or_create(username="bench")
    team = team_services.team_create(name=f"bench api {stamp}", owner=user)
    _, token = api_token_create(
        team=team, user=user, name=f"bench {stamp}", scopes=["read", "write"]
    )

    def new_project(name: str) -> Any:
        project = services.project_create(team=team, user=user, name=name)
        return services.project_update_task(
            project=project,
            input_fields=["text"],
            instruction_template="Classify this ticket: {{ text }}",
            system_prompt="",
            output_kind="text",
            label_set=[],
            json_schema=None,
        )

    via_api, via_upload = new_project("via api"), new_project("via upload")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = work / "server.log"
    server = start_server(port, dict(os.environ), log)
    try:
        wait_for_server(base, server, log)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"

        api_seconds = push_batches(session, base, via_api.slug, rows, args.batch)

        csv_path = work / "rows.csv"
        with csv_path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        started = time.perf_counter()
        with csv_path.open("rb") as fh:
            response = session.post(
                f"{base}/api/v1/projects/{via_upload.slug}/inputs/upload",
                files={"file": ("rows.csv", fh, "text/csv")},
                data={"field_map": '{"text": "text"}', "reference_column": "label"},
                timeout=300,
            )
        if response.status_code != 201:
            raise SystemExit(f"upload: {response.status_code} {response.text[:500]}")
        job_id = response.json()["id"]
        import_inputs(job_id)
        upload_seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    job = Job.objects.get(pk=job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise SystemExit(f"the import job failed: {job.error}")

    with connection.cursor() as cursor:
        counts = {}
        for project in (via_api, via_upload):
            cursor.execute(
                "SELECT count(*) FROM projects_inputrow WHERE project_id = %s", [project.pk]
            )
            counts[project.pk] = cursor.fetchone()[0]
        # Rows present in one project and not the other (same inputs and reference output).
        cursor.execute(
            """
            SELECT count(*) FROM (
              (SELECT content_hash, reference_output FROM projects_inputrow WHERE project_id = %s
               EXCEPT
               SELECT content_hash, reference_output FROM projects_inputrow WHERE project_id = %s)
              UNION ALL
              (SELECT content_hash, reference_output FROM projects_inputrow WHERE project_id = %s
               EXCEPT
               SELECT content_hash, reference_output FROM projects_inputrow WHERE project_id = %s)
            ) AS differing
            """,
            [via_api.pk, via_upload.pk, via_upload.pk, via_api.pk],
        )
        differing = cursor.fetchone()[0]
    rows_equal = int(differing == 0 and counts[via_api.pk] == counts[via_upload.pk] == args.rows)

    team.delete()
    shutil.rmtree(work, ignore_errors=True)
    api_rate = args.rows / api_seconds
    upload_rate = args.rows / upload_seconds
    result = {
        "bench": "api_ingest",
        "rows": args.rows,
        "batch_rows": args.batch,
        "server": "gunicorn, 1 sync worker, loopback",
        "api_seconds": round(api_seconds, 3),
        "api_rows_per_s": round(api_rate),
        "upload_seconds": round(upload_seconds, 3),
        "upload_rows_per_s": round(upload_rate),
        "api_over_upload": round(api_rate / upload_rate, 2),
        "rows_api": counts[via_api.pk],
        "rows_upload": counts[via_upload.pk],
        "rows_equal": rows_equal,
        "target_rows_per_s": 5000,
        "target_met": api_rate >= 5000,
        "postgres": connection.pg_version,
    }
    print(f"API {api_rate:,.0f} rows/s vs upload {upload_rate:,.0f} rows/s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
