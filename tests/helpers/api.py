"""Calling /api/v1/ in tests: a token made by the real service, sent as a bearer header."""

from __future__ import annotations

import json
from typing import Any

from django.test import Client

from teams.api_tokens import api_token_create
from teams.models import Membership


def token_for(membership: Membership, *, scopes: tuple[str, ...] = ("read", "write")) -> str:
    _, raw = api_token_create(
        team=membership.team,
        user=membership.user,
        name=f"test-{membership.pk}-{'-'.join(scopes)}-{Membership.objects.count()}",
        scopes=list(scopes),
    )
    return raw


class Api:
    """A Django test client that sends JSON with ``Authorization: Bearer <token>``."""

    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.token = token

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        return self.client.get(path, params, headers=self._headers(headers))

    def send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        call = getattr(self.client, method.lower())
        data = json.dumps(body) if body is not None else ""
        return call(path, data, content_type="application/json", headers=self._headers(headers))

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.send("POST", path, body, headers)
