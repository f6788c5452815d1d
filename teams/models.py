from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import models
from django.utils import timezone

if TYPE_CHECKING:
    from worker.teachers.base import ProviderConfig


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ENGINEER = "engineer", "Engineer"
    REVIEWER = "reviewer", "Reviewer"
    VIEWER = "viewer", "Viewer"


# What each role may do. Checked in one place (projects.access) so views never spell it out.
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset({"read", "vote"}),
    Role.REVIEWER: frozenset({"read", "vote", "review"}),
    Role.ENGINEER: frozenset({"read", "vote", "review", "write"}),
    Role.OWNER: frozenset({"read", "vote", "review", "write", "manage"}),
}


class Team(models.Model):
    name = models.CharField(max_length=120)
    created_at = models.DateTimeField(auto_now_add=True)
    members: models.ManyToManyField[Any, Any] = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="teams"
    )

    class Meta:
        db_table = "projects_team"

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "projects_membership"
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="one_membership_per_team")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    def can(self, permission: str) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


def _invite_token() -> str:
    return secrets.token_urlsafe(24)


class Invite(models.Model):
    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="invites")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    token = models.CharField(max_length=64, unique=True, default=_invite_token)
    email = models.EmailField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    accepted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "projects_invite"

    def __str__(self) -> str:
        return f"invite to {self.team} as {self.role}"

    @property
    def is_usable(self) -> bool:
        return self.accepted_at is None and self.expires_at > timezone.now()


#: The longest base URL a credential stores (URLField's length, kept when it became a CharField).
BASE_URL_MAX_LENGTH = 200


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible endpoint"


class ProviderCredential(models.Model):
    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="credentials")
    name = models.CharField(max_length=80)
    provider = models.CharField(max_length=24, choices=ProviderKind.choices)
    # Checked by worker.ssrf.check_base_url when saved (teams.services), not by URLField's
    # validator, which refuses single-label hosts such as a docker-compose service name.
    base_url = models.CharField(max_length=BASE_URL_MAX_LENGTH, blank=True)
    # Self-hosted endpoints (vLLM on the LAN) live on private addresses; allowing them is an
    # owner's explicit decision because it lets the worker reach internal hosts.
    allow_private_network = models.BooleanField(default=False)
    encrypted_key = models.BinaryField()
    key_last4 = models.CharField(max_length=4)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "projects_providercredential"
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="credential_name_unique_per_team")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_provider_display()}, …{self.key_last4})"

    def provider_config_dangerously(self, **options: Any) -> ProviderConfig:
        """The teacher engine's configuration for this credential, WITH the decrypted key: build
        it in the worker, right before the calls, and never log, store or pickle it. ``options``
        are other ProviderConfig fields (timeouts)."""
        from teams.crypto import decrypt_secret_dangerously
        from worker.teachers.base import PROVIDER_KINDS, ProviderConfig

        kind = next((k for k in PROVIDER_KINDS if k == self.provider), None)
        if kind is None:
            raise ValueError(f"credential {self.name!r}: unknown provider {self.provider!r}")
        return ProviderConfig(
            kind=kind,
            credential_name=self.name,
            api_key=decrypt_secret_dangerously(bytes(self.encrypted_key)),
            base_url=self.base_url,
            allow_private_network=self.allow_private_network,
            **options,
        )
