"""The review queue: its filters (as they travel in a query string), the filtered outputs in
queue order, a paginator that stops counting at COUNT_CAP, and what a card needs fetched with
them. Scoped by project (the caller resolved the project through the user's team)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.contrib.auth.models import User
from django.core.paginator import EmptyPage, Page, PageNotAnInteger, Paginator
from django.db import connection
from django.db.models import BooleanField, Exists, F, OuterRef, Prefetch, Q, QuerySet
from django.db.models.expressions import RawSQL

from projects.models import InputRow, Project
from review.models import (
    ReviewAssignment,
    ReviewComment,
    ReviewDecision,
)
from teachers.models import OutputFlag, ReviewStatus, TeacherOutput
from worker.checks import FLAG_CODES

STATUS_FILTERS = {
    "unreviewed": "Unreviewed",
    "approved": "Approved",
    "rejected": "Rejected",
    "edited": "Edited",
    "decided": "Decided (any)",
    "conflict": "Reviewers disagree",
}
SORTS = {
    "": "Queue order",
    "confidence": "Confidence, lowest first",
    "-confidence": "Confidence, highest first",
}
PAGE_SIZE = 20
#: The queue counts matches exactly up to this many, then says "more than"; a reviewer needs
#: "3 left" or "about a thousand", and an exact count of 40,000 matches would read them all.
#: Bulk actions always count exactly (their confirmation states the number they will change).
COUNT_CAP = 1000


# Django's Paginator and Page are generic only in the type stubs, not at run time.
if TYPE_CHECKING:
    _OutputPaginator = Paginator[TeacherOutput]
    _OutputPage = Page[TeacherOutput]
else:
    _OutputPaginator = Paginator
    _OutputPage = Page


class CappedPaginator(_OutputPaginator):
    """A paginator whose count stops at COUNT_CAP + 1 (so it knows there are more)."""

    def __init__(
        self, object_list: QuerySet[TeacherOutput], per_page: int, cap: int = COUNT_CAP
    ) -> None:
        super().__init__(object_list, per_page)
        self.rows = object_list
        self.cap = cap

    @cached_property
    def count(self) -> int:
        return self.rows.order_by()[: self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.cap

    def validate_number(self, number: Any) -> int:
        if not self.capped:
            return int(super().validate_number(number))
        try:
            value = int(number)
        except (TypeError, ValueError):
            raise PageNotAnInteger("that page number is not an integer") from None
        if value < 1:
            raise EmptyPage("that page number is less than 1")
        return value

    def page(self, number: Any) -> Page[TeacherOutput]:
        number = self.validate_number(number)
        if not self.capped:
            return super().page(number)
        bottom = (number - 1) * self.per_page
        # One row more than a page says whether there is a next page, without a count.
        rows = list(self.rows[bottom : bottom + self.per_page + 1])
        return _CappedPage(rows[: self.per_page], number, self, more=len(rows) > self.per_page)


class _CappedPage(_OutputPage):
    def __init__(
        self,
        object_list: list[TeacherOutput],
        number: int,
        paginator: CappedPaginator,
        *,
        more: bool,
    ) -> None:
        super().__init__(object_list, number, paginator)
        self.more = more

    def has_next(self) -> bool:
        return self.more

    def next_page_number(self) -> int:
        return self.number + 1


def _number(value: str | None) -> float | None:
    if value is None or not str(value).strip():
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0.0 <= number <= 1.0 else None


@dataclass(frozen=True)
class ReviewFilters:
    """The queue's filters, as they travel in a query string (and in a bulk action's form)."""

    status: str = ""
    flag: str = ""  # a flag code, "any" or "none"
    label: str = ""
    conf_min: float | None = None
    conf_max: float | None = None
    q: str = ""
    reviewer: str = ""  # a user id, or "rule"
    assigned: str = ""  # "me", "todo" (mine, not decided by me) or a user id
    sort: str = ""
    errors: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_query(cls, data: Mapping[str, Any]) -> ReviewFilters:
        errors: list[str] = []
        status = str(data.get("status", "") or "")
        if status and status not in STATUS_FILTERS:
            errors.append(f"unknown status {status!r}")
            status = ""
        flag = str(data.get("flag", "") or "")
        if flag and flag not in FLAG_CODES and flag not in ("any", "none"):
            errors.append(f"unknown flag {flag!r}")
            flag = ""
        conf = {}
        for key in ("conf_min", "conf_max"):
            raw = data.get(key)
            conf[key] = _number(raw)
            if raw not in (None, "") and conf[key] is None:
                errors.append(f"{key.replace('_', ' ')} must be a number between 0 and 1")
        reviewer = str(data.get("reviewer", "") or "")
        if reviewer and reviewer != "rule" and not reviewer.isdigit():
            errors.append("unknown reviewer")
            reviewer = ""
        assigned = str(data.get("assigned", "") or "")
        if assigned and assigned not in ("me", "todo") and not assigned.isdigit():
            errors.append("unknown assignment filter")
            assigned = ""
        sort = str(data.get("sort", "") or "")
        if sort not in SORTS:
            sort = ""
        return cls(
            status=status,
            flag=flag,
            label=str(data.get("label", "") or "").strip(),
            conf_min=conf["conf_min"],
            conf_max=conf["conf_max"],
            q=str(data.get("q", "") or "").strip()[:200],
            reviewer=reviewer,
            assigned=assigned,
            sort=sort,
            errors=tuple(errors),
        )

    def as_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in fields(self):
            if f.name == "errors":
                continue
            value = getattr(self, f.name)
            if value not in (None, ""):
                out[f.name] = f"{value:g}" if isinstance(value, float) else str(value)
        return out

    def query_string(self, **overrides: Any) -> str:
        data = self.as_dict()
        for key, value in overrides.items():
            if value in (None, ""):
                data.pop(key, None)
            else:
                data[key] = str(value)
        return urlencode(data)

    def without_sort(self) -> ReviewFilters:
        return replace(self, sort="")

    @property
    def is_empty(self) -> bool:
        return not self.without_sort().as_dict()

    def describe(self, *, usernames: Mapping[int, str] | None = None) -> list[str]:
        """Plain words for a confirmation page: what this filter selects."""
        usernames = usernames or {}
        parts = []
        if self.status:
            parts.append(f"status: {STATUS_FILTERS[self.status].lower()}")
        if self.flag == "any":
            parts.append("flagged by any check")
        elif self.flag == "none":
            parts.append("not flagged")
        elif self.flag:
            parts.append(f"flag: {FLAG_CODES[self.flag].lower()}")
        if self.label:
            parts.append(f"label: {self.label}")
        if self.conf_min is not None:
            parts.append(f"confidence ≥ {self.conf_min:g}")
        if self.conf_max is not None:
            parts.append(f"confidence ≤ {self.conf_max:g}")
        if self.q:
            parts.append(f"text contains “{self.q}”")
        if self.reviewer == "rule":
            parts.append("decided by an auto rule")
        elif self.reviewer:
            parts.append(
                f"decided by {usernames.get(int(self.reviewer), 'user #' + self.reviewer)}"
            )
        if self.assigned == "me":
            parts.append("assigned to me")
        elif self.assigned == "todo":
            parts.append("assigned to me, not yet decided by me")
        elif self.assigned:
            parts.append(
                f"assigned to {usernames.get(int(self.assigned), 'user #' + self.assigned)}"
            )
        return parts or ["all outputs"]


def outputs_for_review(
    *, project: Project, user: User, filters: ReviewFilters
) -> QuerySet[TeacherOutput]:
    """The queue: the project's teacher outputs matching the filters, in queue order."""
    rows = TeacherOutput.objects.filter(project=project)
    if filters.status == "conflict":
        rows = rows.filter(review_conflict=True)
    elif filters.status == "decided":
        rows = rows.exclude(review_status=ReviewStatus.UNREVIEWED)
    elif filters.status:
        rows = rows.filter(review_status=filters.status)
    # Flags are filtered through their rows (indexed by output and code), which works on
    # every database and stays fast where JSON containment would read every output.
    if filters.flag in ("any", "none"):
        flagged = Exists(OutputFlag.objects.filter(output=OuterRef("pk")))
        rows = rows.filter(flagged if filters.flag == "any" else ~flagged)
    elif filters.flag:
        rows = rows.filter(
            Exists(OutputFlag.objects.filter(output=OuterRef("pk"), code=filters.flag))
        )
    if filters.label:
        rows = rows.filter(
            Q(review_status=ReviewStatus.EDITED, edited_value=filters.label)
            | (~Q(review_status=ReviewStatus.EDITED) & Q(parsed=filters.label))
        )
    if filters.conf_min is not None:
        rows = rows.filter(confidence__gte=filters.conf_min)
    if filters.conf_max is not None:
        rows = rows.filter(confidence__lte=filters.conf_max)
    if filters.q:
        match = re.fullmatch(r"#(\d+)", filters.q)
        if match:
            rows = rows.filter(pk=int(match.group(1)))
        else:
            rows = rows.filter(_text_search(project, filters.q))
    if filters.reviewer == "rule":
        rows = rows.filter(decided_by_rule__isnull=False)
    elif filters.reviewer:
        rows = rows.filter(reviewed_by_id=int(filters.reviewer))
    if filters.assigned:
        who = user.pk if filters.assigned in ("me", "todo") else int(filters.assigned)
        rows = rows.filter(
            Exists(ReviewAssignment.objects.filter(output=OuterRef("pk"), reviewer_id=who))
        )
        if filters.assigned == "todo":
            rows = rows.exclude(
                Exists(
                    ReviewDecision.objects.filter(
                        output=OuterRef("pk"), reviewer_id=who, undone_at__isnull=True
                    )
                )
            ).filter(review_conflict=False)
    if filters.sort == "confidence":
        return rows.order_by(F("confidence").asc(nulls_last=True), "id")
    if filters.sort == "-confidence":
        return rows.order_by(F("confidence").desc(nulls_last=True), "id")
    return rows.order_by("id")


RARE_MATCHES = 500


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _text_search(project: Project, q: str) -> Q:
    """Outputs whose input or answer contains `q` (case-insensitive)."""
    inputs = InputRow.objects.filter(project=project, search_text__contains=q.lower()).values("pk")
    in_answer = Q(raw_text__icontains=q)
    table = TeacherOutput._meta.db_table
    if connection.vendor != "postgresql":
        return Q(input_id__in=inputs) | in_answer
    if inputs[:RARE_MATCHES].count() >= RARE_MATCHES:
        # A common phrase: reading outputs in queue order finds a page (and the capped count)
        # after a few rows, each checked against its own input by primary key. OFFSET 0 keeps
        # PostgreSQL from hashing every matching input first (tens of ms at 50,000 inputs).
        input_table = InputRow._meta.db_table
        return (
            Q(
                # Table names are ours; the phrase is a parameter.
                RawSQL(  # noqa: S611
                    f'EXISTS (SELECT 1 FROM "{input_table}" i WHERE i.id = "{table}"."input_id" '  # noqa: S608
                    "AND i.search_text LIKE %s OFFSET 0)",
                    [f"%{_like_escape(q.lower())}%"],
                    output_field=BooleanField(),
                )
            )
            | in_answer
        )
    # A rare phrase: `input_id = ANY(ARRAY(subquery))` rather than `input_id IN (subquery)`, so
    # PostgreSQL combines the input_id index with the trigram index on the answer (a BitmapOr,
    # see migration 0004) instead of reading every output of the project.
    sql, params = inputs.query.sql_with_params()
    # The SQL is Django's own compilation of the queryset above; the search text is a param.
    matches_input = RawSQL(  # noqa: S611
        f'"{table}"."input_id" = ANY(ARRAY({sql}))', params, output_field=BooleanField()
    )
    return Q(matches_input) | in_answer


def with_review_details(rows: QuerySet[TeacherOutput]) -> QuerySet[TeacherOutput]:
    """What a queue card shows, fetched in a handful of queries for a page of outputs."""
    return rows.select_related("input", "reviewed_by", "decided_by_rule").prefetch_related(
        Prefetch("flags", queryset=OutputFlag.objects.order_by("code")),
        Prefetch("comments", queryset=ReviewComment.objects.select_related("author")),
        Prefetch(
            "decisions",
            queryset=ReviewDecision.objects.select_related("reviewer", "rule").order_by("id"),
        ),
        Prefetch("assignments", queryset=ReviewAssignment.objects.select_related("reviewer")),
    )


def review_output(*, project: Project, output_id: int) -> TeacherOutput | None:
    return with_review_details(TeacherOutput.objects.filter(project=project, pk=output_id)).first()


def labels_in_use(*, project: Project) -> list[str]:
    return list(project.label_set or []) if project.output_kind == "label" else []


def reviewers_of(*, project: Project) -> list[User]:
    """Team members who may review, for filters and assignment."""
    from teams.models import ROLE_PERMISSIONS

    roles = [role for role, perms in ROLE_PERMISSIONS.items() if "review" in perms]
    return list(
        User.objects.filter(memberships__team=project.team, memberships__role__in=roles).order_by(
            "username"
        )
    )
