"""/api/v1/credentials: the team's provider credentials (OpenAI, Anthropic, compatible endpoints).

Any member's token lists them; creating, changing and deleting one needs an owner's token with
the ``write`` scope (the page's "manage" permission). The key is write-only: answers show its last
four characters, never the key.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from ninja import Field, Router, Schema
from ninja.pagination import paginate
from ninja.responses import Status

from teams import services
from teams.api_kit import PAGE, Page, auth_of, require_permission, team_object
from teams.models import ProviderCredential, ProviderKind

router = Router(tags=["credentials"])


class CredentialOut(Schema):
    id: int
    name: str
    provider: str
    base_url: str
    allow_private_network: bool
    key_last4: str
    created_at: datetime
    updated_at: datetime


class CredentialIn(Schema):
    name: str = Field(..., min_length=1, max_length=80)
    provider: str = Field(..., pattern="^(" + "|".join(ProviderKind.values) + ")$")
    api_key: str = Field(..., description="write-only: stored encrypted, never answered")
    base_url: str = Field("", description="only for OpenAI-compatible endpoints")
    allow_private_network: bool = False


class CredentialPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=80)
    base_url: str | None = None
    allow_private_network: bool | None = None
    api_key: str = Field(
        "", description="empty keeps the stored key; required when the base URL changes"
    )


def _credential_of(request: HttpRequest, credential_id: int) -> ProviderCredential:
    return team_object(
        ProviderCredential.objects.all(), auth_of(request), permission="manage", pk=credential_id
    )


@router.get("", response=list[CredentialOut], summary="List the team's provider credentials")
@paginate(Page, **PAGE)
def list_credentials(request: HttpRequest) -> QuerySet[ProviderCredential]:
    auth = auth_of(request)
    require_permission(auth, "read")
    return ProviderCredential.objects.filter(team=auth.team)


@router.post("", response={201: CredentialOut}, summary="Add a provider credential (owner)")
def create_credential(request: HttpRequest, payload: CredentialIn) -> Status[ProviderCredential]:
    auth = auth_of(request)
    require_permission(auth, "manage")
    credential = services.credential_create(
        team=auth.team,
        user=auth.user,
        name=payload.name,
        provider=payload.provider,
        api_key=payload.api_key,
        base_url=payload.base_url,
        allow_private_network=payload.allow_private_network,
    )
    return Status(201, credential)


@router.patch(
    "/{credential_id}",
    response=CredentialOut,
    summary="Rename a credential, change its URL or replace its key (owner)",
)
def update_credential(
    request: HttpRequest, credential_id: int, payload: CredentialPatch
) -> ProviderCredential:
    credential = _credential_of(request, credential_id)
    return services.credential_update(
        credential=credential,
        name=credential.name if payload.name is None else payload.name,
        base_url=credential.base_url if payload.base_url is None else payload.base_url,
        allow_private_network=credential.allow_private_network
        if payload.allow_private_network is None
        else payload.allow_private_network,
        api_key=payload.api_key,
    )


@router.delete("/{credential_id}", response={204: None}, summary="Delete a credential (owner)")
def delete_credential(request: HttpRequest, credential_id: int) -> HttpResponse:
    services.credential_delete(credential=_credential_of(request, credential_id))
    return HttpResponse(status=204)
