"""Settings for the test suite: real PostgreSQL and Redis (the Makefile and .ci/run start them).

Defaults point at the local services; DATABASE_URL / REDIS_URL override them.
"""

import os
import tempfile
import uuid

# A database name per test process, so two test runs on one machine never drop each other's
# test database (pytest-django creates and drops "test_<name>"). Worker subprocesses started by
# the tests inherit DATABASE_URL, so they keep the parent's name.
os.environ.setdefault(
    "DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/distillery_{os.getpid()}"
)
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
os.environ.setdefault("DISTILLERY_ENV", "test")
# Each test session gets its own cache namespace so parallel runs never read each other's keys.
os.environ.setdefault("CACHE_KEY_PREFIX", f"distillery-test-{uuid.uuid4().hex[:8]}")
os.environ.setdefault("DISTILLERY_DATA_DIR", tempfile.mkdtemp(prefix="distillery-test-data-"))
# One heavy job per machine is enforced with lock files: a test run keeps its own, so two runs
# on one machine (or a developer's `make run`) don't queue behind each other.
os.environ.setdefault(
    "DISTILLERY_COMPUTE_LOCK_DIR", tempfile.mkdtemp(prefix="distillery-test-compute-")
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from distillery.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
