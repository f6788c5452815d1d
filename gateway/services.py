"""The gateway's writes: answering inputs (gateway_infer) and changing a policy (audited).

Who answers, per policy (gateway.routing decides, per input):
- teacher: the teacher; shadow: the teacher, and the student answers the same input in the
  background (agreement tracked); canary: the student for a seeded share of inputs;
- cascade: the student first, kept when confident enough (label: its probability ≥ threshold;
  JSON: schema-valid and, when it reports one, confident; text: never without a judge), else
  the teacher; student: the student, the teacher only when the student is down or times out.
For inputs the student answered, the sampled share is also sent to the teacher in the background:
that is how agreement is measured and how real inputs reach review.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from gateway import routing
from gateway.models import AnsweredBy, GatewayPolicy, GatewayRequest, Mode, PolicyChange
from gateway.recorder import Record, TeacherCall, recorder
from gateway.student_leg import StudentAnswer, StudentUnavailable, student_answer
from gateway.teacher_leg import TeacherAnswer, TeacherUnavailable, teacher_answer
from projects.models import Project
from projects.services import content_hash
from worker.serving_engine import input_messages
from worker.taskspec import (
    ParsedOutput,
    TemplateError,
    build_messages,
    canonical_output,
    parse_output,
)
from worker.teachers.base import TeacherRequest


class GatewayError(Exception):
    """The request cannot be answered; ``status`` and ``field`` say why and where."""

    def __init__(self, message: str, *, status: int, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.field = message, status, field


@dataclass
class Answer:
    answer: Any
    answered_by: str
    latency_ms: float
    cost_usd: Decimal
    from_cache: bool = False
    reason: str = ""
    confidence: float | None = None
    parse_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# Background legs (shadow student calls, sampled teacher calls): a few threads, and a bound on
# how many may wait, so a slow leg never piles up memory. Skipped legs are marked on the row.
_BACKGROUND = ThreadPoolExecutor(max_workers=64, thread_name_prefix="gateway-bg")
_BACKGROUND_SLOTS = threading.BoundedSemaphore(1024)
_IN_FLIGHT = [0]
_IN_FLIGHT_LOCK = threading.Lock()


def gateway_flush(*, timeout: float = 30.0) -> bool:
    """Wait until the background legs have finished and every record is written (tests,
    benchmarks, a clean shutdown). False if that took longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while _IN_FLIGHT[0]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return recorder().flush(timeout=max(0.0, deadline - time.monotonic()))


def gateway_infer(
    *,
    project: Project | routing.Snapshot,
    token: str,
    inputs: list[dict[str, Any]],
    deadline_s: float,
) -> list[Answer]:
    """Answer each input (a batch is answered concurrently) for the project, or for the policy
    snapshot the caller already holds. Raises GatewayError."""
    snap = project if isinstance(project, routing.Snapshot) else routing.snapshot_for(project)
    if len(inputs) == 1:
        return [_answer_one(snap, token, inputs[0], deadline_s, row=0)]
    with ThreadPoolExecutor(max_workers=min(8, len(inputs))) as pool:
        futures = [
            pool.submit(_in_thread, snap, token, item, deadline_s, i)
            for i, item in enumerate(inputs)
        ]
        return [f.result() for f in futures]


def _in_thread(
    snap: routing.Snapshot, token: str, item: dict[str, Any], deadline_s: float, row: int
) -> Answer:
    try:
        return _answer_one(snap, token, item, deadline_s, row=row)
    finally:
        connection.close()


def _answer_one(
    snap: routing.Snapshot, token: str, inputs: dict[str, Any], deadline_s: float, *, row: int
) -> Answer:
    started = time.perf_counter()
    try:
        messages = build_messages(snap.spec, inputs)
    except TemplateError as exc:
        raise GatewayError(f"inputs[{row}]: {exc.message}", status=400, field=exc.field) from exc
    input_hash = content_hash(inputs)
    entry = GatewayRequest(
        project_id=snap.project_id,
        created_at=timezone.now(),
        mode=snap.mode,
        answered_by=AnsweredBy.NONE,
        latency_ms=0,
        input_hash=input_hash,
        input_chars=sum(len(str(v)) for v in inputs.values()),
        sampled=routing.sampled(snap, input_hash),
    )
    record = Record(row=entry, team_id=snap.team_id, inputs=inputs)
    record.record_input = entry.sampled and snap.record_inputs
    over_budget = snap.has_teacher and snap.over_budget()
    go_student = routing.student_first(snap, input_hash)
    if over_budget and not go_student:
        if not (snap.budget_fallback_to_student and snap.student_model):
            raise GatewayError(_budget_message(snap), status=402, field="monthly_budget_usd")
        go_student, entry.reason = True, "over_budget"

    student: StudentAnswer | None = None
    parsed_student: ParsedOutput | None = None
    if go_student:
        student, parsed_student = _student(snap, token, inputs, entry)
        if parsed_student is not None and _keep_student(snap, parsed_student, student, entry):
            result = _finish(entry, started, parsed_student, AnsweredBy.STUDENT, student=student)
            _maybe_check_with_teacher(snap, record, messages, over_budget)
            return result
        if over_budget:
            raise GatewayError(
                _budget_message(snap) + " and the student could not answer",
                status=402,
                field="monthly_budget_usd",
            )
    if not snap.has_teacher:
        raise GatewayError(
            "no teacher is set for this project's gateway (choose a credential and a model with "
            "a price on the gateway page)"
            + (f"; the student could not answer ({entry.reason})" if go_student else ""),
            status=503,
            field="teacher",
        )
    teacher = _teacher(snap, messages, deadline_s - (time.perf_counter() - started))
    parsed_teacher = parse_output(snap.spec, teacher.response.raw_text)
    record.teacher = TeacherCall(
        snap.teacher_run_id or 0, teacher.key, teacher.response, teacher.cost, parsed_teacher
    )
    entry.teacher_ms, entry.cost_usd = teacher.ms, teacher.cost
    entry.from_cache = teacher.response.from_cache
    entry.teacher_answer = _canonical(snap, parsed_teacher)
    snap.spent_since_load += teacher.cost
    result = _finish(entry, started, parsed_teacher, AnsweredBy.TEACHER)
    result.from_cache = entry.from_cache
    if parsed_student is not None:
        entry.agrees = _agrees(entry)  # cascade's low-confidence answers count too
    if snap.mode == Mode.SHADOW and snap.student_model:
        _background(record, lambda: _shadow(snap, token, inputs, record))
    else:
        recorder().submit(record)
    return result


def _budget_message(snap: routing.Snapshot) -> str:
    return (
        f"the project's monthly teacher budget of ${snap.monthly_budget_usd} is spent "
        f"(${snap.month_spent_usd + snap.spent_since_load:.4f} this month)"
    )


def _student(
    snap: routing.Snapshot, token: str, inputs: dict[str, Any], entry: GatewayRequest
) -> tuple[StudentAnswer | None, ParsedOutput | None]:
    assert snap.student_model is not None
    try:
        student = student_answer(
            model=snap.student_model,
            # The task's input, not the teacher's prompt: the serving process renders the
            # prompt the student was trained on around it.
            messages=input_messages(snap.spec, inputs),
            token=token,
            timeout_s=snap.student_timeout_s,
            max_tokens=snap.teacher_max_tokens,
        )
    except StudentUnavailable as exc:
        entry.reason, entry.error = exc.reason, exc.message[:500]
        return None, None
    parsed = parse_output(snap.spec, student.raw_text)
    entry.student_ms, entry.student_confidence = student.ms, student.confidence
    entry.student_answer = _canonical(snap, parsed)
    return student, parsed


def _keep_student(
    snap: routing.Snapshot,
    parsed: ParsedOutput,
    student: StudentAnswer | None,
    entry: GatewayRequest,
) -> bool:
    if not parsed.ok:
        entry.reason = "student_unparsable"
        return False
    if snap.mode != Mode.CASCADE or entry.reason == "over_budget":
        return True
    kind = snap.spec.output_kind
    confidence = student.confidence if student else None
    if kind == "text":
        entry.reason = "cascade_text_needs_judge"
        return False
    if kind == "label" and confidence is None:
        entry.reason = "no_confidence"
        return False
    if confidence is not None and confidence < snap.cascade_threshold:
        entry.reason = "low_confidence"
        return False
    return True


def _teacher(
    snap: routing.Snapshot, messages: list[dict[str, str]], deadline_s: float
) -> TeacherAnswer:
    assert snap.teacher_config is not None and snap.price is not None
    if deadline_s <= 0:
        raise GatewayError(
            "the deadline passed before the teacher was called", status=504, field="deadline_ms"
        )
    request = TeacherRequest(
        custom_id="gw",
        messages=messages,
        model=snap.teacher_model,
        max_tokens=snap.teacher_max_tokens,
        output_kind=snap.spec.output_kind,
        json_schema=snap.spec.json_schema,
        label_set=tuple(snap.spec.label_set),
        want_logprobs=snap.spec.output_kind == "label"
        and snap.teacher_config.kind in ("openai", "openai_compatible"),
    )
    try:
        return teacher_answer(
            team_id=snap.team_id,
            fingerprint=snap.teacher_fingerprint,
            config=snap.teacher_config,
            request=request,
            price=snap.price,
            deadline_s=deadline_s,
        )
    except TeacherUnavailable as exc:
        raise GatewayError(exc.message, status=exc.status, field="teacher") from exc


def _finish(
    entry: GatewayRequest,
    started: float,
    parsed: ParsedOutput,
    by: str,
    *,
    student: StudentAnswer | None = None,
) -> Answer:
    entry.answered_by = by
    entry.answer = parsed.value
    entry.latency_ms = (time.perf_counter() - started) * 1000
    return Answer(
        answer=parsed.value,
        answered_by=by,
        latency_ms=round(entry.latency_ms, 2),
        cost_usd=entry.cost_usd,
        reason=entry.reason,
        confidence=student.confidence if student else None,
        parse_error=parsed.error,
    )


def _canonical(snap: routing.Snapshot, parsed: ParsedOutput) -> str | None:
    return canonical_output(snap.spec, parsed.value) if parsed.ok else None


def _agrees(entry: GatewayRequest) -> bool | None:
    if entry.teacher_answer is None:
        return None  # the teacher's answer did not parse: nothing to agree with
    return entry.student_answer == entry.teacher_answer


def _background(record: Record, work: Any) -> None:
    if not _BACKGROUND_SLOTS.acquire(blocking=False):
        record.row.reason = record.row.reason or "background_skipped"
        recorder().submit(record)
        return
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT[0] += 1

    def run() -> None:
        try:
            close_old_connections()
            work()
        except Exception as exc:  # the record is still written, saying what went wrong
            record.row.error = (record.row.error + f" background: {exc}")[:500]
        finally:
            recorder().submit(record)
            connection.close()
            _BACKGROUND_SLOTS.release()
            with _IN_FLIGHT_LOCK:
                _IN_FLIGHT[0] -= 1

    _BACKGROUND.submit(run)


def _shadow(snap: routing.Snapshot, token: str, inputs: dict[str, Any], record: Record) -> None:
    _, parsed = _student(snap, token, inputs, record.row)
    if parsed is not None:
        record.row.agrees = _agrees(record.row)


def _maybe_check_with_teacher(
    snap: routing.Snapshot, record: Record, messages: list[dict[str, str]], over_budget: bool
) -> None:
    """The student answered: the sampled share also goes to the teacher, in the background, to
    measure agreement and to record the input with the teacher's answer (never over budget)."""
    if not (record.row.sampled and snap.has_teacher and not over_budget):
        recorder().submit(record)
        return

    def check() -> None:
        teacher = _teacher(snap, messages, 60.0)
        parsed = parse_output(snap.spec, teacher.response.raw_text)
        record.teacher = TeacherCall(
            snap.teacher_run_id or 0, teacher.key, teacher.response, teacher.cost, parsed
        )
        record.row.cost_usd = teacher.cost
        record.row.teacher_ms = teacher.ms
        record.row.teacher_answer = _canonical(snap, parsed)
        record.row.agrees = _agrees(record.row)
        snap.spent_since_load += teacher.cost

    _background(record, check)


# -- the policy --------------------------------------------------------------------------------

POLICY_FIELDS = (
    "mode",
    "credential",
    "teacher_model",
    "teacher_max_tokens",
    "served_model",
    "student_timeout_ms",
    "canary_percent",
    "cascade_threshold",
    "seed",
    "record_inputs",
    "sample_rate",
    "retention_days",
    "agreement_target_percent",
    "monthly_budget_usd",
    "budget_fallback_to_student",
)


def policy_for(*, project: Project) -> GatewayPolicy:
    policy, _ = GatewayPolicy.objects.get_or_create(project=project)
    return policy


def policy_update(*, project: Project, user: Any, values: dict[str, Any]) -> GatewayPolicy:
    """Change the project's policy and record who changed what (before → after), in one
    transaction. Running processes see it within GATEWAY_POLICY_CACHE_S seconds."""
    with transaction.atomic():
        policy = GatewayPolicy.objects.select_for_update().get(pk=policy_for(project=project).pk)
        changes: dict[str, list[Any]] = {}
        for name in POLICY_FIELDS:
            if name not in values:
                continue
            before, after = getattr(policy, name), values[name]
            if before != after:
                changes[name] = [_shown(before), _shown(after)]
                setattr(policy, name, after)
        if changes:
            policy.updated_by = user
            policy.full_clean()
            policy.save()
            PolicyChange.objects.create(policy=policy, user=user, changes=changes)
    routing.forget(project.pk)
    return policy


def _shown(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
