"""The examples every candidate answers: a frozen split of a dataset version, or given inputs,
copied into EvalExample rows with the prompt and the reference (human where it parses, else the
approved teacher output the version froze)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from dataset_versions.models import DatasetItem, DatasetVersion
from evaluations.models import EvalExample
from projects.models import InputRow, Project
from teachers.models import TeacherOutput
from worker.taskspec import (
    SpecError,
    TaskSpec,
    TemplateError,
    build_messages,
    normalise_label,
    parse_output,
)

MAX_EXAMPLES = 20_000


def valid_spec(project: Project) -> TaskSpec:
    if not project.has_task:
        raise ValidationError("define the project's task before evaluating")
    spec = project.task_spec()
    try:
        spec.validate()
    except (SpecError, TemplateError) as exc:
        raise ValidationError(f"the task is not valid: {exc}") from None
    return spec


def _parses(spec: TaskSpec, text: str | None) -> bool:
    return bool(text and text.strip()) and parse_output(spec, text or "").value is not None


def _reference_label(spec: TaskSpec, reference: str | None) -> str:
    if spec.output_kind != "label" or reference is None:
        return ""
    return (normalise_label(reference, spec.label_set) or reference.strip())[:200]


def _example(
    spec: TaskSpec,
    position: int,
    data: dict[str, Any],
    *,
    reference: str | None,
    reference_source: str,
    input_row_id: int | None,
    dataset_item_id: int | None = None,
) -> EvalExample:
    try:
        messages = build_messages(spec, data)
    except TemplateError as exc:
        raise ValidationError(f"input #{input_row_id or position}: {exc}") from None
    return EvalExample(
        position=position,
        input_row_id=input_row_id,
        dataset_item_id=dataset_item_id,
        inputs=data,
        messages=messages,
        reference=reference,
        reference_source=reference_source if reference is not None else "",
        reference_label=_reference_label(spec, reference),
    )


def examples_from_version(spec: TaskSpec, version: DatasetVersion, split: str) -> list[EvalExample]:
    items = list(
        DatasetItem.objects.filter(version=version, split=split)
        .order_by("id")
        .values("pk", "inputs", "output", "source", "teacher_output_id", "input_row_id")
    )
    if not items:
        raise ValidationError(
            {"dataset_version": f"version {version.name!r} has no rows in its {split} split"}
        )
    if len(items) > MAX_EXAMPLES:
        raise ValidationError(
            {"dataset_version": f"the {split} split has more than {MAX_EXAMPLES:,} rows"}
        )
    teacher_inputs = dict(
        TeacherOutput.objects.filter(
            pk__in=[i["teacher_output_id"] for i in items if i["teacher_output_id"]]
        ).values_list("pk", "input_id")
    )
    input_ids = {
        i["input_row_id"] or teacher_inputs.get(i["teacher_output_id"] or 0) for i in items
    } - {None}
    human = dict(
        InputRow.objects.filter(pk__in=input_ids, reference_output__isnull=False).values_list(
            "pk", "reference_output"
        )
    )
    examples: list[EvalExample] = []
    reference: str | None
    for position, item in enumerate(items):
        input_id = item["input_row_id"] or teacher_inputs.get(item["teacher_output_id"] or 0)
        if item["source"] == "human_reference":
            reference, source = item["output"], "human"
        elif _parses(spec, human.get(input_id or 0)):
            reference, source = human[input_id or 0], "human"
        else:
            reference, source = item["output"], "teacher"
        examples.append(
            _example(
                spec,
                position,
                dict(item["inputs"]),
                reference=reference,
                reference_source=source,
                input_row_id=input_id,
                dataset_item_id=item["pk"],
            )
        )
    return examples


def examples_from_inputs(
    spec: TaskSpec, project: Project, input_ids: list[int]
) -> list[EvalExample]:
    rows = {
        pk: (data, ref)
        for pk, data, ref in InputRow.objects.filter(project=project, pk__in=input_ids).values_list(
            "pk", "data", "reference_output"
        )
    }
    examples: list[EvalExample] = []
    for input_id in input_ids:
        if input_id not in rows:
            continue
        data, ref = rows[input_id]
        good = _parses(spec, ref)
        examples.append(
            _example(
                spec,
                len(examples),
                dict(data),
                reference=ref if good else None,
                reference_source="human",
                input_row_id=input_id,
            )
        )
    if not examples:
        raise ValidationError("no inputs to evaluate on")
    return examples
