"""When the database or the broker is down, the health check says which, and pages answer 503
with the reason instead of a 500."""

from __future__ import annotations

import sqlite3

import pytest
from django.db.utils import OperationalError

from distillery.outages import outage_message
from tests.helpers.broker import broker_at


@pytest.mark.django_db
def test_healthz_checks_the_database_with_a_query_and_the_broker(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_healthz_names_the_broker_when_it_is_unreachable(client):
    with broker_at("redis://127.0.0.1:9/0"):
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False and body["database"] == "ok"
    assert body["broker"].startswith("failed:")


def test_a_locked_sqlite_file_reads_as_busy_not_as_an_error(tmp_path):
    path = tmp_path / "db.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError) as locked:
        other.execute("BEGIN IMMEDIATE")
    message = outage_message(OperationalError(*locked.value.args))
    assert message is not None and "database is busy" in message
    assert outage_message(OperationalError("no such table: t")) is None
