"""Plain function views: resolve through the user's team first, call one service, render."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from teams import forms, selectors, services
from teams.access import scoped_get, signed_in_user, team_for
from teams.api_tokens import api_token_create, api_token_may_revoke, api_tokens_visible
from teams.api_tokens import api_token_revoke as api_token_revoke_service
from teams.models import Invite, ProviderKind, Role


@login_required
@require_http_methods(["GET", "POST"])
def team_create(request: HttpRequest) -> HttpResponse:
    form = forms.TeamForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        team = services.team_create(name=form.cleaned_data["name"], owner=signed_in_user(request))
        request.session["team_id"] = team.pk
        return redirect("reports:dashboard")
    return render(request, "teams/team_create.html", {"form": form})


@login_required
def team_switch(request: HttpRequest, team_id: int) -> HttpResponse:
    team, _ = team_for(user=request.user, team_id=team_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    request.session["team_id"] = team.pk
    return redirect("reports:dashboard")


@login_required
@require_http_methods(["GET", "POST"])
def team_members(request: HttpRequest, team_id: int) -> HttpResponse:
    team, membership = team_for(user=request.user, team_id=team_id)
    form = forms.InviteForm(request.POST or None)
    new_invite = None
    if request.method == "POST":
        team_for(user=request.user, team_id=team_id, permission="manage")
        if form.is_valid():
            new_invite = services.invite_create(
                team=team,
                role=form.cleaned_data["role"],
                email=form.cleaned_data["email"],
                user=signed_in_user(request),
            )
            form = forms.InviteForm()
    invites = team.invites.filter(accepted_at__isnull=True).order_by("-created_at")
    return render(
        request,
        "teams/team_members.html",
        {
            "team": team,
            "membership": membership,
            "members": selectors.members_of(team=team),
            "invites": invites,
            "form": form,
            "new_invite": new_invite,
            "roles": Role.choices,
            "invite_url": (
                request.build_absolute_uri(reverse("teams:invite_accept", args=[new_invite.token]))
                if new_invite
                else ""
            ),
        },
    )


@login_required
def member_role(request: HttpRequest, team_id: int, membership_id: int) -> HttpResponse:
    team, _ = team_for(user=request.user, team_id=team_id, permission="manage")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    target = scoped_get(team.memberships.all(), pk=membership_id)
    form = forms.RoleForm(request.POST)
    if form.is_valid():
        try:
            services.membership_set_role(membership=target, role=form.cleaned_data["role"])
            messages.success(request, f"{target.user.username} is now {target.get_role_display()}.")
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
    return redirect("teams:team_members", team_id=team.pk)


@login_required
def member_remove(request: HttpRequest, team_id: int, membership_id: int) -> HttpResponse:
    team, _ = team_for(user=request.user, team_id=team_id, permission="manage")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    target = scoped_get(team.memberships.all(), pk=membership_id)
    try:
        services.membership_remove(membership=target)
        messages.success(request, f"{target.user.username} was removed from {team.name}.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("teams:team_members", team_id=team.pk)


@login_required
def invite_revoke(request: HttpRequest, team_id: int, invite_id: int) -> HttpResponse:
    team, _ = team_for(user=request.user, team_id=team_id, permission="manage")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    scoped_get(team.invites.filter(accepted_at__isnull=True), pk=invite_id).delete()
    messages.success(request, "The invite link no longer works.")
    return redirect("teams:team_members", team_id=team.pk)


@sensitive_post_parameters("password1", "password2")
@require_http_methods(["GET", "POST"])
def invite_accept(request: HttpRequest, token: str) -> HttpResponse:
    invite = get_object_or_404(Invite.objects.select_related("team"), token=token)
    if not invite.is_usable:
        return render(request, "teams/invite_invalid.html", status=410)
    signup = None
    if request.method == "POST":
        if not request.user.is_authenticated:
            signup = forms.SignupForm(request.POST)
            if not signup.is_valid():
                return render(
                    request, "teams/invite_accept.html", {"invite": invite, "signup": signup}
                )
            user = signup.save()
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        try:
            services.invite_accept(invite=invite, user=signed_in_user(request))
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect("reports:dashboard")
        request.session["team_id"] = invite.team_id
        messages.success(request, f"Welcome to {invite.team.name}.")
        return redirect("reports:dashboard")
    if not request.user.is_authenticated:
        signup = forms.SignupForm()
    return render(request, "teams/invite_accept.html", {"invite": invite, "signup": signup})


@sensitive_post_parameters("api_key")  # masked in error reports
@login_required
@require_http_methods(["GET", "POST"])
def credentials(request: HttpRequest, team_id: int) -> HttpResponse:
    team, membership = team_for(user=request.user, team_id=team_id)
    form = forms.CredentialForm(request.POST or None)
    if request.method == "POST":
        team_for(user=request.user, team_id=team_id, permission="manage")
        if form.is_valid():
            try:
                services.credential_create(
                    team=team, user=signed_in_user(request), **form.cleaned_data
                )
                messages.success(
                    request, f"Credential {form.cleaned_data['name']!r} saved (encrypted)."
                )
                return redirect("teams:credentials", team_id=team.pk)
            except ValidationError as exc:
                forms.apply_errors(form, exc)
    return render(
        request,
        "teams/credentials.html",
        {
            "team": team,
            "membership": membership,
            "credentials": team.credentials.all(),
            "form": form,
        },
    )


@sensitive_post_parameters("api_key")
@login_required
@require_http_methods(["GET", "POST"])
def credential_edit(request: HttpRequest, team_id: int, credential_id: int) -> HttpResponse:
    team, _ = team_for(user=request.user, team_id=team_id, permission="manage")
    credential = scoped_get(team.credentials.all(), pk=credential_id)
    initial = {
        "name": credential.name,
        "base_url": credential.base_url,
        "allow_private_network": credential.allow_private_network,
    }
    form = forms.CredentialEditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.credential_update(credential=credential, **form.cleaned_data)
            messages.success(request, f"Credential {credential.name!r} updated.")
            return redirect("teams:credentials", team_id=team.pk)
        except ValidationError as exc:
            forms.apply_errors(form, exc)
    return render(
        request,
        "teams/credential_edit.html",
        {
            "team": team,
            "credential": credential,
            "form": form,
            "compatible": credential.provider == ProviderKind.OPENAI_COMPATIBLE,
        },
    )


@login_required
def credential_delete(request: HttpRequest, team_id: int, credential_id: int) -> HttpResponse:
    team, _ = team_for(user=request.user, team_id=team_id, permission="manage")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    credential = scoped_get(team.credentials.all(), pk=credential_id)
    credential.delete()
    messages.success(request, f"Credential {credential.name!r} deleted.")
    return redirect("teams:credentials", team_id=team.pk)


@login_required
@require_http_methods(["GET", "POST"])
def api_tokens(request: HttpRequest, team_id: int) -> HttpResponse:
    team, membership = team_for(user=request.user, team_id=team_id)
    form = forms.ApiTokenForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        try:
            token, raw = api_token_create(
                team=team, user=signed_in_user(request), **form.cleaned_data
            )
            new_token = {"name": token.name, "secret": raw}
            form = forms.ApiTokenForm()
        except ValidationError as exc:
            forms.apply_errors(form, exc)
    tokens = api_tokens_visible(team=team, membership=membership)
    response = render(
        request,
        "teams/api_tokens.html",
        {
            "team": team,
            "membership": membership,
            "tokens": [(t, api_token_may_revoke(token=t, membership=membership)) for t in tokens],
            "form": form,
            "new_token": new_token,
        },
    )
    # The page carrying a token's secret must not linger in a cache.
    response["Cache-Control"] = "no-store"
    return response


@login_required
def api_token_revoke(request: HttpRequest, team_id: int, token_id: int) -> HttpResponse:
    team, membership = team_for(user=request.user, team_id=team_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    token = scoped_get(api_tokens_visible(team=team, membership=membership), pk=token_id)
    if not api_token_may_revoke(token=token, membership=membership):
        team_for(user=request.user, team_id=team_id, permission="manage")
    api_token_revoke_service(token=token, user=signed_in_user(request))
    messages.success(request, f"Token {token.name!r} revoked: it stops working now.")
    return redirect("teams:api_tokens", team_id=team.pk)
