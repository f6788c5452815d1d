"""Team API tokens: made on a page, shown once, stored hashed, scoped, revocable, rate limited."""

from __future__ import annotations

import hashlib

import pytest
from django.test import Client
from django.urls import reverse

from teams.models import ApiToken, Role
from tests.factories import MembershipFactory, ProjectFactory, TeamFactory
from tests.helpers.api import Api, token_for

pytestmark = pytest.mark.django_db


def _signed_in(membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def test_a_token_is_shown_once_and_only_its_hash_is_stored():
    owner = MembershipFactory(role=Role.OWNER)
    page = reverse("teams:api_tokens", args=[owner.team.pk])
    response = _signed_in(owner).post(page, {"name": "nightly", "scopes": ["read", "write"]})
    assert response.status_code == 200
    secret = response.context["new_token"]["secret"]
    assert secret.startswith("dst_") and secret in response.content.decode()
    assert response["Cache-Control"] == "no-store"
    token = ApiToken.objects.get(name="nightly")
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(ApiToken.objects.filter(pk=token.pk).values().first())
    again = _signed_in(owner).get(page).content.decode()
    assert secret not in again and token.prefix in again
    assert Api(secret).get("/api/v1/projects").status_code == 200


def test_a_token_never_exceeds_its_creators_role():
    viewer = MembershipFactory(role=Role.VIEWER)
    page = reverse("teams:api_tokens", args=[viewer.team.pk])
    response = _signed_in(viewer).post(page, {"name": "mine", "scopes": ["write"]})
    assert "a viewer cannot create a token with the &#x27;write&#x27; scope" in (
        response.content.decode()
    )
    assert not ApiToken.objects.exists()
    reviewer = MembershipFactory(role=Role.REVIEWER)
    raw = token_for(reviewer, scopes=("write",))
    project = ProjectFactory(team=reviewer.team)
    # A reviewer's write token reviews but cannot change the task: the role still applies.
    response = Api(raw).send(
        "PUT",
        f"/api/v1/projects/{project.slug}/task",
        {
            "input_fields": ["text"],
            "instruction_template": "{{ text }}",
            "output_kind": "text",
        },
    )
    assert response.status_code == 403
    assert "creator is reviewer" in response.json()["detail"]


def test_scopes_missing_and_revoked_tokens():
    owner = MembershipFactory(role=Role.OWNER)
    project = ProjectFactory(team=owner.team)
    read_only = Api(token_for(owner, scopes=("read",)))
    assert read_only.get(f"/api/v1/projects/{project.slug}").status_code == 200
    refused = read_only.post("/api/v1/projects", {"name": "Nope"})
    assert refused.status_code == 403
    assert "its scopes are read" in refused.json()["detail"]
    missing = Api(None).get("/api/v1/projects")
    assert missing.status_code == 401 and missing["WWW-Authenticate"] == "Bearer"
    assert "API token" in missing.json()["detail"]
    assert Api("dst_not-a-real-token").get("/api/v1/projects").status_code == 401
    raw = token_for(owner)
    token = ApiToken.objects.get(token_hash=hashlib.sha256(raw.encode()).hexdigest())
    page = reverse("teams:api_token_revoke", args=[owner.team.pk, token.pk])
    assert _signed_in(owner).post(page).status_code == 302
    assert Api(raw).get("/api/v1/projects").status_code == 401


def test_a_token_is_one_teams_even_when_its_creator_is_in_two():
    mine = MembershipFactory(role=Role.OWNER)
    other_team = TeamFactory()
    MembershipFactory(team=other_team, user=mine.user, role=Role.OWNER)
    theirs = ProjectFactory(team=other_team)
    api = Api(token_for(mine))
    assert api.get(f"/api/v1/projects/{theirs.slug}").status_code == 404
    assert theirs.slug not in api.get("/api/v1/projects").content.decode()


def test_a_token_stops_when_its_creator_leaves_and_records_last_use():
    member = MembershipFactory(role=Role.ENGINEER)
    raw = token_for(member)
    assert ApiToken.objects.get().last_used_at is None
    assert Api(raw).get("/api/v1/projects").status_code == 200
    assert ApiToken.objects.get().last_used_at is not None
    member.delete()
    assert Api(raw).get("/api/v1/projects").status_code == 401


def test_owners_see_and_revoke_every_token_others_only_their_own():
    owner = MembershipFactory(role=Role.OWNER)
    engineer = MembershipFactory(team=owner.team, role=Role.ENGINEER)
    token_for(owner)
    token_for(engineer)
    theirs = ApiToken.objects.get(created_by=owner.user)
    engineer_page = _signed_in(engineer).get(reverse("teams:api_tokens", args=[owner.team.pk]))
    assert [t.pk for t, _ in engineer_page.context["tokens"]] == [
        ApiToken.objects.get(created_by=engineer.user).pk
    ]
    revoke = reverse("teams:api_token_revoke", args=[owner.team.pk, theirs.pk])
    assert _signed_in(engineer).post(revoke).status_code == 404
    owner_page = _signed_in(owner).get(reverse("teams:api_tokens", args=[owner.team.pk]))
    assert len(owner_page.context["tokens"]) == 2
    mine = ApiToken.objects.get(created_by=engineer.user)
    revoke = reverse("teams:api_token_revoke", args=[owner.team.pk, mine.pk])
    assert _signed_in(owner).post(revoke).status_code == 302
    assert ApiToken.objects.get(pk=mine.pk).revoked_by == owner.user


def test_rate_limit_answers_429_with_retry_after(settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    api = Api(token_for(MembershipFactory(role=Role.OWNER)))
    statuses = [api.get("/api/v1/projects").status_code for _ in range(4)]
    assert statuses[:3] == [200, 200, 200]
    limited = api.get("/api/v1/projects")
    assert limited.status_code == 429
    assert 1 <= int(limited["Retry-After"]) <= 61
    assert "at most 3 requests a minute" in limited.json()["detail"]
    other = Api(token_for(MembershipFactory(role=Role.OWNER)))
    assert other.get("/api/v1/projects").status_code == 200


def test_an_idempotency_key_answers_a_retry_with_the_first_response():
    owner = MembershipFactory(role=Role.OWNER)
    api = Api(token_for(owner))
    first = api.post("/api/v1/projects", {"name": "Tickets"}, headers={"Idempotency-Key": "k1"})
    retry = api.post("/api/v1/projects", {"name": "Tickets"}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json() and retry["Idempotent-Replayed"] == "true"
    assert owner.team.projects.count() == 1
    other = api.post("/api/v1/projects", {"name": "Other"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422 and "different request" in other.json()["detail"]
    failed = api.post("/api/v1/projects", {"name": ""}, headers={"Idempotency-Key": "k2"})
    assert failed.status_code == 400
    fixed = api.post("/api/v1/projects", {"name": "Fixed"}, headers={"Idempotency-Key": "k2"})
    assert fixed.status_code == 201 and owner.team.projects.count() == 2


@pytest.mark.slow
def test_a_server_that_knows_a_token_sees_its_revocation_demotion_and_removal_at_once(web_server):
    """The server process keeps who a token is between requests (the gateway's hot path); a
    change made elsewhere — here, this process — must still take effect on its next request."""
    import httpx

    from teams import services as team_services
    from teams.api_tokens import api_token_revoke

    owner = MembershipFactory(role=Role.OWNER)
    engineer = MembershipFactory(team=owner.team, role=Role.ENGINEER)
    project = ProjectFactory(team=owner.team)

    def call(raw: str, method: str = "GET", path: str = "/api/v1/projects") -> httpx.Response:
        return httpx.request(
            method,
            web_server.url + path,
            headers={"Authorization": f"Bearer {raw}"},
            json={"name": "Made by the API"} if method == "POST" else None,
            timeout=30,
        )

    revoked = token_for(owner)
    assert call(revoked).status_code == 200
    token = ApiToken.objects.get(token_hash=hashlib.sha256(revoked.encode()).hexdigest())
    api_token_revoke(token=token, user=owner.user)
    assert call(revoked).status_code == 401

    demoted = token_for(engineer)
    assert call(demoted, "POST").status_code == 201
    team_services.membership_set_role(membership=engineer, role=Role.REVIEWER)
    refused = call(demoted, "POST")
    assert refused.status_code == 403 and "creator is reviewer" in refused.json()["detail"]
    assert call(demoted, path=f"/api/v1/projects/{project.slug}").status_code == 200

    team_services.membership_remove(membership=engineer)
    assert call(demoted).status_code == 401
