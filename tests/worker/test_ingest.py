"""Reading uploaded CSV/JSONL: every bad file fails with a message naming the file (and line).

Each case goes through what an import does: the whole-file checks, the column sniff and a full
read. The messages are what the user sees on the upload form or on the failed import job.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from worker import ingest

LIMIT = ingest.MAX_FIELD_CHARS


def read_all(path: Path, *, max_bytes: int = 10 * 1_048_576) -> list[ingest.Record]:
    fmt = ingest.detect_format(path.name)
    ingest.check_file(path, path.name, max_bytes=max_bytes)
    ingest.sniff_columns(path, path.name, fmt)
    return list(ingest.iter_records(path, path.name, fmt))


def error_for(tmp_path: Path, name: str, content: bytes, **kwargs: int) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ingest.IngestError) as caught:
        read_all(path, **kwargs)
    return str(caught.value)


def records_of(tmp_path: Path, name: str, content: bytes) -> list[tuple[int, dict[str, object]]]:
    path = tmp_path / name
    path.write_bytes(content)
    return [(r.line, r.values) for r in read_all(path)]


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")
    return buffer.getvalue()


# Bad files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.csv", b""), ("empty.jsonl", b""), ("blank.csv", b"\n \r\n\n")],
)
def test_empty_file(tmp_path: Path, name: str, content: bytes) -> None:
    assert error_for(tmp_path, name, content) == f"{name}: the file is empty"


@pytest.mark.parametrize(
    "content", [b"text,label\n", b"text,label", b"\xef\xbb\xbftext,label\r\n\r\n"]
)
def test_header_only(tmp_path: Path, content: bytes) -> None:
    assert (
        error_for(tmp_path, "tickets.csv", content)
        == "tickets.csv: the file has a header but no data rows"
    )


def test_ragged_rows_name_the_line_and_the_counts(tmp_path: Path) -> None:
    short = b"text,label\nWhere is my card?,card_arrival\nI lost my card\n"
    assert (
        error_for(tmp_path, "tickets.csv", short)
        == "tickets.csv, line 3: expected 2 fields (as in the header), found 1"
    )
    long = b"text,label\nWhere is my card?,card_arrival\n\nI lost my card, again,lost\n"
    assert (
        error_for(tmp_path, "tickets.csv", long)
        == "tickets.csv, line 4: expected 2 fields (as in the header), found 3"
    )


@pytest.mark.parametrize("name", ["tickets.csv", "tickets.jsonl"])
def test_invalid_utf8_names_line_byte_and_column(tmp_path: Path, name: str) -> None:
    latin1 = "Où est ma carte ?".encode("latin-1")
    if name.endswith(".csv"):
        content = b"text\nhello\n" + latin1 + b"\n"
        line = 3
    else:
        content = b'{"text": "hello"}\n{"text": "' + latin1 + b'"}\n'
        line, latin1 = 2, b'{"text": "' + latin1
    column = latin1.index(b"\xf9") + 1
    assert error_for(tmp_path, name, content) == (
        f"{name}, line {line}: not valid UTF-8 (byte 0xf9 at column {column}); save the file as UTF-8"
    )


@pytest.mark.parametrize(
    "encoding", ["utf-16", "utf-16-le", "utf-16-be"], ids=["bom", "le-no-bom", "be-no-bom"]
)
def test_utf16_is_refused_with_or_without_bom(tmp_path: Path, encoding: str) -> None:
    content = "text,label\nWhere is my card?,card_arrival\n".encode(encoding)
    assert error_for(tmp_path, "export.csv", content) == (
        "export.csv: the file is UTF-16 encoded; save it as UTF-8 (with or without BOM)"
    )


def test_utf16_jsonl_is_refused(tmp_path: Path) -> None:
    content = '{"text": "Where is my card?"}\n'.encode("utf-16")
    assert error_for(tmp_path, "export.jsonl", content) == (
        "export.jsonl: the file is UTF-16 encoded; save it as UTF-8 (with or without BOM)"
    )


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("tickets.csv", b"text\nhello\nhel\x00lo\n", 3),
        ("tickets.jsonl", b'{"text": "hello"}\n{"text": "a\x00b"}\n', 2),
    ],
)
def test_nul_byte_names_the_line(tmp_path: Path, name: str, content: bytes, line: int) -> None:
    assert error_for(tmp_path, name, content) == (
        f"{name}, line {line}: contains a NUL byte (is this a binary file?)"
    )


def test_unterminated_quote_at_the_end(tmp_path: Path) -> None:
    content = b'text,label\nWhere is my card?,card_arrival\n"My card was stolen,\nhelp,lost\n'
    assert error_for(tmp_path, "tickets.csv", content) == (
        "tickets.csv, line 4: unterminated quoted field (the quote opens on line 3)"
    )


def test_unterminated_quote_in_a_long_file_points_at_the_opening_quote(tmp_path: Path) -> None:
    # The stray quote swallows the rest of the file until the field limit: the line to fix is
    # the one with the quote, not the one where the reader gave up.
    content = b'text,label\na,b\n"oops,c\n' + b"Where is my card?,card_arrival\n" * 10_000
    message = error_for(tmp_path, "tickets.csv", content)
    assert message.startswith("tickets.csv, line 3: a quoted field starting on this line runs on")
    assert message.endswith(f"over the limit of {LIMIT:,} characters; is a closing quote missing?")


def test_stray_character_after_a_closing_quote(tmp_path: Path) -> None:
    content = b'text,label\n"the "card" never came",card_arrival\n'
    assert error_for(tmp_path, "tickets.csv", content) == (
        "tickets.csv, line 2: unexpected character after a closing quote "
        '(a quote inside a quoted field must be doubled: "")'
    )


def test_csv_field_over_the_limit(tmp_path: Path) -> None:
    content = b"text,label\nok,a\n" + b"x" * (LIMIT + 1) + b",b\n"
    assert error_for(tmp_path, "tickets.csv", content) == (
        f"tickets.csv, line 3: a field is longer than the limit of {LIMIT:,} characters"
    )


def test_csv_field_at_the_limit_is_accepted(tmp_path: Path) -> None:
    content = b"text,label\n" + b"x" * LIMIT + b",b\n"
    [(line, values)] = records_of(tmp_path, "tickets.csv", content)
    assert line == 2 and len(str(values["text"])) == LIMIT


def test_jsonl_field_over_the_limit(tmp_path: Path) -> None:
    content = b'{"text": "ok"}\n{"text": "' + b"x" * (LIMIT + 1) + b'"}\n'
    assert error_for(tmp_path, "inputs.jsonl", content) == (
        f"inputs.jsonl, line 2: field 'text' is {LIMIT + 1:,} characters; the limit is {LIMIT:,}"
    )


@pytest.mark.parametrize(
    ("line_text", "kind"),
    [
        (b'["Where is my card?"]', "an array"),
        (b'"Where is my card?"', "a string"),
        (b"42", "a number"),
        (b"true", "a boolean"),
        (b"null", "null"),
    ],
)
def test_jsonl_non_object_line(tmp_path: Path, line_text: bytes, kind: str) -> None:
    content = b'{"text": "hello"}\n' + line_text + b"\n"
    assert error_for(tmp_path, "inputs.jsonl", content) == (
        f"inputs.jsonl, line 2: expected a JSON object, found {kind}"
    )


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_jsonl_nan_and_infinity(tmp_path: Path, token: str) -> None:
    content = b'{"text": "hello"}\n{"text": "hi", "score": ' + token.encode() + b"}\n"
    assert error_for(tmp_path, "inputs.jsonl", content) == (
        f"inputs.jsonl, line 2: {token} is not valid JSON (use null or a number)"
    )


def test_jsonl_number_overflowing_to_infinity(tmp_path: Path) -> None:
    content = b'{"text": "hi", "meta": {"score": 1e400}}\n'
    assert error_for(tmp_path, "inputs.jsonl", content) == (
        "inputs.jsonl, line 1: the number 1e400 is too large"
    )


@pytest.mark.parametrize(
    "line_text",
    [b'{"text": "a", "text": "b"}', b'{"text": "a", "meta": {"k": 1, "k": 2}}'],
    ids=["top-level", "nested"],
)
def test_jsonl_duplicate_keys(tmp_path: Path, line_text: bytes) -> None:
    key = "text" if b'"text": "b"' in line_text else "k"
    content = b'{"text": "hello"}\n\n' + line_text + b"\n"
    assert error_for(tmp_path, "inputs.jsonl", content) == (
        f"inputs.jsonl, line 3: duplicate key '{key}' in the JSON object"
    )


def test_jsonl_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    content = b'{"text": "hello"}\n{"text": }\n'
    assert error_for(tmp_path, "inputs.jsonl", content) == (
        "inputs.jsonl, line 2: not valid JSON: Expecting value (column 10)"
    )


@pytest.mark.parametrize("name", ["tickets.csv", "tickets.jsonl"])
def test_zip_renamed(tmp_path: Path, name: str) -> None:
    assert error_for(tmp_path, name, zip_bytes()) == (
        f"{name}: this is a ZIP archive (an Excel .xlsx?), not a text file; "
        "export it as CSV (UTF-8) and upload that"
    )


def test_over_the_size_limit(tmp_path: Path) -> None:
    content = b"text\n" + b"Where is my card?\n" * 200
    assert error_for(tmp_path, "tickets.csv", content, max_bytes=2048) == (
        "tickets.csv: the file is 3.5 KB; the limit is 2.0 KB"
    )
    assert ingest.human_size(200 * 1_048_576) == "200.0 MB"


def test_old_mac_line_endings(tmp_path: Path) -> None:
    content = b"text,label\rWhere is my card?,card_arrival\r"
    assert error_for(tmp_path, "tickets.csv", content) == (
        "tickets.csv, line 1: line breaks are bare carriage returns (old Mac format); "
        "save the file with LF or CRLF line endings"
    )


def test_unsupported_extension() -> None:
    with pytest.raises(ingest.IngestError) as caught:
        ingest.detect_format("tickets.xlsx")
    assert str(caught.value) == "tickets.xlsx: unsupported file type: upload a .csv or .jsonl file"


# Good files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["no-bom", "bom"])
def test_utf8_csv_with_and_without_bom(tmp_path: Path, bom: bytes) -> None:
    content = bom + "text,label\nOù est ma carte ?,card_arrival\n".encode()
    path = tmp_path / "tickets.csv"
    path.write_bytes(content)
    assert ingest.sniff_columns(path, "tickets.csv", "csv") == ["text", "label"]
    assert records_of(tmp_path, "tickets.csv", content) == [
        (2, {"text": "Où est ma carte ?", "label": "card_arrival"})
    ]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["no-bom", "bom"])
def test_utf8_jsonl_with_and_without_bom(tmp_path: Path, bom: bytes) -> None:
    content = bom + '{"text": "Où est ma carte ?", "n": 1.5}\n{"text": "b"}\n'.encode()
    assert records_of(tmp_path, "inputs.jsonl", content) == [
        (1, {"text": "Où est ma carte ?", "n": 1.5}),
        (2, {"text": "b"}),
    ]


def test_crlf_line_endings(tmp_path: Path) -> None:
    csv_content = b"text,label\r\nWhere is my card?,card_arrival\r\nTop up failed,top_up_failed\r\n"
    assert records_of(tmp_path, "tickets.csv", csv_content) == [
        (2, {"text": "Where is my card?", "label": "card_arrival"}),
        (3, {"text": "Top up failed", "label": "top_up_failed"}),
    ]
    jsonl_content = b'{"text": "a"}\r\n{"text": "b"}\r\n'
    assert records_of(tmp_path, "inputs.jsonl", jsonl_content) == [
        (1, {"text": "a"}),
        (2, {"text": "b"}),
    ]


def test_quoted_multiline_fields_keep_their_starting_line(tmp_path: Path) -> None:
    content = (
        b'text,label\n"Hello,\nmy card ""never"" came",card_arrival\nTop up failed,top_up_failed\n'
    )
    assert records_of(tmp_path, "tickets.csv", content) == [
        (2, {"text": 'Hello,\nmy card "never" came', "label": "card_arrival"}),
        (4, {"text": "Top up failed", "label": "top_up_failed"}),
    ]


def test_blank_lines_are_skipped_and_lines_still_count(tmp_path: Path) -> None:
    csv_content = b"\ntext,label\n\nWhere is my card?,card_arrival\n\n\nTop up failed,t\n\n"
    assert records_of(tmp_path, "tickets.csv", csv_content) == [
        (4, {"text": "Where is my card?", "label": "card_arrival"}),
        (7, {"text": "Top up failed", "label": "t"}),
    ]
    jsonl_content = b'\n{"text": "a"}\n   \n{"text": "b"}\n\n'
    assert records_of(tmp_path, "inputs.jsonl", jsonl_content) == [
        (2, {"text": "a"}),
        (4, {"text": "b"}),
    ]


def test_leading_blank_lines_beyond_the_first_block_are_not_an_empty_file(tmp_path: Path) -> None:
    content = b"\n" * 5000 + b"text\nWhere is my card?\n"
    assert records_of(tmp_path, "tickets.csv", content) == [(5002, {"text": "Where is my card?"})]


def test_jsonl_columns_are_the_union_of_sampled_keys(tmp_path: Path) -> None:
    path = tmp_path / "inputs.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "b", "label": "x", "meta": {"k": [1, 2]}}\n')
    assert ingest.sniff_columns(path, "inputs.jsonl", "jsonl") == ["text", "label", "meta"]
    assert ingest.as_text({"k": [1, 2]}) == '{"k": [1, 2]}'
    assert ingest.as_text(None) == ""
