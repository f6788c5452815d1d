"""The task a project distils: prompt rendering and output parsing, shared by every stage.

The same spec renders the teacher's prompt, the student's training prompt and the evaluation
prompt, so what is taught is exactly what is asked.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jinja2

from worker import output_schema

# The limits a spec is held to, importable from here with the spec they apply to.
from worker.output_schema import MAX_SCHEMA_CHARS as MAX_SCHEMA_CHARS
from worker.output_schema import MAX_SCHEMA_DEPTH as MAX_SCHEMA_DEPTH
from worker.output_schema import MAX_SCHEMA_PATTERN_CHARS as MAX_SCHEMA_PATTERN_CHARS
from worker.output_schema import MAX_SCHEMA_REFS as MAX_SCHEMA_REFS
from worker.prompt_sandbox import MAX_PROMPT_CHARS as MAX_PROMPT_CHARS
from worker.prompt_sandbox import MAX_RENDER_SECONDS as MAX_RENDER_SECONDS
from worker.prompt_sandbox import MAX_TEMPLATE_INT_DIGITS as MAX_TEMPLATE_INT_DIGITS
from worker.prompt_sandbox import MAX_TEMPLATE_LOOP_ITERATIONS as MAX_TEMPLATE_LOOP_ITERATIONS
from worker.prompt_sandbox import MAX_TEMPLATE_RESULT as MAX_TEMPLATE_RESULT
from worker.prompt_sandbox import BoundedSandbox, render_bounded

OutputKind = Literal["label", "json", "text"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("label", "json", "text")


class TaskSpecError(ValueError):
    """Something about the task is wrong. ``field`` names the task field at fault (the form
    field a page shows the error on), or is None when the fault is not in the task itself (an
    input row missing a value); ``message`` says what is wrong, without the field."""

    def __init__(self, message: str, *, field: str | None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class TemplateError(TaskSpecError):
    """The instruction template cannot be compiled or rendered."""


class SpecError(TaskSpecError):
    """The task spec itself is invalid (empty label set, a JSON Schema that is not a schema...)."""


TEMPLATE_FIELD = "instruction_template"
SCHEMA_FIELD = "json_schema"

_ENV = BoundedSandbox(
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # prompts are plain text, never HTML
    keep_trailing_newline=False,
)


@dataclass(frozen=True)
class TaskSpec:
    instruction_template: str
    output_kind: OutputKind
    input_fields: tuple[str, ...]
    system_prompt: str = ""
    label_set: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    # Ask the teacher for "answer first line, short reason after" (see ``teacher_messages``);
    # the parser keeps the reason apart (``ParsedOutput.rationale``), never in the answer.
    rationale: bool = False

    def validate(self) -> None:
        """Raise SpecError/TemplateError naming the field that is wrong."""
        if self.output_kind not in OUTPUT_KINDS:
            raise SpecError(f"must be one of {', '.join(OUTPUT_KINDS)}", field="output_kind")
        if not self.input_fields:
            raise SpecError("a task needs at least one input field", field="input_fields")
        for name in self.input_fields:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise SpecError(
                    f"{name!r} is not a valid field name "
                    "(letters, digits and underscores, not starting with a digit)",
                    field="input_fields",
                )
        if self.output_kind == "label":
            labels = [label.strip() for label in self.label_set]
            if len(labels) < 2:
                raise SpecError("a label task needs at least two labels", field="label_set")
            if any(not label for label in labels):
                raise SpecError("labels cannot be empty", field="label_set")
            if len(set(labels)) != len(labels):
                raise SpecError("labels must be unique", field="label_set")
        if self.output_kind == "json":
            if not isinstance(self.json_schema, dict):
                raise SpecError("a json task needs a JSON Schema object", field=SCHEMA_FIELD)
            check_output_schema(self.json_schema)
        compile_template(self.instruction_template, self.input_fields)


def check_output_schema(schema: object, *, field: str = SCHEMA_FIELD) -> None:
    """The check made when a task is saved: raise SpecError (``.field`` = ``field``) unless the
    schema is valid and safe to apply to every output: references only inside itself (nothing is
    fetched or read, ever), no $ref cycle, and within MAX_SCHEMA_CHARS, MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_REFS and MAX_SCHEMA_PATTERN_CHARS, with no pattern that backtracks exponentially.
    """
    try:
        output_schema.check_schema(schema)
    except output_schema.SchemaProblem as exc:
        raise SpecError(exc.message, field=field) from None


def compile_template(source: str, input_fields: tuple[str, ...] | list[str]) -> jinja2.Template:
    """Compile in the sandbox and refuse variables that are not input fields."""
    return _compile_template(source, tuple(input_fields))


# Compiling costs ~1 ms and every prompt of an export or a run uses the same template: compile
# once (a compiled template renders safely from many threads; errors are not cached).
@functools.lru_cache(maxsize=256)
def _compile_template(source: str, input_fields: tuple[str, ...]) -> jinja2.Template:
    if not source.strip():
        raise TemplateError("the template is empty", field=TEMPLATE_FIELD)
    try:
        template = _ENV.from_string(source)
        parsed = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"syntax error on line {exc.lineno}: {exc.message}", field=TEMPLATE_FIELD
        ) from exc
    from jinja2 import meta

    unknown = sorted(meta.find_undeclared_variables(parsed) - set(input_fields))
    if unknown:
        raise TemplateError(
            "unknown field"
            + ("s " if len(unknown) > 1 else " ")
            + ", ".join(repr(u) for u in unknown)
            + f"; the input fields are {', '.join(input_fields) or '(none)'}",
            field=TEMPLATE_FIELD,
        )
    return template


def render_prompt(spec: TaskSpec, row: dict[str, Any]) -> str:
    """Render the instruction for one input row. Raises TemplateError on a missing field, or when
    the render fails or goes over a limit (MAX_PROMPT_CHARS, MAX_TEMPLATE_RESULT,
    MAX_TEMPLATE_INT_DIGITS, MAX_TEMPLATE_LOOP_ITERATIONS, MAX_RENDER_SECONDS)."""
    template = compile_template(spec.instruction_template, spec.input_fields)
    values = {name: row.get(name) for name in spec.input_fields}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise TemplateError(
            f"input row has no value for field(s): {', '.join(missing)}", field=None
        )
    try:
        return render_bounded(template, values).strip()
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"not allowed in the sandbox: {exc}", field=TEMPLATE_FIELD) from exc
    except jinja2.UndefinedError as exc:
        raise TemplateError(str(exc.message or exc), field=TEMPLATE_FIELD) from exc
    except Exception as exc:  # e.g. the sandbox's range limit, a type error in an expression
        raise TemplateError(f"rendering failed: {exc}", field=TEMPLATE_FIELD) from exc


# What a long input looks like: the save-time check renders every template on one, so that a
# template whose output grows with its input is refused before it fails on real rows.
_LONG_SAMPLE_VALUE = (
    "Hello, I ordered a replacement card on the 3rd and it still has not arrived. The app says "
    "it was dispatched, but the tracking number (RM-2231-9987-GB) does not work and nobody has "
    "answered my two emails. Can you tell me where it is, or cancel it and send a new one? "
) * 8


def check_template_on_rows(spec: TaskSpec, rows: Iterable[Mapping[str, Any]]) -> None:
    """The check made when a task is saved: render the template on each sample row (rows
    missing one of the input fields are skipped: that is the data's fault, not the
    template's) and on a synthetic row with every field set to a long realistic text. Raises
    TemplateError (``.field`` = "instruction_template") naming the row for the first render
    that fails or goes over a limit: such a template would fail on every row of a run."""
    compile_template(spec.instruction_template, spec.input_fields)
    samples: list[tuple[str, Mapping[str, Any]]] = [
        (f"sample input {number}", row) for number, row in enumerate(rows, start=1)
    ]
    samples.append(
        (
            f"a long input ({len(_LONG_SAMPLE_VALUE):,} characters in every field)",
            dict.fromkeys(spec.input_fields, _LONG_SAMPLE_VALUE),
        )
    )
    for where, row in samples:
        if any(row.get(name) is None for name in spec.input_fields):
            continue
        try:
            render_prompt(spec, dict(row))
        except TemplateError as exc:
            raise TemplateError(f"{exc.message} (on {where})", field=TEMPLATE_FIELD) from exc


LABEL_LIST_INTRO = "Answer with exactly one of these labels and nothing else: "
# Between the rendered instruction and the output instructions (build_messages, and
# without_label_list, which finds the label list by it).
INSTRUCTIONS_SEPARATOR = "\n\n"


def output_instructions(spec: TaskSpec) -> str:
    """The fixed suffix that tells any model (teacher or student) what shape to answer in."""
    if spec.output_kind == "label":
        return LABEL_LIST_INTRO + ", ".join(spec.label_set)
    if spec.output_kind == "json":
        return "Answer with a single JSON object that matches this JSON Schema:\n" + json.dumps(
            spec.json_schema, sort_keys=True
        )
    return ""


def build_messages(spec: TaskSpec, row: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages for one input: the task's system prompt (if any), then the user turn."""
    user = render_prompt(spec, row)
    suffix = output_instructions(spec)
    if suffix:
        user = f"{user}{INSTRUCTIONS_SEPARATOR}{suffix}"
    messages: list[dict[str, str]] = []
    if spec.system_prompt.strip():
        messages.append({"role": "system", "content": spec.system_prompt.strip()})
    messages.append({"role": "user", "content": user})
    return messages


RATIONALE_INSTRUCTION = (
    "Write the answer first, exactly as asked. Then, on a new line starting with "
    '"Reason:", give a short reason for it (one or two sentences).'
)


def teacher_messages(spec: TaskSpec, row: dict[str, Any]) -> list[dict[str, str]]:
    """The teacher's messages: ``build_messages`` plus, when the task asks for a rationale, the
    request for one. Students are never asked for it (their prompts are ``build_messages``), so
    serving and evaluation answer with the label/JSON only."""
    messages = build_messages(spec, row)
    if spec.rationale:
        last = messages[-1]
        last["content"] = f"{last['content']}{INSTRUCTIONS_SEPARATOR}{RATIONALE_INSTRUCTION}"
    return messages


def without_label_list(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The same messages without the label-list paragraph ``build_messages`` appends for a label
    task (messages without one come back unchanged).

    A distilled student learns the labels from its training answers; the list is most of a
    label task's prompt (77 intents: ~570 of ~650 tokens), so dropping it makes training and
    answering several times faster.
    """
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message.get("role") != "user":
            continue
        content = message.get("content", "")
        cut = content.rfind(INSTRUCTIONS_SEPARATOR + LABEL_LIST_INTRO)
        if cut >= 0:
            message["content"] = content[:cut]
        break
    return out


@dataclass(frozen=True)
class ParsedOutput:
    value: Any  # str for label/text, dict/list for json; None when unparseable
    error: str = ""
    rationale: str = ""  # the teacher's reason, kept apart from the answer (tasks that ask)

    @property
    def ok(self) -> bool:
        return not self.error


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _reject_constants(token: str) -> float:
    raise ValueError(f"{token} is not valid JSON")


def normalise_label(raw: str, label_set: tuple[str, ...]) -> str | None:
    """Map a model's answer to a label: exact, then case/punctuation-insensitive."""
    text = raw.strip()
    if text in label_set:
        return text

    def key(s: str) -> str:
        return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()

    wanted = key(text)
    for label in label_set:
        if key(label) == wanted:
            return label
    # A model that answers "Label: card_arrival." still answered card_arrival.
    first_line = key(text.splitlines()[0]) if text else ""
    for prefix in ("label ", "answer ", "intent "):
        if first_line.startswith(prefix):
            first_line = first_line[len(prefix) :]
    for label in label_set:
        if key(label) == first_line:
            return label
    return None


_RATIONALE_PREFIX = re.compile(r"^(?:reason|rationale|because|explanation)\s*[:\-]\s*", re.I)


def split_rationale(spec: TaskSpec, raw: str) -> tuple[str, str]:
    """(answer text, rationale) of an "answer first, short reason after" output.

    Label tasks: the first line is the answer, the rest the reason. JSON tasks: the first JSON
    value (fenced or not) is the answer, whatever follows the reason. Text tasks (whose answer
    may span lines): the reason starts at the last line beginning with "Reason:"; without one
    the whole text is the answer. A leading "Reason:" is dropped from the reason."""
    text = (raw or "").strip()
    if not text:
        return "", ""
    if spec.output_kind == "json":
        answer, rest = _split_json_prefix(text)
    elif spec.output_kind == "label":
        answer, _, rest = text.partition("\n")
    else:
        starts = [m.start() for m in re.finditer(r"(?im)^reason\s*:", text)]
        cut = starts[-1] if starts else len(text)
        answer, rest = text[:cut], text[cut:]
    return answer.strip(), _RATIONALE_PREFIX.sub("", rest.strip()).strip()


def _split_json_prefix(text: str) -> tuple[str, str]:
    if text.startswith("```"):
        end = text.find("```", 3)
        if end > 0:
            return text[: end + 3], text[end + 3 :]
    try:
        _, consumed = json.JSONDecoder().raw_decode(text)
    except (json.JSONDecodeError, ValueError, RecursionError):
        return text, ""
    return text[:consumed], text[consumed:]


def parse_output(spec: TaskSpec, raw: str) -> ParsedOutput:
    """Parse a raw model answer according to the task kind; never raises. For a task that
    asks for a rationale, the answer is parsed and the reason returned apart."""
    if spec.rationale:
        answer, rationale = split_rationale(spec, raw)
        parsed = _parse_answer(spec, answer)
        return ParsedOutput(parsed.value, parsed.error, rationale)
    return _parse_answer(spec, raw)


def _parse_answer(spec: TaskSpec, raw: str) -> ParsedOutput:
    text = (raw or "").strip()
    if spec.output_kind == "text":
        if not text:
            return ParsedOutput(None, "empty output")
        return ParsedOutput(text)
    if spec.output_kind == "label":
        if not text:
            return ParsedOutput(None, "empty output")
        label = normalise_label(text, spec.label_set)
        if label is None:
            shown = text if len(text) <= 60 else text[:57] + "..."
            return ParsedOutput(None, f"label {shown!r} is not in the label set")
        return ParsedOutput(label)
    # json
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    if not text:
        return ParsedOutput(None, "empty output")
    try:
        value = json.loads(text, parse_constant=_reject_constants)
    except (json.JSONDecodeError, ValueError) as exc:
        return ParsedOutput(None, f"not valid JSON: {exc}")
    except RecursionError:
        return ParsedOutput(None, "not valid JSON: nested too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        return ParsedOutput(None, "not valid JSON: non-finite number")
    if spec.json_schema is not None:
        return ParsedOutput(value, _schema_error(spec.json_schema, value))
    return ParsedOutput(value)


def _schema_error(schema: dict[str, Any], value: Any) -> str:
    """Why ``value`` does not match ``schema`` ("" when it does). Never raises and never
    fetches: a schema saved before ``check_output_schema`` existed is refused here instead."""
    try:
        validator = output_schema.local_validator(schema)
    except output_schema.SchemaProblem as exc:
        return f"the task's JSON Schema cannot be used: {exc.message}"
    except Exception:  # never raise from parsing, whatever was stored
        return "the task's JSON Schema cannot be used"
    try:
        errors = list(validator.iter_errors(value))
    except Exception:  # e.g. RecursionError on an output nested deeper than the stack allows
        return "the output could not be checked against the task's JSON Schema"
    if not errors:
        return ""
    # Paths mixing property names and indexes do not sort: keep the validator's order then.
    with contextlib.suppress(TypeError):
        errors.sort(key=lambda e: e.path)
    err = errors[0]
    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
    return f"does not match the schema at {where}: {err.message}"


def canonical_output(spec: TaskSpec, value: Any) -> str:
    """The string a student is trained to produce for a parsed value."""
    if spec.output_kind == "json":
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return str(value)
