"""Deduplication by content hash across import batches (the import keeps no set of every hash)."""

from __future__ import annotations

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from jobs.models import Job, JobStatus
from projects.models import InputRow
from projects.tasks import import_inputs
from tests.factories import InputRowFactory


def test_duplicates_are_counted_across_batches_and_against_existing_rows(
    client_for, owner, project, settings, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    settings.IMPORT_BATCH_SIZE = 3
    InputRowFactory(project=project, data={"text": "old ticket"})
    lines = [
        "a",
        "b",
        "old ticket",  # was there before
        "c",
        "a",  # repeats line 1, in a later batch
        "d",
        "old ticket",  # was there before, and repeats within the file
        "e",
        "e",  # repeats within the same batch
        "b",
    ]
    content = ("text\n" + "\n".join(lines) + "\n").encode()
    client = client_for(owner)
    response = client.post(
        reverse("projects:inputs_upload", args=[project.pk]),
        {"file": SimpleUploadedFile("tickets.csv", content)},
    )
    with django_capture_on_commit_callbacks(execute=False):
        client.post(response["Location"], {"map_text": "text"})
    job = Job.objects.get(project=project)

    import_inputs(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result == {
        "rows_read": 10,
        "imported": 5,  # a b c d e
        "duplicates_in_file": 4,  # a, old ticket, e, b
        "already_present": 1,  # old ticket
    }
    rows = InputRow.objects.filter(project=project).order_by("id")
    assert [r.data["text"] for r in rows] == ["old ticket", "a", "b", "c", "d", "e"]
    # Each row keeps the line where it first appeared.
    assert [r.source_line for r in rows[1:]] == [2, 3, 5, 7, 9]
