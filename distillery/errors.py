"""Error pages rendered with the site's layout.

A 403 names what the member's role cannot do (the message ``teams.access.require`` raises), so
the person knows whom to ask instead of reading a bare "403 Forbidden".
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.template import TemplateDoesNotExist
from django.template.loader import render_to_string

#: Shown when the refusal carries no message of its own.
DEFAULT_REASON = "You do not have permission to open this page."


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403: the styled page, with the refusal's reason (e.g. "your role (Viewer) cannot
    do this")."""
    reason = str(exception or "").strip().rstrip(".") or DEFAULT_REASON.rstrip(".")
    body: str
    try:
        body = render_to_string("403.html", {"reason": reason[:1].upper() + reason[1:]}, request)
    except TemplateDoesNotExist:  # pragma: no cover - the template ships with the app
        body = f"<h1>403 Forbidden</h1><p>{reason}</p>"
    return HttpResponseForbidden(body)


def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico: browsers ask for it on every page whatever the page links; answer with the
    SVG icon instead of a 404 in every log."""
    from django.contrib.staticfiles import finders

    path = finders.find("img/favicon.svg")
    if not path:  # pragma: no cover - the icon ships with the app
        return HttpResponse(status=204)
    with open(path, "rb") as icon:
        response = HttpResponse(icon.read(), content_type="image/svg+xml")
    response["Cache-Control"] = "public, max-age=86400"
    return response
