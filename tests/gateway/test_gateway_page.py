"""The gateway page: what an engineer sees after real traffic (who answered, agreement with its
interval, cost vs teacher-only, drift, the threshold suggestion) and the audited policy form."""

from __future__ import annotations

import pytest

from gateway.models import GatewayPolicy, PolicyChange
from teams.models import Role
from tests.gateway.gateway_support import flush

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_page_shows_live_figures_after_real_traffic(gw, client_for):  # type: ignore[no-untyped-def]
    gw.policy(mode="cascade", cascade_threshold=0.9)
    for i in range(6):
        gw.infer({"text": f"lost card number {i}"})
    gw.infer({"text": "unsure, maybe stolen"})
    flush()
    page = client_for(gw.owner).get(f"/projects/{gw.project.pk}/gateway/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "teacher 1 · student 6" in html
    assert "95 % interval" in html  # agreement with its Wilson interval
    assert "teacher-only" in html and "Saved this month" in html
    assert 'data-testid="suggested-threshold"' in html
    assert "gateway-charts" in html and "plotly" in html


def test_engineers_change_the_policy_on_the_page_and_it_is_audited(
    gw, client_for, member_with_role
):  # type: ignore[no-untyped-def]
    engineer = member_with_role(Role.ENGINEER)
    policy = GatewayPolicy.objects.get(project=gw.project)
    form = {
        "mode": "canary",
        "credential": policy.credential_id,
        "teacher_model": policy.teacher_model,
        "teacher_max_tokens": 256,
        "served_model": policy.served_model_id,
        "student_timeout_ms": 1500,
        "canary_percent": 25,
        "cascade_threshold": 0.9,
        "seed": 1,
        "record_inputs": "on",
        "sample_rate": 0.5,
        "retention_days": 30,
        "agreement_target_percent": 95,
        "monthly_budget_usd": "",
        "budget_fallback_to_student": "on",
    }
    url = f"/projects/{gw.project.pk}/gateway/policy/"
    reply = client_for(engineer).post(url, form)
    assert reply.status_code == 302
    policy.refresh_from_db()
    assert (policy.mode, policy.canary_percent, policy.sample_rate) == ("canary", 25, 0.5)
    change = PolicyChange.objects.filter(policy=policy).first()
    assert change.user == engineer and change.changes["mode"] == ["teacher", "canary"]
    page = client_for(engineer).get(f"/projects/{gw.project.pk}/gateway/").content.decode()
    assert "mode: teacher → canary" in page

    bad = client_for(engineer).post(url, {**form, "sample_rate": 3})
    assert bad.status_code == 302
    policy.refresh_from_db()
    assert policy.sample_rate == 0.5  # refused, with a message naming the field

    viewer = member_with_role(Role.VIEWER)
    assert client_for(viewer).post(url, {**form, "mode": "student"}).status_code == 403


def test_outsiders_get_404(gw, client_for, outsider):  # type: ignore[no-untyped-def]
    c = client_for(outsider)
    assert c.get(f"/projects/{gw.project.pk}/gateway/").status_code == 404
    assert (
        c.post(f"/projects/{gw.project.pk}/gateway/policy/", {"mode": "student"}).status_code == 404
    )
