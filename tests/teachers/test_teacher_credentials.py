"""Credential base URLs pass worker.ssrf's guard when they are saved, with the reason on the form."""

from __future__ import annotations

import html

import pytest
from django.urls import reverse

from teams.models import ProviderCredential

pytestmark = pytest.mark.django_db


def post(client, team, **data):  # type: ignore[no-untyped-def]
    payload = {
        "name": "lan-vllm",
        "provider": "openai_compatible",
        "api_key": "sk-local-12345678",
        **data,
    }
    return client.post(reverse("teams:credentials", args=[team.pk]), payload)


def errors(response):  # type: ignore[no-untyped-def]
    return " ".join(response.context["form"].errors.get("base_url", []))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
        ("http://metadata.google.internal/v1", "cloud metadata service"),
        ("http://[fe80::1]/v1", "link-local"),
        ("http://0.0.0.0:8000/v1", "unspecified"),
    ],
)
def test_metadata_and_link_local_urls_are_refused_even_for_private_networks(
    team, owner, client_for, url, reason
):  # type: ignore[no-untyped-def]
    response = post(client_for(owner), team, base_url=url, allow_private_network="on")
    assert response.status_code == 200
    assert reason in errors(response)
    assert reason in html.unescape(response.content.decode())
    assert not ProviderCredential.objects.exists()


def test_private_addresses_need_the_owner_to_allow_them(team, owner, client_for):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    response = post(client, team, base_url="http://10.0.0.5:8000/v1")
    assert "an owner must allow private network addresses" in errors(response)
    assert not ProviderCredential.objects.exists()
    response = post(client, team, base_url="http://10.0.0.5:8000/v1", allow_private_network="on")
    assert response.status_code == 302
    assert ProviderCredential.objects.get().base_url == "http://10.0.0.5:8000/v1"


def test_switching_private_addresses_off_again_is_refused_while_the_url_is_private(
    team, owner, client_for
):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    post(client, team, base_url="http://127.0.0.1:8000/v1", allow_private_network="on")
    credential = ProviderCredential.objects.get()
    response = client.post(
        reverse("teams:credential_edit", args=[team.pk, credential.pk]),
        {"name": "lan-vllm", "base_url": "http://127.0.0.1:8000/v1", "api_key": ""},
    )
    assert "loopback address" in errors(response)
    credential.refresh_from_db()
    assert credential.allow_private_network is True
