"""Re-encrypt every stored secret with the first key of DISTILLERY_FERNET_KEYS.

Rotation: put a new key first in the list (keep the old ones after it), restart, run
`manage.py rotate_keys`; once it reports nothing left under an old key, drop the old keys.
"""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from teams.crypto import rotate_secret
from teams.models import ProviderCredential


def under_first_key(token: bytes) -> bool:
    try:
        Fernet(settings.FERNET_KEYS[0].encode()).decrypt(bytes(token))
    except InvalidToken:
        return False
    return True


class Command(BaseCommand):
    help = "Re-encrypt every provider key with the first key of DISTILLERY_FERNET_KEYS."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="only count the secrets still encrypted with an older key; exit 1 if any",
        )

    def handle(self, *args: Any, check: bool = False, **options: Any) -> None:
        if not settings.FERNET_KEYS:
            raise CommandError("DISTILLERY_FERNET_KEYS is empty: there is no key to rotate to")
        rotated = unchanged = 0
        with transaction.atomic():
            for credential in ProviderCredential.objects.select_for_update().order_by("pk"):
                token = bytes(credential.encrypted_key)
                if under_first_key(token):
                    unchanged += 1
                    continue
                if check:
                    rotated += 1
                    continue
                try:
                    credential.encrypted_key = rotate_secret(token)
                except ValueError as exc:
                    raise CommandError(
                        f"credential #{credential.pk} ({credential.name}): {exc}"
                    ) from None
                credential.save(update_fields=["encrypted_key"])
                rotated += 1
        if check:
            self.stdout.write(
                f"{rotated} secret(s) under an older key, {unchanged} under the first"
            )
            if rotated:
                raise CommandError("some secrets are still encrypted with an older key")
            return
        self.stdout.write(
            f"re-encrypted {rotated} secret(s); {unchanged} already under the first key"
        )
