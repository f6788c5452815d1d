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


class TokenScope(models.TextChoices):
    READ = "read", "Read: list and fetch everything the creator's role may see"
    WRITE = "write", "Write: the changes the creator's role may make (implies read)"
    SERVE = "serve", "Serve: call served students and the task gateway"


#: What each scope lets a token do, in the role permissions' words. A token never does more than
#: its creator's role allows: the two sets are intersected on every request (teams.api_tokens).
SCOPE_PERMISSIONS: dict[str, frozenset[str]] = {
    TokenScope.READ: frozenset({"read"}),
    TokenScope.WRITE: frozenset({"read", "vote", "review", "write", "manage"}),
    TokenScope.SERVE: frozenset({"serve"}),
}

#: Role permissions that a scope needs before a member may create a token with it.
SCOPE_REQUIRES: dict[str, str] = {
    TokenScope.READ: "read",
    TokenScope.WRITE: "review",
    TokenScope.SERVE: "write",
}


class ApiToken(models.Model):
    """A team API token: ``Authorization: Bearer dst_…`` on /api/v1/ and the serving endpoint.

    Only a SHA-256 of the token is stored; the token itself is shown once, when created. It acts
    as its creator, inside the creator's current role: when the creator leaves the team or is
    demoted, the token loses what the role lost."""

    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=80)
    scopes = models.JSONField(default=list)
    # The first characters of the token, shown in lists so a user can tell tokens apart.
    prefix = models.CharField(max_length=16)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["team", "name"],
                condition=models.Q(revoked_at__isnull=True),
                name="active_token_name_unique_per_team",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class IdempotentRequest(models.Model):
    """The first response to a write sent with an ``Idempotency-Key`` header, so that a retried
    request gets the same answer and starts nothing twice. Keyed by the token's hash (the
    middleware runs before authentication) and the key; ``status_code`` is null while the first
    request is still being answered."""

    token_hash = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=500)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    content_type = models.CharField(max_length=100, blank=True)
    body = models.BinaryField(default=bytes)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["token_hash", "key"], name="one_response_per_key")
        ]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.key})"
