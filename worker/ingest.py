"""Streaming readers for uploaded inputs (CSV and JSONL) with errors that name the file and line.

The file is never loaded whole: lines are decoded one by one (a UTF-8 sequence never contains a
newline byte, so a decoding error is pinned to its physical line), and CSV records are parsed from
that stream. Every failure raises IngestError (and nothing else), carrying the file, line and field as
attributes; callers import inside one transaction, so a failing file imports nothing.

Hostile input is refused before it can hurt: binary files are recognised from their first bytes,
JSON nesting and number lengths are bounded before the parser recurses or converts, text that
PostgreSQL cannot store (NUL characters, lone UTF-16 surrogates) is refused with its line, and the
number of columns is capped (every per-column check is linear).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal

Format = Literal["csv", "jsonl"]

MAX_FIELD_CHARS = 131_072
# Columns of a CSV header, keys of a JSONL object, distinct keys seen by the column sniff.
MAX_COLUMNS = 1_000
# Nesting of arrays/objects in one JSONL line (the line's own object is level 1).
MAX_JSON_DEPTH = 64
# Digits in one JSON number; far beyond any real id or measurement, far below the 4,300 digits at
# which int() refuses (and the cost of converting grows quadratically).
MAX_NUMBER_DIGITS = 100
# How much of the file is looked at to tell text from binary.
SNIFF_BYTES = 8192

_ZIP_MAGIC = b"PK\x03\x04"
_UTF8_BOM = b"\xef\xbb\xbf"


class IngestError(ValueError):
    """A file that cannot be imported. `file_name`, `line` (1-based, None for the whole file) and
    `field` (the column or top-level key, None when not about one) are for the form to show;
    `detail` is the message without the location."""

    def __init__(
        self, file_name: str, message: str, line: int | None = None, *, field: str | None = None
    ) -> None:
        self.file_name = file_name
        self.line = line
        self.field = field
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
    """Cheap whole-file checks before parsing: size, emptiness, archives, UTF-16, binary."""
    size = path.stat().st_size
    check_size(file_name, size, max_bytes=max_bytes)
    with path.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if len(head) == size and not head.strip(b" \t\r\n" + _UTF8_BOM):
        raise IngestError(file_name, "the file is empty")
    check_text_head(file_name, head)


# Signatures of binary formats people upload by mistake; only ones that cannot begin a text file.
_BINARY_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "a gzip archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF-", "a PDF document"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel .xls or other Office file"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "a program"),
)
# C0 control bytes that text files do not contain (tab, line feed, vertical tab, form feed,
# carriage return and escape do occur in text).
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\x0b\x0c\r\x1b")
_CONTROL_RE = re.compile(b"[" + re.escape(_CONTROL_BYTES) + b"]")


def _looks_like_utf16(head: bytes) -> bool:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    # Latin text in UTF-16 without a BOM: every other byte is NUL, always on the same side.
    even, odd = head[0::2].count(0), head[1::2].count(0)
    return (
        len(head) >= 4 and max(even, odd) > len(head) // 4 and min(even, odd) * 8 <= max(even, odd)
    )


def _binary_at(head: bytes) -> tuple[int, str] | None:
    """(1-based byte offset, what it looks like) when `head` is the start of a binary file."""
    for magic, kind in _BINARY_SIGNATURES:
        if head.startswith(magic):
            return 1, kind
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if not controls:
        return None
    try:
        head.decode("utf-8")
        valid_utf8 = True
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the end of the chunk is not a sign of anything.
        valid_utf8 = exc.reason == "unexpected end of data" and exc.start >= len(head) - 3
    # A stray control byte in a text file is reported on its line by the parser; many of them,
    # or one among bytes that are not UTF-8 either, is a binary file.
    if controls >= 8 or controls * 4 >= len(head) or not valid_utf8:
        match = _CONTROL_RE.search(head)
        return (match.start() + 1 if match else 1), ""
    return None


def check_text_head(file_name: str, head: bytes) -> None:
    """Refuse a file whose first bytes show it is not UTF-8 text (archive, UTF-16, binary)."""
    if head.startswith(_ZIP_MAGIC):
        raise IngestError(
            file_name,
            "this is a ZIP archive (an Excel .xlsx?), not a text file; "
            "export it as CSV (UTF-8) and upload that",
        )
    if _looks_like_utf16(head):
        raise IngestError(
            file_name, "the file is UTF-16 encoded; save it as UTF-8 (with or without BOM)"
        )
    binary = _binary_at(head)
    if binary is not None:
        offset, kind = binary
        looks = f"; it looks like {kind}" if kind else ""
        raise IngestError(
            file_name,
            f"this is not a text CSV/JSONL file (binary content at byte {offset:,}{looks})",
        )


def _decoded_lines(path: Path, file_name: str) -> Iterator[tuple[int, str]]:
    with path.open("rb") as fh:
        check_text_head(file_name, fh.read(SNIFF_BYTES))
        fh.seek(0)
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
            field=key,
        )


def iter_csv(path: Path, file_name: str) -> Iterator[Record]:
    header: list[str] | None = None
    for record_start, row in _csv_rows(path, file_name):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line (also before the header)
        if header is None:
            header = _csv_header(file_name, row, record_start)
            continue
        yield _csv_record(file_name, header, row, record_start)
    if header is None:
        raise IngestError(file_name, "the file is empty")


def _csv_rows(path: Path, file_name: str) -> Iterator[tuple[int, list[str]]]:
    """Each CSV record with the physical line it starts on; a malformed record raises an
    :class:`IngestError` saying what is wrong in words."""
    lines = _decoded_lines(path, file_name)
    # Track the physical line where each record starts, for messages.
    position = {"line": 0}

    def feed() -> Iterator[str]:
        for number, text in lines:
            position["line"] = number
            yield text

    reader = csv.reader(feed(), strict=True)
    while True:
        record_start = position["line"] + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(file_name, str(exc), position["line"], record_start) from None
        yield record_start, row


def _csv_error(file_name: str, message: str, line: int, record_start: int) -> IngestError:
    """The csv module's error ``message``, raised on ``line`` in a record that starts on
    ``record_start``, as a message a person can act on."""
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
    return IngestError(file_name, message, line)


def _csv_header(file_name: str, row: list[str], line: int) -> list[str]:
    """The column names of the header ``row``: named, unique and not too many."""
    header = [name.strip() for name in row]
    if not any(header):
        raise IngestError(file_name, "the header row is empty", line)
    if len(header) > MAX_COLUMNS:
        raise IngestError(
            file_name,
            f"the header has {len(header):,} columns; the limit is {MAX_COLUMNS:,}",
            line,
        )
    blank = [i + 1 for i, name in enumerate(header) if not name]
    if blank:
        raise IngestError(file_name, f"header column {blank[0]} has no name", line)
    counts = Counter(header)
    dupes = sorted(name for name, count in counts.items() if count > 1)
    if dupes:
        raise IngestError(
            file_name, f"the header repeats column {dupes[0]!r}", line, field=dupes[0]
        )
    return header


def _csv_record(file_name: str, header: list[str], row: list[str], line: int) -> Record:
    """A data ``row`` as a record keyed by ``header``, checked for its field count and lengths."""
    if len(row) != len(header):
        raise IngestError(
            file_name,
            f"expected {len(header)} fields (as in the header), found {len(row)}",
            line,
        )
    for key, value in zip(header, row, strict=True):
        _check_length(file_name, line, key, value)
    return Record(line, dict(zip(header, row, strict=True)))


# A JSON string token (escapes included), for skipping strings while counting brackets. An
# unterminated string runs to the end of the line (the parser stops there too); the possessive
# quantifiers and the always-matching end keep this linear on lines full of escaped quotes.
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# Escapes that decode to text PostgreSQL refuses: NUL, and UTF-16 surrogate halves (a lone one
# cannot be encoded as UTF-8; a proper pair decodes to one character and is fine).
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONG_DIGIT_RUN = re.compile(f"(?<![0-9])[0-9]{{{MAX_NUMBER_DIGITS + 1}}}")  # tried once per run


def _nesting_depth(text: str) -> int:
    """How deep arrays/objects nest in `text`, without recursing. In a valid JSON prefix the
    string regex tokenises exactly as the parser does, so the parser never gets deeper than this."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0  # cannot be too deep; not worth the exact count
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def _unstorable(text: str) -> str | None:
    """Why `text` cannot be stored as UTF-8 text in PostgreSQL, or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored as text"
    match = _SURROGATE.search(text)
    if match:
        return (
            f"contains \\u{ord(match.group()):04x}, half of a UTF-16 surrogate pair without its "
            "other half: not text that can be stored as UTF-8"
        )
    return None


def _first_unstorable(value: Any) -> str | None:
    if isinstance(value, str):
        return _unstorable(value)
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _unstorable(key)
            if problem:
                return f"a key {problem}"
            problem = _first_unstorable(item)
            if problem:
                return problem
    if isinstance(value, list):
        for item in value:
            problem = _first_unstorable(item)
            if problem:
                return problem
    return None


class _Refused:
    """Put in place of a number the hooks refuse, so that the key holding it can be named."""

    __slots__ = ("message", "name_field")

    def __init__(self, message: str, *, name_field: bool = False) -> None:
        self.message = message
        self.name_field = name_field  # whether the message should say which field


def _holds(value: Any, marker: _Refused) -> bool:
    if value is marker:
        return True
    if isinstance(value, dict):
        return any(_holds(item, marker) for item in value.values())
    if isinstance(value, list):
        return any(_holds(item, marker) for item in value)
    return False


def _digits(token: str) -> int:
    mantissa = token.lstrip("-").split("e")[0].split("E")[0]
    return len(mantissa) - ("." in mantissa)


class JsonObjectParser:
    """Parses one JSONL line into a dict, refusing anything unsafe or unstorable with IngestError
    (never another exception). One parser per file: the decoder and its hooks are reused."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name
        self.line = 0
        self._refused: list[_Refused] = []
        # Integers go through a Python hook (to be capped) only on lines that have a long run of
        # digits somewhere; other lines keep the C parser's own fast integer conversion.
        self._decoder = json.JSONDecoder(
            object_pairs_hook=self._object, parse_constant=self._constant, parse_float=self._float
        )
        self._careful_decoder = json.JSONDecoder(
            object_pairs_hook=self._object,
            parse_constant=self._constant,
            parse_float=self._float,
            parse_int=self._int,
        )

    def _error(self, message: str, field: str | None = None) -> IngestError:
        return IngestError(self.file_name, message, self.line, field=field)

    def _object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise self._error(f"duplicate key {key!r} in the JSON object")
            seen[key] = value
        return seen

    def _constant(self, token: str) -> float:
        raise self._error(f"{token} is not valid JSON (use null or a number)")

    def _too_long(self, token: str) -> _Refused | None:
        if _digits(token) <= MAX_NUMBER_DIGITS:
            return None
        refused = _Refused(
            f"a number with {_digits(token):,} digits; the limit is {MAX_NUMBER_DIGITS:,}",
            name_field=True,
        )
        self._refused.append(refused)
        return refused

    def _int(self, token: str) -> int | _Refused:
        return self._too_long(token) or int(token)

    def _float(self, token: str) -> float | _Refused:
        refused = self._too_long(token)
        if refused is not None:
            return refused
        value = float(token)
        if not math.isfinite(value):
            refused = _Refused(f"the number {token} is too large")
            self._refused.append(refused)
            return refused
        return value

    def parse(self, text: str, line: int) -> dict[str, Any]:
        """`text` is one line without its line break."""
        self.line = line
        self._refused.clear()
        if _nesting_depth(text) > MAX_JSON_DEPTH:
            raise self._error(f"arrays/objects nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            careful = (
                sum(map(text.count, "0123456789")) > MAX_NUMBER_DIGITS
                and _LONG_DIGIT_RUN.search(text) is not None
            )
            value = (self._careful_decoder if careful else self._decoder).decode(text)
        except IngestError:
            raise
        except json.JSONDecodeError as exc:
            raise self._error(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # not expected after the checks above
            raise self._error(f"not valid JSON ({exc.__class__.__name__}: {exc})") from None
        if self._refused:
            refused = self._refused[0]
            field = None
            if isinstance(value, dict):
                field = next((k for k, v in value.items() if _holds(v, refused)), None)
            where = f"field {field!r} holds " if refused.name_field and field is not None else ""
            raise self._error(where + refused.message, field)
        if not isinstance(value, dict):
            kind = {list: "an array", str: "a string", type(None): "null"}.get(
                type(value), "a number"
            )
            if isinstance(value, bool):
                kind = "a boolean"
            raise self._error(f"expected a JSON object, found {kind}")
        if len(value) > MAX_COLUMNS:
            raise self._error(f"the object has {len(value):,} keys; the limit is {MAX_COLUMNS:,}")
        if _SUSPECT_ESCAPE.search(text):
            for key, item in value.items():
                key_problem = _unstorable(key)
                if key_problem:
                    raise self._error(f"a key {key_problem}")
                problem = _first_unstorable(item)
                if problem:
                    raise self._error(f"field {key!r} {problem}", key)
        # json.dumps writes at most 12 characters per character read (an escaped astral
        # character; separators and float exponents grow less), so a short line needs no check.
        if len(text) * 12 > MAX_FIELD_CHARS:
            for key, item in value.items():
                _check_length(
                    self.file_name, line, key, item if isinstance(item, str) else json.dumps(item)
                )
        return value


def parse_json_object(text: str, *, file_name: str, line: int) -> dict[str, Any]:
    """One JSON object from one line of `file_name`, with the same guarantees as iter_jsonl."""
    return JsonObjectParser(file_name).parse(text.rstrip("\r\n"), line)


def iter_jsonl(path: Path, file_name: str) -> Iterator[Record]:
    parser = JsonObjectParser(file_name)
    for number, text in _decoded_lines(path, file_name):
        if not text.strip():
            continue
        # Without the line break, so that a column number refers to this line.
        yield Record(number, parser.parse(text.rstrip("\r\n"), number))


def iter_records(path: Path, file_name: str, fmt: Format) -> Iterator[Record]:
    return iter_csv(path, file_name) if fmt == "csv" else iter_jsonl(path, file_name)


def validate_file(path: Path, file_name: str, fmt: Format) -> int:
    """Read every record of the file, keeping none; return how many there are. Raises IngestError
    at the first bad one, so an upload can be refused on its form before any import starts
    (sniff_columns only reads the first rows). Measured: 0.3 s (CSV) and 0.6 s (JSONL) for 50,000
    short rows."""
    count = 0
    for _record in iter_records(path, file_name, fmt):
        count += 1
    if count == 0:
        raise IngestError(
            file_name,
            "the file has a header but no data rows" if fmt == "csv" else "the file has no rows",
        )
    return count


def sniff_columns(path: Path, file_name: str, fmt: Format, *, sample: int = 200) -> list[str]:
    """Column names for the mapping form: the CSV header, or keys seen in the first JSONL rows."""
    columns: dict[str, None] = {}  # ordered, with constant-time lookups
    count = 0
    for record in iter_records(path, file_name, fmt):
        columns.update(dict.fromkeys(record.values))
        if len(columns) > MAX_COLUMNS:
            raise IngestError(
                file_name,
                f"the rows so far have {len(columns):,} different keys; the limit is "
                f"{MAX_COLUMNS:,}",
                record.line,
            )
        count += 1
        if count >= sample:
            break
    if count == 0:
        raise IngestError(
            file_name,
            "the file has a header but no data rows" if fmt == "csv" else "the file has no rows",
        )
    return list(columns)


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
