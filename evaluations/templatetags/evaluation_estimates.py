"""The evaluation pages' time figures (evaluations.estimates) and role checks, for templates."""

from __future__ import annotations

from typing import Any

from django import template

from evaluations.estimates import time_left
from jobs.models import Job
from teams.models import Membership

register = template.Library()


@register.simple_tag
def evaluation_time_left(job: Job) -> dict[str, Any] | None:
    return time_left(job)


@register.filter
def may(membership: Membership | None, permission: str) -> bool:
    """``{% if membership|may:"write" %}``: the member's role allows it."""
    return membership is not None and membership.can(permission)
