from __future__ import annotations

import pytest

from tests.fakes.provider_server import FakeProviderServer
from tests.gateway.gateway_support import (
    TEACHER_KEY,
    flush,
    student_responder,
    teacher_responder,
    wire,
)


@pytest.fixture
def gw(project, owner, settings, fake_provider_factory):  # type: ignore[no-untyped-def]
    teacher: FakeProviderServer = fake_provider_factory(
        responder=teacher_responder, api_keys={TEACHER_KEY}
    )
    student: FakeProviderServer = fake_provider_factory(responder=student_responder)
    wired = wire(project, owner, teacher, student, settings)
    yield wired
    flush()  # nothing of this test is still being written when the database is emptied
