"""Changes that decide who an API token acts as (teams/api_tokens.py caches that per process)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from teams.api_tokens import auth_changed
from teams.models import ApiToken, Membership, Team


def auth_changed_now_and_on_commit(**_: Any) -> None:
    # Now, for this transaction's own later requests; and after the commit, so that no process
    # can keep what it read between the first bump and the commit.
    auth_changed()
    transaction.on_commit(auth_changed)


def connect() -> None:
    for model in (ApiToken, Membership, Team, get_user_model()):
        post_save.connect(
            auth_changed_now_and_on_commit, sender=model, dispatch_uid=f"api-auth-{model.__name__}"
        )
        post_delete.connect(
            auth_changed_now_and_on_commit,
            sender=model,
            dispatch_uid=f"api-auth-del-{model.__name__}",
        )
