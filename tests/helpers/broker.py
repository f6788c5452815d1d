"""Point the Celery app at another broker for one test, and back, with its connection pools
looked up again both ways (a pool left pointing at a dead broker would break every later test)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from distillery.celery import app


def use_broker(url: str) -> None:
    app.conf.broker_url = url
    app.conf.broker_write_url = None
    # Drop the app's references only: kombu keeps one pool per broker URL in a global registry,
    # and closing it would leave a closed pool there for the URL that comes back.
    app._pool = None
    app.amqp._producer_pool = None


@contextmanager
def broker_at(url: str) -> Iterator[None]:
    original = app.conf.broker_url
    use_broker(url)
    try:
        yield
    finally:
        use_broker(original)
