"""Text metrics: ROUGE-L F (rouge-score) and chrF (sacrebleu), plus an LLM-judge win-rate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from worker.metrics.rates import Rate, same_length, wilson_rate
from worker.metrics.tokens import text_tokens

JudgeVerdict = Literal["win", "loss", "tie"]


@dataclass(frozen=True)
class JudgeResult:
    """Pairwise LLM-judge verdicts from the candidate's side (candidate vs teacher)."""

    wins: int
    ties: int
    losses: int
    n: int
    win_rate: float  # (wins + ties / 2) / n
    not_worse: Rate  # (wins + ties) of n, with its interval


def judge_win_rate(verdicts: Sequence[str]) -> JudgeResult:
    """Win-rate from judgements already made: each is "win", "loss" or "tie"."""
    counts = Counter(verdicts)
    unknown = sorted(set(counts) - {"win", "loss", "tie"})
    if unknown:
        raise ValueError(f"judge verdicts must be win, loss or tie; got {', '.join(unknown)}")
    wins, ties, losses = counts["win"], counts["tie"], counts["loss"]
    n = wins + ties + losses
    return JudgeResult(
        wins=wins,
        ties=ties,
        losses=losses,
        n=n,
        win_rate=(wins + ties / 2) / n if n else 0.0,
        not_worse=wilson_rate(wins + ties, n),
    )


@dataclass(frozen=True)
class TextMetrics:
    n: int
    rouge_l: float  # mean ROUGE-L F over rows, 0..1
    chrf: float  # corpus chrF, 0..100 (sacrebleu's scale)
    per_example_rouge_l: list[float]
    per_example_chrf: list[float]  # sentence chrF
    empty_outputs: int
    judge: JudgeResult | None = None
    reference_source: str = ""
    kind: Literal["text"] = "text"

    @property
    def headline_name(self) -> str:
        return "rouge_l"

    @property
    def headline(self) -> float:
        return self.rouge_l

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UnicodeRougeTokenizer:
    """rouge-score tokenizer that keeps non-ASCII letters (see ``text_tokens``)."""

    def tokenize(self, text: str) -> list[str]:
        return text_tokens(text)


def rouge_scorer() -> Any:
    """The ROUGE-L scorer used for every text metric (no stemming, Unicode-aware tokens)."""
    from rouge_score import rouge_scorer as rs

    return rs.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=UnicodeRougeTokenizer())


def text_metrics(
    outputs: Sequence[str],
    references: Sequence[str],
    *,
    judge_verdicts: Sequence[str] | None = None,
    reference_source: str = "",
) -> TextMetrics:
    """ROUGE-L F (mean over rows) and chrF (corpus) of outputs against references."""
    from sacrebleu.metrics.chrf import CHRF

    same_length(outputs, references, "outputs", "references")
    hyps = [(o or "").strip() for o in outputs]
    refs = [(r or "").strip() for r in references]
    scorer = rouge_scorer()
    rouge = [float(scorer.score(r, h)["rougeL"].fmeasure) for h, r in zip(hyps, refs, strict=True)]
    chrf = CHRF()
    per_chrf = [float(chrf.sentence_score(h, [r]).score) for h, r in zip(hyps, refs, strict=True)]
    corpus = float(chrf.corpus_score(hyps, [refs]).score) if hyps else 0.0
    return TextMetrics(
        n=len(hyps),
        rouge_l=sum(rouge) / len(rouge) if rouge else 0.0,
        chrf=corpus,
        per_example_rouge_l=rouge,
        per_example_chrf=per_chrf,
        empty_outputs=sum(1 for h in hyps if not h),
        judge=judge_win_rate(judge_verdicts) if judge_verdicts is not None else None,
        reference_source=reference_source,
    )
