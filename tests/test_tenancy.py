"""Every object URL is reached through the user's team: an outsider gets 404 and changes nothing.

The sweep enumerates the URL patterns themselves, so a new URL with an object id fails this test
until its id is listed in `object_ids` below (i.e. until someone has thought about its tenancy).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib.sessions.models import Session
from django.urls import URLPattern, URLResolver, get_resolver

from jobs.models import JobKind
from jobs.services import job_create
from projects import services
from teams import services as team_services
from teams.models import ProviderKind
from tests.factories import InputRowFactory

# URL kwargs that are not tenant object ids, with the reason they are exempt.
EXEMPT = {
    "token": "invite links are bearer tokens by design; they carry no object id to enumerate",
    "share_token": "a shared report's secret link is a bearer token by design (read-only, revocable)",
}


def iter_patterns(resolver: URLResolver, prefix: str = ""):  # type: ignore[no-untyped-def]
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from iter_patterns(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield entry, prefix + str(entry.pattern)


def object_url_patterns(*, api: bool = False) -> list[tuple[str, list[str]]]:
    """(route, kwarg names) for every pattern with a URL argument, excluding the admin: the
    pages' (signed-in sessions), or with ``api`` the REST API's (bearer tokens,
    tests/test_tenancy_api.py)."""
    found = []
    for pattern, route in iter_patterns(get_resolver()):
        if route.startswith("admin/") or route.startswith("api/") != api:
            continue
        names = list(pattern.pattern.converters)
        if names:
            found.append((route, names))
    return found


def fill(route: str, values: dict[str, object]) -> str:
    import re

    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), route)


def snapshot() -> dict[str, list[dict[str, object]]]:
    state = {}
    for model in apps.get_models():
        if model is Session:
            continue
        state[model._meta.label] = list(model.objects.order_by("pk").values())
    return state


@pytest.fixture
def victim_objects(team, owner, teammate, project):  # type: ignore[no-untyped-def]
    """One of every tenant object, in `team`, keyed by the URL kwarg that names it."""
    row = InputRowFactory(project=project)
    upload = services.input_upload_create(
        project=project, user=owner, file_name="t.csv", source=_csv_file()
    )
    credential = team_services.credential_create(
        team=team,
        user=owner,
        name="prod-openai",
        provider=ProviderKind.OPENAI,
        api_key="sk-test-12345678",
    )
    invite = team_services.invite_create(team=team, role="viewer", user=owner)
    from teams.api_tokens import api_token_create

    token, _ = api_token_create(team=team, user=owner, name="victim-token", scopes=["read"])
    job = job_create(team=team, project=project, kind=JobKind.IMPORT_INPUTS, user=owner, params={})
    from teachers import services as teacher_services

    teacher_run = teacher_services.teacher_run_start(
        project=project,
        user=owner,
        run_settings=teacher_services.RunSettings(model="gpt-4o-mini", credential=credential),
    )
    price = teacher_services.price_entry_save(
        team=team,
        user=owner,
        model="gpt-4o-mini",
        input_usd_per_mtok=Decimal("0.1"),
        output_usd_per_mtok=Decimal("0.4"),
    )
    # Review and datasets: an output (approved, so a version can be frozen), a rule, a version.
    from dataset_versions import services as dataset_services
    from review import services as review_services
    from tests.factories import TeacherOutputFactory

    output = TeacherOutputFactory(project=project, input=row)
    review_services.output_decide(
        project=project, user=owner, output_id=output.pk, action="approve", seen_version=0
    )
    rule = review_services.rule_create(
        project=project,
        user=owner,
        name="",
        definition={"action": "approve", "when": {"unflagged": True}},
    )
    version = dataset_services.dataset_version_create(
        project=project, user=owner, options=dataset_services.freeze_options(name="v1")
    )
    # Fine-tuning: a registered base student and a fine-tune of the version (its files need not
    # exist: every URL must answer 404 before it looks for them).
    from finetunes.models import FineTune, StudentModel

    student = StudentModel.objects.create(
        team=team, name="tiny", kind="base", source="local", path="models/tiny"
    )
    fine_tune = FineTune.objects.create(
        job=job_create(team=team, project=project, kind=JobKind.FINE_TUNE, user=owner),
        project=project,
        dataset_version=version,
        base_model=student,
        base_model_name=student.name,
        method="lora",
        output_dir="finetunes/victim",
    )
    # A distilled student of the project, served (its files need not exist either).
    from serving import services as serving_services

    distilled = StudentModel.objects.create(
        team=team,
        name="tiny distilled",
        kind="distilled",
        source="fine_tune",
        path="finetunes/victim/merged",
        project=project,
    )
    served = serving_services.student_serve(student=distilled, user=owner)
    # An evaluation of the victim's input, and its example (what votes are cast on).
    from evaluations import services as evaluation_services

    evaluation = evaluation_services.evaluation_start(
        project=project,
        user=owner,
        teacher=evaluation_services.TeacherChoice(),
        endpoints=[evaluation_services.EndpointChoice(credential=credential, model="gpt-4o-mini")],
        input_ids=[row.pk],
    )
    return {
        "evaluation_id": evaluation.pk,
        "example_id": evaluation.examples.get().pk,
        "team_id": team.pk,
        "membership_id": teammate.memberships.get(team=team).pk,
        "invite_id": invite.pk,
        "credential_id": credential.pk,
        "project_id": project.pk,
        "slug": project.slug,
        "token_id": token.pk,
        "served_id": served.pk,
        "input_id": row.pk,
        "upload_id": upload.pk,
        "job_id": job.pk,
        "output_id": output.pk,
        "rule_id": rule.pk,
        "version_id": version.pk,
        "run_id": teacher_run.pk,
        "price_id": price.pk,
        "finetune_id": fine_tune.pk,
        "student_id": student.pk,
        "artifact": "model",
        "filename": "config.json",
    }


def _csv_file():  # type: ignore[no-untyped-def]
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "t.csv"
    path.write_text("text\nhello\n")
    return path


def test_every_object_url_is_covered_by_the_sweep(victim_objects):  # type: ignore[no-untyped-def]
    patterns = object_url_patterns()
    assert len(patterns) >= 15
    uncovered = sorted(
        f"{route} ({name})"
        for route, names in patterns
        for name in names
        if name not in victim_objects and name not in EXEMPT
    )
    assert not uncovered, (
        "URL arguments with no object in the tenancy sweep (add one to victim_objects): "
        + ", ".join(uncovered)
    )


@pytest.mark.parametrize("method", ["get", "post"])
def test_outsider_gets_404_on_every_object_url_and_changes_nothing(
    client, outsider, victim_objects, method
):  # type: ignore[no-untyped-def]
    client.force_login(outsider)
    before = snapshot()
    checked = []
    for route, names in object_url_patterns():
        if any(name in EXEMPT for name in names):
            continue
        url = fill(route, victim_objects)
        response = getattr(client, method)(url, {"name": "pwned", "role": "owner", "q": "x"})
        assert response.status_code == 404, f"{method.upper()} {url} → {response.status_code}"
        checked.append(url)
    assert len(checked) >= 15
    assert snapshot() == before


def test_anonymous_users_are_sent_to_sign_in(client, victim_objects):  # type: ignore[no-untyped-def]
    for route, names in object_url_patterns():
        if any(name in EXEMPT for name in names):
            continue
        response = client.get(fill(route, victim_objects))
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], route


def test_a_member_of_another_team_cannot_reach_objects_through_their_own_team_url(
    client, outsider, victim_objects
):  # type: ignore[no-untyped-def]
    """Nested ids are scoped too: the outsider's own team id with the victim's credential id."""
    own_team = outsider.memberships.get().team_id
    client.force_login(outsider)
    for route in (
        "teams/{t}/credentials/{c}/",
        "teams/{t}/members/{m}/role/",
        "teams/{t}/invites/{i}/revoke/",
    ):
        url = "/" + route.format(
            t=own_team,
            c=victim_objects["credential_id"],
            m=victim_objects["membership_id"],
            i=victim_objects["invite_id"],
        )
        assert client.post(url, {"role": "viewer", "name": "x"}).status_code == 404, url
