"""Role rules, through the real views: who may write, review, and manage members and keys.

A member whose role does not allow an action gets 403 and the database is unchanged; a member
whose role allows it succeeds (so the 403 is about the role, not a broken endpoint). Outsiders
(404) are the tenancy sweep's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.views.debug import SafeExceptionReporterFilter

from jobs.models import Job, JobKind
from projects import services
from projects.models import Project
from teams import services as team_services
from teams.models import Invite, Membership, ProviderCredential, Role
from tests.conftest import PASSWORD
from tests.factories import MembershipFactory, ProjectFactory, TeamFactory


@dataclass
class World:
    team: Any
    owner: Any
    project: Any
    upload: Any
    job: Any
    target: Membership  # someone whose role others try to change
    invite: Invite
    credential: ProviderCredential


@pytest.fixture
def world(team, owner, project, tmp_path) -> World:  # type: ignore[no-untyped-def]
    source = tmp_path / "tickets.csv"
    source.write_text("text\nWhere is my card?\n")
    upload = services.input_upload_create(
        project=project, user=owner, file_name="tickets.csv", source=source
    )
    job = Job.objects.create(
        team=team, project=project, kind=JobKind.IMPORT_INPUTS, created_by=owner
    )
    return World(
        team=team,
        owner=owner,
        project=project,
        upload=upload,
        job=job,
        target=MembershipFactory(team=team, role=Role.VIEWER, user__username="vic"),
        invite=team_services.invite_create(team=team, role=Role.VIEWER, user=owner),
        credential=team_services.credential_create(
            team=team, user=owner, name="prod-openai", provider="openai", api_key="sk-test-12345678"
        ),
    )


def snapshot(w: World) -> dict[str, Any]:
    """Everything the actions below could change."""
    return {
        "projects": sorted(Project.objects.filter(team=w.team).values_list("name", flat=True)),
        "task": Project.objects.filter(pk=w.project.pk)
        .values("instruction_template", "input_fields", "label_set")
        .get(),
        "uploads": w.project.uploads.count(),
        "jobs": list(
            Job.objects.filter(team=w.team).order_by("id").values_list("status", "cancel_requested")
        ),
        "members": sorted(
            Membership.objects.filter(team=w.team).values_list("user__username", "role")
        ),
        "invites": sorted(Invite.objects.filter(team=w.team).values_list("role", "accepted_at")),
        "credentials": [
            (c.name, c.base_url, bytes(c.encrypted_key))
            for c in ProviderCredential.objects.filter(team=w.team).order_by("id")
        ],
    }


TASK_FORM = {
    "input_fields": "text",
    "instruction_template": "Which intent is this? {{ text }}",
    "system_prompt": "",
    "output_kind": "label",
    "label_set": "card_arrival\nlost_or_stolen_card",
    "json_schema": "",
}

# name -> (request, what the database shows when it worked)
ACTIONS = {
    "create project": (
        lambda c, w: c.post(reverse("projects:project_create", args=[w.team.pk]), {"name": "New"}),
        lambda w: Project.objects.filter(team=w.team, name="New").exists(),
    ),
    "edit task spec": (
        lambda c, w: c.post(reverse("projects:task_edit", args=[w.project.pk]), TASK_FORM),
        lambda w: (
            Project.objects.get(pk=w.project.pk).instruction_template
            == TASK_FORM["instruction_template"]
        ),
    ),
    "upload inputs": (
        lambda c, w: c.post(
            reverse("projects:inputs_upload", args=[w.project.pk]),
            {"file": SimpleUploadedFile("more.csv", b"text\nTop up failed\n")},
        ),
        lambda w: w.project.uploads.filter(file_name="more.csv").exists(),
    ),
    "start import": (
        lambda c, w: c.post(
            reverse("projects:upload_map", args=[w.project.pk, w.upload.pk]), {"map_text": "text"}
        ),
        lambda w: Job.objects.filter(team=w.team).count() == 2,
    ),
    "cancel job": (
        lambda c, w: c.post(reverse("jobs:job_cancel", args=[w.job.pk])),
        lambda w: Job.objects.get(pk=w.job.pk).status == "cancelled",
    ),
    "invite member": (
        lambda c, w: c.post(
            reverse("teams:team_members", args=[w.team.pk]), {"role": "owner", "email": ""}
        ),
        lambda w: Invite.objects.filter(team=w.team, role="owner").exists(),
    ),
    "revoke invite": (
        lambda c, w: c.post(reverse("teams:invite_revoke", args=[w.team.pk, w.invite.pk])),
        lambda w: not Invite.objects.filter(pk=w.invite.pk).exists(),
    ),
    "change role": (
        lambda c, w: c.post(
            reverse("teams:member_role", args=[w.team.pk, w.target.pk]), {"role": "owner"}
        ),
        lambda w: Membership.objects.get(pk=w.target.pk).role == "owner",
    ),
    "remove member": (
        lambda c, w: c.post(reverse("teams:member_remove", args=[w.team.pk, w.target.pk])),
        lambda w: not Membership.objects.filter(pk=w.target.pk).exists(),
    ),
    "create credential": (
        lambda c, w: c.post(
            reverse("teams:credentials", args=[w.team.pk]),
            {"name": "anthropic", "provider": "anthropic", "api_key": "sk-ant-abcdefgh"},
        ),
        lambda w: ProviderCredential.objects.filter(team=w.team, name="anthropic").exists(),
    ),
    "edit credential": (
        lambda c, w: c.post(
            reverse("teams:credential_edit", args=[w.team.pk, w.credential.pk]),
            {"name": "renamed", "base_url": "", "api_key": ""},
        ),
        lambda w: ProviderCredential.objects.get(pk=w.credential.pk).name == "renamed",
    ),
    "delete credential": (
        lambda c, w: c.post(reverse("teams:credential_delete", args=[w.team.pk, w.credential.pk])),
        lambda w: not ProviderCredential.objects.filter(pk=w.credential.pk).exists(),
    ),
}

WRITE = {"create project", "edit task spec", "upload inputs", "start import", "cancel job"}
MANAGE = set(ACTIONS) - WRITE
ALLOWED = {
    Role.OWNER: set(ACTIONS),
    Role.ENGINEER: WRITE,
    Role.REVIEWER: set(),
    Role.VIEWER: set(),
}
CASES = [(role, action) for role in ALLOWED for action in ACTIONS]


def actor(role: str, w: World, member_with_role) -> Any:  # type: ignore[no-untyped-def]
    return w.owner if role == Role.OWNER else member_with_role(role)


@pytest.mark.parametrize(
    ("role", "action"),
    [c for c in CASES if c[1] not in ALLOWED[c[0]]],
    ids=lambda v: str(v).replace(" ", "-"),
)
def test_a_role_without_the_permission_gets_403_and_nothing_changes(
    world, member_with_role, client_for, role, action, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    client = client_for(actor(role, world, member_with_role))
    request, _worked = ACTIONS[action]
    before = snapshot(world)
    with django_capture_on_commit_callbacks(execute=False):
        response = request(client, world)
    assert response.status_code == 403
    assert snapshot(world) == before


@pytest.mark.parametrize(
    ("role", "action"),
    [c for c in CASES if c[1] in ALLOWED[c[0]]],
    ids=lambda v: str(v).replace(" ", "-"),
)
def test_a_role_with_the_permission_succeeds(
    world, member_with_role, client_for, role, action, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    client = client_for(actor(role, world, member_with_role))
    request, worked = ACTIONS[action]
    with django_capture_on_commit_callbacks(execute=False):
        response = request(client, world)
    assert response.status_code in (200, 302)
    assert worked(world), f"{role} could not {action}"


@pytest.mark.parametrize("role", [Role.REVIEWER, Role.VIEWER])
def test_read_only_roles_can_read_but_see_no_write_controls(
    world, member_with_role, client_for, role
):  # type: ignore[no-untyped-def]
    client = client_for(member_with_role(role))
    for url in [
        reverse("reports:dashboard"),
        reverse("projects:project_detail", args=[world.project.pk]),
        reverse("projects:task_edit", args=[world.project.pk]),
        reverse("projects:inputs_list", args=[world.project.pk]),
        reverse("teams:team_members", args=[world.team.pk]),
        reverse("teams:credentials", args=[world.team.pk]),
        reverse("jobs:job_detail", args=[world.job.pk]),
    ]:
        assert client.get(url).status_code == 200, url
    dashboard = client.get(reverse("reports:dashboard")).content.decode()
    assert reverse("projects:project_create", args=[world.team.pk]) not in dashboard
    members = client.get(reverse("teams:team_members", args=[world.team.pk])).content.decode()
    assert "Create invite link" not in members
    keys = client.get(reverse("teams:credentials", args=[world.team.pk])).content.decode()
    assert "Save credential" not in keys
    # Forms that write are refused even when only opened.
    assert client.get(reverse("projects:inputs_upload", args=[world.project.pk])).status_code == 403
    assert client.get(reverse("projects:project_create", args=[world.team.pk])).status_code == 403


def test_engineer_cannot_open_credential_edit(world, teammate, client_for):  # type: ignore[no-untyped-def]
    client = client_for(teammate)
    url = reverse("teams:credential_edit", args=[world.team.pk, world.credential.pk])
    assert client.get(url).status_code == 403


# The last owner --------------------------------------------------------------------------------


def test_the_last_owner_cannot_be_demoted_or_removed(team, owner, client_for):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    mine = Membership.objects.get(team=team, user=owner)
    response = client.post(
        reverse("teams:member_role", args=[team.pk, mine.pk]), {"role": "engineer"}, follow=True
    )
    assert "a team needs at least one owner; make someone else owner first" in (
        response.content.decode()
    )
    response = client.post(reverse("teams:member_remove", args=[team.pk, mine.pk]), follow=True)
    assert "a team needs at least one owner" in response.content.decode()
    mine.refresh_from_db()
    assert mine.role == Role.OWNER


def test_with_a_second_owner_an_owner_can_step_down_but_the_last_one_cannot(
    team, owner, teammate, client_for
):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    mine = Membership.objects.get(team=team, user=owner)
    theirs = Membership.objects.get(team=team, user=teammate)
    client.post(reverse("teams:member_role", args=[team.pk, theirs.pk]), {"role": "owner"})
    client.post(reverse("teams:member_role", args=[team.pk, mine.pk]), {"role": "viewer"})
    mine.refresh_from_db()
    assert mine.role == Role.VIEWER
    # Now the former owner is a viewer and cannot touch roles at all.
    assert (
        client.post(
            reverse("teams:member_role", args=[team.pk, theirs.pk]), {"role": "viewer"}
        ).status_code
        == 403
    )
    # The remaining owner cannot leave the team ownerless either.
    other = client_for(teammate)
    other.post(reverse("teams:member_remove", args=[team.pk, theirs.pk]))
    theirs.refresh_from_db()
    assert theirs.role == Role.OWNER


def test_an_owner_can_remove_another_owner(team, owner, client_for):  # type: ignore[no-untyped-def]
    second = MembershipFactory(team=team, role=Role.OWNER, user__username="sam")
    client = client_for(owner)
    client.post(reverse("teams:member_remove", args=[team.pk, second.pk]))
    assert not Membership.objects.filter(pk=second.pk).exists()


# Invites ---------------------------------------------------------------------------------------


def create_invite_link(client, team, role: str) -> str:  # type: ignore[no-untyped-def]
    response = client.post(
        reverse("teams:team_members", args=[team.pk]), {"role": role, "email": ""}
    )
    assert response.status_code == 200
    url = response.context["invite_url"]
    assert url in response.content.decode()
    return url


def test_invite_link_signs_up_a_new_person_into_the_team_with_the_role(team, owner, client_for):  # type: ignore[no-untyped-def]
    link = create_invite_link(client_for(owner), team, Role.REVIEWER)

    newcomer = Client()
    page = newcomer.get(link)
    assert page.status_code == 200
    assert "Join Acme Support" in page.content.decode()
    assert "Reviewer" in page.content.decode()
    response = newcomer.post(
        link, {"username": "rita", "password1": PASSWORD, "password2": PASSWORD}, follow=True
    )
    assert response.status_code == 200
    assert response.context["user"].username == "rita"
    assert response.context["team"] == team  # the dashboard of the team she joined
    membership = Membership.objects.get(team=team, user__username="rita")
    assert membership.role == Role.REVIEWER
    invite = Invite.objects.get(token=link.rstrip("/").rsplit("/", 1)[-1])
    assert invite.accepted_by == membership.user

    # The link is spent: for her, for anyone else, on GET and on POST.
    assert newcomer.get(link).status_code == 410
    stranger = Client()
    assert stranger.get(link).status_code == 410
    response = stranger.post(
        link, {"username": "mallory", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response.status_code == 410
    assert not Membership.objects.filter(user__username="mallory").exists()


def test_invite_signup_with_a_bad_password_shows_the_form_and_joins_nobody(team, owner, client_for):  # type: ignore[no-untyped-def]
    link = create_invite_link(client_for(owner), team, Role.VIEWER)
    response = Client().post(link, {"username": "rita", "password1": "x", "password2": "y"})
    assert response.status_code == 200
    assert response.context["signup"].errors
    # Error reports (logs, admin mail) would mask the passwords.
    shown = SafeExceptionReporterFilter().get_post_parameters(response.wsgi_request)
    assert set(shown["password1"]) == set(shown["password2"]) == {"*"}
    assert not Membership.objects.filter(user__username="rita").exists()
    assert Invite.objects.get(team=team).accepted_at is None


def test_an_existing_user_accepts_an_invite_and_lands_in_that_team(
    team, owner, outsider, client_for
):  # type: ignore[no-untyped-def]
    link = create_invite_link(client_for(owner), team, Role.ENGINEER)
    client = client_for(outsider)  # the same test client: now signed in as the outsider
    response = client.post(link, follow=True)
    assert response.context["team"] == team
    assert Membership.objects.get(team=team, user=outsider).role == Role.ENGINEER
    # Their own team is still theirs.
    assert Membership.objects.filter(user=outsider).count() == 2


def test_an_expired_invite_returns_410(team, owner):  # type: ignore[no-untyped-def]
    invite = team_services.invite_create(team=team, role=Role.VIEWER, user=owner)
    Invite.objects.filter(pk=invite.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    link = reverse("teams:invite_accept", args=[invite.token])
    client = Client()
    assert client.get(link).status_code == 410
    response = client.post(link, {"username": "late", "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 410
    assert not Membership.objects.filter(user__username="late").exists()


def test_a_revoked_invite_no_longer_exists(team, owner, client_for):  # type: ignore[no-untyped-def]
    invite = team_services.invite_create(team=team, role=Role.VIEWER, user=owner)
    client_for(owner).post(reverse("teams:invite_revoke", args=[team.pk, invite.pk]))
    assert Client().get(reverse("teams:invite_accept", args=[invite.token])).status_code == 404


# Team switching --------------------------------------------------------------------------------


def test_switching_team_changes_the_dashboard(team, owner, project, client_for):  # type: ignore[no-untyped-def]
    beta = TeamFactory(name="Beta Bank")
    MembershipFactory(team=beta, user=owner, role=Role.VIEWER)
    ProjectFactory(team=beta, name="Receipts")
    client = client_for(owner)

    page = client.get(reverse("reports:dashboard"))
    assert page.context["team"] == team
    assert "Support ticket intents" in page.content.decode()
    assert "Receipts" not in page.content.decode()

    assert client.get(reverse("teams:team_switch", args=[beta.pk])).status_code == 405
    response = client.post(reverse("teams:team_switch", args=[beta.pk]))
    assert response.status_code == 302

    page = client.get(reverse("reports:dashboard"))
    assert page.context["team"] == beta
    assert page.context["membership"].role == Role.VIEWER
    assert "Receipts" in page.content.decode()
    assert "Support ticket intents" not in page.content.decode()
    # As a viewer of Beta, no "New project" button there.
    assert reverse("projects:project_create", args=[beta.pk]) not in page.content.decode()

    client.post(reverse("teams:team_switch", args=[team.pk]))
    assert client.get(reverse("reports:dashboard")).context["team"] == team


def test_removed_from_the_current_team_falls_back_to_another(team, owner, client_for):  # type: ignore[no-untyped-def]
    beta = TeamFactory(name="Beta Bank")
    membership = MembershipFactory(team=beta, user=owner, role=Role.ENGINEER)
    client = client_for(owner)
    client.post(reverse("teams:team_switch", args=[beta.pk]))
    membership.delete()
    assert client.get(reverse("reports:dashboard")).context["team"] == team
