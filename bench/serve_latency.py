"""Serving latency and throughput of the distilled BANKING77 student, through the official
``openai`` SDK against ``manage.py serve`` on loopback, vs ``transformers`` generate on the same
prompts in the same run.

1. The student: SmolLM2-135M-Instruct distilled on 600 BANKING77 rows with the CPU preset and
   evaluated on 300 held-out rows by the product itself (bench/serve_student.py; trained once,
   then kept in the temp dir).
2. A scratch database with that student registered, its task, served, and a team API token.
3. The serving process (a subprocess, its default engine for this machine) on 127.0.0.1.
4. The test prompts through the SDK, one at a time (latency p50/p95 as the client sees it), then
   with 8 concurrent clients (requests/s), accuracy against the gold labels; then one at a time
   again asking ``logprobs`` (the label's confidence, as the gateway asks: every label token is
   generated, so it is slower — ``p50_ms_confidence``).
5. The baseline, after the server has stopped: ``transformers`` generate constrained to the
   label set, one prompt at a time (worker.inference, as the evaluation measures latency).

    nice .venv/bin/python bench/serve_latency.py              # trains the student first if needed
    nice .venv/bin/python bench/serve_latency.py --n 40       # fewer prompts
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import serve_student  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = (len(values) - 1) * q
    low, high = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def db_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    auth = f"{s.get('USER') or 'postgres'}" + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def setup_served(record: dict[str, Any], model_dir: Path) -> tuple[str, str]:
    """(model slug, API token) for the student, served in the scratch database."""
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from finetunes.models import StudentModel
    from projects.models import Project
    from serving.services import student_serve
    from teams import services as team_services
    from teams.api_tokens import api_token_create

    dest = Path(settings.DATA_DIR) / "students" / "banking77-served"
    if not (dest / "config.json").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(model_dir, dest)
    user = get_user_model().objects.create_user("bench-serve")
    team = team_services.team_create(name="Bench serving", owner=user)
    project = Project.objects.create(
        team=team,
        name="BANKING77 intents",
        input_fields=record["input_fields"],
        instruction_template=record["instruction_template"],
        output_kind="label",
        label_set=record["label_set"],
        created_by=user,
    )
    student = StudentModel.objects.create(
        team=team,
        name="BANKING77 student",
        kind="distilled",
        source="local",
        path="students/banking77-served",
        project=project,
    )
    served = student_serve(student=student, user=user)
    _, raw = api_token_create(team=team, user=user, name="bench", scopes=["serve"])
    return served.slug, raw


def start_server(engine: str, gguf: str = "") -> tuple[subprocess.Popen[str], str, list[str]]:
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "distillery.settings_test",
            "DATABASE_URL": db_url(),
            "DISTILLERY_DATA_DIR": str(settings.DATA_DIR),
            "DISTILLERY_SERVE_ENGINE": engine,
            "DISTILLERY_SERVE_GGUF": gguf,
            "PYTHONUNBUFFERED": "1",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    log: list[str] = []
    ready = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert proc.stdout
        for line in proc.stdout:
            log.append(line)
            found = re.search(r"listening on (http://\S+/v1)", line)
            if found:
                url.append(found.group(1))
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(120):
        proc.terminate()
        raise SystemExit("serving process did not start:\n" + "".join(log[-30:]))
    return proc, url[0], log


def measure_served(url: str, slug: str, token: str, texts: list[str]) -> dict[str, Any]:
    from openai import OpenAI

    def ask(client: Any, text: str, logprobs: bool = False) -> tuple[str, float, float, int]:
        t0 = time.perf_counter()
        reply = client.chat.completions.create(
            model=slug, messages=[{"role": "user", "content": text}], logprobs=logprobs
        )
        took = time.perf_counter() - t0
        extra = reply.model_extra.get("distillery") or {}
        return (
            reply.choices[0].message.content,
            took,
            extra.get("confidence", 0.0),
            reply.usage.prompt_tokens,
        )

    client = OpenAI(base_url=url, api_key=token, max_retries=0, timeout=600)
    t0 = time.perf_counter()
    ask(client, texts[0])  # the first call loads (and on first use converts) the student
    first_call_s = time.perf_counter() - t0
    for text in texts[:5]:
        ask(client, text)
    sequential = [ask(client, t) for t in texts]
    clients = [OpenAI(base_url=url, api_key=token, max_retries=0, timeout=600) for _ in range(8)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        concurrent_answers = list(
            pool.map(lambda it: ask(clients[it[0] % 8], it[1]), enumerate(texts))
        )
    wall = time.perf_counter() - started
    # As the gateway asks (logprobs: the label's confidence, which needs all of its tokens).
    scored = [ask(client, t, logprobs=True) for t in texts]
    latencies = [s[1] for s in sequential]
    return {
        "answers": [s[0] for s in sequential],
        "concurrent_answers": [c[0] for c in concurrent_answers],
        "scored_answers": [s[0] for s in scored],
        "p50_ms_confidence": 1000 * percentile([s[1] for s in scored], 0.5),
        "p95_ms_confidence": 1000 * percentile([s[1] for s in scored], 0.95),
        "confidence_mean": statistics.fmean(s[2] for s in scored),
        "prompt_tokens_mean": statistics.fmean(s[3] for s in sequential),
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "rps_sequential": len(texts) / sum(latencies),
        "rps_8_clients": len(texts) / wall,
        "p50_ms_8_clients": 1000 * percentile([c[1] for c in concurrent_answers], 0.5),
        "first_call_s": first_call_s,
    }


def measure_transformers(
    model_dir: Path, record: dict[str, Any], texts: list[str]
) -> dict[str, Any]:
    from worker.inference import load_model
    from worker.taskspec import TaskSpec, build_messages

    task = TaskSpec(
        instruction_template=record["instruction_template"],
        output_kind="label",
        input_fields=tuple(record["input_fields"]),
        label_set=tuple(record["label_set"]),
    )
    model = load_model(model_dir)
    prompts = [model.prompt(build_messages(task, {"text": t})) for t in texts]
    model.generate_sequential(prompts[:3], max_new_tokens=1, constrain_to_labels=task.label_set)
    gen = model.generate_sequential(prompts, max_new_tokens=1, constrain_to_labels=task.label_set)
    return {
        "answers": gen.outputs,
        "p50_ms": 1000 * percentile(gen.latencies, 0.5),
        "p95_ms": 1000 * percentile(gen.latencies, 0.95),
        "prompt_tokens_mean": statistics.fmean(len(model.encode(p)) for p in prompts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=0, help="test prompts (default: all evaluated)")
    parser.add_argument(
        "--engine", default="auto", help="the serving engine (auto: its own choice)"
    )
    parser.add_argument(
        "--gguf",
        default="",
        help="serve with llama.cpp in this weights' format (Q8_0, Q4_0, Q4_K_M, BF16, ...; "
        "default: the serving default engine, and Q8_0 when that is llama.cpp)",
    )
    parser.add_argument(
        "--untuned-stand-in",
        type=Path,
        default=None,
        help="serve this model folder (e.g. the untuned SmolLM2) instead of training the student: "
        "checks the pipeline where training is not possible; accuracy is then meaningless and "
        "label answers take the constrained fallback path",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "distillery-bench" / "serve-data",
    )
    args = parser.parse_args(argv)
    record = serve_student.load_record()
    model_dir = serve_student.STUDENT_CACHE / "model"
    if args.untuned_stand_in is not None:
        from bench.distill_banking77 import INSTRUCTION, choose_rows

        _, test, labels = choose_rows(600, 300, 0)
        record = {
            "instruction_template": INSTRUCTION,
            "input_fields": ["text"],
            "label_set": labels,
            "test_rows": test,
            "evaluated_outputs": {},
            "label_list_in_prompt": True,  # no training record: the task's full prompt
            "stand_in": str(args.untuned_stand_in),
        }
        model_dir = args.untuned_stand_in
    if record is None:
        print("training the student once (bench/serve_student.py)...", flush=True)
        serve_student.train(serve_student.parser().parse_args(["--download"]))
        record = serve_student.load_record()
        assert record is not None
    rows = record["test_rows"][: args.n or None]
    texts, gold = [r["text"] for r in rows], [r["label"] for r in rows]

    from bench.distill_banking77 import setup_django

    args.data_dir.mkdir(parents=True, exist_ok=True)
    databases = setup_django(args.data_dir)
    try:
        slug, token = setup_served(record, model_dir)
        from django.db import connections

        connections.close_all()
        engine = "llama" if args.gguf and args.engine == "auto" else args.engine
        proc, url, log = start_server(engine, args.gguf)
        try:
            served = measure_served(url, slug, token, texts)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        engine = next(
            (ln.split("with ")[1].split(" in ")[0] for ln in log if "loaded" in ln), args.engine
        )
        from serving.selectors import serving_figures

        figures = serving_figures()
    finally:
        from django.db import connections
        from django.test.utils import teardown_databases

        connections.close_all()
        teardown_databases(databases, verbosity=0)
    baseline = measure_transformers(model_dir, record, texts)

    def accuracy(answers: list[str]) -> float:
        return sum(a == g for a, g in zip(answers, gold, strict=True)) / len(gold)

    evaluated = [record["evaluated_outputs"].get(t) for t in texts]
    result = {
        "p50_ms": round(served["p50_ms"], 1),
        "p95_ms": round(served["p95_ms"], 1),
        "rps_8_clients": round(served["rps_8_clients"], 1),
        "rps_sequential": round(served["rps_sequential"], 1),
        "p50_ms_8_clients": round(served["p50_ms_8_clients"], 1),
        "p50_ms_confidence": round(served["p50_ms_confidence"], 1),
        "p95_ms_confidence": round(served["p95_ms_confidence"], 1),
        "same_answers_with_confidence": round(
            sum(a == b for a, b in zip(served["answers"], served["scored_answers"], strict=True))
            / len(texts),
            4,
        ),
        "accuracy_served": round(accuracy(served["answers"]), 4),
        "accuracy_served_8_clients": round(accuracy(served["concurrent_answers"]), 4),
        "accuracy_evaluated": (
            round(accuracy([e or "" for e in evaluated]), 4) if any(evaluated) else None
        ),
        "stand_in": record.get("stand_in"),
        "accuracy_transformers": round(accuracy(baseline["answers"]), 4),
        "same_answers_as_evaluation": round(
            sum(a == e for a, e in zip(served["answers"], evaluated, strict=True)) / len(texts), 4
        ),
        "transformers_p50_ms": round(baseline["p50_ms"], 1),
        "transformers_p95_ms": round(baseline["p95_ms"], 1),
        "evaluation_p50_ms": record.get("evaluation_latency_p50_ms"),
        "prompt_tokens_mean": round(served["prompt_tokens_mean"], 1),
        "label_list_in_prompt": record.get("label_list_in_prompt"),
        "confidence_mean": round(served["confidence_mean"], 3),
        "first_call_s": round(served["first_call_s"], 1),
        "logged_p50_ms": round(figures.p50_ms or 0, 1),
        "logged_requests": figures.n,
        "engine": engine,
        "n": len(texts),
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 1),
    }
    result["accuracy_gap_points"] = (
        round(100 * abs(result["accuracy_served"] - result["accuracy_evaluated"]), 2)
        if result["accuracy_evaluated"] is not None
        else None
    )
    result["ratio_p50"] = round(baseline["p50_ms"] / served["p50_ms"], 2)
    print(
        f"served ({engine}, SDK over loopback): p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
        f"{result['rps_8_clients']} req/s with 8 clients ({result['rps_sequential']} one at a time); "
        f"with the confidence: p50 {result['p50_ms_confidence']} ms\n"
        f"transformers generate (constrained, one at a time): p50 {result['transformers_p50_ms']} ms, "
        f"p95 {result['transformers_p95_ms']} ms -> {result['ratio_p50']}x\n"
        f"accuracy on {len(texts)} test rows: served {result['accuracy_served']}, evaluated "
        f"{result['accuracy_evaluated']}, transformers here {result['accuracy_transformers']} "
        f"(gap {result['accuracy_gap_points']} points); prompt {result['prompt_tokens_mean']} tokens "
        f"(label list in prompt: {result['label_list_in_prompt']}); load average {result['load_average_1m']}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
