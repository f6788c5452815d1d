"""Hostile uploads: files built to crash, stall or half-import the reader.

Each one must end in an IngestError (never another exception, which the job page shows as a bare
crash) naming the file and the line, with the location also carried as attributes for the form.
The same reader parses teacher-log imports (OpenAI chat JSONL), so these cover that path too.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest

from worker import ingest

GOOD_ROWS = 5_000  # past the 200 rows the column sniff reads: the job, not the form, meets them


def read_all(path: Path) -> list[ingest.Record]:
    """What an import does: whole-file checks, column sniff (upload form), full read (job)."""
    fmt = ingest.detect_format(path.name)
    ingest.check_file(path, path.name, max_bytes=100 * 1_048_576)
    ingest.sniff_columns(path, path.name, fmt)
    return list(ingest.iter_records(path, path.name, fmt))


def refusal(tmp_path: Path, name: str, content: bytes) -> ingest.IngestError:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ingest.IngestError) as caught:
        read_all(path)
    return caught.value


def jsonl(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def chat_log_line(answer: str) -> bytes:
    return json.dumps(
        {
            "request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
            "response": {"choices": [{"message": {"content": answer}}]},
        }
    ).encode()


# Deep nesting ----------------------------------------------------------------------------------


def test_deeply_nested_arrays_are_refused_with_file_and_line(tmp_path: Path) -> None:
    deep = b'{"text": "hi", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    error = refusal(tmp_path, "inputs.jsonl", jsonl(b'{"text": "a"}', b"", deep))
    assert str(error) == "inputs.jsonl, line 3: arrays/objects nested deeper than 64 levels"
    assert (error.file_name, error.line) == ("inputs.jsonl", 3)


def test_unclosed_nesting_is_refused_too(tmp_path: Path) -> None:
    error = refusal(tmp_path, "inputs.jsonl", jsonl(b'{"a": ' + b"{" * 50_000))
    assert str(error) == "inputs.jsonl, line 1: arrays/objects nested deeper than 64 levels"


def test_nesting_up_to_the_limit_is_accepted(tmp_path: Path) -> None:
    # The line's own object is level 1.
    levels = ingest.MAX_JSON_DEPTH - 1
    at_limit = b'{"text": "hi", "meta": ' + b"[" * levels + b"]" * levels + b"}"
    path = tmp_path / "inputs.jsonl"
    path.write_bytes(jsonl(at_limit))
    [record] = read_all(path)
    assert record.values["text"] == "hi"
    over = b'{"text": "hi", "meta": ' + b"[" * (levels + 1) + b"]" * (levels + 1) + b"}"
    assert refusal(tmp_path, "inputs.jsonl", jsonl(at_limit, over)).line == 2


def test_brackets_inside_strings_are_text_not_nesting(tmp_path: Path) -> None:
    text = '[{"quoted \\" bracket": ' * 200
    path = tmp_path / "inputs.jsonl"
    path.write_bytes(jsonl(json.dumps({"text": text}).encode()))
    assert [r.values["text"] for r in read_all(path)] == [text]


def test_an_unterminated_string_of_escaped_quotes_after_deep_nesting_is_refused(
    tmp_path: Path,
) -> None:
    # 100,000 escaped quotes in a string that never ends: a string-skipping scan that restarts
    # at every quote takes minutes here; the refusal must come from one pass over the line.
    line = b'{"a": ' + b"[" * 70 + b'"' + b'\\"' * 100_000
    error = refusal(tmp_path, "inputs.jsonl", jsonl(line))
    assert str(error) == "inputs.jsonl, line 1: arrays/objects nested deeper than 64 levels"


# Huge numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "digits"),
    [(b"9" * 5_000, 5_000), (b"-" + b"1" * 101, 101), (b"1." + b"5" * 5_000, 5_001)],
    ids=["5000-digit-int", "101-digit-negative-int", "5001-digit-float"],
)
def test_numbers_with_too_many_digits_name_file_line_and_field(
    tmp_path: Path, token: bytes, digits: int
) -> None:
    content = jsonl(b'{"text": "a", "score": 1}', b'{"text": "b", "score": ' + token + b"}")
    error = refusal(tmp_path, "inputs.jsonl", content)
    assert str(error) == (
        f"inputs.jsonl, line 2: field 'score' holds a number with {digits:,} digits; "
        f"the limit is {ingest.MAX_NUMBER_DIGITS}"
    )
    assert (error.line, error.field) == (2, "score")


def test_a_long_number_nested_deep_in_a_field_names_the_top_level_field(tmp_path: Path) -> None:
    content = jsonl(b'{"text": "a", "meta": {"ids": [1, 2, ' + b"7" * 200 + b"]}}")
    error = refusal(tmp_path, "inputs.jsonl", content)
    assert error.field == "meta"
    assert str(error).startswith("inputs.jsonl, line 1: field 'meta' holds a number with 200")


def test_numbers_up_to_the_limit_and_long_digit_strings_are_accepted(tmp_path: Path) -> None:
    big = "9" * ingest.MAX_NUMBER_DIGITS
    path = tmp_path / "inputs.jsonl"
    path.write_bytes(jsonl(f'{{"text": "{"1" * 5_000}", "n": {big}, "x": 0.25}}'.encode()))
    [record] = read_all(path)
    assert record.values == {"text": "1" * 5_000, "n": int(big), "x": 0.25}


# Text PostgreSQL cannot store ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line_text", "field", "message"),
    [
        (
            b'{"text": "caf\\ud800"}',
            "text",
            "field 'text' contains \\ud800, half of a UTF-16 surrogate pair without its other "
            "half: not text that can be stored as UTF-8",
        ),
        (
            b'{"text": "a", "meta": {"tags": ["ok", "\\udfff"]}}',
            "meta",
            "field 'meta' contains \\udfff, half of a UTF-16 surrogate pair without its other "
            "half: not text that can be stored as UTF-8",
        ),
        (
            b'{"text": "a\\u0000b"}',
            "text",
            "field 'text' contains a NUL character (\\u0000), which cannot be stored as text",
        ),
        (
            b'{"text": "a", "\\ud800": "b"}',
            None,
            "a key contains \\ud800, half of a UTF-16 surrogate pair without its other half: "
            "not text that can be stored as UTF-8",
        ),
    ],
    ids=["lone-surrogate", "nested-lone-surrogate", "nul-escape", "surrogate-in-key"],
)
def test_unstorable_text_is_refused_with_file_and_line(
    tmp_path: Path, line_text: bytes, field: str | None, message: str
) -> None:
    error = refusal(tmp_path, "inputs.jsonl", jsonl(b'{"text": "fine"}', line_text))
    assert str(error) == f"inputs.jsonl, line 2: {message}"
    assert (error.line, error.field) == (2, field)


def test_surrogate_pairs_and_escaped_backslashes_are_ordinary_text(tmp_path: Path) -> None:
    path = tmp_path / "inputs.jsonl"
    path.write_bytes(jsonl(b'{"text": "\\ud83d\\ude00"}', b'{"text": "\\\\ud800 and \\\\u0000"}'))
    assert [r.values["text"] for r in read_all(path)] == ["\U0001f600", "\\ud800 and \\u0000"]


# A bad row far into the file -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        (b'{"text": ' + b"[" * 3_000 + b"]" * 3_000 + b"}", "arrays/objects nested deeper"),
        (b'{"text": ' + b"4" * 5_000 + b"}", "field 'text' holds a number with 5,000 digits"),
        (b'{"text": "\\ud800"}', "field 'text' contains \\ud800"),
        (b'{"text": "a\\u0000"}', "field 'text' contains a NUL character"),
        (b'{"text": "unterminated}', "not valid JSON: Unterminated string"),
    ],
    ids=["nesting", "long-number", "lone-surrogate", "nul", "syntax"],
)
def test_a_bad_row_after_thousands_of_good_ones_names_its_line(
    tmp_path: Path, bad: bytes, detail: str
) -> None:
    good = [f'{{"text": "ticket {i}"}}'.encode() for i in range(GOOD_ROWS)]
    error = refusal(tmp_path, "inputs.jsonl", jsonl(*good, bad))
    assert str(error).startswith(f"inputs.jsonl, line {GOOD_ROWS + 1}: {detail}")
    assert (error.file_name, error.line) == ("inputs.jsonl", GOOD_ROWS + 1)


@pytest.mark.parametrize("name", ["inputs.jsonl", "inputs.csv"])
def test_validate_file_finds_a_bad_row_the_column_sniff_never_reads(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    if name.endswith(".csv"):
        good, bad = [b"text"] + [f"ticket {i}".encode() for i in range(GOOD_ROWS)], b'"open'
    else:
        good, bad = [f'{{"text": "ticket {i}"}}'.encode() for i in range(GOOD_ROWS)], b"[" * 99
    path.write_bytes(jsonl(*good))
    assert ingest.validate_file(path, name, ingest.detect_format(name)) == GOOD_ROWS
    path.write_bytes(jsonl(*good, bad))
    assert ingest.sniff_columns(path, name, ingest.detect_format(name)) == ["text"]
    with pytest.raises(ingest.IngestError) as caught:
        ingest.validate_file(path, name, ingest.detect_format(name))
    assert caught.value.line == len(good) + 1


def test_teacher_log_lines_get_the_same_guarantees(tmp_path: Path) -> None:
    hostile = chat_log_line("x").replace(b'"x"', b'"x\\ud800"')
    error = refusal(tmp_path, "logs.jsonl", jsonl(chat_log_line("card_arrival"), hostile))
    assert (error.line, error.field) == (2, "response")
    assert "\\ud800" in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000,
        '{"a": ' + "-" + "1" * 10_000 + "}",
        '{"a": 1e99999999999}',
        '{"a": "\\ud800\\ud800"}',
        '{"a": "\\u0000"}',
        '{"a": NaN}',
        '{"a": 1, "a": 2}',
        '{"a": ' + '{"b": ' * 70 + "1" + "}" * 71,
        "",
        "{",
        '"\\ud800"',
    ],
)
def test_parse_json_object_raises_only_ingest_errors(text: str) -> None:
    with pytest.raises(ingest.IngestError) as caught:
        ingest.parse_json_object(text, file_name="logs.jsonl", line=7)
    assert (caught.value.file_name, caught.value.line) == ("logs.jsonl", 7)


# Wide files ------------------------------------------------------------------------------------


def test_a_header_with_too_many_columns_is_refused(tmp_path: Path) -> None:
    columns = 20_000
    header = ",".join(f"c{i}" for i in range(columns)).encode()
    error = refusal(tmp_path, "wide.csv", header + b"\n" + b"x," * (columns - 1) + b"x\n")
    assert str(error) == (
        f"wide.csv, line 1: the header has {columns:,} columns; the limit is {ingest.MAX_COLUMNS:,}"
    )


def test_a_header_at_the_column_limit_is_read_and_its_duplicates_named(tmp_path: Path) -> None:
    names = [f"c{i}" for i in range(ingest.MAX_COLUMNS)]
    path = tmp_path / "wide.csv"
    path.write_bytes(",".join(names).encode() + b"\n" + b",".join(b"x" for _ in names) + b"\n")
    [record] = read_all(path)
    assert list(record.values) == names
    names[-1] = "c7"
    error = refusal(tmp_path, "wide.csv", ",".join(names).encode() + b"\nx\n")
    assert str(error) == "wide.csv, line 1: the header repeats column 'c7'"
    assert error.field == "c7"


def test_a_jsonl_object_with_too_many_keys_is_refused(tmp_path: Path) -> None:
    wide = json.dumps({f"k{i}": i for i in range(ingest.MAX_COLUMNS + 1)}).encode()
    error = refusal(tmp_path, "inputs.jsonl", jsonl(b'{"text": "a"}', wide))
    assert str(error) == (
        f"inputs.jsonl, line 2: the object has {ingest.MAX_COLUMNS + 1:,} keys; "
        f"the limit is {ingest.MAX_COLUMNS:,}"
    )


def test_rows_with_ever_new_keys_stop_the_column_sniff(tmp_path: Path) -> None:
    rows = [json.dumps({f"r{r}k{k}": 1 for k in range(10)}).encode() for r in range(150)]
    error = refusal(tmp_path, "inputs.jsonl", jsonl(*rows))
    # Row 101 brings the 1,001st to 1,010th different key.
    assert str(error) == (
        f"inputs.jsonl, line 101: the rows so far have 1,010 different keys; "
        f"the limit is {ingest.MAX_COLUMNS:,}"
    )


# Binary files ----------------------------------------------------------------------------------


def sqlite_bytes(tmp_path: Path) -> bytes:
    db = tmp_path / "data.sqlite"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE tickets (text TEXT)")
    return db.read_bytes()


@pytest.mark.parametrize("name", ["tickets.csv", "tickets.jsonl"])
@pytest.mark.parametrize(
    ("kind", "offset", "looks"),
    [
        ("control-bytes", 1, ""),
        ("exe", 4, ""),
        ("gzip", 1, "; it looks like a gzip archive"),
        ("png", 1, "; it looks like a PNG image"),
        ("sqlite", 1, "; it looks like an SQLite database"),
    ],
)
def test_binary_files_are_named_as_such(
    tmp_path: Path, name: str, kind: str, offset: int, looks: str
) -> None:
    content = {
        # Valid UTF-8 with no line break: it used to read as a header with no data rows.
        "control-bytes": bytes(range(1, 9)) * 64,
        # A Windows program's header: its NUL bytes used to pass for UTF-16.
        "exe": b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" * 8,
        "gzip": gzip.compress(b"text,label\nWhere is my card?,card_arrival\n"),
        "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01",
        "sqlite": b"",
    }[kind] or sqlite_bytes(tmp_path)
    error = refusal(tmp_path, name, content)
    assert str(error) == (
        f"{name}: this is not a text CSV/JSONL file (binary content at byte {offset}{looks})"
    )
    assert (error.file_name, error.line) == (name, None)


def test_binary_content_is_refused_even_without_the_whole_file_check(tmp_path: Path) -> None:
    path = tmp_path / "tickets.csv"
    path.write_bytes(bytes(range(1, 9)) * 64)
    with pytest.raises(ingest.IngestError, match="not a text CSV/JSONL file"):
        list(ingest.iter_records(path, "tickets.csv", "csv"))


def test_text_with_a_few_control_characters_and_a_cut_multibyte_character_is_text(
    tmp_path: Path,
) -> None:
    # A bell and terminal colour codes in a cell, and a sniffed chunk that ends inside "é":
    # none of it makes the file binary.
    header = b"text,colour\n"
    text = "ding\x07 " + "x" * (ingest.SNIFF_BYTES - len(header) - 7) + "é\t"
    assert len(header) + len(text.encode()) - 3 == ingest.SNIFF_BYTES - 1  # é starts the last byte
    path = tmp_path / "tickets.csv"
    path.write_bytes(header + text.encode() + b",\x1b[31mred\x1b[0m\n")
    assert [(r.values["text"], r.values["colour"]) for r in read_all(path)] == [
        (text, "\x1b[31mred\x1b[0m")
    ]
