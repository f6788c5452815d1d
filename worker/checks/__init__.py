"""Automatic checks on teacher outputs: the flags a reviewer sees in the queue.

Two kinds of check, so the web side can run them at the right moment:

* **Per-output checks** (:func:`check_output`, in ``per_output``) are a pure function of one
  output (plus its self-consistency samples, human reference and logprobs). Run them as each
  output arrives.
* **Population checks** (:func:`check_population`, in ``population``) need all of a project's
  outputs: length outliers (robust z-score) and the same output repeated for many different
  inputs. Run them in a batch whenever the population changes enough to matter (e.g. at the end
  of a teacher run).

:func:`run_checks` runs both. Every flag is a plain, JSON-serialisable :class:`Flag` (``flags``).

The optional LLM judge (:func:`judge_output`, in ``judge``) builds a prompt from a user's rubric,
calls a function the caller supplies (so the web side can route it through the teacher engine, its
cache and its cost meter) and parses a score and a reason from whatever the judge answered.

Auto rules (:func:`validate_rule`, :func:`evaluate`, :func:`first_matching_rule`, in ``rules``)
are a small rule language stored as data, e.g. ``{"action": "approve", "when": {"unflagged":
true, "min_confidence": 0.9}}``.

This package is the public entry point: import names from ``worker.checks``.
"""

from __future__ import annotations

from worker.checks.flags import (
    EMPTY,
    FLAG_CODES,
    JUDGE_ERROR,
    JUDGE_LOW_SCORE,
    LABEL_OUTSIDE_SET,
    LENGTH_OUTLIER,
    LOW_CONFIDENCE,
    REFERENCE_DISAGREEMENT,
    REFUSAL,
    REPEATED_OUTPUT,
    SCHEMA_INVALID,
    SELF_INCONSISTENT,
    UNPARSEABLE,
    Flag,
)
from worker.checks.judge import (
    JudgeCall,
    JudgeRubric,
    JudgeScale,
    JudgeVerdict,
    build_judge_messages,
    judge_output,
    parse_judge_answer,
)
from worker.checks.outputs import CheckConfig, OutputToCheck, confidence_from_logprobs
from worker.checks.per_output import check_output
from worker.checks.population import (
    check_population,
    finite_output_space,
    robust_z_scores,
    run_checks,
)
from worker.checks.rules import (
    RULE_ACTIONS,
    Rule,
    RuleAction,
    RuleError,
    evaluate,
    first_matching_rule,
    validate_rule,
)
from worker.checks.text import (
    REFUSAL_ANYWHERE,
    REFUSAL_PREFIXES,
    comparable_value,
    normalise_text,
    refusal_phrase,
    token_f1,
)

__all__ = [
    "EMPTY",
    "FLAG_CODES",
    "JUDGE_ERROR",
    "JUDGE_LOW_SCORE",
    "LABEL_OUTSIDE_SET",
    "LENGTH_OUTLIER",
    "LOW_CONFIDENCE",
    "REFERENCE_DISAGREEMENT",
    "REFUSAL",
    "REFUSAL_ANYWHERE",
    "REFUSAL_PREFIXES",
    "REPEATED_OUTPUT",
    "RULE_ACTIONS",
    "SCHEMA_INVALID",
    "SELF_INCONSISTENT",
    "UNPARSEABLE",
    "CheckConfig",
    "Flag",
    "JudgeCall",
    "JudgeRubric",
    "JudgeScale",
    "JudgeVerdict",
    "OutputToCheck",
    "Rule",
    "RuleAction",
    "RuleError",
    "build_judge_messages",
    "check_output",
    "check_population",
    "comparable_value",
    "confidence_from_logprobs",
    "evaluate",
    "finite_output_space",
    "first_matching_rule",
    "judge_output",
    "normalise_text",
    "parse_judge_answer",
    "refusal_phrase",
    "robust_z_scores",
    "run_checks",
    "token_f1",
    "validate_rule",
]
