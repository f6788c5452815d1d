"""The distilled BANKING77 student that bench/serve_latency.py serves, trained once and kept.

Runs bench/distill_banking77.py's journey (the product's own services: import gold labels as the
teacher, review, freeze, LoRA fine-tune with the CPU preset, evaluation on held-out test rows)
and keeps what serving needs before the scratch database goes: the merged student folder, the
task (instruction, labels), the evaluated test rows and the evaluation's accuracy and latency.

    nice .venv/bin/python bench/serve_student.py --download     # ~15-25 min on 2 cores, once
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STUDENT_CACHE = Path(tempfile.gettempdir()) / "distillery-bench" / "serve-student"
RECORD = "serve_student.json"


def load_record(cache: Path = STUDENT_CACHE) -> dict[str, Any] | None:
    try:
        record = json.loads((cache / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if (cache / "model" / "config.json").is_file() else None


def train(args: argparse.Namespace, cache: Path = STUDENT_CACHE) -> dict[str, Any]:
    from bench import distill_banking77 as d

    args.data_dir.mkdir(parents=True, exist_ok=True)
    databases = d.setup_django(args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        started = time.perf_counter()
        result = d.journey(args, work)
        from django.conf import settings

        from evaluations.models import EvalCandidate
        from finetunes.models import StudentModel
        from projects.models import Project

        student = StudentModel.objects.filter(kind="distilled").latest("id")
        project = Project.objects.get()
        distilled = EvalCandidate.objects.filter(role="distilled").latest("id")
        outputs = {
            o.example.inputs["text"]: o.canonical
            for o in distilled.outputs.select_related("example")
        }
        rows = [
            {"text": e.inputs["text"], "label": e.reference}
            for e in distilled.evaluation.examples.order_by("position")
        ]
        source = Path(settings.DATA_DIR) / student.path
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        shutil.copytree(source, cache / "model")
        record = {
            "instruction_template": project.instruction_template,
            "input_fields": project.input_fields,
            "label_set": project.label_set,
            "test_rows": rows,
            "evaluated_outputs": outputs,
            "accuracy_evaluated": result["distilled_accuracy"]["value"],
            "evaluation_latency_p50_ms": result["distilled"]["latency_p50_ms"],
            "evaluation_latency_p95_ms": result["distilled"]["latency_p95_ms"],
            "prompt_tokens_mean": result["distilled"]["prompt_tokens_mean"],
            "label_list_in_prompt": result["distilled"]["label_list_in_prompt"],
            "journey": result,
            "train_s": round(time.perf_counter() - started, 1),
        }
        (cache / RECORD).write_text(json.dumps(record), encoding="utf-8")
        return record
    finally:
        from django.db import connections
        from django.test.utils import teardown_databases

        connections.close_all()
        teardown_databases(databases, verbosity=0)
        shutil.rmtree(work, ignore_errors=True)
        for sub in ("finetunes", "datasets"):
            shutil.rmtree(args.data_dir / sub, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--train-rows", type=int, default=600)
    p.add_argument("--test-rows", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-requests", type=int, default=20)
    p.add_argument("--keep-label-list", action="store_true")
    p.add_argument("--no-untuned", action="store_true", help="evaluate the distilled student only")
    # The journey's recipe options (bench/distill_banking77.py): the preset's own by default.
    p.add_argument("--data", choices=("auto", "demo", "shared"), default="auto")
    p.add_argument("--preset", default=None)
    p.add_argument("--method", choices=("lora", "full"), default="lora")
    for name in ("--epochs", "--learning-rate"):
        p.add_argument(name, type=float, default=None)
    for name in ("--lora-r", "--lora-alpha", "--max-steps", "--batch-size"):
        p.add_argument(name, type=int, default=None)
    p.set_defaults(curve="", target=95)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "distillery-bench" / "distill-data",
    )
    p.add_argument("--smollm2-source", type=Path, default=None)
    p.add_argument("--download", action="store_true")
    return p


if __name__ == "__main__":
    record = train(parser().parse_args())
    print(
        json.dumps({k: v for k, v in record.items() if k not in ("test_rows", "evaluated_outputs")})
    )
