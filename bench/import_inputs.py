"""Import a 50,000-row CSV into PostgreSQL through the upload code path, and time it.

    .venv/bin/python bench/import_inputs.py            # 50,000 rows
    .venv/bin/python bench/import_inputs.py --quick    # 5,000 rows, for a smoke run

The CSV is built from BANKING77 rows (the demo sample shipped in the repo), each text suffixed
with a counter so every row is unique. Ours: projects.services.input_upload_create (store +
sniff) → input_import_start (mapping, job) → jobs.tasks.import_inputs (the Celery task body,
called in-process: claim, stream, one transaction). Baseline, in the same process: a naive
import that reads the CSV with csv.DictReader and calls InputRow.objects.create per row
(autocommit), timed on the first --baseline-rows rows and extrapolated linearly.

Memory: a sampler thread reads this process's RSS every 20 ms during our import; the JSON line
reports the RSS before it and the peak during it.

DATABASE_URL defaults to postgres://postgres@127.0.0.1:5432/distillery_bench, created when
missing. Each run makes a fresh team and project; --keep leaves them there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from shared_data import shared_data  # bench/ is on sys.path when a benchmark runs

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/distillery_bench"
DEMO = REPO / "projects" / "demo_data" / "banking77" / "train.jsonl"
SHARED = shared_data("banking77", "train.jsonl")


def ensure_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    parsed = __import__("dj_database_url").parse(url)
    kwargs = {
        "host": parsed["HOST"] or "127.0.0.1",
        "port": parsed["PORT"] or 5432,
        "user": parsed["USER"] or "postgres",
        "password": parsed["PASSWORD"] or None,
        "dbname": "postgres",
        "autocommit": True,
    }
    with psycopg.connect(**kwargs) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [parsed["NAME"]]
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(parsed["NAME"])))


def build_csv(source: Path, destination: Path, rows: int) -> int:
    """Write `rows` unique rows (text, label), cycling through the source; streams both files."""
    written = 0
    with destination.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        while written < rows:
            with source.open(encoding="utf-8") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    writer.writerow([f"{item['text']} (#{written + 1})", item["label"]])
                    written += 1
                    if written >= rows:
                        break
    return destination.stat().st_size


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--baseline-rows", type=int, default=2_000)
    parser.add_argument("--quick", action="store_true", help="5,000 rows, baseline on 500")
    parser.add_argument("--data", type=Path, default=DEMO if DEMO.exists() else SHARED)
    parser.add_argument("--keep", action="store_true", help="keep the bench team and rows")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.baseline_rows = 5_000, 500

    os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
    os.environ["DJANGO_SETTINGS_MODULE"] = "distillery.settings"
    os.environ.setdefault("DEBUG", "0")  # DEBUG keeps every query in memory
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="distillery-bench-"))
    # Uploads and the (unused) filesystem broker go to a scratch folder; the job's task message
    # is sent there and never consumed: the task body runs here, in this process.
    os.environ["DISTILLERY_DATA_DIR"] = str(work / "data")
    os.environ["REDIS_URL"] = ""
    sys.path.insert(0, str(REPO))
    ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from jobs.models import Job, JobStatus
    from projects import services
    from projects.models import InputRow
    from projects.tasks import import_inputs
    from teams import services as team_services

    call_command("migrate", verbosity=0)

    source = work / "banking77_50k.csv"
    size = build_csv(args.data, source, args.rows)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    user, _ = get_user_model().objects.get_or_create(username="bench")
    team = team_services.team_create(name=f"bench {stamp}", owner=user)

    def new_project(name: str) -> Any:
        project = services.project_create(team=team, user=user, name=name)
        return services.project_update_task(
            project=project,
            input_fields=["text"],
            instruction_template="Classify this ticket: {{ text }}",
            system_prompt="",
            output_kind="label",
            label_set=["card_arrival", "lost_or_stolen_card"],
            json_schema=None,
        )

    # Ours -------------------------------------------------------------------------------------
    project = new_project("ours")
    with PeakRss() as memory:
        started = time.perf_counter()
        upload = services.input_upload_create(
            project=project, user=user, file_name=source.name, source=source
        )
        job = services.input_import_start(
            upload=upload, user=user, field_map={"text": "text"}, reference_column="label"
        )
        import_inputs(job.pk)
        seconds = time.perf_counter() - started
    job = Job.objects.get(pk=job.pk)
    if job.status != JobStatus.SUCCEEDED:
        raise SystemExit(f"import failed: {job.error}")
    imported = InputRow.objects.filter(project=project).count()
    assert imported == args.rows, (imported, args.rows)

    # Baseline: naive per-row create, first N rows, autocommit -----------------------------------
    naive = new_project("naive")
    started = time.perf_counter()
    with source.open(newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            if i >= args.baseline_rows:
                break
            data = {"text": row["text"]}
            InputRow.objects.create(
                project=naive,
                data=data,
                reference_output=row["label"] or None,
                content_hash=services.content_hash(data),
                search_text=row["text"].lower(),
                source_line=i + 2,
            )
    baseline_seconds = time.perf_counter() - started
    baseline_rows_per_s = args.baseline_rows / baseline_seconds

    if not args.keep:
        team.delete()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "bench": "import_inputs",
        "rows": args.rows,
        "file_mb": round(size / 1_048_576, 2),
        "seconds": round(seconds, 3),
        "rows_per_s": round(args.rows / seconds),
        "rss_before_mb": round(memory.start / 1_048_576, 1),
        "rss_peak_mb": round(memory.peak / 1_048_576, 1),
        "baseline": f"naive InputRow.objects.create per row, first {args.baseline_rows} rows, "
        "extrapolated",
        "baseline_rows_per_s": round(baseline_rows_per_s),
        "baseline_seconds_extrapolated": round(args.rows / baseline_rows_per_s, 1),
        "ratio": round((args.rows / seconds) / baseline_rows_per_s, 1),
        "target_met": seconds <= 10 * args.rows / 50_000,
        "postgres": connection.pg_version,
        "import_batch_size": __import__("django.conf").conf.settings.IMPORT_BATCH_SIZE,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
