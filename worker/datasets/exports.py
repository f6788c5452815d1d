"""Exports and their readers. Exports stream to a text file object: OpenAI chat JSONL, Hugging
Face prompt/completion JSONL and formula-safe CSV, each with a reader for the round trip."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from worker.datasets.rows import SOURCES, SPLITS, DatasetError, DatasetRow, FrozenRow
from worker.taskspec import TaskSpec, build_messages


def chat_messages(spec: TaskSpec, row: FrozenRow | DatasetRow) -> list[dict[str, str]]:
    """System (if any) + user from the task spec, then the output as the assistant turn."""
    return [*build_messages(spec, dict(row.inputs)), {"role": "assistant", "content": row.output}]


def write_openai_chat_jsonl(
    spec: TaskSpec, rows: Iterable[FrozenRow | DatasetRow], fp: IO[str]
) -> int:
    """OpenAI fine-tuning format: one ``{"messages": [...]}`` per line. Returns the row count."""
    n = 0
    for row in rows:
        fp.write(json.dumps({"messages": chat_messages(spec, row)}, ensure_ascii=False))
        fp.write("\n")
        n += 1
    return n


def write_prompt_completion_jsonl(
    spec: TaskSpec,
    rows: Iterable[FrozenRow | DatasetRow],
    fp: IO[str],
    *,
    conversational: bool = True,
) -> int:
    """Hugging Face (TRL) prompt/completion format. Conversational by default — ``prompt`` is the
    system + user messages and ``completion`` the assistant message, so the trainer applies the
    student's chat template and computes loss on the completion only. With
    ``conversational=False``, ``prompt`` is the system prompt and user turn as plain text.

    A row's extra training signals ride along under their own keys, only when it has them:
    ``rationale`` (the teacher's reason, text) and ``label_distribution`` (the teacher's
    probabilities over the labels). Trainers that do not know them ignore them."""
    n = 0
    for row in rows:
        messages = build_messages(spec, dict(row.inputs))
        record: dict[str, Any]
        if conversational:
            record = {
                "prompt": messages,
                "completion": [{"role": "assistant", "content": row.output}],
            }
        else:
            record = {
                "prompt": "\n\n".join(m["content"] for m in messages),
                "completion": row.output,
            }
        if row.rationale:
            record["rationale"] = row.rationale
        if row.label_distribution:
            record["label_distribution"] = dict(row.label_distribution)
        fp.write(json.dumps(record, ensure_ascii=False))
        fp.write("\n")
        n += 1
    return n


#: A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection").
FORMULA_TRIGGERS = frozenset("=+-@\t\r")


def formula_safe(cell: str) -> str:
    """Neutralise a cell a spreadsheet would run as a formula by prefixing an apostrophe.

    A cell that already starts with apostrophes before a trigger gets one more, so that
    :func:`unformula` can undo exactly what was done: the escaping is reversible."""
    if cell[:1] in FORMULA_TRIGGERS or (
        cell[:1] == "'" and cell.lstrip("'")[:1] in FORMULA_TRIGGERS and cell.lstrip("'")
    ):
        return "'" + cell
    return cell


def unformula(cell: str) -> str:
    """The inverse of :func:`formula_safe`."""
    rest = cell.lstrip("'")
    if cell[:1] == "'" and rest and rest[:1] in FORMULA_TRIGGERS:
        return cell[1:]
    return cell


def csv_columns(spec: TaskSpec) -> list[str]:
    return [
        "row_id",
        "split",
        "source",
        "synthetic_input",
        "decision_ids",
        *spec.input_fields,
        "output",
    ]


def write_csv(spec: TaskSpec, rows: Iterable[FrozenRow], fp: IO[str]) -> int:
    """Formula-safe CSV (open ``fp`` with ``newline=""``). ``synthetic_input`` is "yes" for a
    row whose input a teacher wrote, else empty. ``decision_ids`` is a JSON list;
    input values that are not text are written as JSON. Returns the row count."""
    writer = csv.writer(fp)
    writer.writerow(csv_columns(spec))
    n = 0
    for row in rows:
        values = [
            str(row.row_id),
            row.split,
            row.source,
            "yes" if row.synthetic_input else "",
            json.dumps(list(row.decision_ids)),
            *(_cell(row.inputs.get(f)) for f in spec.input_fields),
            row.output,
        ]
        writer.writerow([formula_safe(v) for v in values])
        n += 1
    return n


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def read_csv(spec: TaskSpec, fp: IO[str]) -> Iterator[FrozenRow]:
    """Read back what :func:`write_csv` wrote. Row ids and input values come back as text."""
    reader = csv.reader(fp)
    header = next(reader, None)
    expected = csv_columns(spec)
    if header != expected:
        raise DatasetError(f"line 1: expected the columns {', '.join(expected)}")
    for line_number, cells in enumerate(reader, start=2):
        if len(cells) != len(expected):
            raise DatasetError(
                f"line {line_number}: expected {len(expected)} cells, got {len(cells)}"
            )
        values = [unformula(c) for c in cells]
        record = dict(zip(expected, values, strict=True))
        split = record["split"]
        source = record["source"]
        if split not in SPLITS:
            raise DatasetError(f"line {line_number}: split {split!r} is not one of {SPLITS}")
        if source not in SOURCES:
            raise DatasetError(f"line {line_number}: source {source!r} is not one of {SOURCES}")
        try:
            decisions = json.loads(record["decision_ids"])
        except ValueError as exc:
            raise DatasetError(f"line {line_number}: decision_ids is not a JSON list") from exc
        yield FrozenRow(
            row_id=record["row_id"],
            inputs={f: record[f] for f in spec.input_fields},
            output=record["output"],
            source=source,  # type: ignore[arg-type]  # checked against SOURCES above
            decision_ids=tuple(decisions),
            split=split,  # type: ignore[arg-type]  # checked against SPLITS above
            group=-1,
            synthetic_input=record["synthetic_input"] == "yes",
        )


def _read_jsonl(fp: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_number, line in enumerate(fp, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"line {line_number}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise DatasetError(f"line {line_number}: expected a JSON object")
        yield line_number, record


def _check_messages(line_number: int, key: str, messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"line {line_number}: {key} must be a non-empty list of messages")
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("system", "user", "assistant")
            or not isinstance(message.get("content"), str)
        ):
            raise DatasetError(
                f"line {line_number}: {key} has a message without a valid role and text content"
            )
    return messages


def read_openai_chat_jsonl(fp: IO[str]) -> Iterator[list[dict[str, str]]]:
    """Each line's messages; the last one must be the assistant's answer."""
    for line_number, record in _read_jsonl(fp):
        messages = _check_messages(line_number, "messages", record.get("messages"))
        if messages[-1]["role"] != "assistant":
            raise DatasetError(f"line {line_number}: the last message must be the assistant's")
        yield messages


def read_prompt_completion_jsonl(fp: IO[str]) -> Iterator[dict[str, Any]]:
    """Each line's ``{"prompt": ..., "completion": ...}`` (conversational or plain text)."""
    for line_number, record in _read_jsonl(fp):
        prompt, completion = record.get("prompt"), record.get("completion")
        if isinstance(prompt, str) and isinstance(completion, str):
            yield {"prompt": prompt, "completion": completion}
            continue
        yield {
            "prompt": _check_messages(line_number, "prompt", prompt),
            "completion": _check_messages(line_number, "completion", completion),
        }
