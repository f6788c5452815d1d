"""The go/no-go report's "measured in production": real traffic next to the evaluation's estimate."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.evaluations.evaluation_support import finished_evaluation, label_project_with_references
from tests.gateway.gateway_support import flush
from tests.reports.report_support import metered_teacher, trained_student

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = [
    ("my card has not arrived yet", "card_arrival", "card_arrival", "card_arrival"),
    ("I lost my card", "lost_or_stolen_card", "lost_or_stolen_card", "lost_or_stolen_card"),
]


@pytest.fixture
def project(team, owner):  # type: ignore[no-untyped-def]
    return label_project_with_references(team, owner, n=2)


def test_the_report_shows_production_traffic_next_to_the_evaluation(gw, owner, client_for):  # type: ignore[no-untyped-def]
    metered_teacher(gw.project)
    finished_evaluation(gw.project, owner, ROWS, student_model=trained_student(gw.project, owner))
    gw.policy(mode="cascade", cascade_threshold=0.9)
    for text in ["lost card", "stolen card", "card not here", "unsure if lost"]:
        assert gw.infer({"text": text}).status_code == 200
    flush()
    html = client_for(owner).get(reverse("reports:report", args=[gw.project.pk])).content.decode()
    assert 'data-testid="measured-in-production"' in html
    assert "4 requests, 3 answered by the student" in html
    assert "on the test split" in html and "vs teacher-only" in html
