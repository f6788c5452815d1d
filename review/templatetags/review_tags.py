"""Template helpers for the review pages, and the review progress block of the project page."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def lookup(mapping: Any, key: Any) -> Any:
    """`{{ mapping|lookup:key }}`: a dict entry by a variable key ("" when absent)."""
    try:
        return mapping.get(key, "")
    except AttributeError:
        return ""


@register.filter
def percent(part: int, whole: int) -> int:
    return int(100 * part / whole) if whole else 0


@register.inclusion_tag("review/review_progress.html")
def review_progress(project: Any) -> dict[str, Any]:
    """Reviewed / approved / rejected / remaining, overall and per reviewer."""
    from review.selectors import review_progress as progress_of

    return {"project": project, "progress": progress_of(project=project)}
