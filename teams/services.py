"""Writes for teams, projects, task specs, credentials and inputs. Keyword-only arguments."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from teams.crypto import encrypt_secret
from teams.models import Invite, Membership, ProviderCredential, ProviderKind, Role, Team

INVITE_LIFETIME = timedelta(days=7)


def team_create(*, name: str, owner: User) -> Team:
    with transaction.atomic():
        team = Team.objects.create(name=name.strip())
        Membership.objects.create(team=team, user=owner, role=Role.OWNER)
    return team


def _owners_left_after(membership: Membership, *, new_role: str | None) -> int:
    owners = Membership.objects.filter(team=membership.team, role=Role.OWNER).exclude(
        pk=membership.pk
    )
    return owners.count() + (1 if new_role == Role.OWNER else 0)


def membership_set_role(*, membership: Membership, role: str) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": f"unknown role {role!r}"})
    if (
        membership.role == Role.OWNER
        and role != Role.OWNER
        and not _owners_left_after(membership, new_role=role)
    ):
        raise ValidationError(
            {"role": "a team needs at least one owner; make someone else owner first"}
        )
    membership.role = role
    membership.save(update_fields=["role"])
    return membership


def membership_remove(*, membership: Membership) -> None:
    if membership.role == Role.OWNER and not _owners_left_after(membership, new_role=None):
        raise ValidationError("a team needs at least one owner; make someone else owner first")
    membership.delete()


def invite_create(*, team: Team, role: str, user: User, email: str = "") -> Invite:
    if role not in Role.values:
        raise ValidationError({"role": f"unknown role {role!r}"})
    return Invite.objects.create(
        team=team,
        role=role,
        email=email,
        created_by=user,
        expires_at=timezone.now() + INVITE_LIFETIME,
    )


def invite_accept(*, invite: Invite, user: User) -> Membership:
    with transaction.atomic():
        invite = Invite.objects.select_for_update().get(pk=invite.pk)
        if not invite.is_usable:
            raise ValidationError("this invite link has expired or was already used")
        membership, _created = Membership.objects.get_or_create(
            team=invite.team, user=user, defaults={"role": invite.role}
        )
        invite.accepted_by = user
        invite.accepted_at = timezone.now()
        invite.save(update_fields=["accepted_by", "accepted_at"])
    return membership


def _check_base_url(provider: str, base_url: str, allow_private_network: bool = False) -> str:
    base_url = base_url.strip()
    if provider == ProviderKind.OPENAI_COMPATIBLE and not base_url:
        raise ValidationError({"base_url": "an OpenAI-compatible endpoint needs its base URL"})
    if base_url and not base_url.startswith(("http://", "https://")):
        raise ValidationError({"base_url": "the base URL must start with http:// or https://"})
    if base_url:
        _check_base_url_ssrf(base_url, allow_private_network)
    return base_url


class _Unresolved(Exception):
    pass


def _check_base_url_ssrf(base_url: str, allow_private_network: bool) -> None:
    """worker.ssrf's guard, when the credential is saved (the worker checks again before every
    call). A host name that does not resolve from the web server right now is accepted here: the
    worker refuses it with a clear message if it still does not resolve, or resolves badly."""
    from worker.ssrf import UnsafeURLError, check_base_url, default_resolver

    def resolver(host: str, port: int) -> list[str]:
        try:
            addresses = default_resolver(host, port)
        except (OSError, UnicodeError):
            raise _Unresolved from None
        if not addresses:
            raise _Unresolved
        return addresses

    try:
        check_base_url(base_url, allow_private=allow_private_network, resolver=resolver)
    except _Unresolved:
        return
    except UnsafeURLError as exc:
        raise ValidationError({"base_url": str(exc)}) from None


def credential_create(
    *,
    team: Team,
    user: User,
    name: str,
    provider: str,
    api_key: str,
    base_url: str = "",
    allow_private_network: bool = False,
) -> ProviderCredential:
    if provider not in ProviderKind.values:
        raise ValidationError({"provider": f"unknown provider {provider!r}"})
    api_key = api_key.strip()
    if len(api_key) < 8:
        raise ValidationError({"api_key": "the key looks too short (at least 8 characters)"})
    if ProviderCredential.objects.filter(team=team, name=name.strip()).exists():
        raise ValidationError(
            {"name": f"this team already has a credential named {name.strip()!r}"}
        )
    return ProviderCredential.objects.create(
        team=team,
        name=name.strip(),
        provider=provider,
        base_url=_check_base_url(provider, base_url, allow_private_network),
        allow_private_network=allow_private_network,
        encrypted_key=encrypt_secret(api_key),
        key_last4=api_key[-4:],
        created_by=user,
    )


def credential_update(
    *,
    credential: ProviderCredential,
    name: str,
    base_url: str,
    allow_private_network: bool,
    api_key: str = "",
) -> ProviderCredential:
    base_url = _check_base_url(credential.provider, base_url, allow_private_network)
    api_key = api_key.strip()
    if base_url != credential.base_url and not api_key:
        # A key must never be sent to a host its owner did not type it for.
        raise ValidationError({"api_key": "changing the base URL requires entering the key again"})
    if (
        name.strip() != credential.name
        and ProviderCredential.objects.filter(team=credential.team, name=name.strip()).exists()
    ):
        raise ValidationError(
            {"name": f"this team already has a credential named {name.strip()!r}"}
        )
    credential.name = name.strip()
    credential.base_url = base_url
    credential.allow_private_network = allow_private_network
    if api_key:
        if len(api_key) < 8:
            raise ValidationError({"api_key": "the key looks too short (at least 8 characters)"})
        credential.encrypted_key = encrypt_secret(api_key)
        credential.key_last4 = api_key[-4:]
    credential.save()
    return credential


def credential_delete(*, credential: ProviderCredential) -> None:
    """Forget a credential (its encrypted key with it). Runs that used it keep their records."""
    credential.delete()
