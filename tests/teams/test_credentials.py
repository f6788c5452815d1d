"""Provider keys: encrypted at rest with MultiFernet from DISTILLERY_FERNET_KEYS (not SECRET_KEY),
shown only by their last four characters, never logged, and re-entered when the base URL moves."""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.views.debug import SafeExceptionReporterFilter

from teams import services
from teams.crypto import decrypt_secret_dangerously
from teams.models import ProviderCredential

API_KEY = "sk-proj-Zq8vN3kLmP0aXw7Rt5Yb2Hc9Jd4Fe6Gs1-wxyz"
LAST4 = "wxyz"


def raw_key_bytes(credential_id: int) -> bytes:
    """What the database itself holds, read with SQL (no model code in between)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT encrypted_key FROM projects_providercredential WHERE id = %s", [credential_id]
        )
        (value,) = cursor.fetchone()
    return bytes(value)


def create_through_the_page(client, team, **overrides):  # type: ignore[no-untyped-def]
    data = {"name": "prod-openai", "provider": "openai", "base_url": "", "api_key": API_KEY}
    data.update(overrides)
    return client.post(reverse("teams:credentials", args=[team.pk]), data)


@pytest.fixture
def credential(team, owner):  # type: ignore[no-untyped-def]
    return services.credential_create(
        team=team, user=owner, name="prod-openai", provider="openai", api_key=API_KEY
    )


def test_the_database_holds_a_fernet_token_from_the_dedicated_key_list(
    team, owner, client_for, settings
):  # type: ignore[no-untyped-def]
    response = create_through_the_page(client_for(owner), team)
    assert response.status_code == 302
    credential = ProviderCredential.objects.get(team=team)

    stored = raw_key_bytes(credential.pk)
    assert API_KEY.encode() not in stored
    assert API_KEY[:-4].encode() not in stored
    # A Fernet token made with the first DISTILLERY_FERNET_KEYS key...
    assert Fernet(settings.FERNET_KEYS[0].encode()).decrypt(stored).decode() == API_KEY
    assert credential.key_last4 == LAST4
    # ...and SECRET_KEY has nothing to do with it.
    settings.SECRET_KEY = "a-completely-different-secret-key-for-this-test-0123456789"
    assert decrypt_secret_dangerously(credential.encrypted_key) == API_KEY


def test_decrypt_after_rotation_with_the_old_key_kept(credential, settings):  # type: ignore[no-untyped-def]
    old_key = settings.FERNET_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.FERNET_KEYS = [new_key, old_key]  # new key first: it encrypts; both decrypt

    assert decrypt_secret_dangerously(credential.encrypted_key) == API_KEY

    updated = services.credential_update(
        credential=credential,
        name=credential.name,
        base_url="",
        allow_private_network=False,
        api_key="sk-rotated-key-0000-abcd",
    )
    token = raw_key_bytes(updated.pk)
    assert Fernet(new_key.encode()).decrypt(token).decode() == "sk-rotated-key-0000-abcd"
    with pytest.raises(InvalidToken):
        Fernet(old_key.encode()).decrypt(token)

    # Once every key is re-encrypted the old key can go; a token only the old key opened cannot be
    # read without it, and the message says what happened.
    settings.FERNET_KEYS = [new_key]
    assert decrypt_secret_dangerously(updated.encrypted_key) == "sk-rotated-key-0000-abcd"
    with pytest.raises(ValueError, match="was the key list rotated without keeping the old key"):
        decrypt_secret_dangerously(credential_token_from(old_key))


def credential_token_from(key: str) -> bytes:
    return Fernet(key.encode()).encrypt(API_KEY.encode())


@pytest.mark.parametrize("role", ["owner", "engineer", "viewer"])
def test_pages_show_only_the_last_four_characters(
    team, owner, credential, member_with_role, client_for, role
):  # type: ignore[no-untyped-def]
    user = owner if role == "owner" else member_with_role(role)
    client = client_for(user)
    page = client.get(reverse("teams:credentials", args=[team.pk])).content.decode()
    assert f"…{LAST4}" in page
    assert API_KEY[-5:] not in page
    assert API_KEY not in page
    if role == "owner":
        edit = client.get(
            reverse("teams:credential_edit", args=[team.pk, credential.pk])
        ).content.decode()
        assert f"…{LAST4}" in edit
        assert API_KEY[-5:] not in edit


def test_a_form_with_an_error_does_not_echo_the_key(team, owner, credential, client_for):  # type: ignore[no-untyped-def]
    # Same name as the existing credential: the form comes back with an error.
    response = create_through_the_page(client_for(owner), team, api_key="sk-second-key-98765432")
    assert response.status_code == 200
    assert "already has a credential named" in response.content.decode()
    assert "sk-second-key" not in response.content.decode()
    assert "98765432" not in response.content.decode()


def test_the_key_never_reaches_the_logs(team, owner, client_for, caplog):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    client = client_for(owner)
    new_key = "sk-replacement-Kq2Lw9Xe4Rt7-lmno"
    with CaptureQueriesContext(connection) as queries:  # SQL is logged too, with its parameters
        create_through_the_page(client, team)
        credential = ProviderCredential.objects.get(team=team)
        create_through_the_page(client, team)  # a duplicate name: an error page
        client.post(
            reverse("teams:credential_edit", args=[team.pk, credential.pk]),
            {"name": "prod-openai", "base_url": "", "api_key": new_key},
        )
        client.post(  # too short: an error
            reverse("teams:credential_edit", args=[team.pk, credential.pk]),
            {"name": "prod-openai", "base_url": "", "api_key": "short"},
        )
    assert len(queries) > 0
    assert any("projects_providercredential" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        for secret in (API_KEY, API_KEY[:-4], new_key, new_key[:-4]):
            assert secret not in text, record.name
    assert (
        decrypt_secret_dangerously(ProviderCredential.objects.get(pk=credential.pk).encrypted_key)
        == new_key
    )


@pytest.mark.parametrize("url_name", ["teams:credentials", "teams:credential_edit"])
def test_error_reports_hide_the_posted_key(team, owner, credential, client_for, url_name):  # type: ignore[no-untyped-def]
    """If a credential view ever fails, Django's error report (logs, admin mail) masks the key."""
    args = [team.pk] if url_name == "teams:credentials" else [team.pk, credential.pk]
    response = client_for(owner).post(
        reverse(url_name, args=args), {"name": "x", "provider": "openai", "api_key": API_KEY}
    )
    shown = SafeExceptionReporterFilter().get_post_parameters(response.wsgi_request)
    assert shown["api_key"] != API_KEY
    assert set(shown["api_key"]) == {"*"}


def compatible(team, owner):  # type: ignore[no-untyped-def]
    return services.credential_create(
        team=team,
        user=owner,
        name="local-vllm",
        provider="openai_compatible",
        base_url="https://llm.example.com/v1",
        api_key=API_KEY,
    )


def test_changing_the_base_url_requires_the_key_again(team, owner, client_for):  # type: ignore[no-untyped-def]
    credential = compatible(team, owner)
    before = raw_key_bytes(credential.pk)
    url = reverse("teams:credential_edit", args=[team.pk, credential.pk])
    client = client_for(owner)

    response = client.post(
        url, {"name": "local-vllm", "base_url": "https://attacker.example.net/v1", "api_key": ""}
    )
    assert response.status_code == 200
    assert response.context["form"].errors["api_key"] == [
        "changing the base URL requires entering the key again"
    ]
    credential.refresh_from_db()
    assert credential.base_url == "https://llm.example.com/v1"
    assert raw_key_bytes(credential.pk) == before

    # Renaming without touching the URL keeps the stored key.
    response = client.post(
        url, {"name": "vllm-lan", "base_url": "https://llm.example.com/v1", "api_key": ""}
    )
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.name == "vllm-lan"
    assert decrypt_secret_dangerously(credential.encrypted_key) == API_KEY

    # With the key typed again, the move is accepted and the new key stored.
    response = client.post(
        url,
        {"name": "vllm-lan", "base_url": "https://llm2.example.com/v1", "api_key": "sk-new-1234"},
    )
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.base_url == "https://llm2.example.com/v1"
    assert credential.key_last4 == "1234"
    assert decrypt_secret_dangerously(credential.encrypted_key) == "sk-new-1234"


def test_an_openai_compatible_credential_needs_a_base_url(team, owner, client_for):  # type: ignore[no-untyped-def]
    response = create_through_the_page(
        client_for(owner), team, name="vllm", provider="openai_compatible"
    )
    assert response.status_code == 200
    assert response.context["form"].errors["base_url"] == [
        "an OpenAI-compatible endpoint needs its base URL"
    ]
    assert not ProviderCredential.objects.exists()


SERVICE_URL = "http://vllm:8000/v1"  # a docker-compose service: a single-label host
SINGLE_LABEL_REFUSAL = (
    "base URL 'http://vllm:8000/v1': vllm is a single-label host name (such as a docker-compose "
    "service), which only exists inside a private network; an owner must allow private network "
    "addresses for this credential to use a self-hosted endpoint"
)


def test_a_compose_service_url_is_saved_when_private_network_is_allowed(team, owner, client_for):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    response = create_through_the_page(
        client,
        team,
        name="vllm",
        provider="openai_compatible",
        base_url=SERVICE_URL,
        allow_private_network="on",
    )
    assert response.status_code == 302
    credential = ProviderCredential.objects.get(team=team, name="vllm")
    assert credential.base_url == SERVICE_URL
    credential.full_clean()  # the model field accepts it too

    edit = reverse("teams:credential_edit", args=[team.pk, credential.pk])
    response = client.post(
        edit,
        {
            "name": "vllm",
            "base_url": "http://ollama:11434/v1",
            "api_key": "sk-new-1234",
            "allow_private_network": "on",
        },
    )
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.base_url == "http://ollama:11434/v1"


def test_a_compose_service_url_is_refused_without_private_network(team, owner, client_for):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    response = create_through_the_page(
        client, team, name="vllm", provider="openai_compatible", base_url=SERVICE_URL
    )
    assert response.status_code == 200
    assert response.context["form"].errors["base_url"] == [SINGLE_LABEL_REFUSAL]
    assert not ProviderCredential.objects.exists()

    credential = compatible(team, owner)
    response = client.post(
        reverse("teams:credential_edit", args=[team.pk, credential.pk]),
        {"name": credential.name, "base_url": SERVICE_URL, "api_key": "sk-new-1234"},
    )
    assert response.status_code == 200
    assert response.context["form"].errors["base_url"] == [SINGLE_LABEL_REFUSAL]
    credential.refresh_from_db()
    assert credential.base_url == "https://llm.example.com/v1"


def test_a_base_url_without_its_scheme_is_https(team, owner, client_for):  # type: ignore[no-untyped-def]
    response = create_through_the_page(
        client_for(owner),
        team,
        name="together",
        provider="openai_compatible",
        base_url="api.together.example/v1",
    )
    assert response.status_code == 302
    assert ProviderCredential.objects.get().base_url == "https://api.together.example/v1"
