"""Upload → map → import job, through the views and the real task body."""

from __future__ import annotations

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from jobs.models import Job, JobStatus
from projects.models import InputRow
from projects.tasks import import_inputs


def upload(client, project, name: str, content: bytes):  # type: ignore[no-untyped-def]
    return client.post(
        reverse("projects:inputs_upload", args=[project.pk]),
        {"file": SimpleUploadedFile(name, content)},
    )


def test_csv_upload_maps_columns_and_imports_with_dedup(
    client_for, owner, project, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    content = (
        "\ufeffticket,intent\n"
        "Where is my card?,card_arrival\n"
        '"My card was stolen, help",lost_or_stolen_card\n'
        "Where is my card?,card_arrival\n"
        "Top up failed again,\n"
    ).encode()
    response = upload(client, project, "tickets.csv", content)
    assert response.status_code == 302
    map_url = response["Location"]
    page = client.get(map_url)
    assert b"ticket" in page.content and b"intent" in page.content

    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(map_url, {"map_text": "ticket", "reference_column": "intent"})
    assert response.status_code == 302
    job = Job.objects.get(project=project)
    assert job.status == JobStatus.QUEUED

    import_inputs(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result == {
        "rows_read": 4,
        "imported": 3,
        "duplicates_in_file": 1,
        "already_present": 0,
    }
    assert job.percent == 100
    rows = list(InputRow.objects.filter(project=project).order_by("id"))
    assert [r.data["text"] for r in rows] == [
        "Where is my card?",
        "My card was stolen, help",
        "Top up failed again",
    ]
    assert [r.reference_output for r in rows] == ["card_arrival", "lost_or_stolen_card", None]
    assert rows[1].source_line == 3

    # The same file again: everything is already present, nothing is added.
    response = upload(client, project, "tickets.csv", content)
    with django_capture_on_commit_callbacks(execute=False):
        client.post(response["Location"], {"map_text": "ticket"})
    again = Job.objects.filter(project=project).order_by("-id").first()
    import_inputs(again.pk)
    again.refresh_from_db()
    assert again.result["imported"] == 0 and again.result["already_present"] == 3
    assert InputRow.objects.filter(project=project).count() == 3

    listing = client.get(reverse("projects:inputs_list", args=[project.pk]), {"q": "STOLEN"})
    assert b"My card was stolen, help" in listing.content
    assert b"Where is my card?" not in listing.content


def test_jsonl_upload_with_a_bad_line_imports_nothing_and_names_the_line(
    client_for, owner, project
):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    good = b'{"text": "hello"}\n' * 3
    content = (
        b"".join(f'{{"text": "row {i}"}}\n'.encode() for i in range(300))
        + b'["not", "an", "object"]\n'
        + good
    )
    response = upload(client, project, "inputs.jsonl", content)
    # The first rows sniff fine; the whole file is read at upload, so the bad line is shown on
    # the form and nothing is kept.
    assert response.status_code == 400
    assert response.context["form"].errors["file"] == [
        "inputs.jsonl, line 301: expected a JSON object, found an array"
    ]
    assert not Job.objects.filter(project=project).exists()
    assert InputRow.objects.filter(project=project).count() == 0
