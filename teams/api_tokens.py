"""Team API tokens: create (shown once), authenticate, revoke.

A token is ``dst_`` + 40 random URL-safe characters. Only its SHA-256 is stored, so a database
leak gives nobody a working token; the lookup is by that hash (a unique index), so there is no
per-token comparison to time. A token acts as its creator inside the creator's *current* role:
its permissions are the role's permissions intersected with its scopes', computed per request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from teams.models import (
    ROLE_PERMISSIONS,
    SCOPE_PERMISSIONS,
    SCOPE_REQUIRES,
    ApiToken,
    Membership,
    Team,
    TokenScope,
)

K = TypeVar("K")
V = TypeVar("V")

TOKEN_PREFIX = "dst_"  # noqa: S105 (a public prefix, not a secret)
#: last_used_at is written at most this often per token: a busy token must not turn every read
#: into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenUser:
    """Who a request with a valid token acts as, and what it may do."""

    token: ApiToken
    membership: Membership
    permissions: frozenset[str]

    @property
    def user(self) -> User:
        return self.membership.user

    @property
    def team(self) -> Team:
        return self.membership.team

    def can(self, permission: str) -> bool:
        return permission in self.permissions


def token_permissions(*, token: ApiToken, membership: Membership) -> frozenset[str]:
    role = ROLE_PERMISSIONS[membership.role]
    # Serving is the "write" of inference: it spends the team's money on teacher calls.
    role_with_serve = role | ({"serve"} if "write" in role else set())
    granted: set[str] = set()
    for scope in token.scopes:
        granted |= SCOPE_PERMISSIONS.get(scope, frozenset())
    return frozenset(role_with_serve & granted)


def api_token_create(
    *, team: Team, user: User, name: str, scopes: list[str]
) -> tuple[ApiToken, str]:
    """A new token and its secret, which is never shown again. Raises ValidationError naming the
    field: a blank or taken name, no scope, or a scope the creator's role does not allow."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "give the token a name"})
    membership = Membership.objects.filter(team=team, user=user).first()
    if membership is None:
        raise ValidationError({"scopes": "only a member of the team may create its tokens"})
    unknown = sorted(set(scopes) - set(TokenScope.values))
    if unknown or not scopes:
        raise ValidationError({"scopes": f"choose one or more of {', '.join(TokenScope.values)}"})
    for scope in scopes:
        if not membership.can(SCOPE_REQUIRES[scope]):
            raise ValidationError(
                {"scopes": f"a {membership.role} cannot create a token with the {scope!r} scope"}
            )
    raw = TOKEN_PREFIX + secrets.token_urlsafe(30)
    try:
        with transaction.atomic():
            token = ApiToken.objects.create(
                team=team,
                name=name,
                scopes=sorted(set(scopes)),
                prefix=raw[: len(TOKEN_PREFIX) + 6],
                token_hash=token_hash(raw),
                created_by=user,
            )
    except IntegrityError as exc:
        raise ValidationError({"name": f"a token named {name!r} already exists"}) from exc
    return token, raw


def api_token_revoke(*, token: ApiToken, user: User) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.revoked_by = user
        token.save(update_fields=["revoked_at", "revoked_by"])
    return token


#: Who a token is, per process, while nothing that decides it changed: saves the two lookups on
#: every API request (the gateway's hot path). Any save or delete of a token, membership, user or
#: team bumps AUTH_GENERATION_KEY in the shared cache (teams/signals.py), which every process
#: reads per request, so a revocation, a demotion or a removal takes effect at once everywhere;
#: entries also expire after settings.API_AUTH_CACHE_S as a backstop.
AUTH_GENERATION_KEY = "api-auth-generation"


class AuthCache(Generic[K, V]):
    """Values kept per process while the shared auth generation is the one they were read
    under, and at most settings.API_AUTH_CACHE_S: who a token is (here), which served model a
    token may call (serving.selectors). Misses are not kept."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: dict[K, tuple[float, Any, V]] = {}
        self._max = max_entries

    def get(self, key: K, generation: Any) -> V | None:
        hit = self._entries.get(key)
        if hit is not None and hit[1] == generation and time.monotonic() < hit[0]:
            return hit[2]
        return None

    def put(self, key: K, generation: Any, value: V) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + settings.API_AUTH_CACHE_S, generation, value)

    def clear(self) -> None:
        self._entries.clear()


_AUTH_CACHE: AuthCache[str, TokenUser] = AuthCache()


def auth_generation() -> Any:
    return cache.get(AUTH_GENERATION_KEY, 0)


def auth_changed() -> None:
    """Forget every process's cached token users (called on any change that can affect them)."""
    _AUTH_CACHE.clear()
    try:
        cache.incr(AUTH_GENERATION_KEY)
    except ValueError:
        cache.set(AUTH_GENERATION_KEY, 1, timeout=None)


def api_token_authenticate(raw: str) -> TokenUser | None:
    """The token's user, or None for an unknown, revoked or orphaned token (creator no longer in
    the team). Marks the token used (at most once a minute)."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    digest = token_hash(raw)
    generation = auth_generation()
    found = _AUTH_CACHE.get(digest, generation)
    if found is None:
        found = _token_user(digest)
        if found is not None:
            _AUTH_CACHE.put(digest, generation, found)
    if found is None:
        return None
    token = found.token
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return found


def _token_user(digest: str) -> TokenUser | None:
    token = (
        ApiToken.objects.filter(token_hash=digest, revoked_at__isnull=True)
        .select_related("team")
        .first()
    )
    if token is None:
        return None
    membership = (
        Membership.objects.filter(team_id=token.team_id, user_id=token.created_by_id)
        .select_related("team", "user")
        .first()
    )
    if membership is None or not membership.user.is_active:
        return None
    return TokenUser(
        token=token,
        membership=membership,
        permissions=token_permissions(token=token, membership=membership),
    )


def api_tokens_visible(*, team: Team, membership: Membership) -> QuerySet[ApiToken]:
    """An owner sees every token of the team; anyone else their own."""
    tokens = team.api_tokens.select_related("created_by", "revoked_by")
    if membership.can("manage"):
        return tokens
    return tokens.filter(created_by_id=membership.user_id)


def api_token_may_revoke(*, token: ApiToken, membership: Membership) -> bool:
    return membership.can("manage") or token.created_by_id == membership.user_id
