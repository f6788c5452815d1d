"""What every /api/v1/ route shares: token auth, one error shape, cursor pages, object lookup.

Each app declares its routes in ``<app>/api.py`` (a ninja Router) calling the same services and
selectors as its pages; ``distillery/api.py`` mounts them. Every error is JSON::

    {"detail": "what went wrong", "errors": [{"field": "rows", "row": 3, "message": "…"}]}

``errors`` is present when the problem is in named fields (and rows, for batches).
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.pagination import CursorPagination
from ninja.security import HttpBearer

from teams.api_tokens import TokenUser, api_token_authenticate
from teams.errors import field_and_message

M = TypeVar("M", bound=Model)

#: Cursor pages: newest first by primary key (stable under inserts), 50 a page, at most 500.
PAGE = {"ordering": ("-pk",), "page_size": 50, "max_page_size": 500}
Page = CursorPagination


class TokenAuth(HttpBearer):
    """``Authorization: Bearer dst_…``: a live token of a current member, else 401."""

    def authenticate(self, request: HttpRequest, token: str) -> TokenUser | None:
        return api_token_authenticate(token)


def auth_of(request: HttpRequest) -> TokenUser:
    """The token user of an authenticated API request."""
    return cast(TokenUser, request.auth)  # type: ignore[attr-defined]


def require_permission(auth: TokenUser, permission: str) -> None:
    """403 naming why: the token's scopes or its creator's role lack ``permission``."""
    if auth.can(permission):
        return
    scopes = ", ".join(auth.token.scopes) or "none"
    raise PermissionDenied(
        f"this token may not {permission}: its scopes are {scopes} and its creator is "
        f"{auth.membership.get_role_display().lower()} of the team"
    )


def team_object(
    queryset: QuerySet[M],
    auth: TokenUser,
    *,
    team_path: str = "team",
    permission: str = "read",
    **lookup: Any,
) -> M:
    """The object matching ``lookup`` in the token's team: 404 outside it (even when the token's
    creator belongs to the other team too: a token is one team's), 403 without the permission."""
    obj = queryset.filter(**lookup).filter(**{f"{team_path}_id": auth.team.pk}).first()
    if obj is None:
        raise Http404
    require_permission(auth, permission)
    return obj


class ApiError(Exception):
    """An error answered as JSON with its status (409 conflict, 413 too large, …)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class ErrorOut(Schema):
    detail: str
    errors: list[dict[str, Any]] | None = None


def error_response(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    from django.http import JsonResponse

    body: dict[str, Any] = {"detail": detail}
    if errors:
        body["errors"] = errors
    response = JsonResponse(body, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def field_error(exc: Exception, *, status: int = 400) -> ApiError:
    """An engine error with ``.field``/``.message`` (TaskSpecError, IngestError…) as an ApiError."""
    field, message = field_and_message(exc)
    entry: dict[str, Any] = {"field": field, "message": message}
    line = getattr(exc, "line", None)
    if line:
        entry["line"] = line
    return ApiError(status, message, errors=[entry])


def _validation_errors(exc: DjangoValidationError) -> list[dict[str, Any]]:
    if hasattr(exc, "error_dict"):
        return [
            {"field": None if field == "__all__" else field, "message": message}
            for field, messages in exc.message_dict.items()
            for message in messages
        ]
    return [{"field": None, "message": message} for message in exc.messages]


_LOCATIONS = {"body", "query", "path", "form", "file", "header", "cookie"}


def _ninja_errors(exc: NinjaValidationError) -> list[dict[str, Any]]:
    out = []
    for error in exc.errors:
        loc = [part for part in error.get("loc", ()) if part not in _LOCATIONS]
        # ninja puts the handler's argument name first ("payload"): not part of the body.
        if loc and isinstance(loc[0], str) and loc[0] in {"payload", "filters", "params"}:
            loc = loc[1:]
        entry: dict[str, Any] = {
            "field": ".".join(str(p) for p in loc) or None,
            "message": error.get("msg", "invalid"),
        }
        if len(loc) >= 2 and loc[0] == "rows" and isinstance(loc[1], int):
            entry["row"] = loc[1] + 1
            entry["field"] = ".".join(str(p) for p in loc[2:]) or None
        out.append(entry)
    return out


def install_error_handlers(api: NinjaAPI) -> None:
    """One error shape for every route; nothing answers an API client with an HTML page."""

    @api.exception_handler(ApiError)
    def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
        return error_response(exc.status, exc.detail, exc.errors, exc.headers)

    @api.exception_handler(NinjaValidationError)
    def _invalid(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
        return error_response(422, "the request is not valid", _ninja_errors(exc))

    @api.exception_handler(DjangoValidationError)
    def _rejected(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
        errors = _validation_errors(exc)
        detail = "; ".join(
            f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors
        )
        return error_response(400, detail or "the request was refused", errors)

    @api.exception_handler(AuthenticationError)
    def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return error_response(
            401,
            "a valid API token is required: Authorization: Bearer dst_… "
            "(missing, unknown, revoked, or its creator left the team)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    @api.exception_handler(Http404)
    def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        return error_response(404, "not found")

    @api.exception_handler(PermissionDenied)
    def _forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
        return error_response(403, str(exc) or "not allowed")

    @api.exception_handler(HttpError)
    def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        return error_response(exc.status_code, str(exc))
