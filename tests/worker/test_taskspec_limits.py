"""Rendering a prompt template is bounded by the sandbox itself: output size, the size of every
intermediate value, loop iterations (and macro calls) and wall time. A template that fails or
goes over a limit on real rows, or on a long synthetic row, is refused when the task is saved."""

from __future__ import annotations

import pytest

from worker.taskspec import (
    MAX_PROMPT_CHARS,
    MAX_TEMPLATE_LOOP_ITERATIONS,
    MAX_TEMPLATE_RESULT,
    TaskSpec,
    TemplateError,
    check_template_on_rows,
    render_prompt,
)

# A realistic long input: a support ticket of a couple of thousand characters.
TICKET = (
    "Hello, I ordered a replacement card last week and it still has not arrived. "
    "The app says it was dispatched but the tracking number does not work. "
) * 14


def spec(template: str, fields: tuple[str, ...] = ("text",)) -> TaskSpec:
    return TaskSpec(template, "text", fields)


def render_refused(template: str, row: dict[str, str] | None = None) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        render_prompt(spec(template), row or {"text": TICKET})
    assert caught.value.field == "instruction_template"
    return caught.value


# Each of these once rendered (or built) something far over the limits, or burned seconds.
OVER_LIMIT = {
    "center-filter": "{{ text|center(20000000)|length }}",
    "center-method": "{{ text.center(20000000)|length }}",
    "ljust-method": "{{ text.ljust(20000000)|length }}",
    "zfill-method": "{{ text.zfill(20000000)|length }}",
    "indent-filter": "{{ text|indent(20000000)|length }}",
    "format-filter": "{{ '%20000000s'|format(text)|length }}",
    "format-star": "{{ '%*s'|format(20000000, text)|length }}",
    "percent-operator": "{{ ('%20000000s' % text)|length }}",
    "str-format-method": "{{ '{:>20000000}'.format(text)|length }}",
    "str-format-nested-width": "{{ '{:>{w}}'.format(text, w=20000000)|length }}",
    "replace-filter": "{{ text|replace('', text)|length }}",
    "replace-method": "{{ text.replace('', text)|length }}",
    "repeat": "{{ (text * 1000)|length }}",
    "list-repeat-then-join": "{{ ([text] * 1000)|join|length }}",
    "join-method": "{{ ''.join([text] * 1000)|length }}",
    "join-separator": "{{ range(1000)|join(text)|length }}",
    "map-then-join": "{{ range(100000)|map('center', 999999)|join|length }}",
    "map-then-list": "{{ range(100000)|map('center', 999999)|list|length }}",
    "map-then-join-method": "{{ ''.join(range(100000)|map('center', 999999))|length }}",
    "wordwrap-wrapstring": "{{ text|wordwrap(1, wrapstring=text)|length }}",
    "indent-string": "{{ text|replace(' ', '\\n')|indent(text * 2)|length }}",
    "format-method-repeats": "{{ '{0}{0}{0}{0}'.format(text * 400)|length }}",
    "percent-mapping-repeats": "{{ ('%(a)s%(a)s' % {'a': text * 400})|length }}",
    "namespace-doubling": "{% set ns = namespace(x=text) %}{% for i in range(20) %}"
    "{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x|length }}",
    "nested-call-blocks": "{% macro m() %}{{ caller() }}{{ caller() }}{% endmacro %}"
    + "{% call m() %}" * 25
    + "x"
    + "{% endcall %}" * 25,
    "tilde-doubling": "{% set x = text %}" + "{% set x = x ~ x %}" * 12 + "{{ x|length }}",
    "plus-doubling": "{% set x = text %}" + "{% set x = x + x %}" * 12 + "{{ x|length }}",
    "list-plus-doubling": "{% set x = [text] %}"
    + "{% set x = x + x %}" * 12
    + "{{ x|join|length }}",
    "block-set": "{% set x %}{% for i in range(1000) %}{{ text }}{% endfor %}{% endset %}"
    "{{ x|length }}",
    "macro-output": "{% macro m() %}{% for i in range(1000) %}{{ text }}{% endfor %}{% endmacro %}"
    "{{ m()|length }}",
    "filter-block": "{% filter upper %}{% for i in range(1000) %}{{ text }}{% endfor %}"
    "{% endfilter %}",
    "nested-loops": "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}"
    "{% endfor %}done",
    "loop-over-long-text": "{% for a in text %}{% for b in text %}{% endfor %}{% endfor %}done",
    "recursive-loop": "{% for i in range(26) recursive %}{% if i > 0 %}"
    "{{ loop(range(i - 1)) }}{% endif %}{% endfor %}done",
    "binary-macro-recursion": "{% macro f(n) %}{% if n < 20 %}{{ f(n + 1) }}{{ f(n + 1) }}"
    "{% endif %}{% endmacro %}{{ f(0) }}done",
    "big-power": "{{ 10 ** 100000 > 0 }}",
    "big-product": "{% set x = 10 ** 1000 %}{{ x * x * x * x * x > 0 }}",
    "lipsum": "{{ lipsum(20000)|length }}",
    "batch-fill": "{{ (range(3)|batch(5000000, 'x')|list)|length }}",
    "slice": "{{ (range(3)|slice(5000000)|list)|length }}",
    "output": "{% for i in range(600) %}{{ text }}{% endfor %}",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("template", OVER_LIMIT.values(), ids=OVER_LIMIT.keys())
def test_a_render_over_a_limit_is_refused_with_the_field_named(template: str) -> None:
    error = render_refused(template)
    assert error.message
    assert str(error).startswith("instruction_template: ")


def test_the_output_is_bounded() -> None:
    fits = "{%% for i in range(%d) %%}{{ text }}{%% endfor %%}"
    per_row = len(TICKET)
    under = MAX_PROMPT_CHARS // per_row
    ok = render_prompt(spec(fits % under), {"text": TICKET})
    assert MAX_PROMPT_CHARS - per_row < len(ok) <= MAX_PROMPT_CHARS
    error = render_refused(fits % (under + 1))
    assert f"{MAX_PROMPT_CHARS:,}" in error.message


def test_an_intermediate_string_up_to_the_limit_is_allowed() -> None:
    limit = MAX_TEMPLATE_RESULT
    rendered = render_prompt(spec(f"{{{{ (text * {limit // 2})|length }}}}"), {"text": "ab"})
    assert rendered == str(limit)
    rendered = render_prompt(spec(f"{{{{ text|center({limit})|length }}}}"), {"text": "ab"})
    assert rendered == str(limit)
    error = render_refused(f"{{{{ (text * {limit // 2 + 1})|length }}}}", {"text": "ab"})
    assert "too large" in error.message


def test_loops_up_to_the_iteration_limit_are_allowed() -> None:
    n = MAX_TEMPLATE_LOOP_ITERATIONS
    template = f"{{% for i in range({n}) %}}{{% endfor %}}ok"
    assert render_prompt(spec(template), {"text": "x"}) == "ok"
    error = render_refused(
        f"{{% for i in range(2) %}}{{% for j in range({n // 2 + 1}) %}}{{% endfor %}}{{% endfor %}}ok"
    )
    assert "loop" in error.message


def test_ordinary_templates_render_as_before() -> None:
    row = {"subject": "  Card missing ", "body": "Where is my card?", "tags": "a,b,c"}
    fields = ("subject", "body", "tags")
    cases = {
        "Subject: {{ subject|trim }}\n{{ body }}": "Subject: Card missing\nWhere is my card?",
        "{{ subject|trim|upper }} / {{ body|lower|truncate(9, True, '') }}": "CARD MISSING / where is",
        "{% for f in [subject, body] %}- {{ f|trim }}\n{% endfor %}": "- Card missing\n- Where is my card?",
        "{{ tags.split(',')|join(' | ') }}": "a | b | c",
        "{{ '%s: %s'|format(subject|trim, body) }}": "Card missing: Where is my card?",
        "{{ '{}!'.format(body) }}": "Where is my card?!",
        "{{ subject|trim ~ ' - ' ~ body }}": "Card missing - Where is my card?",
        "{{ body|replace('card', 'CARD') }}": "Where is my CARD?",
        "{{ body|wordcount }} {{ 2 ** 10 }} {{ (subject * 2)|trim }}": "4 1024 Card missing   Card missing",
        "{% for t in tags.split(',') %}{{ loop.index }}={{ t }}{% if not loop.last %}, {% endif %}"
        "{% endfor %}": "1=a, 2=b, 3=c",
        "{{ body|center(21) }}|": "Where is my card?  |",
        "{% macro q(x) %}'{{ x }}'{% endmacro %}{{ q(body) }}": "'Where is my card?'",
        "{% set ns = namespace(n=0) %}{% for t in tags.split(',') %}{% set ns.n = ns.n + 1 %}"
        "{% endfor %}{{ ns.n }}": "3",
    }
    for template, expected in cases.items():
        assert render_prompt(spec(template, fields), row) == expected, template


def test_the_error_names_the_missing_input_field() -> None:
    with pytest.raises(TemplateError) as caught:
        render_prompt(spec("{{ text }}"), {"body": "hello"})
    assert "text" in caught.value.message


# The save-time check ----------------------------------------------------------------------------


def test_a_template_that_fails_on_every_row_is_refused_when_saved() -> None:
    with pytest.raises(TemplateError) as caught:
        check_template_on_rows(spec("Classify: {{ text }} {{ 10 ** 4400 }}"), [{"text": "hi"}])
    assert caught.value.field == "instruction_template"
    assert "too large" in caught.value.message


def test_a_template_over_the_limits_on_a_long_row_is_refused_when_saved() -> None:
    # Fine on a short sample row, but a realistic long input takes it past the output limit.
    template = spec("{% for i in range(1000) %}{{ text }}{% endfor %}")
    render_prompt(template, {"text": "hi"})
    with pytest.raises(TemplateError) as caught:
        check_template_on_rows(template, [{"text": "hi"}])
    assert caught.value.field == "instruction_template"


def test_a_template_that_fails_on_one_real_row_is_refused_when_saved() -> None:
    template = spec("{{ 100 // (text|length - 2) }}")
    check_template_on_rows(template, [{"text": "hello"}])
    with pytest.raises(TemplateError) as caught:
        check_template_on_rows(template, [{"text": "hello"}, {"text": "hi"}])
    assert caught.value.field == "instruction_template"
    assert "division" in caught.value.message


def test_an_ordinary_template_passes_the_save_check() -> None:
    template = spec(
        "Subject: {{ subject|trim }}\n{{ body|truncate(500) }}\n"
        "{% for t in tags.split(',') %}#{{ t|trim }} {% endfor %}",
        ("subject", "body", "tags"),
    )
    check_template_on_rows(
        template,
        [
            {"subject": "Card", "body": "Where is it?", "tags": "card, delivery"},
            {"subject": "Refund", "body": "Please refund", "tags": "refund", "extra": "ignored"},
            {"subject": "A row from an older upload"},  # lacks fields: not the template's fault
        ],
    )
    check_template_on_rows(template, [])
