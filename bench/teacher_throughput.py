"""Teacher runner throughput against the loopback provider server.

2,000 requests (real BANKING77 texts as a label task), a fixed 100 ms server latency,
concurrency 32. The ideal wall time is bound = 2000 * 0.1 / 32 s; the runner (real ``openai``
SDK over real HTTP, our retries/cache/metering code) should get within 10 % of it. Then an
identical second run goes through the same in-memory cache and should call nothing.

The server runs in its own process (as a provider would), so its threads do not compete with
the runner for this interpreter's GIL.

    .venv/bin/python bench/teacher_throughput.py            # full: 2,000 requests
    .venv/bin/python bench/teacher_throughput.py --quick    # 320 requests, a few seconds

Then the same requests through the database-backed path a Celery worker runs for a teacher run
(ledger, PostgreSQL cache, stored outputs; a scratch database is created and dropped; skip it
with --no-db), reported under "db".

The last line is JSON: {"ratio_to_bound", "rerun_calls", "seconds", "bound_s", "calls", ...,
"db": {"ratio_to_bound", "seconds", "rerun_calls", ...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import Request, urlopen

from shared_data import shared_data  # bench/ is on sys.path when a benchmark runs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from worker.taskspec import TaskSpec, build_messages  # noqa: E402
from worker.teacher_cache import InMemoryTeacherCache  # noqa: E402
from worker.teacher_runner import run  # noqa: E402
from worker.teachers import ProviderConfig, TeacherRequest, make_provider  # noqa: E402

DATA = shared_data("banking77")


def load_texts(n: int) -> tuple[list[str], tuple[str, ...]]:
    texts: list[str] = []
    labels: set[str] = set()
    seen: set[str] = set()
    for name in ("test.jsonl", "train.jsonl"):
        path = DATA / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            row = json.loads(line)
            labels.add(str(row["label"]))
            if row["text"] not in seen and len(texts) < n:
                seen.add(row["text"])
                texts.append(row["text"])
    if len(texts) < n:  # no shared data on this machine: synthetic but distinct messages
        texts += [f"Synthetic support message number {i}" for i in range(len(texts), n)]
        labels |= {"card_arrival", "exchange_rate", "lost_or_stolen_card"}
    return texts, tuple(sorted(labels))


def start_server(latency_s: float) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.provider_server",
            "--latency",
            str(latency_s),
            "--responder",
            "first_label",
            "--exit-with-stdin",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,  # if this process dies, the server sees EOF and exits
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"the fake provider did not start: {line!r}")
    return process, line.split(" ", 1)[1]


def generation_count(url: str) -> int:
    with urlopen(Request(f"{url}/_fake/log"), timeout=30) as response:
        log = json.load(response)["requests"]
    return sum(1 for r in log if r["kind"] == "openai.chat")


async def one_run(
    config: ProviderConfig,
    requests: list[TeacherRequest],
    cache: InMemoryTeacherCache,
    concurrency: int,
) -> tuple[float, float, object]:
    provider = make_provider(config)
    try:
        started = time.perf_counter()
        cpu_started = time.process_time()
        summary = await run(
            requests,
            provider,
            concurrency=concurrency,
            cache_lookup=cache.lookup,
            cache_store=cache.store,
        )
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        await provider.aclose()
    return wall, cpu, summary


# -- The database-backed path -----------------------------------------------------------------
# The same requests through what a Celery worker runs for a teacher run (jobs.teacher_services):
# ledger row before every call, cache lookups/stores in PostgreSQL, one transaction per answer
# (ledger + cache + TeacherOutput + checks + run totals), heartbeats. A scratch test database is
# created and dropped; the broker and cache are files in a scratch directory, so nothing reaches
# another process's queue.


def db_backed_runs(
    url: str, texts: list[str], labels: tuple[str, ...], concurrency: int
) -> dict[str, object]:
    import tempfile

    scratch = tempfile.mkdtemp(prefix="bench-teacher-db-")
    os.environ["DJANGO_SETTINGS_MODULE"] = "distillery.settings_test"
    # Our own scratch database (Django creates "test_<name>" and drops it at the end), so this
    # never collides with a test run or another bench on the same server.
    from urllib.parse import urlsplit

    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/distillery"
    own = urlsplit(base)._replace(path=f"/distillery_teacher_bench_{os.getpid()}").geturl()
    os.environ["DATABASE_URL"] = own
    os.environ["REDIS_URL"] = ""  # filesystem broker and cache, in the scratch directory
    os.environ["DISTILLERY_DATA_DIR"] = scratch
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "false"
    import django

    django.setup()
    from django.test.utils import setup_databases, teardown_databases

    try:
        databases = setup_databases(verbosity=0, interactive=False)
    except Exception as exc:  # no PostgreSQL here: say so instead of failing the whole bench
        return {"skipped": f"no database: {exc}"}
    try:
        return _db_runs(url, texts, labels, concurrency)
    finally:
        from django.db import connections

        connections.close_all()
        teardown_databases(databases, verbosity=0)
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)


def _db_runs(
    url: str, texts: list[str], labels: tuple[str, ...], concurrency: int
) -> dict[str, object]:
    from django.contrib.auth import get_user_model

    from projects import services as project_services
    from projects.models import InputRow, Project
    from teachers import services as teacher_services
    from teachers.models import LedgerEntry, TeacherOutput, TeacherRun
    from teachers.tasks import teacher_run
    from teams import services as team_services

    user = get_user_model().objects.create_user("bench")  # no password: it never signs in
    team = team_services.team_create(name="Bench", owner=user)
    project = Project.objects.create(
        team=team,
        name="Bench",
        input_fields=["text"],
        instruction_template="Classify the customer message into one intent.\nMessage: {{ text }}",
        output_kind="label",
        label_set=list(labels),
        created_by=user,
    )
    InputRow.objects.bulk_create(
        InputRow(
            project=project,
            data={"text": text},
            content_hash=project_services.content_hash({"text": text}),
            search_text=text.lower(),
        )
        for text in texts
    )
    credential = team_services.credential_create(
        team=team,
        user=user,
        name="bench",
        provider="openai",
        api_key="sk-bench-key",
        base_url=f"{url}/v1",
        allow_private_network=True,
    )
    settings = teacher_services.RunSettings(
        model="gpt-4o-mini", credential=credential, max_tokens=16, concurrency=concurrency
    )

    def one() -> tuple[float, TeacherRun]:
        run = teacher_services.teacher_run_start(project=project, user=user, run_settings=settings)
        started = time.perf_counter()
        teacher_run(run.job_id)  # the Celery task's body, in this process
        wall = time.perf_counter() - started
        return wall, TeacherRun.objects.select_related("job").get(pk=run.pk)

    before = generation_count(url)
    wall, first = one()
    after_first = generation_count(url)
    rerun_wall, second = one()
    ledger = sum(e.cost_usd for e in LedgerEntry.objects.filter(run=first))
    return {
        "seconds": round(wall, 3),
        "status": first.job.status,
        "calls": first.calls_made,
        "calls_seen_by_server": after_first - before,
        "outputs": TeacherOutput.objects.filter(run=first).count(),
        "cost_usd": str(first.cost_usd),
        "cost_equals_ledger": first.cost_usd == ledger,
        "rerun_calls": second.calls_made,
        "rerun_calls_seen_by_server": generation_count(url) - after_first,
        "rerun_cache_hits": second.cache_hits,
        "rerun_seconds": round(rerun_wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="320 requests instead of 2,000")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--no-db", action="store_true", help="skip the database-backed (Django) path"
    )
    args = parser.parse_args()
    n = args.requests or (320 if args.quick else 2000)

    texts, labels = load_texts(n)
    spec = TaskSpec(
        "Classify the customer message into one intent.\nMessage: {{ text }}",
        "label",
        ("text",),
        label_set=labels,
    )
    requests = [
        TeacherRequest(
            custom_id=f"input-{i}-0",
            messages=build_messages(spec, {"text": text}),
            model="gpt-4o-mini",
            max_tokens=16,
            output_kind="label",
            label_set=labels,
        )
        for i, text in enumerate(texts)
    ]
    server, url = start_server(args.latency)
    try:
        config = ProviderConfig(
            kind="openai",
            credential_name="bench",
            api_key="sk-bench",
            base_url=f"{url}/v1",
            allow_private_network=True,
        )
        cache = InMemoryTeacherCache()
        wall, cpu, first = asyncio.run(one_run(config, requests, cache, args.concurrency))
        calls_after_first = generation_count(url)
        rerun_wall, _, second = asyncio.run(one_run(config, requests, cache, args.concurrency))
        rerun_over_wire = generation_count(url) - calls_after_first
        db = None if args.no_db else db_backed_runs(url, texts, labels, args.concurrency)
    finally:
        server.terminate()
        server.wait(timeout=10)

    bound = n * args.latency / args.concurrency
    result = {
        "ratio_to_bound": round(bound / wall, 4),
        "rerun_calls": second.calls,  # type: ignore[attr-defined]
        "seconds": round(wall, 3),
        "bound_s": round(bound, 3),
        "calls": first.calls,  # type: ignore[attr-defined]
        "requests": n,
        "concurrency": args.concurrency,
        "latency_s": args.latency,
        "first_run_failed": first.failed,  # type: ignore[attr-defined]
        "first_run_calls_seen_by_server": calls_after_first,
        "rerun_calls_seen_by_server": rerun_over_wire,
        "rerun_cache_hits": second.cache_hits,  # type: ignore[attr-defined]
        "rerun_seconds": round(rerun_wall, 3),
        # CPU this process used during the first run (SDK + runner); on a busy machine the
        # ratio drops when this process cannot get that much CPU in time.
        "client_cpu_s": round(cpu, 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    if db is not None:
        if "seconds" in db:
            db["ratio_to_bound"] = round(bound / float(db["seconds"]), 4)  # type: ignore[arg-type]
        result["db"] = db
    print(json.dumps(result))


if __name__ == "__main__":
    main()
