"""Streaming readers for uploaded inputs (CSV and JSONL) with errors that name the file and line.

The file is never loaded whole: lines are decoded one by one (a UTF-8 sequence never contains a
newline byte, so a decoding error is pinned to its physical line), and CSV records are parsed from
that stream. Every failure raises IngestError; callers import inside one transaction, so a failing
file imports nothing.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Format = Literal["csv", "jsonl"]

MAX_FIELD_CHARS = 131_072
_ZIP_MAGIC = b"PK\x03\x04"
_UTF8_BOM = b"\xef\xbb\xbf"


class IngestError(ValueError):
    def __init__(self, file_name: str, message: str, line: int | None = None) -> None:
        self.file_name = file_name
        self.line = line
        self.detail = message
        where = f"{file_name}, line {line}" if line is not None else file_name
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Record:
    line: int
    values: dict[str, Any]


def detect_format(file_name: str) -> Format:
    lowered = file_name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    raise IngestError(file_name, "unsupported file type: upload a .csv or .jsonl file")


def human_size(size: int) -> str:
    """1536 -> '1.5 KB'; sizes in binary units, as file managers show them."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1_048_576:
        return f"{size / 1024:.1f} KB"
    return f"{size / 1_048_576:.1f} MB"


def check_size(file_name: str, size: int, *, max_bytes: int) -> None:
    if size > max_bytes:
        raise IngestError(
            file_name, f"the file is {human_size(size)}; the limit is {human_size(max_bytes)}"
        )


def check_file(path: Path, file_name: str, *, max_bytes: int) -> None:
    """Cheap whole-file checks before parsing: size, emptiness, binary formats, UTF-16."""
    size = path.stat().st_size
    check_size(file_name, size, max_bytes=max_bytes)
    with path.open("rb") as fh:
        head = fh.read(4096)
    if len(head) == size and not head.strip(b" \t\r\n" + _UTF8_BOM):
        raise IngestError(file_name, "the file is empty")
    if head.startswith(_ZIP_MAGIC):
        raise IngestError(
            file_name,
            "this is a ZIP archive (an Excel .xlsx?), not a text file; "
            "export it as CSV (UTF-8) and upload that",
        )
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (
        len(head) >= 4 and head.count(b"\x00") > len(head) // 4
    ):
        raise IngestError(
            file_name, "the file is UTF-16 encoded; save it as UTF-8 (with or without BOM)"
        )


def _decoded_lines(path: Path, file_name: str) -> Iterator[tuple[int, str]]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM) :]
            if b"\x00" in raw:
                raise IngestError(file_name, "contains a NUL byte (is this a binary file?)", number)
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise IngestError(
                    file_name,
                    f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "save the file as UTF-8",
                    number,
                ) from None


def _check_length(file_name: str, line: int, key: str, value: str) -> None:
    if len(value) > MAX_FIELD_CHARS:
        raise IngestError(
            file_name,
            f"field {key!r} is {len(value):,} characters; the limit is {MAX_FIELD_CHARS:,}",
            line,
        )


def iter_csv(path: Path, file_name: str) -> Iterator[Record]:
    lines = _decoded_lines(path, file_name)
    # Track the physical line where each record starts, for messages.
    position = {"line": 0}

    def feed() -> Iterator[str]:
        for number, text in lines:
            position["line"] = number
            yield text

    reader = csv.reader(feed(), strict=True)
    header: list[str] | None = None
    record_start = 1
    while True:
        record_start = position["line"] + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            message = str(exc)
            line = position["line"]
            if "field larger than field limit" in message:
                if line > record_start:
                    # A quoted field ran on over many lines: almost always a missing closing quote.
                    message = (
                        f"a quoted field starting on this line runs on past line {line} and over "
                        f"the limit of {MAX_FIELD_CHARS:,} characters; is a closing quote missing?"
                    )
                    line = record_start
                else:
                    message = f"a field is longer than the limit of {MAX_FIELD_CHARS:,} characters"
            elif "unexpected end of data" in message or "EOF" in message:
                message = f"unterminated quoted field (the quote opens on line {record_start})"
            elif "new-line character seen in unquoted field" in message:
                message = (
                    "line breaks are bare carriage returns (old Mac format); "
                    "save the file with LF or CRLF line endings"
                )
            elif "expected after" in message:
                message = (
                    "unexpected character after a closing quote "
                    '(a quote inside a quoted field must be doubled: "")'
                )
            raise IngestError(file_name, message, line) from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line (also before the header)
        if header is None:
            header = [name.strip() for name in row]
            if not any(header):
                raise IngestError(file_name, "the header row is empty", record_start)
            blank = [i + 1 for i, name in enumerate(header) if not name]
            if blank:
                raise IngestError(file_name, f"header column {blank[0]} has no name", record_start)
            dupes = sorted({name for name in header if header.count(name) > 1})
            if dupes:
                raise IngestError(
                    file_name, f"the header repeats column {dupes[0]!r}", record_start
                )
            continue
        if len(row) != len(header):
            raise IngestError(
                file_name,
                f"expected {len(header)} fields (as in the header), found {len(row)}",
                record_start,
            )
        for key, value in zip(header, row, strict=True):
            _check_length(file_name, record_start, key, value)
        yield Record(record_start, dict(zip(header, row, strict=True)))
    if header is None:
        raise IngestError(file_name, "the file is empty")


def _no_duplicate_keys(file_name: str, line: int):  # type: ignore[no-untyped-def]
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise IngestError(file_name, f"duplicate key {key!r} in the JSON object", line)
            seen[key] = value
        return seen

    return hook


def _reject_constant(file_name: str, line: int):  # type: ignore[no-untyped-def]
    def hook(token: str) -> float:
        raise IngestError(file_name, f"{token} is not valid JSON (use null or a number)", line)

    return hook


def _finite_float(file_name: str, line: int):  # type: ignore[no-untyped-def]
    def hook(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            raise IngestError(file_name, f"the number {token} is too large", line)
        return value

    return hook


def iter_jsonl(path: Path, file_name: str) -> Iterator[Record]:
    for number, text in _decoded_lines(path, file_name):
        if not text.strip():
            continue
        try:
            value = json.loads(
                text.rstrip("\r\n"),  # so that a column number refers to this line
                object_pairs_hook=_no_duplicate_keys(file_name, number),
                parse_constant=_reject_constant(file_name, number),
                parse_float=_finite_float(file_name, number),
            )
        except json.JSONDecodeError as exc:
            raise IngestError(
                file_name, f"not valid JSON: {exc.msg} (column {exc.colno})", number
            ) from None
        if not isinstance(value, dict):
            kind = {list: "an array", str: "a string", type(None): "null"}.get(
                type(value), "a number"
            )
            if isinstance(value, bool):
                kind = "a boolean"
            raise IngestError(file_name, f"expected a JSON object, found {kind}", number)
        for key, item in value.items():
            if isinstance(item, float) and not math.isfinite(item):
                raise IngestError(file_name, f"field {key!r} is not a finite number", number)
            _check_length(
                file_name, number, key, item if isinstance(item, str) else json.dumps(item)
            )
        yield Record(number, value)


def iter_records(path: Path, file_name: str, fmt: Format) -> Iterator[Record]:
    return iter_csv(path, file_name) if fmt == "csv" else iter_jsonl(path, file_name)


def sniff_columns(path: Path, file_name: str, fmt: Format, *, sample: int = 200) -> list[str]:
    """Column names for the mapping form: the CSV header, or keys seen in the first JSONL rows."""
    columns: list[str] = []
    count = 0
    for record in iter_records(path, file_name, fmt):
        for key in record.values:
            if key not in columns:
                columns.append(key)
        count += 1
        if count >= sample:
            break
    if count == 0:
        raise IngestError(
            file_name,
            "the file has a header but no data rows" if fmt == "csv" else "the file has no rows",
        )
    return columns


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
