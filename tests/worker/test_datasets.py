"""Frozen dataset versions: determinism, stratified and group-aware splits, leakage, exports."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from worker.datasets import (
    DatasetError,
    DatasetRow,
    FreezeParams,
    agreement,
    assign_reviewers,
    chat_messages,
    formula_safe,
    freeze,
    leakage_check,
    near_duplicate_pairs,
    overlap_agreement,
    read_csv,
    read_openai_chat_jsonl,
    read_prompt_completion_jsonl,
    unformula,
    write_csv,
    write_openai_chat_jsonl,
    write_prompt_completion_jsonl,
)
from worker.taskspec import TaskSpec, build_messages

BANKING = Path(__file__).resolve().parents[2] / "projects" / "demo_data" / "banking77"


@pytest.fixture(scope="module")
def banking():
    """The repository's BANKING77 sample: 1,662 real messages, 77 intents, ~21 per intent."""
    rows = [
        json.loads(line)
        for name in ("train.jsonl", "test.jsonl")
        for line in (BANKING / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    spec = TaskSpec(
        instruction_template="Classify this banking customer message:\n{{ text }}",
        output_kind="label",
        input_fields=("text",),
        system_prompt="You route banking customer messages.",
        label_set=tuple(sorted({r["label"] for r in rows})),
    )
    return spec, rows


def dataset_rows(rows: list[dict[str, str]]) -> list[DatasetRow]:
    return [
        DatasetRow(i, {"text": r["text"]}, r["label"], "teacher", (1000 + i,))
        for i, r in enumerate(rows)
    ]


SUMMARY = TaskSpec(
    instruction_template="Summarise:\n{{ dialogue }}",
    output_kind="text",
    input_fields=("dialogue",),
)
RECEIPT = TaskSpec(
    instruction_template="Extract from {{ vendor_hint }}:\n{{ receipt }}",
    output_kind="json",
    input_fields=("receipt", "vendor_hint"),
    system_prompt="Extract fields.",
    json_schema={"type": "object", "properties": {"total": {"type": "number"}}},
)


# ----------------------------------------------------------------------------- freeze


def test_freeze_is_deterministic_whatever_the_row_order(banking):
    spec, rows = banking
    items = dataset_rows(rows)
    first = freeze(spec, items, FreezeParams(seed=7))
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    second = freeze(spec, shuffled, FreezeParams(seed=7))
    assert first.content_hash == second.content_hash
    assert [(r.row_id, r.split) for r in first.rows] == [(r.row_id, r.split) for r in second.rows]
    assert len(first.content_hash) == 64

    other_seed = freeze(spec, items, FreezeParams(seed=8))
    assert other_seed.content_hash != first.content_hash
    assert [r.split for r in other_seed.rows] != [r.split for r in first.rows]
    edited = [
        *items[:-1],
        DatasetRow(items[-1].row_id, items[-1].inputs, spec.label_set[0], "teacher_edited"),
    ]
    assert freeze(spec, edited, FreezeParams(seed=7)).content_hash != first.content_hash


def test_splits_follow_the_shares_and_are_stratified_by_label(banking):
    spec, rows = banking
    version = freeze(spec, dataset_rows(rows), FreezeParams(seed=3))
    counts = version.stats.counts
    n = len(rows)
    assert sum(counts.values()) == n
    assert counts["train"] == pytest.approx(0.8 * n, abs=15)
    assert counts["validation"] == pytest.approx(0.1 * n, abs=15)
    assert counts["test"] == pytest.approx(0.1 * n, abs=15)
    # Every label has its share in every split (about 21 rows per label: 17 / 2 / 2), to
    # within a row or two; an unstratified random split misses by more for many labels.
    per_label_total = Counter(r["label"] for r in rows)
    for split, share in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        per_label = version.stats.labels[split]
        assert set(per_label) == set(spec.label_set)
        for label, count in per_label.items():
            assert abs(count - share * per_label_total[label]) <= 2.5, (split, label, count)


def test_exact_and_normalised_duplicates_never_straddle_splits():
    texts = [f"Where is card number {i} that I ordered last week" for i in range(60)]
    planted = ["Where is my card?", "where is my card", "WHERE   is my card!!", "Where is my card?"]
    rows = [DatasetRow(i, {"dialogue": t}, f"summary {i}", "teacher") for i, t in enumerate(texts)]
    rows += [
        DatasetRow(f"dup{k}", {"dialogue": t}, f"dup summary {k}", "teacher")
        for k, t in enumerate(planted)
    ]
    for seed in range(20):
        version = freeze(SUMMARY, rows, FreezeParams(seed=seed, near_duplicates="report"))
        dup_splits = {r.split for r in version.rows if str(r.row_id).startswith("dup")}
        assert len(dup_splits) == 1
        assert len({r.group for r in version.rows if str(r.row_id).startswith("dup")}) == 1
        assert version.leakage.exact == [] and version.leakage.normalised == []


def test_near_duplicates_are_grouped_by_default_and_reported_when_they_straddle():
    rng = random.Random(0)
    vocabulary = [f"word{i}" for i in range(400)]
    texts = [" ".join(rng.sample(vocabulary, 12)) for _ in range(200)]
    planted = texts[0].split()
    planted[3] = "changed"  # 11 of 13 distinct words shared: Jaccard 0.846
    rows = [DatasetRow(i, {"dialogue": t}, "s", "teacher") for i, t in enumerate(texts)]
    rows.append(DatasetRow("near", {"dialogue": " ".join(planted)}, "s", "teacher"))

    for seed in range(10):
        grouped = freeze(SUMMARY, rows, FreezeParams(seed=seed))
        by_id = {r.row_id: r for r in grouped.rows}
        assert by_id["near"].split == by_id[0].split and by_id["near"].group == by_id[0].group
        assert grouped.leakage.ok and grouped.leakage.near_duplicate_groups_merged == 1

    # Reporting only: find a seed where the planted pair straddles; the report must catch it.
    for seed in range(50):
        reported = freeze(SUMMARY, rows, FreezeParams(seed=seed, near_duplicates="report"))
        by_id = {r.row_id: r for r in reported.rows}
        if by_id["near"].split != by_id[0].split:
            break
    else:  # pragma: no cover
        pytest.fail("the planted pair never straddled in 50 seeds")
    assert not reported.leakage.ok
    [pair] = reported.leakage.near_duplicates
    assert {pair.row_a, pair.row_b} == {0, "near"}
    assert pair.similarity == pytest.approx(11 / 13)
    assert "near-duplicate" in reported.leakage.summary()


def test_leakage_check_on_any_assignment_names_what_straddles():
    items = [
        (1, {"text": "How do I reset my PIN?"}, "train"),
        (2, {"text": "How do I reset my PIN?"}, "test"),  # exact
        (3, {"text": "my card was stolen"}, "train"),
        (4, {"text": "My card was STOLEN."}, "validation"),  # normalised
        (5, {"text": "I want to cancel the transfer I made to my landlord yesterday"}, "train"),
        (6, {"text": "i want to cancel the transfer i made to my landlord today"}, "test"),  # near
        (7, {"text": "What is the exchange rate for euros"}, "test"),
    ]
    report = leakage_check(items, threshold=0.8)
    assert [(s.text, s.rows) for s in report.exact] == [
        ("How do I reset my PIN?", {"test": [2], "train": [1]})
    ]
    assert [s.rows for s in report.normalised] == [{"train": [3], "validation": [4]}]
    assert [(p.row_a, p.split_a, p.row_b, p.split_b) for p in report.near_duplicates] == [
        (6, "test", 5, "train")
    ]
    assert report.near_duplicates[0].similarity == pytest.approx(9 / 11)
    json.dumps(report.to_dict())  # the web side stores it as JSON
    clean = leakage_check([(1, "a b c", "train"), (2, "d e f", "test")])
    assert clean.ok and "No leakage" in clean.summary()


def test_near_duplicate_search_finds_exactly_what_brute_force_finds():
    rng = random.Random(5)
    words = [f"w{i}" for i in range(25)]
    texts = [" ".join(rng.sample(words, rng.randint(0, 10))) for _ in range(250)]
    texts += [" ".join(t.split()[1:]) for t in texts[:60]]  # near copies
    sets = [frozenset(t.split()) for t in texts]
    for threshold in (0.5, 0.75, 0.8, 0.9, 1.0):
        expected = [
            (i, j)
            for i, j in itertools.combinations(range(len(texts)), 2)
            if sets[i] and sets[j] and len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold
        ]
        found = near_duplicate_pairs(texts, threshold)
        assert [(i, j) for i, j, _ in found] == expected


def test_real_to_synthetic_ratio_is_controlled_with_the_seed():
    real = [
        DatasetRow(f"r{i}", {"dialogue": f"real {i}"}, "x", "human_reference") for i in range(30)
    ]
    synthetic = [
        DatasetRow(f"t{i}", {"dialogue": f"teacher {i}"}, "x", "teacher") for i in range(100)
    ]
    rows = real + synthetic

    def sources(ratio: float | None) -> Counter[str]:
        version = freeze(SUMMARY, rows, FreezeParams(real_ratio=ratio, near_duplicates="report"))
        return Counter(r.source for r in version.rows)

    assert sources(None) == {"human_reference": 30, "teacher": 100}
    assert sources(0.5) == {"human_reference": 30, "teacher": 30}
    assert sources(0.1) == {"human_reference": 11, "teacher": 100}
    assert sources(0.0) == {"teacher": 100}
    assert sources(1.0) == {"human_reference": 30}
    with pytest.raises(DatasetError, match="rows: nothing to freeze once real_ratio = 1"):
        freeze(SUMMARY, synthetic, FreezeParams(real_ratio=1.0))
    version = freeze(SUMMARY, rows, FreezeParams(real_ratio=0.5))
    assert version.stats.real_share == 0.5
    assert version.stats.dropped_for_ratio == {"real": 0, "synthetic": 70}


def test_synthetic_inputs_train_only_and_capped_by_share_with_the_seed(banking):
    spec, data = banking
    real = dataset_rows(data[:400])
    # Inputs a teacher wrote: distinct texts, one of them a near copy of a real input.
    made = [
        DatasetRow(
            f"s{i}",
            {"text": f"synthetic question {i} about card number {i * 7}"},
            r["label"],
            "teacher",
            synthetic_input=True,
        )
        for i, r in enumerate(data[400:700])
    ]
    copy_of = real[5]
    made.append(
        DatasetRow(
            "s-copy",
            {"text": str(copy_of.inputs["text"]) + " please"},
            copy_of.output,
            "teacher",
            synthetic_input=True,
        )
    )
    rows = real + made

    uncapped = freeze(spec, rows, FreezeParams(seed=3))
    by_split = Counter((r.split, r.synthetic_input) for r in uncapped.rows)
    assert by_split[("validation", True)] == by_split[("test", True)] == 0
    assert by_split[("train", True)] == 301
    # The real input the copy is close to went to train with it (never test: no leakage).
    assert next(r for r in uncapped.rows if r.row_id == copy_of.row_id).split == "train"
    assert uncapped.stats.synthetic_inputs == {"train": 301, "validation": 0, "test": 0}

    capped = freeze(spec, rows, FreezeParams(seed=3, max_synthetic_train_share=0.25))
    train = [r for r in capped.rows if r.split == "train"]
    synthetic = sum(r.synthetic_input for r in train)
    assert 0 < synthetic <= 0.25 * len(train) and synthetic >= 0.25 * len(train) - 1
    assert capped.stats.dropped_synthetic_over_cap == 301 - synthetic
    assert not any(r.synthetic_input for r in capped.rows if r.split != "train")
    # The seed chooses which synthetic rows stay; the same seed, the same ones and hash.
    again = freeze(spec, list(reversed(rows)), FreezeParams(seed=3, max_synthetic_train_share=0.25))
    assert again.content_hash == capped.content_hash
    other = freeze(spec, rows, FreezeParams(seed=4, max_synthetic_train_share=0.25))
    assert {r.row_id for r in other.rows} != {r.row_id for r in capped.rows}
    none = freeze(spec, rows, FreezeParams(max_synthetic_train_share=0.0))
    assert not any(r.synthetic_input for r in none.rows)
    with pytest.raises(DatasetError) as caught:
        freeze(spec, made, FreezeParams(max_synthetic_train_share=0.0))
    assert caught.value.field == "max_synthetic_train_share"
    with pytest.raises(DatasetError) as bad:
        freeze(spec, rows, FreezeParams(max_synthetic_train_share=1.5))
    assert bad.value.field == "max_synthetic_train_share"
    # A version without synthetic inputs keeps the hash it had before the cap existed.
    assert (
        freeze(spec, real, FreezeParams(seed=3)).content_hash
        == freeze(spec, real, FreezeParams(seed=3, max_synthetic_train_share=None)).content_hash
    )


def test_outputs_are_canonicalised_and_invalid_rows_refused_or_skipped(banking):
    spec, _ = banking
    label = spec.label_set[0]
    rows = [
        DatasetRow("a", {"text": "hello"}, label.replace("_", " ").upper(), "human_reference"),
        DatasetRow("b", {"text": "hi"}, "not a label", "teacher"),
    ]
    with pytest.raises(DatasetError, match=r"row 'b': output: label 'not a label' is not in"):
        freeze(spec, rows)
    version = freeze(spec, rows, FreezeParams(on_invalid="skip"))
    assert [(r.row_id, r.output) for r in version.rows] == [("a", label)]
    assert [(s.row_id, s.reason[:6]) for s in version.skipped] == [("b", "output")]

    json_rows = [
        DatasetRow(
            1, {"receipt": "r", "vendor_hint": "v"}, '```json\n{ "total" : 3 }\n```', "teacher"
        )
    ]
    assert freeze(RECEIPT, json_rows).rows[0].output == '{"total": 3}'


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [(1, {"dialogue": "a"}, "x", "teacher"), (1, {"dialogue": "b"}, "y", "teacher")],
            "row 1: the same row_id appears twice",
        ),
        ([(1, {"dialogue": "a"}, "x", "robot")], "row 1: source must be one of"),
        ([(1, {"other": "a"}, "x", "teacher")], "row 1: input has no value for field(s): dialogue"),
        ([(1, {"dialogue": "a"}, "", "teacher")], "row 1: output: empty output"),
        ([(1, {"dialogue": "a"}, "x")], "expected (row_id, inputs, output, source"),
        ([], "rows: nothing to freeze"),
    ],
)
def test_bad_rows_are_refused_with_a_message_naming_the_row(rows, message):
    with pytest.raises(DatasetError) as caught:
        freeze(SUMMARY, rows)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (FreezeParams(train=0.8, validation=0.1, test=0.2), "train"),
        (FreezeParams(train=0.0, validation=0.5, test=0.5), "train"),
        (FreezeParams(test=-0.1, validation=0.3), "test"),
        (FreezeParams(real_ratio=1.5), "real_ratio"),
        (FreezeParams(near_duplicate_threshold=0), "near_duplicate_threshold"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(params, field):
    with pytest.raises(DatasetError) as caught:
        freeze(SUMMARY, [(1, {"dialogue": "a"}, "x", "teacher")], params)
    assert str(caught.value).startswith(field + ":")


def test_stats_and_the_record_of_what_went_in(banking):
    spec, rows = banking
    version = freeze(spec, dataset_rows(rows), FreezeParams(seed=1))
    stats = version.stats
    for split in ("train", "validation", "test"):
        assert sum(stats.labels[split].values()) == stats.counts[split]
        assert sum(stats.length_counts[split]) == stats.counts[split]
        assert stats.sources[split] == {"teacher": stats.counts[split]}
    assert len(stats.length_edges) == len(stats.length_counts["train"]) + 1
    assert stats.length_edges[-1] == max(len(r["label"]) for r in rows)
    assert version.row_ids == list(range(len(rows)))
    assert version.decision_ids == [1000 + i for i in range(len(rows))]
    assert sum(len(version.split_rows(s)) for s in ("train", "validation", "test")) == len(rows)
    manifest = json.loads(json.dumps(version.manifest()))  # JSON-ready for the version record
    assert manifest["content_hash"] == version.content_hash
    assert manifest["stats"]["counts"] == stats.counts and manifest["params"]["seed"] == 1
    assert FreezeParams(**manifest["params"]) == version.params


# ----------------------------------------------------------------------------- exports


def test_openai_chat_jsonl_round_trips_with_system_and_user_from_the_task_spec(banking):
    spec, rows = banking
    version = freeze(spec, dataset_rows(rows[:50]), FreezeParams(seed=1))
    fp = io.StringIO()
    assert write_openai_chat_jsonl(spec, version.rows, fp) == 50
    fp.seek(0)
    read = list(read_openai_chat_jsonl(fp))
    assert read == [chat_messages(spec, r) for r in version.rows]
    first = read[0]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[:2] == build_messages(spec, dict(version.rows[0].inputs))
    assert first[2]["content"] == version.rows[0].output


def test_prompt_completion_jsonl_round_trips_in_both_shapes():
    rows = [
        DatasetRow(
            1, {"receipt": "TOTAL 3.00 ünïcödé", "vendor_hint": "Tesco"}, '{"total": 3}', "teacher"
        )
    ]
    version = freeze(RECEIPT, rows)
    chat = io.StringIO()
    write_prompt_completion_jsonl(RECEIPT, version.rows, chat)
    chat.seek(0)
    [record] = list(read_prompt_completion_jsonl(chat))
    assert record["prompt"] == build_messages(RECEIPT, dict(rows[0].inputs))
    assert record["completion"] == [{"role": "assistant", "content": '{"total": 3}'}]
    assert "ünïcödé" in chat.getvalue()  # written as UTF-8 text, not \\u escapes

    plain = io.StringIO()
    write_prompt_completion_jsonl(RECEIPT, version.rows, plain, conversational=False)
    plain.seek(0)
    [record] = list(read_prompt_completion_jsonl(plain))
    assert record["prompt"].startswith("Extract fields.\n\nExtract from Tesco:")
    assert record["completion"] == '{"total": 3}'


def test_jsonl_readers_name_the_bad_line():
    with pytest.raises(DatasetError, match="line 2: not valid JSON"):
        list(
            read_openai_chat_jsonl(
                io.StringIO('{"messages": [{"role": "assistant", "content": "x"}]}\n{oops\n')
            )
        )
    with pytest.raises(DatasetError, match="line 1: the last message must be the assistant's"):
        list(
            read_openai_chat_jsonl(
                io.StringIO('{"messages": [{"role": "user", "content": "x"}]}\n')
            )
        )


TRICKY = [
    '=HYPERLINK("http://evil.example","click")',
    "+1 555 0100",
    "-2",
    "@SUM(A1:A2)",
    "\tleading tab",
    "\rleading carriage return",
    "'=already escaped looking",
    "''+two apostrophes",
    "'plain apostrophe",
    'comma, "quotes" and\nnewlines',
    "ünïcödé ✓",
    "",
]


def test_csv_neutralises_formula_cells_and_round_trips(tmp_path):
    rows = [
        DatasetRow(f"id{i}", {"dialogue": text}, text or "empty input", "teacher", (i, f"d{i}"))
        for i, text in enumerate(TRICKY)
    ]
    rows.append(DatasetRow("=1+1", {"dialogue": "formula id"}, "-10", "teacher_edited"))
    version = freeze(
        SUMMARY, [r for r in rows if r.inputs["dialogue"]], FreezeParams(near_duplicates="report")
    )
    path = tmp_path / "export.csv"
    with path.open("w", newline="", encoding="utf-8") as fp:
        write_csv(SUMMARY, version.rows, fp)
    with path.open(newline="", encoding="utf-8") as fp:
        cells = [c for line in csv.reader(fp) for c in line]
    assert all(c[:1] not in {"=", "+", "-", "@", "\t", "\r"} for c in cells)
    assert '\'=HYPERLINK("http://evil.example","click")' in cells
    assert "''=already escaped looking" in cells and "'plain apostrophe" in cells
    with path.open(newline="", encoding="utf-8") as fp:
        back = list(read_csv(SUMMARY, fp))
    assert [
        (r.row_id, dict(r.inputs), r.output, r.source, r.decision_ids, r.split) for r in back
    ] == [
        (str(r.row_id), dict(r.inputs), r.output, r.source, r.decision_ids, r.split)
        for r in version.rows
    ]


@pytest.mark.parametrize("cell", [*TRICKY, "'", "''", "'-", "=", "a=b"])
def test_formula_escaping_is_reversible(cell):
    assert unformula(formula_safe(cell)) == cell


def test_csv_reader_refuses_a_foreign_file():
    with pytest.raises(DatasetError, match="line 1: expected the columns"):
        list(read_csv(SUMMARY, io.StringIO("a,b\n1,2\n")))


# ----------------------------------------------------------------------------- agreement


def test_percent_agreement_and_cohens_kappa_match_sklearn():
    rng = random.Random(2)
    choices = ["approved", "rejected", "edited"]
    a = [rng.choice(choices) for _ in range(200)]
    b = [x if rng.random() < 0.7 else rng.choice(choices) for x in a]
    result = agreement(a, b)
    assert result.n == 200 and result.agreed == sum(x == y for x, y in zip(a, b, strict=True))
    assert result.percent == pytest.approx(100 * result.agreed / 200)
    assert result.kappa == pytest.approx(cohen_kappa_score(a, b), abs=1e-6)
    assert agreement([], []).kappa is None
    assert agreement(["approved"] * 5, ["approved"] * 5) == agreement(
        ["approved"] * 5, ["approved"] * 5
    )
    assert agreement(["approved"] * 5, ["approved"] * 5).percent == 100.0
    assert agreement(["approved"] * 5, ["approved"] * 5).kappa is None  # undefined, not a number


def test_overlap_agreement_lists_conflicts_per_reviewer_pair():
    decisions = [
        (1, "ann", "approved"),
        (1, "bob", "approved"),
        (2, "ann", "approved"),
        (2, "bob", "rejected"),
        (3, "ann", "rejected"),
        (3, "bob", "rejected"),
        (3, "cy", "approved"),
        (4, "ann", "rejected"),
        (4, "ann", "approved"),
        (4, "bob", "approved"),  # ann changed her mind
        (5, "cy", "approved"),
    ]
    pairs = {(p.reviewer_a, p.reviewer_b): p for p in overlap_agreement(decisions)}
    assert set(pairs) == {("ann", "bob"), ("ann", "cy"), ("bob", "cy")}
    ann_bob = pairs[("ann", "bob")]
    assert ann_bob.agreement.n == 4 and ann_bob.agreement.agreed == 3
    assert ann_bob.conflicts == [2]
    assert ann_bob.agreement.kappa == pytest.approx(
        cohen_kappa_score(
            ["approved", "approved", "rejected", "approved"],
            ["approved", "rejected", "rejected", "approved"],
        )
    )
    assert pairs[("ann", "cy")].conflicts == [3]


def test_assign_reviewers_splits_the_queue_with_the_requested_overlap():
    items = list(range(1000))
    reviewers = ["ann", "bob", "cy"]
    assignment = assign_reviewers(items, reviewers, overlap=0.2, seed=4)
    assert assignment == assign_reviewers(list(reversed(items)), reviewers, overlap=0.2, seed=4)
    assert set(assignment) == set(items)
    doubled = [i for i, who in assignment.items() if len(who) == 2]
    assert len(doubled) == 200
    assert all(len(set(who)) == len(who) for who in assignment.values())
    load = Counter(r for who in assignment.values() for r in who)
    assert max(load.values()) - min(load.values()) <= 2
    pairs = Counter(tuple(sorted(assignment[i])) for i in doubled)
    assert len(pairs) == 3  # every pair of reviewers shares some items
    with pytest.raises(DatasetError, match="overlap:"):
        assign_reviewers(items, reviewers, overlap=1.5)


def test_the_hash_and_splits_do_not_depend_on_the_process(banking):
    """Python randomises str hashing per process; nothing in a freeze may depend on it."""
    program = (
        "import json, sys\n"
        "from worker.datasets import DatasetRow, FreezeParams, freeze\n"
        "from worker.taskspec import TaskSpec\n"
        "spec = TaskSpec(**json.loads(sys.argv[1]))\n"
        "rows = [DatasetRow(i, {'text': t}, l, 'teacher') for i, (t, l) in enumerate(json.loads(sys.argv[2]))]\n"
        "v = freeze(spec, rows, FreezeParams(seed=5))\n"
        "print(v.content_hash, ''.join(r.split[0] for r in v.rows))\n"
    )
    spec, rows = banking
    spec_json = json.dumps(
        {
            "instruction_template": spec.instruction_template,
            "output_kind": spec.output_kind,
            "input_fields": list(spec.input_fields),
            "label_set": list(spec.label_set),
        }
    )
    rows_json = json.dumps([(r["text"], r["label"]) for r in rows[:400]])
    results = set()
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", program, spec_json, rows_json],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        )
        results.add(done.stdout)
    assert len(results) == 1
