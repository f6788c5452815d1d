"""The write-behind queue: answers never wait for the database; when the queue is full the drop
is counted in the database, and recorded rows + counted drops = requests."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection

from gateway.models import GatewayDrops, GatewayRequest
from tests.gateway.gateway_support import flush

pytestmark = pytest.mark.django_db(transaction=True)


def _second_connection() -> psycopg.Connection:
    s = connection.settings_dict
    return psycopg.connect(
        dbname=s["NAME"],
        user=s["USER"],
        password=s["PASSWORD"],
        host=s["HOST"],
        port=s["PORT"] or None,
    )


def test_a_full_queue_answers_anyway_and_counts_every_drop(gw, settings):  # type: ignore[no-untyped-def]
    assert gw.infer({"text": "warm up"}).status_code == 200  # the policy's rows exist
    flush()
    settings.GATEWAY_QUEUE_SIZE = 2  # the next record goes to a recorder holding two
    blocker = _second_connection()
    try:
        # The database is stuck for the request log (a long lock): the drainer waits on it.
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE gateway_gatewayrequest IN ACCESS EXCLUSIVE MODE")
        timings = []
        for i in range(8):
            started = time.perf_counter()
            reply = gw.infer({"text": f"ticket {i} about my card"})
            timings.append(time.perf_counter() - started)
            assert reply.status_code == 200
        assert max(timings) < 5  # answered without waiting for the stuck database
        drops = GatewayDrops.objects.get(project=gw.project)
        assert drops.dropped >= 5  # one in the drainer's hands, two queued, the rest dropped
        assert drops.dropped_cost_usd > 0  # what the dropped teacher calls cost is known too
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    flush()
    written = GatewayRequest.objects.filter(project=gw.project).count() - 1  # minus the warm-up
    assert written + GatewayDrops.objects.get(project=gw.project).dropped == 8


def test_a_record_the_database_refuses_is_counted_and_takes_no_other_with_it(gw):  # type: ignore[no-untyped-def]
    """PostgreSQL refuses a NUL character in text and JSON: that one record cannot be written.
    The others of its batch still are, and it is counted as a drop, never lost silently."""
    from projects.models import InputRow

    gw.policy(sample_rate=1.0)
    inputs = [
        {"text": "my card was stolen"},
        {"text": "top up failed \u0000 again"},
        {"text": "where is my card"},
    ]
    reply = gw.infer(inputs)
    assert reply.status_code == 200
    assert len(reply.json()["results"]) == 3
    flush()
    written = GatewayRequest.objects.filter(project=gw.project).count()
    drops = GatewayDrops.objects.filter(project=gw.project).first()
    assert drops is not None and drops.dropped == 1
    assert written == 2
    recorded = sorted(
        InputRow.objects.filter(project=gw.project).values_list("data", flat=True), key=str
    )
    assert [r["text"] for r in recorded] == ["my card was stolen", "where is my card"]


def test_a_record_whose_project_is_gone_takes_no_other_with_it(gw):  # type: ignore[no-untyped-def]
    """A project deleted while its traffic waits in the queue: its record cannot be written,
    nor its drop counted (both need the project). The log says so; the batch's other records
    are still written (before, the failing count ended the batch there)."""
    from django.utils import timezone

    from gateway.recorder import Record, write_one_by_one
    from tests.factories import ProjectFactory

    def record(project_id: int, text: str) -> Record:
        row = GatewayRequest(
            project_id=project_id,
            created_at=timezone.now(),
            mode="teacher",
            answered_by="teacher",
            latency_ms=1.0,
            input_hash=text,
            input_chars=len(text),
            sampled=False,
        )
        return Record(row=row, team_id=gw.project.team_id, inputs={"text": text})

    gone = ProjectFactory(team=gw.project.team, created_by=gw.owner, name="Deleted meanwhile")
    batch = [record(gone.pk, "first, of a deleted project"), record(gw.project.pk, "second")]
    gone.delete()
    write_one_by_one(batch)
    assert list(
        GatewayRequest.objects.filter(project=gw.project).values_list("input_hash", flat=True)
    ) == ["second"]
    assert not GatewayDrops.objects.filter(project_id=gone.pk).exists()
