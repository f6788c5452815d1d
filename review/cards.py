"""What a queue card shows about one output: the teacher's answer as the student would be taught
it, the reviewed value and a word diff against it, the decision history, and blind double review."""

from __future__ import annotations

import difflib
import html
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from django.contrib.auth.models import User
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe

from projects.models import Project
from review.field_diff import EditField, FieldRow, edit_fields, field_rows, reference_value
from review.models import (
    ReviewComment,
    ReviewDecision,
)
from teachers.models import OutputFlag, ReviewStatus, TeacherOutput
from worker.taskspec import TaskSpec, canonical_output


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
    rationale_url: str = ""
    identical_url: str = ""
    # The human reference shown next to the teacher's answer (canonical JSON when it parses).
    reference_text: str | None = None
    # JSON tasks: the teacher's answer field by field against the edit, else the reference.
    field_rows: list[FieldRow] = field(default_factory=list)
    field_rows_against: str = ""
    # JSON tasks with a flat object: one input per field (None: edit the JSON text).
    edit_fields: list[EditField] | None = None

    @property
    def edit_fields_spec(self) -> str:
        """The hidden input naming the per-field boxes and which hold JSON literals."""
        return json.dumps([[f.key, f.literal] for f in self.edit_fields or []])

    @property
    def fields_differing(self) -> int:
        return sum(1 for row in self.field_rows if not row.same)


_PLACEHOLDER = 987654321


@lru_cache(maxsize=64)
def _url_pattern(name: str, project_id: int) -> str:
    # Reversed once per project and URL name; a page of cards then only formats ids in.
    return reverse(name, args=[project_id, _PLACEHOLDER]).replace(str(_PLACEHOLDER), "{}")


def output_url(name: str, project_id: int, output_id: int) -> str:
    return _url_pattern(f"review:{name}", project_id).format(output_id)


def card_for(*, project: Project, spec: TaskSpec, output: TeacherOutput, user: User) -> OutputCard:
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
    json_parts = _json_parts(spec, output, blind=blind)
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
        rationale_url=output_url("review_rationale", project.pk, output.pk),
        identical_url=output_url("review_identical", project.pk, output.pk),
        reference_text=_reference_text(spec, output.input.reference_output),
        **json_parts,
    )


def _reference_text(spec: TaskSpec, reference: str | None) -> str | None:
    value = reference_value(spec, reference)
    return pretty_value(spec, value) if value is not None else reference


def _json_parts(spec: TaskSpec, output: TeacherOutput, *, blind: bool) -> dict[str, Any]:
    """The field table and the per-field edit inputs of a JSON task's card (empty otherwise).

    Blind double review hides another reviewer's edit, so a blind card compares with the
    reference only and edits start from the teacher's answer.
    """
    if spec.output_kind != "json":
        return {}
    teacher = output.parsed if not output.parse_error else None
    edited = (
        output.edited_value if output.review_status == ReviewStatus.EDITED and not blind else None
    )
    reference = reference_value(spec, output.input.reference_output)
    other, against = (edited, "edit") if edited is not None else (reference, "reference")
    rows = field_rows(teacher, other) if other is not None and teacher is not None else []
    start = edited if edited is not None else teacher
    return {
        "field_rows": rows,
        "field_rows_against": against if rows else "",
        "edit_fields": edit_fields(start),
    }
