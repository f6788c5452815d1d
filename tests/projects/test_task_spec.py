"""Defining a task through the task page, and its live preview on a real input row.

Templates render in a sandbox: attribute escapes and resource-exhausting expressions fail with a
clear message (and cannot be saved); an unknown field is named; a JSON Schema must be a schema;
label sets need two distinct labels.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.urls import reverse

from projects.models import Project
from tests.factories import InputRowFactory, ProjectFactory
from worker.taskspec import TaskSpec, TemplateError, render_prompt

LABELS = "card_arrival\nlost_or_stolen_card\ntop_up_failed"


def task_form(**overrides: str) -> dict[str, str]:
    data = {
        "input_fields": "text",
        "instruction_template": "Classify this ticket: {{ text }}",
        "system_prompt": "You sort support tickets.",
        "output_kind": "label",
        "label_set": LABELS,
        "json_schema": "",
    }
    data.update(overrides)
    return data


def save_task(client, project, **overrides: str):  # type: ignore[no-untyped-def]
    return client.post(reverse("projects:task_edit", args=[project.pk]), task_form(**overrides))


def task_fields(project: Project) -> dict[str, Any]:
    return (
        Project.objects.filter(pk=project.pk)
        .values(
            "input_fields",
            "instruction_template",
            "system_prompt",
            "output_kind",
            "label_set",
            "json_schema",
        )
        .get()
    )


def preview(client, project, **overrides: str):  # type: ignore[no-untyped-def]
    response = client.post(
        reverse("projects:task_preview", args=[project.pk]), task_form(**overrides)
    )
    assert response.status_code == 200
    return response


# Saving ----------------------------------------------------------------------------------------


def test_a_valid_label_task_is_saved(client_for, owner, project):  # type: ignore[no-untyped-def]
    response = save_task(
        client_for(owner),
        project,
        input_fields="subject, body",
        instruction_template="Subject: {{ subject }}\nBody: {{ body }}",
        label_set="  card_arrival \n\nlost_or_stolen_card\ncard_arrival\n",
    )
    assert response.status_code == 302
    assert task_fields(project) == {
        "input_fields": ["subject", "body"],
        "instruction_template": "Subject: {{ subject }}\nBody: {{ body }}",
        "system_prompt": "You sort support tickets.",
        "output_kind": "label",
        "label_set": ["card_arrival", "lost_or_stolen_card"],  # trimmed, blanks and repeats gone
        "json_schema": None,
    }


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "Classify: {{ text.__class__ }}",
            "not allowed in the sandbox: access to attribute '__class__' of 'str' object is unsafe.",
        ),
        (
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "not allowed in the sandbox: access to attribute '__class__' of 'str' object is unsafe.",
        ),
        (
            "{{ text|attr('__class__') }}",
            "not allowed in the sandbox: access to attribute '__class__' of 'str' object is unsafe.",
        ),
        (
            "{{ lipsum.__globals__['os'] }}",
            "not allowed in the sandbox: access to attribute '__globals__' of 'function' object "
            "is unsafe.",
        ),
        (
            "{{ cycler.__init__.__globals__ }}",
            "not allowed in the sandbox: access to attribute '__init__' of 'type' object is unsafe.",
        ),
        (
            "{{ text * 1000000000 }}",
            "not allowed in the sandbox: repeating a value 1000000000 times is too large",
        ),
        ("{{ 10 ** 10000000 }}", "not allowed in the sandbox: 10 ** 10000000 is too large"),
    ],
)
def test_a_template_escaping_the_sandbox_is_refused_when_saved(
    client_for, owner, project, template, message
):  # type: ignore[no-untyped-def]
    before = task_fields(project)
    InputRowFactory(project=project, data={"text": "Where is my card?"})
    response = save_task(client_for(owner), project, instruction_template=template)
    assert response.status_code == 200
    # The template is tried on the project's own rows; the message names the one it failed on.
    assert response.context["form"].errors["instruction_template"] == [
        f"{message} (on sample input 1)"
    ]
    assert task_fields(project) == before


@pytest.mark.parametrize(
    ("template", "row_text", "message"),
    [
        # Harmless on a made-up value, refused on what the project's inputs really hold.
        (
            "{{ 10 ** (text|int) }}",
            "4400",
            "not allowed in the sandbox: 10 ** 4400 is too large (on sample input 2)",
        ),
        (
            "{{ text|center((text|length) * 1000000) }}",
            "Where is my card?",
            "not allowed in the sandbox: a width of 17,000,000 is too large (the limit is "
            "1,000,000) (on sample input 2)",
        ),
        (
            "{{ text|center(20000000) }}",
            "Where is my card?",
            "not allowed in the sandbox: a width of 20,000,000 is too large (the limit is "
            "1,000,000) (on sample input 1)",
        ),
        # Not a sandbox matter, but it fails on every row all the same.
        (
            "{{ text + 1 }}",
            "Where is my card?",
            'rendering failed: can only concatenate str (not "int") to str (on sample input 1)',
        ),
    ],
    ids=["huge-number-from-a-row", "width-from-a-row", "huge-width", "type-error"],
)
def test_a_template_failing_on_the_projects_rows_is_refused_when_saved(
    client_for, owner, project, template, row_text, message
):  # type: ignore[no-untyped-def]
    InputRowFactory(project=project, data={"text": "1"})
    InputRowFactory(project=project, data={"text": row_text})
    before = task_fields(project)
    response = save_task(client_for(owner), project, instruction_template=template)
    assert response.status_code == 200
    assert response.context["form"].errors["instruction_template"] == [message]
    assert task_fields(project) == before


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (
            {"instruction_template": "Subject: {{ subject }}\n{{ text }}"},
            "instruction_template",
            "unknown field 'subject'; the input fields are text",
        ),
        (
            {"instruction_template": "{{ subject }} {{ body }}"},
            "instruction_template",
            "unknown fields 'body', 'subject'; the input fields are text",
        ),
        (
            {"instruction_template": "{% for x in items %}{{ x }}{% endfor %}"},
            "instruction_template",
            "unknown field 'items'; the input fields are text",
        ),
        (
            {"instruction_template": "Classify {{ text"},
            "instruction_template",
            "syntax error on line 1: unexpected end of template, expected 'end of print statement'.",
        ),
        (
            {"input_fields": "ticket text", "instruction_template": "{{ text }}"},
            "input_fields",
            "'ticket text' is not a valid field name "
            "(letters, digits and underscores, not starting with a digit)",
        ),
        (
            {"label_set": "card_arrival"},
            "label_set",
            "a label task needs at least two labels",
        ),
        (
            {"label_set": "card_arrival\n  card_arrival  \n\n"},
            "label_set",
            "a label task needs at least two labels",
        ),
        (
            {"output_kind": "json", "json_schema": ""},
            "json_schema",
            "a json task needs a JSON Schema object",
        ),
        (
            {"output_kind": "json", "json_schema": '{"type": "objekt"}'},
            "json_schema",
            "not a valid JSON Schema: 'objekt' is not valid under any of the given schemas",
        ),
        (
            {"output_kind": "json", "json_schema": '{"type": "object", "required": "amount"}'},
            "json_schema",
            "not a valid JSON Schema: 'amount' is not of type 'array'",
        ),
        (
            {"output_kind": "json", "json_schema": '{"$ref": "https://example.com/s.json"}'},
            "json_schema",
            "the reference 'https://example.com/s.json' points outside the schema; only "
            "references inside it (such as #/$defs/name) are allowed",
        ),
        (
            {
                "output_kind": "json",
                "json_schema": '{"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}',
            },
            "json_schema",
            "the reference '#/$defs/a' makes a cycle: it leads back to a schema for the same "
            "part of the output, so checking an output would never end",
        ),
        (
            {"output_kind": "json", "json_schema": '{"type": "object",}'},
            "json_schema",
            "not valid JSON: Expecting property name enclosed in double quotes (line 1, column 19)",
        ),
        (
            {"output_kind": "json", "json_schema": '["object"]'},
            "json_schema",
            "a JSON Schema must be a JSON object",
        ),
    ],
    ids=[
        "unknown-field",
        "unknown-fields",
        "unknown-loop-variable",
        "syntax-error",
        "bad-field-name",
        "one-label",
        "repeated-label",
        "json-without-schema",
        "schema-bad-type",
        "schema-bad-required",
        "schema-remote-ref",
        "schema-recursive-ref",
        "schema-not-json",
        "schema-not-object",
    ],
)
def test_an_invalid_task_is_refused_with_the_field_named(
    client_for, owner, project, overrides, field, message
):  # type: ignore[no-untyped-def]
    before = task_fields(project)
    response = save_task(client_for(owner), project, **overrides)
    assert response.status_code == 200
    assert response.context["form"].errors[field] == [message]
    assert task_fields(project) == before


def test_a_json_task_with_a_valid_schema_is_saved(client_for, owner, project):  # type: ignore[no-untyped-def]
    schema = (
        '{"type": "object", "properties": {"merchant": {"type": "string"}, '
        '"total": {"type": "number"}}, "required": ["merchant", "total"]}'
    )
    response = save_task(
        client_for(owner),
        project,
        output_kind="json",
        json_schema=schema,
        instruction_template="Read this receipt: {{ text }}",
    )
    assert response.status_code == 302
    saved = task_fields(project)
    assert saved["output_kind"] == "json"
    assert saved["json_schema"]["required"] == ["merchant", "total"]
    assert saved["label_set"] == []  # a JSON task keeps no labels


def test_rendering_is_sandboxed_in_the_worker_too() -> None:
    spec = TaskSpec("{{ text.__class__.__mro__ }}", "text", ("text",))
    with pytest.raises(TemplateError, match="not allowed in the sandbox"):
        render_prompt(spec, {"text": "hello"})
    with pytest.raises(TemplateError, match=r"input row has no value for field\(s\): text"):
        render_prompt(TaskSpec("{{ text }}", "text", ("text",)), {"body": "hello"})
    # Ordinary Jinja still works.
    spec = TaskSpec("{{ text|upper }}{% if text|length > 3 %}!{% endif %}", "text", ("text",))
    assert render_prompt(spec, {"text": "hello"}) == "HELLO!"


# Live preview ----------------------------------------------------------------------------------


def test_preview_without_inputs_says_to_upload(client_for, owner, project):  # type: ignore[no-untyped-def]
    response = preview(client_for(owner), project)
    assert "Upload inputs to preview the prompt on a real input row." in response.content.decode()


def test_preview_renders_the_prompt_on_a_real_row_and_writes_nothing(client_for, owner, project):  # type: ignore[no-untyped-def]
    first = InputRowFactory(project=project, data={"text": "Where is my card?"})
    second = InputRowFactory(project=project, data={"text": "I was charged twice"})
    before = task_fields(project)
    client = client_for(owner)

    response = preview(client, project, instruction_template="Ticket: {{ text }}")
    page = response.content.decode()
    assert response.context["row"] == first
    assert response.context["messages_out"] == [
        {"role": "system", "content": "You sort support tickets."},
        {
            "role": "user",
            "content": "Ticket: Where is my card?\n\nAnswer with exactly one of these labels and "
            "nothing else: card_arrival, lost_or_stolen_card, top_up_failed",
        },
    ]
    assert 'data-testid="preview-user">Ticket: Where is my card?' in page
    assert f"#{first.pk}" in page

    response = preview(client, project, preview_input_id=str(second.pk))
    assert "Classify this ticket: I was charged twice" in response.content.decode()
    assert task_fields(project) == before  # the preview saves nothing


def test_preview_shows_sandbox_and_field_errors(client_for, owner, project):  # type: ignore[no-untyped-def]
    InputRowFactory(project=project, data={"text": "Where is my card?"})
    client = client_for(owner)
    cases = {
        "{{ text.__class__ }}": "instruction_template: not allowed in the sandbox: access to "
        "attribute &#x27;__class__&#x27; of &#x27;str&#x27; object is unsafe.",
        "{{ subject }}": "instruction_template: unknown field &#x27;subject&#x27;; "
        "the input fields are text",
        # Used to escape as a server error: the sandbox's range limit raises OverflowError.
        "{{ range(10**9)|list }}": "instruction_template: rendering failed: Range too big. "
        "The sandbox blocks ranges larger than MAX_RANGE (100000).",
        "{{ text + 1 }}": "instruction_template: rendering failed: can only concatenate str "
        "(not &quot;int&quot;) to str",
    }
    for template, message in cases.items():
        started = time.monotonic()
        page = preview(client, project, instruction_template=template).content.decode()
        assert time.monotonic() - started < 5, template
        assert 'data-testid="preview-error"' in page, template
        assert message in page, template


def test_preview_shows_an_invalid_schema(client_for, owner, project):  # type: ignore[no-untyped-def]
    InputRowFactory(project=project, data={"text": "Where is my card?"})
    page = preview(
        client_for(owner), project, output_kind="json", json_schema='{"type": 12}'
    ).content.decode()
    assert (
        "json_schema: not a valid JSON Schema: 12 is not valid under any of the given schemas"
        in page
    )


def test_preview_escapes_the_input_as_html(client_for, owner, project):  # type: ignore[no-untyped-def]
    InputRowFactory(project=project, data={"text": "<script>alert(1)</script>"})
    page = preview(client_for(owner), project).content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_preview_never_uses_another_teams_row(client_for, owner, project):  # type: ignore[no-untyped-def]
    mine = InputRowFactory(project=project, data={"text": "Where is my card?"})
    theirs = InputRowFactory(project=ProjectFactory(), data={"text": "Their secret ticket"})
    response = preview(client_for(owner), project, preview_input_id=str(theirs.pk))
    assert response.context["row"] == mine
    assert "Their secret ticket" not in response.content.decode()


def test_a_viewer_can_neither_preview_nor_save(client_for, member_with_role, project):  # type: ignore[no-untyped-def]
    # The preview renders a template the user typed: an engineer's action, like saving it.
    InputRowFactory(project=project, data={"text": "Where is my card?"})
    client = client_for(member_with_role("viewer"))
    response = client.post(reverse("projects:task_preview", args=[project.pk]), task_form())
    assert response.status_code == 403
    page = client.get(reverse("projects:task_edit", args=[project.pk])).content.decode()
    assert "task_preview" not in page and "/task/preview/" not in page  # no request to refuse
    assert save_task(client, project, system_prompt="changed").status_code == 403
