"""An upload over MAX_UPLOAD_BYTES is stopped while it arrives (distillery.uploads): the real test
client posts a file over a lowered limit, and the page answers 413 naming the limit, with
nothing stored, for input uploads and for imported teacher outputs alike."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from projects.models import InputUpload
from teachers.models import TeacherRun

pytestmark = pytest.mark.django_db

MESSAGE = "the file is too large: uploads are limited to 1.0 KB"
CONTENT = b'{"text": "Where is my card?", "output": "card_arrival"}\n' * 100  # 5.6 KB


@pytest.mark.parametrize(
    "url_name", ["projects:inputs_upload", "teachers:teacher_run_import"], ids=["inputs", "teacher"]
)
def test_an_upload_over_the_limit_is_refused_with_413(
    client_for, owner, project, settings, url_name
):  # type: ignore[no-untyped-def]
    settings.MAX_UPLOAD_BYTES = 1024
    response = client_for(owner).post(
        reverse(url_name, args=[project.pk]),
        {"file": SimpleUploadedFile("outputs.jsonl", CONTENT)},
    )
    assert response.status_code == 413
    assert response.context["form"].errors["file"] == [MESSAGE]
    assert MESSAGE.encode() in response.content
    assert not InputUpload.objects.exists()
    assert not TeacherRun.objects.exists()
