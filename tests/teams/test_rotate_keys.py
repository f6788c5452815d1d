"""`manage.py rotate_keys` re-encrypts every provider key with the first key, so an old key can
be dropped from DISTILLERY_FERNET_KEYS without losing a credential."""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from teams import services
from teams.crypto import decrypt_secret_dangerously
from teams.models import ProviderCredential


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("rotate_keys", *args, stdout=out)
    return out.getvalue()


def test_rotation_moves_every_key_to_the_new_first_key_and_the_old_key_can_go(
    team, owner, settings
):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FERNET_KEYS = [old]
    for i in range(3):
        services.credential_create(
            team=team, user=owner, name=f"c{i}", provider="openai", api_key=f"sk-secret-{i}-abcd"
        )
    settings.FERNET_KEYS = [new, old]
    with pytest.raises(CommandError, match="older key"):
        run("--check")
    assert "re-encrypted 3 secret(s)" in run()
    assert "re-encrypted 0 secret(s); 3 already under the first key" in run()
    assert "0 secret(s) under an older key" in run("--check")

    settings.FERNET_KEYS = [new]  # the old key is retired
    keys = sorted(
        decrypt_secret_dangerously(c.encrypted_key) for c in ProviderCredential.objects.all()
    )
    assert keys == ["sk-secret-0-abcd", "sk-secret-1-abcd", "sk-secret-2-abcd"]


def test_a_secret_no_key_can_read_stops_the_rotation_and_names_the_credential(
    team, owner, settings
):
    settings.FERNET_KEYS = [Fernet.generate_key().decode()]
    services.credential_create(
        team=team, user=owner, name="lost", provider="openai", api_key="sk-lost-abcd"
    )
    settings.FERNET_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CommandError, match="lost"):
        run()
