"""Bad files through the real upload view and the real import job.

On the upload form: status 400, the message (file and line) shown on the form, and nothing kept:
no InputUpload, no InputRow, no file under DATA_DIR/uploads; the whole file is read at upload, so
this holds for a bad line far past the rows the column sniff reads. A row that does not fit the
mapping chosen afterwards fails the import job, naming file, line and field, and the transaction
leaves the project's inputs as they were. An upload over MAX_UPLOAD_BYTES is stopped while it
arrives (413, the limit named).
"""

from __future__ import annotations

import html
import io
import zipfile
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from jobs.models import Job, JobStatus
from projects.models import InputRow, InputUpload
from projects.services import inputs_import_run
from projects.tasks import import_inputs
from tests.factories import InputRowFactory
from worker.ingest import IngestError

LIMIT = 131_072


def upload(client, project, name: str, content: bytes):  # type: ignore[no-untyped-def]
    return client.post(
        reverse("projects:inputs_upload", args=[project.pk]),
        {"file": SimpleUploadedFile(name, content)},
    )


def stored_files(project) -> list[Path]:  # type: ignore[no-untyped-def]
    folder = settings.DATA_DIR / "uploads" / f"team-{project.team_id}" / f"project-{project.pk}"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")
    return buffer.getvalue()


UTF16 = "the file is UTF-16 encoded; save it as UTF-8 (with or without BOM)"

# (file name, content, the exact message on the form)
REFUSED_AT_UPLOAD = {
    "empty": ("tickets.csv", b"", "tickets.csv: the file is empty"),
    "header-only": (
        "tickets.csv",
        b"text,label\n",
        "tickets.csv: the file has a header but no data rows",
    ),
    "ragged": (
        "tickets.csv",
        b"text,label\nWhere is my card?,card_arrival\nI lost my card\n",
        "tickets.csv, line 3: expected 2 fields (as in the header), found 1",
    ),
    "invalid-utf8": (
        "tickets.csv",
        b"text\nhello\nO\xf9 est ma carte ?\n",
        "tickets.csv, line 3: not valid UTF-8 (byte 0xf9 at column 2); save the file as UTF-8",
    ),
    "utf16-bom": ("tickets.csv", "text\nhello\n".encode("utf-16"), f"tickets.csv: {UTF16}"),
    "utf16-no-bom": ("tickets.csv", "text\nhello\n".encode("utf-16-le"), f"tickets.csv: {UTF16}"),
    "nul-byte": (
        "tickets.csv",
        b"text\nhel\x00lo\n",
        "tickets.csv, line 2: contains a NUL byte (is this a binary file?)",
    ),
    "unterminated-quote": (
        "tickets.csv",
        b'text,label\n"My card was stolen,\nhelp,lost\n',
        "tickets.csv, line 3: unterminated quoted field (the quote opens on line 2)",
    ),
    "csv-field-too-long": (
        "tickets.csv",
        b"text\n" + b"x" * (LIMIT + 1) + b"\n",
        f"tickets.csv, line 2: a field is longer than the limit of {LIMIT:,} characters",
    ),
    "jsonl-field-too-long": (
        "inputs.jsonl",
        b'{"text": "' + b"x" * (LIMIT + 1) + b'"}\n',
        f"inputs.jsonl, line 1: field 'text' is {LIMIT + 1:,} characters; the limit is {LIMIT:,}",
    ),
    "jsonl-non-object": (
        "inputs.jsonl",
        b'{"text": "hello"}\n["hello"]\n',
        "inputs.jsonl, line 2: expected a JSON object, found an array",
    ),
    "jsonl-nan": (
        "inputs.jsonl",
        b'{"text": "hello", "score": NaN}\n',
        "inputs.jsonl, line 1: NaN is not valid JSON (use null or a number)",
    ),
    "jsonl-infinity": (
        "inputs.jsonl",
        b'{"text": "hello", "score": Infinity}\n',
        "inputs.jsonl, line 1: Infinity is not valid JSON (use null or a number)",
    ),
    "jsonl-duplicate-key": (
        "inputs.jsonl",
        b'{"text": "hello", "text": "again"}\n',
        "inputs.jsonl, line 1: duplicate key 'text' in the JSON object",
    ),
    "zip-renamed": (
        "tickets.csv",
        zip_bytes(),
        "tickets.csv: this is a ZIP archive (an Excel .xlsx?), not a text file; "
        "export it as CSV (UTF-8) and upload that",
    ),
    "wrong-extension": (
        "tickets.xlsx",
        zip_bytes(),
        "tickets.xlsx: unsupported file type: upload a .csv or .jsonl file",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_AT_UPLOAD))
def test_bad_file_is_refused_on_the_form_and_nothing_is_stored(client_for, owner, project, case):  # type: ignore[no-untyped-def]
    name, content, message = REFUSED_AT_UPLOAD[case]
    InputRowFactory(project=project)
    response = upload(client_for(owner), project, name, content)

    assert response.status_code == 400
    assert response.context["form"].errors["file"] == [message]
    assert html.escape(message).encode() in response.content
    assert not InputUpload.objects.filter(project=project).exists()
    assert InputRow.objects.filter(project=project).count() == 1
    assert stored_files(project) == []


def test_an_upload_over_the_limit_is_stopped_while_it_arrives(client_for, owner, project, settings):  # type: ignore[no-untyped-def]
    # The upload handler stops reading once the file passes the limit; the view answers 413,
    # naming the limit.
    settings.MAX_UPLOAD_BYTES = 1024
    content = b"text\n" + b"Where is my card?\n" * 200  # 3,605 bytes
    response = upload(client_for(owner), project, "tickets.csv", content)

    assert response.status_code == 413
    message = "the file is too large: uploads are limited to 1.0 KB"
    assert response.context["form"].errors["file"] == [message]
    assert message.encode() in response.content
    assert not InputUpload.objects.exists()
    assert stored_files(project) == []


# Past the sniffed sample -----------------------------------------------------------------------

GOOD_CSV = b"".join(f"Ticket number {i},card_arrival\n".encode() for i in range(300))
GOOD_JSONL = b"".join(f'{{"text": "Ticket number {i}"}}\n'.encode() for i in range(300))
TAIL_CSV = b"Where is my card?,card_arrival\n" * 5
TAIL_JSONL = b'{"text": "Where is my card?"}\n' * 5

# (file name, the bad line(s) after 300 good rows, the exact message). CSV: the header is line
# 1, so the first bad line is 302; JSONL: line 301.
REFUSED_PAST_THE_SAMPLE = {
    "ragged": (
        "tickets.csv",
        b"I lost my card\n",
        "tickets.csv, line 302: expected 2 fields (as in the header), found 1",
    ),
    "invalid-utf8": (
        "tickets.csv",
        b"O\xf9 est ma carte ?,card_arrival\n",
        "tickets.csv, line 302: not valid UTF-8 (byte 0xf9 at column 2); save the file as UTF-8",
    ),
    "nul-byte": (
        "tickets.csv",
        b"hel\x00lo,card_arrival\n",
        "tickets.csv, line 302: contains a NUL byte (is this a binary file?)",
    ),
    "unterminated-quote": (
        "tickets.csv",
        b'"My card was stolen,lost\n',
        "tickets.csv, line 307: unterminated quoted field (the quote opens on line 302)",
    ),
    "csv-field-too-long": (
        "tickets.csv",
        b"x" * (LIMIT + 1) + b",card_arrival\n",
        f"tickets.csv, line 302: a field is longer than the limit of {LIMIT:,} characters",
    ),
    "jsonl-field-too-long": (
        "inputs.jsonl",
        b'{"text": "' + b"x" * (LIMIT + 1) + b'"}\n',
        f"inputs.jsonl, line 301: field 'text' is {LIMIT + 1:,} characters; the limit is {LIMIT:,}",
    ),
    "jsonl-non-object": (
        "inputs.jsonl",
        b'"Where is my card?"\n',
        "inputs.jsonl, line 301: expected a JSON object, found a string",
    ),
    "jsonl-nan": (
        "inputs.jsonl",
        b'{"text": "hello", "score": NaN}\n',
        "inputs.jsonl, line 301: NaN is not valid JSON (use null or a number)",
    ),
    "jsonl-infinity": (
        "inputs.jsonl",
        b'{"text": "hello", "score": -Infinity}\n',
        "inputs.jsonl, line 301: -Infinity is not valid JSON (use null or a number)",
    ),
    "jsonl-duplicate-key": (
        "inputs.jsonl",
        b'{"text": "hello", "text": "again"}\n',
        "inputs.jsonl, line 301: duplicate key 'text' in the JSON object",
    ),
    "jsonl-syntax": (
        "inputs.jsonl",
        b'{"text": "hello"\n',
        "inputs.jsonl, line 301: not valid JSON: Expecting ',' delimiter (column 17)",
    ),
}


def with_good_rows(name: str, bad: bytes) -> bytes:
    if name.endswith(".csv"):
        return b"text,label\n" + GOOD_CSV + bad + TAIL_CSV
    return GOOD_JSONL + bad + TAIL_JSONL


@pytest.mark.parametrize("case", list(REFUSED_PAST_THE_SAMPLE))
def test_bad_line_after_the_sample_is_refused_at_upload(client_for, owner, project, case):  # type: ignore[no-untyped-def]
    name, bad, message = REFUSED_PAST_THE_SAMPLE[case]
    existing = InputRowFactory(project=project)
    response = upload(client_for(owner), project, name, with_good_rows(name, bad))

    assert response.status_code == 400
    assert response.context["form"].errors["file"] == [message]
    assert html.escape(message).encode() in response.content
    assert not InputUpload.objects.filter(project=project).exists()
    assert list(InputRow.objects.filter(project=project)) == [existing]
    assert stored_files(project) == []


# A row that does not fit the mapping: the job fails --------------------------------------------


def start_import(client, project, name: str, content: bytes, django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    response = upload(client, project, name, content)
    assert response.status_code == 302, response.context["form"].errors
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(response["Location"], {"map_text": "text"})
    assert response.status_code == 302
    job = Job.objects.filter(project=project).order_by("-id").first()
    assert job is not None and job.status == JobStatus.QUEUED
    return job


def test_a_row_without_the_mapped_field_fails_the_job_and_imports_nothing(
    client_for, owner, project, settings, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    # Small batches, so that rows before the bad line were really written before the failure.
    settings.IMPORT_BATCH_SIZE = 50
    content = with_good_rows("inputs.jsonl", b'{"body": "hello"}\n')
    message = "inputs.jsonl, line 301: the row has no 'text' field"
    existing = InputRowFactory(project=project)
    client = client_for(owner)
    job = start_import(client, project, "inputs.jsonl", content, django_capture_on_commit_callbacks)

    import_inputs(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error == message
    assert list(InputRow.objects.filter(project=project)) == [existing]
    page = client.get(reverse("jobs:job_detail", args=[job.pk]))
    assert html.escape(message).encode() in page.content

    with pytest.raises(IngestError) as raised:
        inputs_import_run(job=job, progress=lambda done, total: None)
    error = raised.value
    assert (error.file_name, error.line, error.field) == ("inputs.jsonl", 301, "text")


def test_good_file_with_bom_crlf_multiline_fields_and_blank_lines_imports_every_row(
    client_for, owner, project, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    content = (
        b"\xef\xbb\xbftext,label\r\n"
        b"\r\n"
        b'"Hello,\r\nmy card ""never"" came",card_arrival\r\n'
        b"O\xc3\xb9 est ma carte ?,card_arrival\r\n"
        b"\r\n"
        b"Top up failed,top_up_failed\r\n"
    )
    job = start_import(
        client_for(owner), project, "tickets.csv", content, django_capture_on_commit_callbacks
    )
    import_inputs(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    rows = list(InputRow.objects.filter(project=project).order_by("id"))
    assert [(r.source_line, r.data["text"]) for r in rows] == [
        (3, 'Hello,\r\nmy card "never" came'),
        (5, "Où est ma carte ?"),
        (7, "Top up failed"),
    ]
