"""The Jinja sandbox prompt templates render in, with resource limits enforced by the sandbox.

Jinja's ImmutableSandboxedEnvironment blocks attribute escapes (``__class__``, ``__globals__``)
and mutation, but not exhaustion: ``{{ text|center(20000000) }}``, ``{% set x = x ~ x %}``
repeated, nested loops over a long field, or a macro calling itself twice per call. Every
operation that can build a large value is checked *before* it allocates (widths, repetition
counts, replacement and join sizes, digits of a number), every loop iteration and macro call
counts against a per-render budget, and the render stops at a deadline and at the output limit.
The limits live in the sandbox's own hooks (call, call_binop, the code generated for ``~`` and
``for``, the filters), not in checks of the template source.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import _PassArg
from markupsafe import Markup

# The most characters a rendered prompt may have (a prompt over this is a mistake, and would
# be far over any model's context window anyway).
MAX_PROMPT_CHARS = 1_000_000
# The most characters (or, for a list, items plus the characters of its strings) any one value
# built while rendering may have.
MAX_TEMPLATE_RESULT = 1_000_000
# The most digits a number computed in a template may have (Python refuses to print an int of
# over 4,300 digits, so a bigger one fails on every row).
MAX_TEMPLATE_INT_DIGITS = 1_000
# Loop iterations plus macro calls per render. A prompt template loops over a few fields or a
# list split out of one (tens of iterations); 100,000 empty iterations take about 20 ms, and
# 100,000 macro calls about 0.4 s.
MAX_TEMPLATE_LOOP_ITERATIONS = 100_000
# Wall time per render. Ordinary templates take 10-40 microseconds.
MAX_RENDER_SECONDS = 1.0
# Widths of lipsum's output, batch sizes and slice counts beyond these are nonsense in a prompt.
_MAX_LIPSUM_WORDS = 10_000
_MAX_JSON_INDENT = 16
# Values nested deeper than this are refused rather than measured (no prompt needs them).
_MAX_VALUE_DEPTH = 50


class TemplateLimitError(SecurityError):
    """A render went over one of the limits above; the message names the limit."""


@dataclass
class _Budget:
    deadline: float
    steps: int = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_TEMPLATE_LOOP_ITERATIONS:
            raise TemplateLimitError(
                f"more than {MAX_TEMPLATE_LOOP_ITERATIONS:,} loop iterations and macro calls"
            )
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"rendering took longer than {MAX_RENDER_SECONDS:g} s")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "prompt_render_budget", default=None
)


def _step() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.step()


def _check_time() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_time()


def render_bounded(template: jinja2.Template, values: dict[str, Any]) -> str:
    """Render within the limits; raises TemplateLimitError (a jinja2 SecurityError) over one."""
    token = _BUDGET.set(_Budget(deadline=time.monotonic() + MAX_RENDER_SECONDS))
    try:
        parts: list[str] = []
        total = 0
        for part in template.generate(**values):
            total += len(part)
            if total > MAX_PROMPT_CHARS:
                raise TemplateLimitError(
                    f"the prompt would be longer than {MAX_PROMPT_CHARS:,} characters"
                )
            parts.append(part)
        return "".join(parts)
    finally:
        _BUDGET.reset(token)


# Sizes ------------------------------------------------------------------------------------------


def _weight(value: Any, depth: int = 0) -> int:
    """Characters of strings plus items of containers, stopping once over the limit. Roughly
    what printing or joining the value produces, so checking it before building bounds memory."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, list | tuple | dict | set | frozenset):
        if depth > _MAX_VALUE_DEPTH:
            raise TemplateLimitError(f"a value nested more than {_MAX_VALUE_DEPTH} levels deep")
        total = len(value)
        items: Iterable[Any] = value.items() if isinstance(value, dict) else value
        for item in items:
            total += _weight(item, depth + 1)
            if total > MAX_TEMPLATE_RESULT:
                break
        return total
    return 1


def _too_large(size: int) -> TemplateLimitError:
    return TemplateLimitError(
        f"a value of {size:,} characters is too large (the limit is {MAX_TEMPLATE_RESULT:,})"
    )


def _check_size(size: int) -> None:
    if size > MAX_TEMPLATE_RESULT:
        raise _too_large(size)


def _check_result(value: Any) -> Any:
    _check_size(_weight(value))
    return value


def _check_count(what: str, count: Any, limit: int = MAX_TEMPLATE_RESULT) -> None:
    if isinstance(count, int) and count > limit:
        raise TemplateLimitError(f"{what} of {count:,} is too large (the limit is {limit:,})")


def _check_digits(bits: int) -> None:
    if bits * math.log10(2) > MAX_TEMPLATE_INT_DIGITS + 1:
        raise TemplateLimitError(
            f"a number of more than {MAX_TEMPLATE_INT_DIGITS:,} digits is too large"
        )


def _replaced_size(s: str | bytes, old: Any, new: Any, count: Any) -> int:
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return len(s)
    hits = s.count(old) if old else len(s) + 1  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(len(new) - len(old), 0)


def _collect_for_join(value: Iterable[Any], separator: Any) -> list[Any]:
    """The items to join, stopping as soon as the joined string would be too large (the items
    may come from a generator such as ``map('center', 999999)``: never hold them all first)."""
    items: list[Any] = []
    size = 0
    between = len(str(separator))
    for item in value:
        size += _weight(item) + (between if items else 0)
        _check_size(size)
        items.append(item)
    return items


def _bounded_items(iterator: Iterator[Any]) -> Iterator[Any]:
    """A filter's lazy output (map, select, batch...), stopped once what it has produced in
    total is too large, so whatever consumes it (list, join, sort) never holds more."""
    produced = 0
    for item in iterator:
        produced += _weight(item)
        _check_size(produced)
        yield item


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")


def _check_percent_format(template: str | bytes, args: Any) -> None:
    """``'%20000000s' % x`` and ``'%(a)s' * n % {'a': text}`` build huge strings: check the
    widths and the number of substitutions times the largest value before formatting."""
    fmt = template.decode("latin-1") if isinstance(template, bytes) else template
    conversions = 0
    for width, precision, kind in _PERCENT_SPEC.findall(fmt):
        if kind == "%":
            continue
        conversions += 1
        for number in (width, precision):
            if number == "*":
                values = args if isinstance(args, tuple) else (args,)
                for value in values:
                    _check_count("a format width", value)
            elif number:
                _check_count("a format width", int(number))
    if isinstance(args, dict):
        substituted = list(args.values())
    else:
        substituted = list(args) if isinstance(args, tuple) else [args]
    largest = max((_weight(value) for value in substituted), default=0)
    _check_size(len(fmt) + conversions * largest)


class _BoundedFormatter(SandboxedFormatter):
    """str.format with widths checked and the total output counted as fields are produced."""

    def __init__(self, env: jinja2.Environment, template_size: int) -> None:
        super().__init__(env)
        self._produced = template_size

    def format_field(self, value: Any, format_spec: str) -> Any:
        for number in re.findall(r"\d+", format_spec):
            _check_count("a format width", int(number))
        formatted = super().format_field(value, format_spec)
        self._produced += len(formatted)
        _check_size(self._produced)
        return formatted


# Filters ----------------------------------------------------------------------------------------


def _guard_center(a: dict[str, Any]) -> None:
    _check_count("a width", a["width"])


def _guard_indent(a: dict[str, Any]) -> None:
    text = str(a["s"])
    width = a["width"]
    per_line = len(width) if isinstance(width, str) else width
    if isinstance(per_line, int):
        _check_count("an indent", per_line)
        _check_size(len(text) + (text.count("\n") + 1) * per_line)


def _guard_format(a: dict[str, Any]) -> None:
    _check_percent_format(str(a["value"]), a["kwargs"] or a["args"])


def _guard_replace(a: dict[str, Any]) -> None:
    _check_size(_replaced_size(str(a["s"]), a["old"], a["new"], a["count"]))


def _guard_wordwrap(a: dict[str, Any]) -> None:
    text = str(a["s"])
    width = a["width"] if isinstance(a["width"], int) and a["width"] > 0 else 1
    wrap = a["wrapstring"] if isinstance(a["wrapstring"], str) else "\n"
    _check_size(len(text) + (len(text) // width + text.count("\n") + 1) * len(wrap))


def _guard_batch(a: dict[str, Any]) -> None:
    _check_count("a batch size", a["linecount"], MAX_TEMPLATE_LOOP_ITERATIONS)


def _guard_slice(a: dict[str, Any]) -> None:
    _check_count("a number of slices", a["slices"], MAX_TEMPLATE_LOOP_ITERATIONS)


def _guard_sum(a: dict[str, Any]) -> None:
    # Summing lists copies the growing total once per item: quadratic, with no loop to count.
    if not isinstance(a["start"], int | float):
        raise TemplateLimitError("sum adds numbers only")


def _guard_tojson(a: dict[str, Any]) -> None:
    indent = a["indent"]
    size = len(indent) if isinstance(indent, str) else indent
    _check_count("a JSON indent", size, _MAX_JSON_INDENT)


_FILTER_GUARDS: dict[str, Callable[[dict[str, Any]], None]] = {
    "center": _guard_center,
    "indent": _guard_indent,
    "format": _guard_format,
    "replace": _guard_replace,
    "wordwrap": _guard_wordwrap,
    "batch": _guard_batch,
    "slice": _guard_slice,
    "sum": _guard_sum,
    "tojson": _guard_tojson,
}
# HTML helpers with no use in a prompt, whose output grows with arguments per link or key.
_DROPPED_FILTERS = ("urlize", "xmlattr")


_PASS_ARG_NAMES = frozenset({"context", "eval_ctx", "environment", "env"})


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    guard = _FILTER_GUARDS.get(name)
    signature = inspect.signature(func)
    # Jinja passes the context, eval context or environment first when the filter asks for it;
    # an async-variant filter asks without the sync signature (which `signature` shows) naming it.
    first = next(iter(signature.parameters), "")
    skip = 1 if _PassArg.from_obj(func) is not None and first not in _PASS_ARG_NAMES else 0

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        if guard:
            bound = signature.bind(*args[skip:], **kwargs)
            bound.apply_defaults()
            guard(bound.arguments)
        result = func(*args, **kwargs)
        if isinstance(result, Iterator):
            return _bounded_items(result)
        return _check_result(result)

    return bounded


def _bounded_join(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        _check_time()
        items = _collect_for_join(value, d)
        return _check_result(original(eval_ctx, items, d, attribute))

    return join


def _bounded_lipsum(original: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(original)
    def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        _check_count("lipsum's length", n * max if isinstance(max, int) else n, _MAX_LIPSUM_WORDS)
        return original(n, html, min, max)

    return lipsum


# String methods that build their result from a width or from copies of an argument.
def _check_str_method(
    method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    text = method.__self__
    name = method.__name__
    if name in ("center", "ljust", "rjust", "zfill") and args:
        _check_count("a width", args[0])
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _check_size(len(text) + text.count("\t" if isinstance(text, str) else b"\t") * tabsize)
    elif name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        _check_size(_replaced_size(text, args[0], args[1], count))
    elif name == "join" and args:
        return (_collect_for_join(args[0], text), *args[1:])
    elif name in ("translate", "maketrans"):
        raise TemplateLimitError(f"str.{name} is not available in a prompt template")
    return args


# The environment --------------------------------------------------------------------------------


class _BoundedCodeGenerator(CodeGenerator):
    """Routes ``~`` and the iterable of every ``for`` loop through the environment's limits."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        if not getattr(node, "bounded", False):
            node.iter = nodes.Call(
                nodes.EnvironmentAttribute("bounded_iter", lineno=node.iter.lineno),
                [node.iter],
                [],
                None,
                None,
                lineno=node.iter.lineno,
            )
            node.bounded = True  # type: ignore[attr-defined]
        super().visit_For(node, frame)


def _bounded_join_parts(parts: Iterable[str]) -> str:
    pieces = list(parts)
    _check_size(sum(len(piece) for piece in pieces))
    return "".join(pieces)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment plus the resource limits of this module, for plain-text
    templates (autoescape off: ``~`` and blocks join as plain strings). Render with
    ``render_bounded`` so loop counts and the deadline apply; sizes are checked either way."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    # Block assignments, macro bodies, filter and call blocks all collect their output with this.
    concat = staticmethod(_bounded_join_parts)

    def __init__(self, **options: Any) -> None:
        # Constant folding would run filters at compile time, outside every render budget.
        super().__init__(optimized=False, **options)
        for name in _DROPPED_FILTERS:
            self.filters.pop(name, None)
        self.filters = {
            name: _bounded_join(func) if name == "join" else _bounded_filter(name, func)
            for name, func in self.filters.items()
        }
        lipsum: Callable[..., str] = self.globals["lipsum"]  # type: ignore[assignment]
        self.globals["lipsum"] = _bounded_lipsum(lipsum)

    def bounded_iter(self, iterable: Any) -> Iterator[Any]:
        for item in iterable:
            _step()
            yield item

    def bounded_concat(self, parts: tuple[Any, ...]) -> str:
        _check_time()
        return _bounded_join_parts(str(part) for part in parts)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and ints and abs(left) > 1 and right > 0:
            if right * math.log10(abs(left)) > MAX_TEMPLATE_INT_DIGITS:
                shown = f"{left} ** {right}" if left.bit_length() < 64 else "a power"
                raise TemplateLimitError(f"{shown} is too large")
        elif operator == "*" and ints:
            _check_digits(abs(left).bit_length() + abs(right).bit_length())
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | bytes | list | tuple) and isinstance(times, int)
                if sized and times > 0 and _weight(seq) * times > MAX_TEMPLATE_RESULT:
                    raise TemplateLimitError(f"repeating a value {times} times is too large")
        elif operator == "+":
            sequences = (str, bytes, list, tuple)
            if isinstance(left, sequences) and isinstance(right, sequences):
                _check_size(_weight(left) + _weight(right))
        elif operator == "%" and isinstance(left, str | bytes):
            _check_percent_format(left, right)
        return _check_result(super().call_binop(context, operator, left, right))

    def call(
        __self,  # Jinja's convention: keyword arguments named self pass through
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        _check_time()
        if isinstance(__obj, Macro):
            _step()
        elif isinstance(__obj, LoopContext) and args:
            # A recursive loop's `loop(children)` iterates children outside the for statement.
            args = (__self.bounded_iter(args[0]), *args[1:])
        elif isinstance(getattr(__obj, "__self__", None), str | bytes) and hasattr(
            __obj, "__name__"
        ):
            args = _check_str_method(__obj, args, kwargs)
        return _check_result(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template: str = value.__self__
        if isinstance(template, Markup):
            raise TemplateLimitError("formatting markup is not available in a prompt template")
        is_format_map = value.__name__ == "format_map"

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            _check_time()
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs, args = args[0], ()
            formatter = _BoundedFormatter(self, len(template))
            return str(formatter.vformat(template, args, kwargs))

        return bounded_format
