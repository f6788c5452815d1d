"""Freeze 50,000 rows into a dataset version with the engine alone (no database), and time it.

    .venv/bin/python bench/freeze_engine.py            # 50,000 rows, best of 3, + stress case
    .venv/bin/python bench/freeze_engine.py --quick    # 10,000 rows, one run, small baseline

Rows come from BANKING77 (../shared/data/banking77 train + test, 13,083 messages; the repo's
demo sample when that is missing) with the gold label as the teacher's output. They are made
unique the way production inputs are: every copy after the first gets a distinct order number
("… (order #12345)"), so each message has ~4 near-duplicate siblings that the freeze must keep
in one split. The stress case (full mode) instead joins two random messages per row — longer
texts whose rare words repeat in ~8 rows — the worst case for the near-duplicate join — and
also freezes 50,000 DialogSum dialogues (long inputs, ~130 words, a text task), same scheme.

Ours: worker.datasets.freeze (validation + canonical outputs, grouping by normalised text,
near-duplicate join and grouping, stratified seeded splits, leakage report, sha256 content hash,
stats), plus OpenAI chat JSONL export of the version to a temporary file. Target: ≤ 3 s freeze.

Baseline, in the same process: near-duplicate search by comparing all pairs (the obvious
O(n²) way), timed on a sample of --baseline-rows unique texts against ours on the same sample,
and extrapolated quadratically to the full row count. The final line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from shared_data import shared_data  # bench/ is on sys.path when a benchmark runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.checks import normalise_text  # noqa: E402
from worker.datasets import (  # noqa: E402
    DatasetRow,
    FreezeParams,
    FrozenVersion,
    freeze,
    near_duplicate_pairs,
    write_openai_chat_jsonl,
)
from worker.taskspec import TaskSpec  # noqa: E402

SHARED = shared_data("banking77")
DEMO = REPO / "projects" / "demo_data" / "banking77"


def load_messages() -> tuple[list[dict[str, str]], str]:
    folder = SHARED if (SHARED / "train.jsonl").exists() else DEMO
    rows = [
        json.loads(line)
        for name in ("train.jsonl", "test.jsonl")
        for line in (folder / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return rows, str(folder)


def make_rows(
    messages: list[dict[str, str]], n: int, scheme: str, seed: int = 0
) -> list[DatasetRow]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        base = messages[i % len(messages)]
        if i < len(messages):
            text = base["text"]
        elif scheme == "order":
            text = f"{base['text']} (order #{10_000 + i})"
        else:  # "pair": two messages in one
            other = messages[rng.randrange(len(messages))]
            text = f"{base['text']} {other['text']}"
        rows.append(DatasetRow(i, {"text": text}, base["label"], "teacher", (i,)))
    return rows


def time_freeze(
    spec: TaskSpec, rows: list[DatasetRow], repeats: int
) -> tuple[list[float], list[float], FrozenVersion]:
    times = []
    cpu = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        version = freeze(spec, rows, FreezeParams(seed=42))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return times, cpu, version


def all_pairs(texts: list[str], threshold: float) -> int:
    sets = [frozenset(t.split()) for t in texts]
    found = 0
    for i, a in enumerate(sets):
        for b in sets[i + 1 :]:
            inter = len(a & b)
            union = len(a) + len(b) - inter
            if union and inter / union >= threshold - 1e-9:
                found += 1
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 rows, one run")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--baseline-rows", type=int, default=None)
    args = parser.parse_args()
    n = args.rows or (10_000 if args.quick else 50_000)
    repeats = args.repeats or (1 if args.quick else 3)
    baseline_n = args.baseline_rows or (1_000 if args.quick else 3_000)

    messages, source = load_messages()
    spec = TaskSpec(
        instruction_template="Classify this banking customer message:\n{{ text }}",
        output_kind="label",
        input_fields=("text",),
        system_prompt="You route banking customer messages to the right team.",
        label_set=tuple(sorted({m["label"] for m in messages})),
    )
    rows = make_rows(messages, n, "order")
    times, cpu, version = time_freeze(spec, rows, repeats)
    freeze_s = min(times)
    print(
        f"freeze {n} rows (order-number scheme): best {freeze_s:.2f} s "
        f"({min(cpu):.2f} s CPU) of "
        f"{', '.join(f'{t:.2f}' for t in times)}; splits {version.stats.counts}; "
        f"groups {version.stats.groups}, largest {version.stats.largest_group}; "
        f"near-duplicate pairs {version.leakage.near_duplicate_pairs}; "
        f"leakage ok {version.leakage.ok}",
        file=sys.stderr,
    )
    with tempfile.TemporaryFile("w+", encoding="utf-8") as fp:
        start = time.perf_counter()
        write_openai_chat_jsonl(spec, version.rows, fp)
        export_s = time.perf_counter() - start
        export_mb = fp.tell() / 1e6

    # Same input again: the hash and splits must not move.
    again = freeze(spec, list(reversed(rows)), FreezeParams(seed=42))
    deterministic = again.content_hash == version.content_hash

    stress_s = None
    if not args.quick:
        stress_rows = make_rows(messages, n, "pair", seed=1)
        stress_times, _, stress_version = time_freeze(spec, stress_rows, 1)
        stress_s = min(stress_times)
        print(
            f"stress (two messages per row): {stress_s:.2f} s; near-duplicate pairs "
            f"{stress_version.leakage.near_duplicate_pairs}",
            file=sys.stderr,
        )

    long_s = long_cpu_s = None
    dialogsum = shared_data("dialogsum", "train.jsonl")
    if not args.quick and dialogsum.exists():
        # Long inputs (~130 words): a dialogue-summary text task, same order-number scheme.
        dialogues = [
            json.loads(line) for line in dialogsum.read_text(encoding="utf-8").splitlines()
        ]
        text_spec = TaskSpec("Summarise the dialogue:\n{{ dialogue }}", "text", ("dialogue",))
        long_rows = []
        for i in range(n):
            d = dialogues[i % len(dialogues)]
            suffix = "" if i < len(dialogues) else f"\n#Person1#: My order number is {10_000 + i}."
            long_rows.append(
                DatasetRow(i, {"dialogue": d["dialogue"] + suffix}, d["summary"], "teacher")
            )
        long_times, long_cpu, _ = time_freeze(text_spec, long_rows, 1)
        long_s, long_cpu_s = long_times[0], long_cpu[0]
        print(
            f"long inputs (DialogSum dialogues): {long_s:.2f} s ({long_cpu_s:.2f} s CPU)",
            file=sys.stderr,
        )

    # Baseline vs ours on the same sample of unique normalised texts.
    sample = sorted({normalise_text(r.inputs["text"]) for r in rows})
    random.Random(3).shuffle(sample)
    sample = sample[:baseline_n]
    start = time.perf_counter()
    baseline_pairs = all_pairs(sample, 0.8)
    baseline_s = time.perf_counter() - start
    start = time.perf_counter()
    ours_pairs = len(near_duplicate_pairs(sample, 0.8))
    ours_sample_s = time.perf_counter() - start
    assert ours_pairs == baseline_pairs, (ours_pairs, baseline_pairs)
    baseline_full_s = baseline_s * (n / len(sample)) ** 2
    print(
        f"near-duplicates on {len(sample)} texts: all pairs {baseline_s:.2f} s, ours "
        f"{ours_sample_s:.3f} s, both {ours_pairs} pairs; all pairs extrapolated to {n}: "
        f"{baseline_full_s:.0f} s",
        file=sys.stderr,
    )

    result = {
        "bench": "freeze_engine",
        "rows": n,
        "data": source,
        "freeze_s": round(freeze_s, 3),
        "freeze_runs_s": [round(t, 3) for t in times],
        # CPU seconds of this process: what the freeze costs on an idle core, whatever else
        # the machine is running.
        "freeze_cpu_s": round(min(cpu), 3),
        "target_s": 3.0,
        "within_target": freeze_s <= 3.0,
        "deterministic": deterministic,
        "content_hash": version.content_hash,
        "splits": version.stats.counts,
        "near_duplicate_pairs": version.leakage.near_duplicate_pairs,
        "export_chat_jsonl_s": round(export_s, 3),
        "export_chat_jsonl_mb": round(export_mb, 1),
        "stress_two_messages_freeze_s": None if stress_s is None else round(stress_s, 3),
        "long_inputs_dialogsum_freeze_s": None if long_s is None else round(long_s, 3),
        "long_inputs_dialogsum_cpu_s": None if long_cpu_s is None else round(long_cpu_s, 3),
        "baseline_sample": len(sample),
        "baseline_all_pairs_s": round(baseline_s, 3),
        "ours_on_sample_s": round(ours_sample_s, 4),
        "speedup_on_sample": round(baseline_s / max(ours_sample_s, 1e-9), 1),
        "baseline_all_pairs_extrapolated_s": round(baseline_full_s, 1),
        "ratio_baseline_over_ours": round(baseline_full_s / freeze_s, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
