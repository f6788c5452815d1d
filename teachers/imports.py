"""Import existing teacher outputs instead of calling a model.

Two file shapes:

- **JSONL of OpenAI chat-format logs**, one call per line. Accepted line shapes:
  ``{"request": {"model", "messages": [...]}, "response": {"choices": [...], "usage": {...}}}``
  (``response`` may also be a Batch output record with the completion under ``body``), the same
  keys at the top level (``{"model", "messages", "choices", "usage"}``), or a fine-tuning style
  ``{"messages": [..., {"role": "assistant", "content": ...}]}`` whose last assistant turn is
  the output. The input is taken from an ``"input"`` (or ``"metadata"``) object holding the
  project's input fields when the line has one; otherwise it is read back out of the last user
  message by matching it against the task's instruction template.
- **CSV** with a column per input field (same names, any case) and an output column.

Either may carry the teacher's reason for its answer: an optional ``rationale`` column (CSV) or
a ``"rationale"`` string at the top level of a JSONL line (or in its ``metadata``). It is stored
apart from the answer (``TeacherOutput.rationale``); for a task that asks for a rationale, an
output written "answer first line, reason after" is split the same way as a teacher run's.

Everything is validated before anything is written; errors name the file and line. Inputs are
created (or found) through the same content hash as uploads. One transaction: all or nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from jobs import services as job_services
from jobs.models import JobKind
from projects.models import InputRow, Project
from projects.services import content_hash
from teachers.models import OutputFlag, TeacherOutput, TeacherRun, TeacherRunMode
from worker import ingest
from worker.taskspec import TaskSpec, TemplateError, parse_output, render_prompt

MAX_IMPORT_ROWS = 500_000
RATIONALE_COLUMN = "rationale"  # optional, any case


@dataclass
class ImportedOutput:
    line: int
    data: dict[str, str]
    raw_text: str
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str = ""
    rationale: str = ""


def _template_matcher(spec: TaskSpec) -> re.Pattern[str] | None:
    """A regex that reads the input fields back out of a rendered prompt (None when the template
    cannot be inverted, e.g. a field only appears inside a filter that changes it)."""
    sentinels = {field: f"\x00{i}\x00" for i, field in enumerate(spec.input_fields)}
    try:
        rendered = render_prompt(spec, sentinels)
    except TemplateError:
        return None
    pattern = re.escape(rendered)
    for i, sentinel in enumerate(sentinels.values()):
        escaped = re.escape(sentinel)
        if escaped not in pattern:
            return None
        pattern = pattern.replace(escaped, f"(?P<f{i}>.*?)", 1).replace(escaped, f"(?P=f{i})")
    # A line may carry the output instructions (or any suffix) after a blank line.
    return re.compile(f"^{pattern}(?:\\n\\n.*)?$", re.DOTALL)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


class _Reader:
    def __init__(self, project: Project, file_name: str) -> None:
        self.project = project
        self.spec = project.task_spec()
        self.file_name = file_name
        self.fields = list(self.spec.input_fields)
        self.matcher = _template_matcher(self.spec)

    def error(self, message: str, line: int | None = None) -> ingest.IngestError:
        return ingest.IngestError(self.file_name, message, line)

    # -- JSONL logs

    def log_line(self, record: ingest.Record) -> ImportedOutput:
        line, value = record.line, record.values
        request = _object(value, "request", value)
        response = _object(value, "response", value)
        response = _object(response, "body", response)  # an OpenAI Batch output record
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise self.error("no request messages (expected request.messages)", line)
        raw: str | None = None
        finish = ""
        choices = response.get("choices")
        if isinstance(choices, list) and choices:
            choice: dict[str, Any] = choices[0] if isinstance(choices[0], dict) else {}
            message = _object(choice, "message", {})
            raw = _content_text(message.get("content"))
            finish = str(choice.get("finish_reason") or "")
        elif isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            raw = _content_text(messages[-1].get("content"))
            messages = messages[:-1]
            finish = "stop"
        if raw is None:
            raise self.error(
                "no response (expected response.choices[0].message.content, "
                "or a last assistant message)",
                line,
            )
        usage = _object(response, "usage", {})
        reason = value.get("rationale")
        if reason is None:
            reason = _object(value, "metadata", {}).get("rationale")
        if reason is not None and not isinstance(reason, str):
            raise self.error('"rationale" must be a string', line)
        return ImportedOutput(
            rationale=(reason or "").strip(),
            line=line,
            data=self._input_of(value, request, messages, line),
            raw_text=raw,
            model=str(response.get("model") or request.get("model") or ""),
            input_tokens=_int(usage.get("prompt_tokens") or usage.get("input_tokens")),
            output_tokens=_int(usage.get("completion_tokens") or usage.get("output_tokens")),
            finish_reason=finish[:40],
        )

    def _input_of(
        self, value: dict[str, Any], request: dict[str, Any], messages: list[Any], line: int
    ) -> dict[str, str]:
        for holder in (value.get("input"), value.get("metadata"), request.get("metadata")):
            if isinstance(holder, dict) and all(f in holder for f in self.fields):
                return {f: ingest.as_text(holder[f]) for f in self.fields}
        user = next(
            (
                _content_text(m.get("content"))
                for m in reversed(messages)
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            None,
        )
        if user is None:
            raise self.error("the request has no user message", line)
        if self.matcher is not None:
            match = self.matcher.match(user.strip())
            if match:
                return {f: match.group(f"f{i}") for i, f in enumerate(self.fields)}
        raise self.error(
            "the user message does not match the task's instruction template, and the line has "
            f'no "input" object with the field(s) {", ".join(self.fields)}',
            line,
        )

    # -- CSV

    def csv_row(self, record: ingest.Record, output_column: str) -> ImportedOutput:
        lowered = {str(k).strip().lower(): k for k in record.values}
        data = {}
        for field in self.fields:
            key = lowered.get(field.lower())
            if key is None:
                raise self.error(f"no column named {field!r} (an input field)", record.line)
            data[field] = ingest.as_text(record.values[key])
        key = lowered.get(output_column.strip().lower())
        if key is None:
            raise self.error(f"no output column named {output_column!r}", record.line)
        raw = ingest.as_text(record.values[key])
        if not raw.strip():
            raise self.error(f"the {output_column!r} column is empty", record.line)
        reason_key = lowered.get(RATIONALE_COLUMN)
        reason = ingest.as_text(record.values[reason_key]) if reason_key is not None else ""
        return ImportedOutput(
            line=record.line, data=data, raw_text=raw, finish_reason="", rationale=reason.strip()
        )


def _object(parent: dict[str, Any], key: str, default: dict[str, Any]) -> dict[str, Any]:
    """``parent[key]`` when it is a JSON object, else ``default``."""
    value = parent.get(key)
    return value if isinstance(value, dict) else default


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def read_imported_outputs(
    *, project: Project, path: Path, file_name: str, output_column: str = "output"
) -> list[ImportedOutput]:
    """Read and validate the whole file (nothing is written). Raises IngestError."""
    fmt = ingest.detect_format(file_name)
    ingest.check_file(path, file_name, max_bytes=settings.MAX_UPLOAD_BYTES)
    reader = _Reader(project, file_name)
    items: list[ImportedOutput] = []
    for record in ingest.iter_records(path, file_name, fmt):
        if fmt == "csv":
            item = reader.csv_row(record, output_column or "output")
        else:
            item = reader.log_line(record)
        if not any(v.strip() for v in item.data.values()):
            raise reader.error("every input field is empty", item.line)
        items.append(item)
        if len(items) > MAX_IMPORT_ROWS:
            raise reader.error(f"more than {MAX_IMPORT_ROWS:,} rows; split the file")
    if not items:
        raise reader.error("the file has no rows")
    return items


def teacher_run_import(
    *,
    project: Project,
    user: User,
    file_name: str,
    path: Path,
    output_column: str = "output",
    model: str = "",
) -> TeacherRun:
    """A TeacherRun(mode=imported) with its outputs, all or nothing."""
    file_name = Path(file_name).name
    items = read_imported_outputs(
        project=project, path=path, file_name=file_name, output_column=output_column
    )
    models = sorted({i.model for i in items if i.model})
    model_name = model.strip() or (models[0] if len(models) == 1 else ", ".join(models)[:200])
    with transaction.atomic():
        rows, new_inputs = _input_rows(project, items)
        outputs, flags_for = _outputs_of(project, items, rows)
        job = job_services.job_record_finished(
            team=project.team,
            project=project,
            kind=JobKind.TEACHER_RUN,
            user=user,
            params={"imported": file_name},
            done=len(outputs),
            result={"outputs": len(outputs), "new_inputs": new_inputs, "source": file_name},
        )
        run = TeacherRun.objects.create(
            job=job,
            project=project,
            provider="imported",
            model=model_name or "unknown",
            mode=TeacherRunMode.IMPORTED,
            samples_per_input=max(o.sample_index for o in outputs) + 1,
            concurrency=1,
            selection={"kind": "imported"},
            input_ids=sorted({o.input_id for o in outputs}),
            source=file_name,
        )  # no calls were made: the run's totals (the ledger's sums) stay at zero
        job.params = {"teacher_run_id": run.pk, "imported": file_name}
        job.save(update_fields=["params"])
        _store_outputs(project, run, outputs, flags_for)
    return run


def _input_rows(project: Project, items: list[ImportedOutput]) -> tuple[dict[str, InputRow], int]:
    """The project's input rows for the items, by content hash (new inputs are created), and
    how many were new."""
    hashes = {content_hash(i.data): i.data for i in items}
    keys = list(hashes)

    def existing() -> dict[str, InputRow]:
        found: dict[str, InputRow] = {}
        for start in range(0, len(keys), 2000):
            chunk = keys[start : start + 2000]
            for row in InputRow.objects.filter(project=project, content_hash__in=chunk):
                found[row.content_hash] = row
        return found

    before = existing()
    new_rows = [
        InputRow(
            project=project,
            data=data,
            content_hash=digest,
            search_text=" ".join(data.values()).lower(),
        )
        for digest, data in hashes.items()
        if digest not in before
    ]
    InputRow.objects.bulk_create(new_rows, batch_size=2000)
    return existing(), len(new_rows)


def _outputs_of(
    project: Project, items: list[ImportedOutput], rows: dict[str, InputRow]
) -> tuple[list[TeacherOutput], list[list[Any]]]:
    """The outputs (not saved; a repeated input becomes its next sample), parsed and checked,
    with each one's flags."""
    spec = project.task_spec()
    try:
        from worker.checks import OutputToCheck, check_output
    except ImportError:  # pragma: no cover - checks are optional for storing outputs
        check_output = None  # type: ignore[assignment]
    samples: dict[int, int] = {}
    outputs: list[TeacherOutput] = []
    flags_for: list[list[Any]] = []
    for item in items:
        row = rows[content_hash(item.data)]
        sample = samples.get(row.pk, 0)
        samples[row.pk] = sample + 1
        parsed = parse_output(spec, item.raw_text)
        flags = (
            check_output(
                spec,
                OutputToCheck(
                    output_id=item.line,
                    raw=item.raw_text,
                    input_id=row.pk,
                    reference=row.reference_output,
                ),
            )
            if check_output is not None
            else []
        )
        flags_for.append(flags)
        outputs.append(
            TeacherOutput(
                project=project,
                input=row,
                sample_index=sample,
                raw_text=item.raw_text,
                parsed=parsed.value,
                parse_error=parsed.error,
                finish_reason=item.finish_reason,
                input_tokens=item.input_tokens,
                output_tokens=item.output_tokens,
                flag_codes=[f.code for f in flags],
                # A rationale of its own wins over one split off the answer.
                rationale=item.rationale or parsed.rationale,
            )
        )
    return outputs, flags_for


def _store_outputs(
    project: Project, run: TeacherRun, outputs: list[TeacherOutput], flags_for: list[list[Any]]
) -> None:
    for output in outputs:
        output.run = run
    TeacherOutput.objects.bulk_create(outputs, batch_size=2000)
    created = {
        (o.input_id, o.sample_index): o
        for o in TeacherOutput.objects.filter(run=run).only("id", "input_id", "sample_index")
    }
    flag_rows = [
        OutputFlag(
            output=created[(output.input_id, output.sample_index)],
            project=project,
            code=f.code,
            message=f.message,
            score=f.score,
        )
        for output, flags in zip(outputs, flags_for, strict=True)
        for f in flags
    ]
    OutputFlag.objects.bulk_create(flag_rows, batch_size=2000, ignore_conflicts=True)
