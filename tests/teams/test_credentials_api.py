"""/api/v1/credentials: listed to members with the key's last four only; written by owners;
the key is write-only."""

from __future__ import annotations

import pytest

from teams.models import ProviderCredential
from tests.factories import MembershipFactory
from tests.helpers.api import Api, token_for

pytestmark = pytest.mark.django_db

KEY = "sk-live-abcdefgh1234"


def test_an_owner_creates_updates_and_deletes_and_the_key_never_comes_back(db):  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    api = Api(token_for(owner))
    created = api.post(
        "/api/v1/credentials", {"name": "prod-openai", "provider": "openai", "api_key": KEY}
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["key_last4"] == "1234" and KEY not in created.content.decode()
    assert "api_key" not in body
    listed = api.get("/api/v1/credentials")
    assert [c["name"] for c in listed.json()["results"]] == ["prod-openai"]
    assert KEY not in listed.content.decode()
    duplicate = api.post(
        "/api/v1/credentials", {"name": "prod-openai", "provider": "openai", "api_key": KEY}
    )
    assert duplicate.status_code == 400 and duplicate.json()["errors"][0]["field"] == "name"

    cid = body["id"]
    renamed = api.send("PATCH", f"/api/v1/credentials/{cid}", {"name": "openai-main"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "openai-main"
    assert renamed.json()["key_last4"] == "1234"
    rekeyed = api.send("PATCH", f"/api/v1/credentials/{cid}", {"api_key": "sk-new-key-99998888"})
    assert rekeyed.json()["key_last4"] == "8888"
    # The page's rule: a new base URL needs the key typed again (it must not go elsewhere).
    moved = api.send("PATCH", f"/api/v1/credentials/{cid}", {"base_url": "https://example.com/v1"})
    assert moved.status_code == 400 and moved.json()["errors"][0]["field"] == "api_key"
    assert api.send("DELETE", f"/api/v1/credentials/{cid}").status_code == 204
    assert not ProviderCredential.objects.exists()


def test_short_keys_and_unknown_providers_are_refused_by_field(db):  # type: ignore[no-untyped-def]
    api = Api(token_for(MembershipFactory()))
    short = api.post("/api/v1/credentials", {"name": "a", "provider": "openai", "api_key": "sk"})
    assert short.status_code == 400 and short.json()["errors"][0]["field"] == "api_key"
    unknown = api.post("/api/v1/credentials", {"name": "a", "provider": "nope", "api_key": KEY})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "provider"
    assert not ProviderCredential.objects.exists()


def test_an_engineer_lists_but_may_not_add_or_delete(db):  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    Api(token_for(owner)).post(
        "/api/v1/credentials", {"name": "prod", "provider": "openai", "api_key": KEY}
    )
    engineer = Api(token_for(MembershipFactory(team=owner.team, role="engineer")))
    assert [c["name"] for c in engineer.get("/api/v1/credentials").json()["results"]] == ["prod"]
    refused = engineer.post(
        "/api/v1/credentials", {"name": "mine", "provider": "openai", "api_key": KEY}
    )
    assert refused.status_code == 403
    cid = ProviderCredential.objects.get().pk
    assert engineer.send("DELETE", f"/api/v1/credentials/{cid}").status_code == 403
    assert list(ProviderCredential.objects.values_list("name", flat=True)) == ["prod"]
