"""Reads for the review queue, its progress, agreement, and the audit trail. Scoped by project
(the caller resolved the project through the user's team)."""

from __future__ import annotations

import difflib
import html
import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth import get_user_model
from django.core.paginator import EmptyPage, Page, PageNotAnInteger, Paginator
from django.db import connection
from django.db.models import BooleanField, Count, Exists, F, OuterRef, Prefetch, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe

from projects.models import InputRow, Project
from review.models import (
    AuditEvent,
    DecisionKind,
    ReviewAssignment,
    ReviewComment,
    ReviewDecision,
    ReviewRule,
    ReviewSettings,
)
from teachers.models import OutputFlag, ReviewStatus, TeacherOutput
from worker.checks import FLAG_CODES
from worker.datasets import overlap_agreement
from worker.taskspec import TaskSpec, canonical_output

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


class CappedPaginator(Paginator):
    """A paginator whose count stops at COUNT_CAP + 1 (so it knows there are more)."""

    def __init__(self, object_list: Any, per_page: int, cap: int = COUNT_CAP) -> None:
        super().__init__(object_list, per_page)
        self.cap = cap

    @cached_property
    def count(self) -> int:
        return int(self.object_list.order_by()[: self.cap + 1].count())

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

    def page(self, number: Any) -> Page:
        number = self.validate_number(number)
        if not self.capped:
            return super().page(number)
        bottom = (number - 1) * self.per_page
        # One row more than a page says whether there is a next page, without a count.
        rows = list(self.object_list[bottom : bottom + self.per_page + 1])
        return _CappedPage(rows[: self.per_page], number, self, more=len(rows) > self.per_page)


class _CappedPage(Page):
    def __init__(self, object_list: Any, number: int, paginator: Any, *, more: bool) -> None:
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
    *, project: Project, user: Any, filters: ReviewFilters
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


def reviewers_of(*, project: Project) -> list[Any]:
    """Team members who may review, for filters and assignment."""
    from teams.models import ROLE_PERMISSIONS

    roles = [role for role, perms in ROLE_PERMISSIONS.items() if "review" in perms]
    return list(
        get_user_model()
        .objects.filter(memberships__team=project.team, memberships__role__in=roles)
        .order_by("username")
    )


# Values, display and diff ---------------------------------------------------------------------


def teacher_value_text(spec: TaskSpec, output: TeacherOutput) -> str:
    """The teacher's answer as the student would be taught it (canonical when it parsed)."""
    if output.parsed is not None and not output.parse_error:
        return pretty_value(spec, output.parsed)
    return output.raw_text


def pretty_value(spec: TaskSpec, value: Any) -> str:
    if spec.output_kind == "json":
        return json.dumps(value, ensure_ascii=False, sort_keys=True, indent=2)
    return canonical_output(spec, value)


_TOKEN = re.compile(r"\s+|\w+|[^\w\s]", re.UNICODE)


def diff_html(before: str, after: str) -> SafeString:
    """A word-level diff, escaped, with <del> and <ins> marks."""
    a = _TOKEN.findall(before)
    b = _TOKEN.findall(after)
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape("".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{html.escape(''.join(a[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{html.escape(''.join(b[j1:j2]))}</ins>")
    return mark_safe("".join(out))  # noqa: S308 (every piece is escaped above)


@dataclass
class OutputCard:
    """A teacher output with what the queue shows about it, for one viewer."""

    output: TeacherOutput
    teacher_text: str
    effective_text: str
    diff: SafeString | None
    history: list[ReviewDecision]
    hidden_by_blind_review: bool
    assigned_to: list[str]
    my_decision: ReviewDecision | None
    flags: list[OutputFlag] = field(default_factory=list)
    comments: list[ReviewComment] = field(default_factory=list)
    decide_url: str = ""
    comment_url: str = ""
    identical_url: str = ""


_PLACEHOLDER = 987654321


@lru_cache(maxsize=64)
def _url_pattern(name: str, project_id: int) -> str:
    # Reversed once per project and URL name; a page of cards then only formats ids in.
    return reverse(name, args=[project_id, _PLACEHOLDER]).replace(str(_PLACEHOLDER), "{}")


def output_url(name: str, project_id: int, output_id: int) -> str:
    return _url_pattern(f"review:{name}", project_id).format(output_id)


def card_for(*, project: Project, spec: TaskSpec, output: TeacherOutput, user: Any) -> OutputCard:
    teacher = teacher_value_text(spec, output)
    effective = teacher
    diff = None
    if output.review_status == ReviewStatus.EDITED and output.edited_value is not None:
        effective = pretty_value(spec, output.edited_value)
        diff = diff_html(teacher, effective)
    history = list(output.decisions.all())
    assignees = [a.reviewer for a in output.assignments.all()]
    mine = [d for d in history if d.reviewer_id == user.pk and d.undone_at is None]
    # Blind double review: an assigned reviewer who has not decided yet does not see the other
    # reviewer's decision, so the agreement measured on the overlap means something.
    blind = (
        len(assignees) > 1
        and any(a.pk == user.pk for a in assignees)
        and not mine
        and output.review_status != ReviewStatus.UNREVIEWED
    )
    return OutputCard(
        output=output,
        teacher_text=teacher,
        effective_text=effective,
        diff=diff,
        history=history,
        hidden_by_blind_review=blind,
        assigned_to=[a.username for a in assignees],
        my_decision=mine[-1] if mine else None,
        flags=list(output.flags.all()),
        comments=list(output.comments.all()),
        decide_url=output_url("review_decide", project.pk, output.pk),
        comment_url=output_url("review_comment", project.pk, output.pk),
        identical_url=output_url("review_identical", project.pk, output.pk),
    )


# Progress --------------------------------------------------------------------------------------


@dataclass
class ReviewerProgress:
    username: str
    reviewed: int = 0
    approved: int = 0
    rejected: int = 0
    edited: int = 0
    remaining: int = 0  # assigned to them and not yet decided by them


@dataclass
class ReviewProgress:
    total: int
    unreviewed: int
    approved: int
    rejected: int
    edited: int
    conflicts: int
    by_rules: int
    per_reviewer: list[ReviewerProgress]

    @property
    def reviewed(self) -> int:
        return self.total - self.unreviewed

    @property
    def percent(self) -> int:
        return int(100 * self.reviewed / self.total) if self.total else 0


def review_progress(*, project: Project) -> ReviewProgress:
    outputs = TeacherOutput.objects.filter(project=project)
    by_status = dict(outputs.values_list("review_status").annotate(n=Count("id")).order_by())
    conflicts = outputs.filter(review_conflict=True).count()
    by_rules = outputs.filter(decided_by_rule__isnull=False).count()
    people: dict[int, ReviewerProgress] = {}
    user_model = get_user_model()
    names = dict(
        user_model.objects.filter(
            Q(pk__in=outputs.filter(reviewed_by__isnull=False).values("reviewed_by"))
            | Q(pk__in=ReviewAssignment.objects.filter(project=project).values("reviewer"))
        ).values_list("pk", "username")
    )
    for uid, name in names.items():
        people[uid] = ReviewerProgress(username=name)
    for uid, status, n in (
        outputs.filter(reviewed_by__isnull=False)
        .values_list("reviewed_by", "review_status")
        .annotate(n=Count("id"))
        .order_by()
    ):
        person = people[uid]
        person.reviewed += n
        setattr(person, status, getattr(person, status) + n)
    remaining = (
        ReviewAssignment.objects.filter(project=project)
        .exclude(
            Exists(
                ReviewDecision.objects.filter(
                    output=OuterRef("output"), reviewer=OuterRef("reviewer"), undone_at__isnull=True
                )
            )
        )
        .values_list("reviewer")
        .annotate(n=Count("id"))
        .order_by()
    )
    for uid, n in remaining:
        people[uid].remaining = n
    return ReviewProgress(
        total=sum(by_status.values()),
        unreviewed=by_status.get(ReviewStatus.UNREVIEWED, 0),
        approved=by_status.get(ReviewStatus.APPROVED, 0),
        rejected=by_status.get(ReviewStatus.REJECTED, 0),
        edited=by_status.get(ReviewStatus.EDITED, 0),
        conflicts=conflicts,
        by_rules=by_rules,
        per_reviewer=sorted(people.values(), key=lambda p: p.username),
    )


# Agreement and conflicts -----------------------------------------------------------------------


def decision_key(spec: TaskSpec, status: str, edited_value: Any) -> str:
    """What two reviewers must both have said to agree: approve, reject, or the same edit."""
    if status == ReviewStatus.EDITED:
        return "edited:" + canonical_output(spec, edited_value)
    return status


@dataclass
class PairRow:
    reviewer_a: str
    reviewer_b: str
    n: int
    agreed: int
    percent: float | None
    kappa: float | None
    conflicts: list[int]


@dataclass
class ConflictRow:
    output: TeacherOutput
    decisions: list[ReviewDecision]
    teacher_text: str
    options: list[tuple[str, str]] = field(default_factory=list)  # (value, label) for edits


def review_agreement(*, project: Project) -> tuple[list[PairRow], list[ConflictRow]]:
    """Per pair of reviewers: percent agreement and Cohen's kappa on the outputs both decided,
    and the outputs currently in conflict, with each reviewer's decision."""
    spec = project.task_spec()
    decisions = (
        ReviewDecision.objects.filter(
            project=project,
            reviewer__isnull=False,
            undone_at__isnull=True,
            kind=DecisionKind.MANUAL,
        )
        .order_by("id")
        .values_list("output_id", "reviewer_id", "status", "edited_value")
    )
    triples = [(o, r, decision_key(spec, s, v)) for o, r, s, v in decisions]
    names = dict(
        get_user_model()
        .objects.filter(pk__in={r for _, r, _ in triples})
        .values_list("pk", "username")
    )
    pairs = [
        PairRow(
            reviewer_a=names.get(int(p.reviewer_a), "?"),
            reviewer_b=names.get(int(p.reviewer_b), "?"),
            n=p.agreement.n,
            agreed=p.agreement.agreed,
            percent=p.agreement.percent,
            kappa=p.agreement.kappa,
            conflicts=[int(i) for i in p.conflicts],
        )
        for p in overlap_agreement(triples)
    ]
    conflicts = []
    for output in with_review_details(
        TeacherOutput.objects.filter(project=project, review_conflict=True)
    ).order_by("id")[:500]:
        active = [
            d
            for d in output.decisions.all()
            if d.undone_at is None and d.reviewer_id and d.kind == DecisionKind.MANUAL
        ]
        latest: dict[int, ReviewDecision] = {}
        for d in active:
            latest[d.reviewer_id] = d  # type: ignore[index]
        row = ConflictRow(
            output=output,
            decisions=list(latest.values()),
            teacher_text=teacher_value_text(spec, output),
        )
        for d in row.decisions:
            if d.status == ReviewStatus.EDITED:
                text = canonical_output(spec, d.edited_value)
                if all(text != v for v, _ in row.options):
                    row.options.append(
                        (text, f"use {d.reviewer.username if d.reviewer else '?'}'s edit")
                    )
        conflicts.append(row)
    return pairs, conflicts


# Rules, audit ----------------------------------------------------------------------------------


def review_settings(*, project: Project) -> ReviewSettings:
    """The project's review settings, unsaved defaults when none were saved (reads write nothing)."""
    return ReviewSettings.objects.filter(project=project).first() or ReviewSettings(project=project)


def rules_for(*, project: Project) -> QuerySet[ReviewRule]:
    return ReviewRule.objects.filter(project=project).order_by("position", "id")


AUDIT_PAGE_SIZE = 50


@dataclass(frozen=True)
class AuditFilters:
    action: str = ""
    actor: str = ""  # user id, or "system" for rules and jobs
    output: int | None = None

    @classmethod
    def from_query(cls, data: Mapping[str, Any]) -> AuditFilters:
        from review.models import AuditAction

        action = str(data.get("action", "") or "")
        actor = str(data.get("actor", "") or "")
        output_raw = str(data.get("output", "") or "").lstrip("#")
        return cls(
            action=action if action in AuditAction.values else "",
            actor=actor if actor == "system" or actor.isdigit() else "",
            output=int(output_raw) if output_raw.isdigit() else None,
        )

    def query_string(self) -> str:
        data = {"action": self.action, "actor": self.actor, "output": self.output or ""}
        return urlencode({k: v for k, v in data.items() if v})


def audit_events(*, project: Project, filters: AuditFilters) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(project=project)
    if filters.action:
        events = events.filter(action=filters.action)
    if filters.actor == "system":
        events = events.filter(actor__isnull=True)
    elif filters.actor:
        events = events.filter(actor_id=int(filters.actor))
    if filters.output is not None:
        about = Q(output_id=filters.output)
        if connection.vendor == "postgresql":
            # Bulk actions, rules and corrections list the outputs they changed.
            about |= Q(detail__output_ids__contains=[filters.output])
        events = events.filter(about)
    return events.select_related("actor", "output", "rule", "dataset_version").order_by("-id")


def audit_actors(*, project: Project) -> list[tuple[int, str]]:
    return list(
        get_user_model()
        .objects.filter(
            pk__in=AuditEvent.objects.filter(project=project, actor__isnull=False).values("actor")
        )
        .order_by("username")
        .values_list("pk", "username")
    )


def flag_counts(*, project: Project) -> dict[str, int]:
    counts: Counter[str] = Counter(
        dict(
            OutputFlag.objects.filter(project=project)
            .values_list("code")
            .annotate(n=Count("id"))
            .order_by()
        )
    )
    return {code: counts.get(code, 0) for code in FLAG_CODES}


def usernames_for(ids: set[int]) -> dict[int, str]:
    found: dict[int, str] = defaultdict(str)
    found.update(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username"))
    return found
