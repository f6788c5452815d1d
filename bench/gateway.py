"""The task gateway's added cost on loopback: each routing policy vs calling the teacher directly.

- the teacher: the tests' fake provider (OpenAI wire format) in its own process, 300 ms a call;
- the student leg: a loopback fake speaking the serving process's wire format (OpenAI chat +
  ``distillery.confidence``) in its own process. NOT the real served student: on the 2 shared
  CPU cores here a real model would measure the model, not the gateway (bench/serve_latency.py
  measures the serving process). ``--student-url`` points the gateway at a running
  ``manage.py serve`` instead (its model slug with ``--student-model``); ``--real-student``
  starts ``manage.py serve`` on the bench's database with bench/serve_student.py's distilled
  BANKING77 student (SmolLM2-135M) for every policy, and the teacher answers each held-out
  row's gold label (BANKING77 gold labels stand in for the teacher): agreement is then the real
  student's with the gold labels;
- the gateway: gunicorn (one process, 32 threads) on a scratch database, in its own process;
- clients: 16 threads in this process, 2,000 distinct inputs per policy (none cached).

Prints per policy requests/s, p50/p95 end to end, the added overhead over the direct teacher
(teacher-answered requests: their p50/p95 minus the direct calls' p50/p95, as clients see it; and
inside the gateway's handler, from its own rows: the answer's latency minus the teacher call's;
and the gateway process's CPU time per request, which the machine's load does not inflate), the share the student answered, agreement with the teacher (from
the gateway's rows) and recorded rows vs the sampled share (recorded + counted drops + lost =
sampled). Last line: JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.shared_data import shared_data  # noqa: E402

TEACHER_KEY = "sk-bench-teacher"
MODEL = "gpt-bench"
SAMPLE_RATE = 0.25
POLICIES = ("teacher", "shadow", "canary", "cascade", "student")


_STUDENT_LABELS: list[str] = []


def student_responder(request: Any) -> Any:
    """The student fake: the teacher's answer (the first label) at 0.97 for most inputs; for a
    fixed 12 % the second label at 0.5 (cascade sends those to the teacher), for 3 % the second
    label at 0.95 (a confident mistake). Like the serving process it receives the task's input
    only, so it knows the bench's label set itself."""
    from tests.fakes.provider_types import FakeAnswer

    if not _STUDENT_LABELS:
        _STUDENT_LABELS.extend(load_texts(0)[1])
    labels = _STUDENT_LABELS
    text = request.last_user_text
    bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 100
    if bucket < 12:
        label, p = labels[1], 0.5
    elif bucket < 15:
        label, p = labels[1], 0.95
    else:
        label, p = labels[0], 0.97
    return FakeAnswer(label, extra_body={"distillery": {"confidence": p}})


def _keep_errors(proc: subprocess.Popen[str], name: str) -> None:
    """A child's output after it is up: its tracebacks and ERROR lines go to this process's
    stderr (a failing gateway says why); the rest is read and dropped."""
    assert proc.stdout is not None
    in_traceback = False
    for line in proc.stdout:
        if line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and not line[:1].isspace():
            sys.stderr.write(f"[{name}] {line}")  # the exception line that ends it
            in_traceback = False
            continue
        if in_traceback or " ERROR " in line or "[ERROR]" in line:
            sys.stderr.write(f"[{name}] {line}")


def start(
    cmd: list[str], env: dict[str, str] | None = None, ready: str = "READY "
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if ready in line:
            name = " ".join(cmd[1:3])
            threading.Thread(target=_keep_errors, args=(proc, name), daemon=True).start()
            return proc, line.split(" ", 1)[1].strip()
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not start")


def fake(latency: float, responder: str) -> tuple[subprocess.Popen[str], str]:
    return start(
        [
            sys.executable,
            "-m",
            "tests.fakes.provider_server",
            "--latency",
            str(latency),
            "--responder",
            responder,
            "--exit-with-stdin",
        ]
    )


def load_texts(n: int) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    labels: set[str] = set()
    path = shared_data("banking77", "train.jsonl")
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            labels.add(str(row["label"]))
            texts.append(row["text"])
    texts = list(dict.fromkeys(texts))
    if len(texts) < n:
        texts += [f"Synthetic support message number {i}" for i in range(len(texts), n)]
    return texts[:n], sorted(labels)[:10] or ["card_arrival", "lost_or_stolen_card"]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = (len(values) - 1) * q
    low, high = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def drive(n_clients: int, work: list[Any], call: Any) -> tuple[list[float], float, list[Any]]:
    """Send ``work`` through ``call`` from ``n_clients`` threads: latencies (ms), wall s, results."""
    latencies = [0.0] * len(work)
    results: list[Any] = [None] * len(work)
    local = threading.local()

    def one(i: int) -> None:
        started = time.perf_counter()
        results[i] = call(local, work[i])
        latencies[i] = (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as pool:
        list(pool.map(one, range(len(work))))
    return latencies, time.perf_counter() - started, results


def direct_teacher(
    teacher_url: str, texts: list[str], labels: list[str], clients: int
) -> list[float]:
    """The baseline: the same prompts straight to the teacher with the official openai SDK."""
    from openai import OpenAI

    from worker.taskspec import TaskSpec, build_messages

    spec = TaskSpec(
        instruction_template="Classify this message: {{ text }}",
        output_kind="label",
        input_fields=("text",),
        label_set=tuple(labels),
    )

    def call(local: Any, text: str) -> str:
        if not hasattr(local, "client"):
            local.client = OpenAI(base_url=teacher_url + "/v1", api_key=TEACHER_KEY, max_retries=0)
        reply = local.client.chat.completions.create(
            model=MODEL,
            messages=build_messages(spec, {"text": text}),
            max_tokens=256,
            temperature=0,
        )
        return reply.choices[0].message.content or ""

    latencies, _, _ = drive(clients, texts, call)
    return latencies


def gateway_cpu_s(proc: subprocess.Popen[str] | None) -> float:
    """CPU seconds (user + system) of the gateway's processes so far: what each request costs it,
    whatever else the machine is doing."""
    import psutil

    if proc is None:
        return 0.0
    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def bench_database_url() -> str:
    """The bench's scratch database as a URL, for the processes it starts."""
    from django.db import connections

    s = connections["default"].settings_dict
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return (
        f"postgres://{s.get('USER') or 'postgres'}{password}@{s.get('HOST') or '127.0.0.1'}"
        f":{s.get('PORT') or 5432}/{s['NAME']}"
    )


def setup_projects(
    teacher_url: str,
    student_model: str | None,
    labels: list[str],
    *,
    instruction: str = "Classify this message: {{ text }}",
    student_path: str = "",
) -> tuple[dict[str, Any], str]:
    from decimal import Decimal

    from django.contrib.auth import get_user_model

    from finetunes.models import StudentKind, StudentModel, StudentSource
    from gateway import services
    from projects.models import Project
    from serving import services as serving_services
    from teachers import prices
    from teams import services as team_services
    from teams.api_tokens import api_token_create
    from teams.models import Membership, Role, Team

    user = get_user_model().objects.create(username="bench")
    team = Team.objects.create(name="Bench")
    Membership.objects.create(team=team, user=user, role=Role.OWNER)
    credential = team_services.credential_create(
        team=team,
        user=user,
        name="teacher",
        provider="openai",
        api_key=TEACHER_KEY,
        base_url=teacher_url + "/v1",
        allow_private_network=True,
    )
    prices.price_entry_save(
        team=team,
        user=user,
        model=MODEL,
        input_usd_per_mtok=Decimal("2.5"),
        output_usd_per_mtok=Decimal("10"),
    )
    projects = {}
    shared: Any = None
    for mode in POLICIES:
        project = Project.objects.create(
            team=team,
            name=f"bench {mode}",
            input_fields=["text"],
            output_kind="label",
            instruction_template=instruction,
            label_set=labels,
        )
        if student_path and shared is not None:  # one real student serves every policy
            served = shared
        else:
            student = StudentModel.objects.create(
                team=team,
                name=f"student {mode}",
                kind=StudentKind.DISTILLED,
                source=StudentSource.LOCAL,
                path=student_path or f"students/bench-{mode}",
                project=project,
            )
            served = serving_services.student_serve(student=student, user=user)
        shared = served
        if student_model:
            served.slug = student_model
            served.save(update_fields=["slug"])
        services.policy_update(
            project=project,
            user=user,
            values={
                "mode": mode,
                "credential": credential,
                "teacher_model": MODEL,
                "served_model": served,
                "canary_percent": 30,
                "cascade_threshold": 0.9,
                "sample_rate": SAMPLE_RATE,
                "student_timeout_ms": 2000,
            },
        )
        projects[mode] = project
    _, token = api_token_create(team=team, user=user, name="bench", scopes=["serve"])
    return projects, token


def through_gateway(
    gateway_url: str, token: str, project: Any, texts: list[str], clients: int
) -> tuple[list[float], float, list[Any]]:
    import httpx

    def call(local: Any, text: str) -> Any:
        if not hasattr(local, "client"):
            local.client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        reply = local.client.post(
            f"{gateway_url}/api/v1/projects/{project.slug}/infer", json={"inputs": {"text": text}}
        )
        if reply.status_code != 200:
            return {"error": reply.status_code, "detail": reply.text[:200]}
        return reply.json()["results"][0]

    return drive(clients, texts, call)


def settle(project: Any, sent: int, timeout: float = 300) -> dict[str, Any]:
    """Wait until the gateway wrote every record (or counted its drop), then read its rows."""
    from gateway.models import GatewayDrops, GatewayRequest
    from projects.models import InputRow

    deadline = time.monotonic() + timeout
    while True:
        rows = GatewayRequest.objects.filter(project=project).count()
        drops = (
            GatewayDrops.objects.filter(project=project).values_list("dropped", flat=True).first()
            or 0
        )
        if rows + drops >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    inside = [
        lat - t
        for lat, t in GatewayRequest.objects.filter(
            project=project, teacher_ms__isnull=False, answered_by="teacher"
        ).values_list("latency_ms", "teacher_ms")
    ]
    judged = list(
        GatewayRequest.objects.filter(project=project, agrees__isnull=False).values_list(
            "agrees", flat=True
        )
    )
    return {
        "rows": rows,
        "drops": drops,
        "recorded_inputs": InputRow.objects.filter(project=project).count(),
        "agreement": (sum(judged) / len(judged)) if judged else None,
        "judged": len(judged),
        "inside": inside,
        "skipped": GatewayRequest.objects.filter(
            project=project, reason="background_skipped"
        ).count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="the policies to measure, comma-separated (the summary's overhead is teacher's, its "
        "student share and agreement cascade's)",
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--teacher-latency", type=float, default=0.3)
    parser.add_argument("--student-url", default="", help="a running serving process (…/v1)")
    parser.add_argument("--student-model", default="", help="its served model slug")
    parser.add_argument(
        "--real-student",
        action="store_true",
        help="serve bench/serve_student.py's distilled BANKING77 student with manage.py serve; "
        "the teacher answers gold labels",
    )
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="bench-gateway-")
    os.environ["DJANGO_SETTINGS_MODULE"] = "distillery.settings_test"
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/distillery"
    os.environ["DATABASE_URL"] = (
        urlsplit(base)._replace(path=f"/distillery_gw_bench_{os.getpid()}").geturl()
    )
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/8"
    os.environ["REDIS_URL"] = ""
    os.environ["DISTILLERY_DATA_DIR"] = scratch
    import django

    django.setup()
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    from gateway.routing import share
    from projects.services import content_hash

    n = args.requests
    texts, labels = load_texts(n * (len(POLICIES) + 1))
    task: dict[str, Any] = {}
    if args.real_student:
        from bench.gateway_real_student import real_student_task

        texts, labels, task = real_student_task(scratch, n * (len(POLICIES) + 1))
    teacher = "bench.gateway_real_student:gold_responder" if args.real_student else "first_label"
    teacher_proc, teacher_url = fake(args.teacher_latency, teacher)
    student_proc = None
    if args.student_url:
        student_url = args.student_url
    elif not args.real_student:
        student_proc, url = fake(0.0, "bench.gateway:student_responder")
        student_url = url + "/v1"
    databases = setup_databases(verbosity=0, interactive=False)
    gateway_proc = None
    try:
        projects, token = setup_projects(teacher_url, args.student_model or None, labels, **task)
        if args.real_student:
            from bench.gateway_real_student import serve_process

            student_proc, student_url = serve_process(redis_url)
        env = dict(
            os.environ,
            DATABASE_URL=bench_database_url(),
            DISTILLERY_SERVE_URL=student_url,
            DISTILLERY_API_RATE_PER_MINUTE="100000000",
            # Redis for the rate limiter's counters, as deployed (db from REDIS_URL).
            REDIS_URL=redis_url,
            CACHE_KEY_PREFIX=f"gw-bench-{os.getpid()}",
            PYTHONUNBUFFERED="1",
        )
        connections.close_all()
        port = 18000 + os.getpid() % 1000
        # As deployed (Dockerfile): gunicorn, here one process with a pool of threads.
        gateway_proc, _ = start(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "distillery.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--threads",
                "32",
                "--timeout",
                "120",
            ],
            env=env,
            ready="Booting worker",
        )
        gateway_url = f"http://127.0.0.1:{port}"
        # warm up: the teacher client, the policy snapshot, the connections (not measured)
        warm = [f"warm up {i}" for i in range(32)]
        through_gateway(gateway_url, token, projects["teacher"], warm, args.clients)

        direct = direct_teacher(teacher_url, texts[:n], labels, args.clients)
        d50, d95 = percentile(direct, 0.5), percentile(direct, 0.95)
        print(
            f"direct teacher (openai SDK, {args.clients} clients): p50 {d50:.1f} ms, p95 {d95:.1f} ms"
        )
        out: dict[str, Any] = {}
        for k, mode in enumerate(POLICIES, start=1):
            if mode not in args.policies.split(","):
                continue
            chunk = texts[k * n : (k + 1) * n]
            cpu_before = gateway_cpu_s(gateway_proc)
            latencies, wall, results = through_gateway(
                gateway_url, token, projects[mode], chunk, args.clients
            )
            cpu_ms = (gateway_cpu_s(gateway_proc) - cpu_before) * 1000 / n
            errors = sum(1 for r in results if "error" in r)
            reasons = sorted({str(r.get("reason")) for r in results if r.get("reason")})
            if reasons:
                print(f"{mode}: the usual choice did not answer because of {', '.join(reasons)}")
            by = [r.get("answered_by") for r in results]
            teacher_lat = [lat for lat, b in zip(latencies, by, strict=True) if b == "teacher"]
            facts = settle(projects[mode], n + (len(warm) if mode == "teacher" else 0))
            sent = chunk + (warm if mode == "teacher" else [])  # the warm-up is recorded too
            sampled = sum(
                1 for t in sent if share(1, "sample", content_hash({"text": t})) < SAMPLE_RATE
            )
            lost = sampled - facts["recorded_inputs"] - facts["drops"]
            row = {
                "rps": round(n / wall, 1),
                "p50_ms": round(percentile(latencies, 0.5), 1),
                "p95_ms": round(percentile(latencies, 0.95), 1),
                "overhead_p50_ms": round(percentile(teacher_lat, 0.5) - d50, 2)
                if teacher_lat
                else None,
                "overhead_p95_ms": round(percentile(teacher_lat, 0.95) - d95, 2)
                if teacher_lat
                else None,
                "in_gateway_overhead_p50_ms": round(percentile(facts["inside"], 0.5), 2)
                if facts["inside"]
                else None,
                "in_gateway_overhead_p95_ms": round(percentile(facts["inside"], 0.95), 2)
                if facts["inside"]
                else None,
                "gateway_cpu_ms_per_request": round(cpu_ms, 2),
                "student_share": round(by.count("student") / n, 4),
                "agreement": None if facts["agreement"] is None else round(facts["agreement"], 4),
                "agreement_n": facts["judged"],
                "sampled": sampled,
                "recorded_rows": facts["recorded_inputs"],
                "dropped_counted": facts["drops"],
                "background_skipped": facts["skipped"],
                "lost_records": lost,
                "errors": errors,
            }
            out[mode] = row
            print(
                f"{mode:8s} {row['rps']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  "
                f"overhead p50 {row['overhead_p50_ms']} / p95 {row['overhead_p95_ms']} ms "
                f"(handler beyond the teacher call {row['in_gateway_overhead_p50_ms']} / {row['in_gateway_overhead_p95_ms']} ms; "
                f"gateway CPU {row['gateway_cpu_ms_per_request']} ms/request)  "
                f"student {row['student_share']:.1%}  agreement {row['agreement']} (n={row['agreement_n']})  "
                f"recorded {row['recorded_rows']}/{sampled} sampled, drops {row['dropped_counted']}, "
                f"lost {lost}, errors {errors}"
            )
        teacher_row, cascade_row = out.get("teacher", {}), out.get("cascade", {})
        result = {
            "overhead_p50_ms": teacher_row.get("overhead_p50_ms"),
            "overhead_p95_ms": teacher_row.get("overhead_p95_ms"),
            "in_gateway_overhead_p50_ms": teacher_row.get("in_gateway_overhead_p50_ms"),
            "in_gateway_overhead_p95_ms": teacher_row.get("in_gateway_overhead_p95_ms"),
            "gateway_cpu_ms_per_request": teacher_row.get("gateway_cpu_ms_per_request"),
            "student_share": cascade_row.get("student_share"),
            "agreement": cascade_row.get("agreement"),
            "lost_records": sum(r["lost_records"] for r in out.values()),
            "direct_p50_ms": round(d50, 1),
            "direct_p95_ms": round(d95, 1),
            "student_leg": "served student at " + student_url
            if args.student_url or args.real_student
            else "loopback fake (serving wire format)",
            "requests_per_policy": n,
            "clients": args.clients,
            "sample_rate": SAMPLE_RATE,
            "policies": out,
            "cores": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 1),
        }
        print(json.dumps(result))
    finally:
        for proc in (gateway_proc, teacher_proc, student_proc):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        connections.close_all()
        teardown_databases(databases, verbosity=0)


if __name__ == "__main__":
    main()
