"""Auto rules: a small rule language stored as data, e.g. ``{"action": "approve", "when":
{"unflagged": true, "min_confidence": 0.9}}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.checks.flags import FLAG_CODES, Flag
from worker.checks.outputs import OutputToCheck

RuleAction = Literal["approve", "reject"]
RULE_ACTIONS: tuple[RuleAction, ...] = ("approve", "reject")


class RuleError(ValueError):
    """An auto rule is malformed; the message starts with the field that is wrong."""


@dataclass(frozen=True)
class Rule:
    """A validated auto rule. All conditions in ``when`` must hold (AND).

    Conditions:

    * ``unflagged: true`` — no flags at all; ``unflagged: false`` — at least one flag.
    * ``flag: code | [codes]`` — has at least one of these flags.
    * ``without_flag: code | [codes]`` — has none of these flags.
    * ``min_confidence`` / ``max_confidence`` — confidence in [min, max] (0..1). An output with
      no confidence never matches a confidence condition.
    * ``min_judge_score`` / ``max_judge_score`` — normalised judge score (0..1), likewise.
    """

    action: RuleAction
    name: str = ""
    unflagged: bool | None = None
    flag: tuple[str, ...] = ()
    without_flag: tuple[str, ...] = ()
    min_confidence: float | None = None
    max_confidence: float | None = None
    min_judge_score: float | None = None
    max_judge_score: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        when: dict[str, Any] = {}
        if self.unflagged is not None:
            when["unflagged"] = self.unflagged
        if self.flag:
            when["flag"] = list(self.flag)
        if self.without_flag:
            when["without_flag"] = list(self.without_flag)
        for key in ("min_confidence", "max_confidence", "min_judge_score", "max_judge_score"):
            value = getattr(self, key)
            if value is not None:
                when[key] = value
        data: dict[str, Any] = {"action": self.action, "when": when}
        if self.name:
            data["name"] = self.name
        return data


_CONDITIONS = (
    "unflagged",
    "flag",
    "without_flag",
    "min_confidence",
    "max_confidence",
    "min_judge_score",
    "max_judge_score",
)


def validate_rule(data: Any) -> Rule:
    """Check a rule given as data and return it typed; RuleError names the bad field."""
    if isinstance(data, Rule):
        return data
    if not isinstance(data, Mapping):
        raise RuleError("rule: must be an object with 'action' and 'when'")
    unknown = sorted(set(data) - {"action", "when", "name"})
    if unknown:
        raise RuleError(f"{unknown[0]}: unknown field (a rule has action, when and name)")
    action = data.get("action")
    if action not in RULE_ACTIONS:
        raise RuleError(f"action: must be one of {', '.join(RULE_ACTIONS)}, not {action!r}")
    name = data.get("name", "")
    if not isinstance(name, str):
        raise RuleError("name: must be text")
    when = data.get("when")
    if not isinstance(when, Mapping):
        raise RuleError("when: must be an object of conditions")
    if not when:
        raise RuleError("when: give at least one condition (" + ", ".join(_CONDITIONS) + ")")
    unknown = sorted(set(when) - set(_CONDITIONS))
    if unknown:
        raise RuleError(
            f"when.{unknown[0]}: unknown condition; use one of {', '.join(_CONDITIONS)}"
        )
    kwargs: dict[str, Any] = {}
    if "unflagged" in when:
        if not isinstance(when["unflagged"], bool):
            raise RuleError("when.unflagged: must be true or false")
        kwargs["unflagged"] = when["unflagged"]
    for key in ("flag", "without_flag"):
        if key in when:
            kwargs[key] = _flag_codes(f"when.{key}", when[key])
    for key in _CONDITIONS[3:]:
        if key in when:
            value = when[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RuleError(f"when.{key}: must be a number between 0 and 1")
            if not 0.0 <= float(value) <= 1.0:
                raise RuleError(f"when.{key}: must be between 0 and 1, not {value}")
            kwargs[key] = float(value)
    for low, high in (("min_confidence", "max_confidence"), ("min_judge_score", "max_judge_score")):
        if low in kwargs and high in kwargs and kwargs[low] > kwargs[high]:
            raise RuleError(f"when.{low}: is above when.{high}, so nothing could match")
    if kwargs.get("unflagged") is True and kwargs.get("flag"):
        raise RuleError("when.flag: contradicts when.unflagged = true, so nothing could match")
    overlap = set(kwargs.get("flag", ())) & set(kwargs.get("without_flag", ()))
    if overlap:
        raise RuleError(f"when.without_flag: {sorted(overlap)[0]!r} is also in when.flag")
    return Rule(action=action, name=name, raw=dict(data), **kwargs)


def _flag_codes(where: str, value: Any) -> tuple[str, ...]:
    codes = [value] if isinstance(value, str) else value
    if not isinstance(codes, list | tuple) or not codes:
        raise RuleError(f"{where}: must be a flag code or a non-empty list of flag codes")
    for code in codes:
        if code not in FLAG_CODES:
            raise RuleError(
                f"{where}: {code!r} is not a flag code; known codes: {', '.join(FLAG_CODES)}"
            )
    return tuple(codes)


def evaluate(
    rule: Rule | Mapping[str, Any], output: OutputToCheck, flags: Sequence[Flag]
) -> RuleAction | None:
    """The rule's action when all its conditions hold for this output and its flags, else None."""
    rule = validate_rule(rule)
    codes = {f.code for f in flags}
    if rule.unflagged is not None and rule.unflagged != (not codes):
        return None
    if rule.flag and not codes.intersection(rule.flag):
        return None
    if rule.without_flag and codes.intersection(rule.without_flag):
        return None
    if not _in_range(output.effective_confidence, rule.min_confidence, rule.max_confidence):
        return None
    if not _in_range(output.judge_score, rule.min_judge_score, rule.max_judge_score):
        return None
    return rule.action


def _in_range(value: float | None, low: float | None, high: float | None) -> bool:
    if low is None and high is None:
        return True
    if value is None:
        return False
    if low is not None and value < low:
        return False
    return not (high is not None and value > high)


def first_matching_rule(
    rules: Sequence[Rule | Mapping[str, Any]], output: OutputToCheck, flags: Sequence[Flag]
) -> tuple[int, RuleAction] | None:
    """(index, action) of the first rule that matches, in order; None when none does.

    The index lets the caller record which rule decided, so an auto decision is always
    traceable to the rule that made it."""
    for index, rule in enumerate(rules):
        action = evaluate(rule, output, flags)
        if action is not None:
            return index, action
    return None
