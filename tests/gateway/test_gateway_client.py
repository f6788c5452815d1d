"""The thin client against a live server over real HTTP."""

from __future__ import annotations

import pytest

from distillery_client import ApiError, Distillery

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_client_calls_the_task(gw, live_server):  # type: ignore[no-untyped-def]
    with Distillery(live_server.url, gw.token) as d:
        one = d.infer(gw.project.slug, {"text": "my card was stolen"})
        assert (one.answer, one.answered_by) == ("lost_or_stolen_card", "teacher")
        assert one.cost_usd > 0 and one.latency_ms > 0
        many = d.infer_batch(gw.project.slug, [{"text": "top up failed"}, {"text": "lost it"}])
        assert [r.answer for r in many] == ["top_up_failed", "lost_or_stolen_card"]
        with pytest.raises(ApiError) as refused:
            d.infer(gw.project.slug, {"wrong": "field"})
        assert refused.value.status == 400 and "text" in refused.value.detail
    with Distillery(live_server.url, "dst_not-a-token") as d, pytest.raises(ApiError) as no:
        d.infer(gw.project.slug, {"text": "x"})
    assert no.value.status == 401
