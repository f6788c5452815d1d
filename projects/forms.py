from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings

from projects.models import OutputKind
from worker.ingest import human_size


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class TaskSpecForm(forms.Form):
    input_fields = forms.CharField(
        help_text="Comma-separated names of the fields each input has, e.g. text or subject, body",
    )
    instruction_template = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="Jinja syntax over the input fields, e.g. Classify this ticket: {{ text }}",
    )
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    output_kind = forms.ChoiceField(choices=OutputKind.choices)
    label_set = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}), required=False, help_text="One label per line"
    )
    json_schema = forms.CharField(
        label="JSON Schema",
        widget=forms.Textarea(attrs={"rows": 8}),
        required=False,
        help_text="A JSON Schema object",
    )
    ask_rationale = forms.BooleanField(
        label="Ask the teacher for a short reason after its answer",
        required=False,
        help_text="The teacher answers on the first line and explains in a sentence or two "
        "after it. Only the answer is checked, reviewed and scored; the reason is shown (and "
        "editable) in review and can be taught to the student as a second task. Students "
        "never write it when serving. Costs a few dozen output tokens per call.",
    )

    def clean_json_schema(self) -> dict[str, Any] | None:
        text = self.cleaned_data.get("json_schema", "").strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError("a JSON Schema must be a JSON object")
        return value


class UploadForm(forms.Form):
    file = forms.FileField(
        # An empty file is refused by worker.ingest, with a message that names the file.
        allow_empty_file=True,
        help_text="CSV with a header row, or JSONL (one JSON object per line), UTF-8",
    )


def refuse_oversized_upload(form: forms.Form, *, field: str = "file") -> None:
    """Show on ``form`` (bound to what arrived of the request) that its upload was stopped for
    being over MAX_UPLOAD_BYTES (distillery.uploads), naming the limit."""
    form.is_valid()
    form.errors[field] = form.error_class(
        [f"the file is too large: uploads are limited to {human_size(settings.MAX_UPLOAD_BYTES)}"]
    )


class MappingForm(forms.Form):
    def __init__(
        self,
        *args: Any,
        input_fields: list[str],
        columns: list[str],
        initial_map: dict[str, str],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        choices = [("", "—")] + [(c, c) for c in columns]
        for field in input_fields:
            self.fields[f"map_{field}"] = forms.ChoiceField(
                label=f"Input field “{field}”", choices=choices, initial=initial_map.get(field, "")
            )
        self.fields["reference_column"] = forms.ChoiceField(
            label="Human reference output (optional)", choices=choices, required=False
        )
        self.input_fields = input_fields

    def field_map(self) -> dict[str, str]:
        return {f: self.cleaned_data.get(f"map_{f}", "") for f in self.input_fields}
