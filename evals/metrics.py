"""Scoring: one answer against its item (`score_answer`), then many scores into metrics (`aggregate`).

Pure functions over the data types. Text is matched with all whitespace removed from both sides, so
"6% ~ 9%" in an answer matches "6%~9%" in an item. Quotes and citations are checked against the
stored documents and passages (`Sources`), independently of the bot's own verification, except
numbers, which use `bot.verify.answer_number_faithfulness` by definition.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

from bot.types import Answer, RetrievedPassage
from bot.verify import CITATION_SPAN, answer_number_faithfulness, numbers_in
from evals.schema import Item
from indexer.types import Document, Passage

QUOTE_SPAN = re.compile(r"「([^「」]*)」")  # what the reader sees as a verbatim quote
HIT_AT = (1, 3, 5)
MRR_AT = 10
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Sources:
    """The stored texts quotes are checked against."""

    documents: Mapping[str, Document]
    passages: Mapping[str, Passage]  # by passage_id

    @classmethod
    def from_index(cls, index) -> "Sources":
        return cls(dict(index.documents), {p.passage_id: p for p in index.passages})


# --- matching ---------------------------------------------------------------------------------
def squeeze(text: str) -> str:
    """The text without any whitespace: the form every comparison of wording uses."""
    return _WHITESPACE.sub("", text)


def contains(text: str, needle: str) -> bool:
    return squeeze(needle) in squeeze(text)


def missing_groups(text: str, groups: list[list[str]]) -> list[list[str]]:
    """The groups none of whose strings occur in the text."""
    return [g for g in groups if not any(contains(text, s) for s in g)]


def forbidden_found(text: str, forbidden: list[str]) -> list[str]:
    return [s for s in forbidden if contains(text, s)]


def retrieval_rank(passages: list[RetrievedPassage], gold: list[str], k: int) -> int | None:
    """1-based position of the first of the top k passages that contains a gold string; None if none does."""
    for rank, p in enumerate(passages[:k], start=1):
        if any(contains(p.text, g) for g in gold):
            return rank
    return None


# --- strict scoring: what a specialist would accept ------------------------------------------
# Read from the Markdown the user sees, not from the bot's own data types, so that the scoring
# does not share the product's idea of what a quote block is.
MAX_ANSWER_CHARS = 600  # a strictly correct answer is at most this long (a phone screen or two)
_TOP_BULLET = re.compile(r"^[-*+]\s")
_SUB_BULLET = re.compile(r"^\s+[-*+]\s")


def quote_blocks(markdown: str) -> list[str]:
    """The quote blocks of an answer: each top-level list item holding a 「quote」, with the quotes
    of its indented sub-items (a vote item's options) counted in the same block. A block's text is
    its quotes joined, so that a unit matches only what is shown as verbatim source."""
    blocks: list[list[str]] = []
    in_block = False
    for line in markdown.splitlines():
        if _TOP_BULLET.match(line):
            spans = QUOTE_SPAN.findall(line)
            in_block = bool(spans)
            if spans:
                blocks.append(spans)
        elif _SUB_BULLET.match(line) and in_block:
            blocks[-1].extend(QUOTE_SPAN.findall(line))
        elif line.strip():
            in_block = False
    return ["".join(b) for b in blocks]


def unit_in(block: str, units: list[str]) -> bool:
    return any(contains(block, u) for u in units)


# --- checks on one answer ---------------------------------------------------------------------
def quote_slice_problem(q, sources: Sources) -> str | None:
    """None when the quote's text is its document's text at its offsets, character for character."""
    doc = sources.documents.get(q.doc_id)
    if doc is None:
        return f"unknown document {q.doc_id!r}"
    if not (0 <= q.start < q.end <= len(doc.text)):
        return f"offsets {q.start}-{q.end} outside the document"
    if doc.text[q.start:q.end] != q.text:
        return "differs from the document at its offsets"
    return None


def citation_problem(q, sources: Sources) -> str | None:
    """None when the passage the quote cites holds the quote's offsets and, there, its text."""
    p = sources.passages.get(q.passage_id)
    if p is None:
        return f"unknown passage {q.passage_id!r}"
    if p.doc_id != q.doc_id:
        return f"passage {q.passage_id} belongs to {p.doc_id!r}, quote to {q.doc_id!r}"
    if not (p.start <= q.start < q.end <= p.end):
        return f"offsets {q.start}-{q.end} outside passage {q.passage_id} ({p.start}-{p.end})"
    if p.text[q.start - p.start:q.end - p.start] != q.text:
        return f"text differs from passage {q.passage_id} at its offsets"
    return None


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@dataclass
class QuestionScore:
    id: str
    expect: str
    tags: list[str]
    refused: bool = False
    correct: bool = False
    error: str | None = None
    has_gold: bool = False
    rank: int | None = None  # of the first gold passage within k; None when missed or no gold
    missing_groups: list[list[str]] = field(default_factory=list)
    forbidden_found: list[str] = field(default_factory=list)
    quote_checks: int = 0  # quote objects checked at their offsets + 「」 spans checked against them
    quote_verbatim: int = 0
    non_verbatim: list[str] = field(default_factory=list)
    numbers_supported: int = 0
    numbers_total: int = 0
    unsupported_numbers: list[str] = field(default_factory=list)
    citations_ok: int = 0
    citations_total: int = 0
    bad_citations: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    refusal_reason: str = ""
    # strict scoring (items with answer_units)
    strict: bool = False  # the item carries units, so strict figures are measured
    strict_correct: bool = False
    gold_quoted: bool = False
    lead: bool = False
    blocks: int = 0
    on_topic_blocks: int = 0
    off_topic: list[str] = field(default_factory=list)
    chars: int = 0

    def problems(self) -> list[str]:
        """What went wrong, one line each (empty when the question passes every check)."""
        out: list[str] = []
        if self.error:
            out.append(f"error: {self.error}")
        if self.expect == "answer" and self.refused:
            out.append(f"false refusal: {self.refusal_reason}")
        if self.expect == "refuse" and not self.refused and not self.error:
            out.append("missed refusal: answered a question that should be refused")
        out += [f"missing group: {' | '.join(g)}" for g in self.missing_groups]
        out += [f"forbidden string found: {s}" for s in self.forbidden_found]
        if self.has_gold and self.rank is None:
            out.append("retrieval miss: no gold passage among the retrieved")
        out += [f"non-verbatim quote: {s}" for s in self.non_verbatim]
        if self.unsupported_numbers:
            out.append(f"unsupported number: {', '.join(self.unsupported_numbers)}")
        out += [f"citation error: {s}" for s in self.bad_citations]
        if self.strict and self.expect == "answer" and not self.refused and not self.error:
            if not self.gold_quoted:
                out.append("strict: no quote block holds a unit that answers")
            elif not self.lead:
                out.append("strict: the first quote block is not the one that answers")
            out += [f"strict: off-topic block 「{_short(b)}」" for b in self.off_topic]
            if self.chars > MAX_ANSWER_CHARS:
                out.append(f"strict: {self.chars} characters (more than {MAX_ANSWER_CHARS})")
        return out

    def to_dict(self) -> dict:
        return asdict(self) | {"problems": self.problems()}


def score_answer(item: Item, answer: Answer, sources: Sources, k: int) -> QuestionScore:
    s = QuestionScore(id=item.id, expect=item.expect, tags=list(item.tags), refused=answer.refused,
                      refusal_reason=answer.refusal_reason, has_gold=bool(item.gold))
    text = answer.answer
    s.forbidden_found = forbidden_found(text, item.must_not_include)
    if item.expect == "answer":
        s.missing_groups = [] if answer.refused else missing_groups(text, item.must_include_any)
        s.correct = not answer.refused and not s.missing_groups and not s.forbidden_found
    else:
        s.correct = answer.refused and not s.forbidden_found
    if item.gold:
        s.rank = retrieval_rank(answer.passages, item.gold, k)
    s.chars = len(text)
    s.strict = item.expect == "refuse" or bool(item.answer_units)
    if item.expect == "answer" and item.answer_units and not answer.refused:
        blocks = quote_blocks(text)
        acceptable = list(item.answer_units) + list(item.acceptable_units)
        s.blocks = len(blocks)
        s.gold_quoted = any(unit_in(b, item.answer_units) for b in blocks)
        s.lead = bool(blocks) and unit_in(blocks[0], item.answer_units)
        s.off_topic = [b for b in blocks if not unit_in(b, acceptable)]
        s.on_topic_blocks = s.blocks - len(s.off_topic)
        s.strict_correct = (s.gold_quoted and not s.missing_groups and not s.forbidden_found
                            and s.chars <= MAX_ANSWER_CHARS)
    elif item.expect == "refuse":
        s.strict_correct = s.correct

    # Quotes: each quote object at its offsets; each 「」 span the reader sees must be one of them.
    verbatim_texts = set()
    for q in answer.quotes:
        problem = quote_slice_problem(q, sources)
        if problem is None:
            verbatim_texts.add(q.text)
        else:
            s.non_verbatim.append(f"「{_short(q.text)}」 ({q.doc_id} {q.start}-{q.end}: {problem})")
    spans = QUOTE_SPAN.findall(text)
    for span in spans:
        if span not in verbatim_texts:
            s.non_verbatim.append(f"「{_short(span)}」 (shown in the answer, backed by no verified quote)")
    s.quote_checks = len(answer.quotes) + len(spans)
    s.quote_verbatim = s.quote_checks - len(s.non_verbatim)

    # Numbers: a refusal is fixed wording and makes no claim, so only answers are counted.
    if not answer.refused:
        quote_texts = [q.text for q in answer.quotes]
        passage_texts = [sources.passages[q.passage_id].text for q in answer.quotes if q.passage_id in sources.passages]
        s.numbers_supported, s.numbers_total = answer_number_faithfulness(text, quote_texts, passage_texts)
        pool = {n for t in quote_texts + passage_texts for n in numbers_in(t)}
        s.unsupported_numbers = [n for n in numbers_in(CITATION_SPAN.sub("", text)) if n not in pool]

    for q in answer.quotes:
        problem = citation_problem(q, sources)
        if problem:
            s.bad_citations.append(f"[{q.marker}] 「{_short(q.text)}」: {problem}")
    s.citations_total = len(answer.quotes)
    s.citations_ok = s.citations_total - len(s.bad_citations)
    s.latency_ms = answer.timing_ms.get("total")
    return s


def score_error(item: Item, error: str) -> QuestionScore:
    """A question whose answering raised: wrong, not refused, retrieval missed."""
    return QuestionScore(id=item.id, expect=item.expect, tags=list(item.tags), error=error, has_gold=bool(item.gold))


# --- many scores -> metrics -------------------------------------------------------------------
def _rate(num: int, den: int) -> float | None:
    return None if den == 0 else round(num / den, 4)


def percentile(values: Iterable[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 2)


# Rates where lower is better (every other metric: higher is better).
LOWER_IS_BETTER = {"false_refusal_rate", "latency_p50_ms", "latency_p95_ms", "strict_off_topic_rate",
                   "strict_false_refusals", "answer_chars_p50", "answer_chars_p95", "strict_over_600_rate"}


def aggregate(scores: list[QuestionScore]) -> dict:
    """Metrics over a list of scores. Rates are rounded to 4 places; None when nothing was measured."""
    answer_items = [s for s in scores if s.expect == "answer"]
    refuse_items = [s for s in scores if s.expect == "refuse"]
    gold_items = [s for s in scores if s.has_gold]
    metrics: dict = {"questions": len(scores), "answer_accuracy": _rate(sum(s.correct for s in scores), len(scores))}
    for n in HIT_AT:
        metrics[f"hit@{n}"] = _rate(sum(1 for s in gold_items if s.rank is not None and s.rank <= n), len(gold_items))
    metrics[f"mrr@{MRR_AT}"] = (None if not gold_items else round(
        sum(1 / s.rank for s in gold_items if s.rank is not None and s.rank <= MRR_AT) / len(gold_items), 4))
    metrics["refusal_recall"] = _rate(sum(s.refused for s in refuse_items), len(refuse_items))
    metrics["false_refusal_rate"] = _rate(sum(s.refused for s in answer_items), len(answer_items))
    metrics["quote_verbatim_rate"] = _rate(sum(s.quote_verbatim for s in scores), sum(s.quote_checks for s in scores))
    metrics["numeric_faithfulness"] = _rate(sum(s.numbers_supported for s in scores), sum(s.numbers_total for s in scores))
    metrics["citation_accuracy"] = _rate(sum(s.citations_ok for s in scores), sum(s.citations_total for s in scores))
    latencies = [s.latency_ms for s in scores if s.latency_ms is not None]
    metrics["latency_p50_ms"] = percentile(latencies, 0.50)
    metrics["latency_p95_ms"] = percentile(latencies, 0.95)
    metrics.update(strict_metrics(scores))
    metrics["counts"] = {
        "expect_answer": len(answer_items),
        "expect_refuse": len(refuse_items),
        "with_gold": len(gold_items),
        "errors": sum(1 for s in scores if s.error),
        "quote_checks": sum(s.quote_checks for s in scores),
        "numbers": sum(s.numbers_total for s in scores),
        "numbers_supported": sum(s.numbers_supported for s in scores),
        "citations": sum(s.citations_total for s in scores),
    }
    return metrics


def strict_metrics(scores: list[QuestionScore]) -> dict:
    """The strict figures: an answer is right only when a unit that answers is quoted, the values
    asked are there, nothing forbidden is, and it is at most MAX_ANSWER_CHARS long."""
    strict = [s for s in scores if s.strict]
    answerable = [s for s in strict if s.expect == "answer"]
    answered = [s for s in answerable if not s.refused and not s.error]
    refuse = [s for s in strict if s.expect == "refuse"]
    shown = [s.chars for s in scores if not s.refused and not s.error]
    blocks = sum(s.blocks for s in answered)
    return {
        "strict_accuracy": _rate(sum(s.strict_correct for s in strict), len(strict)),
        "strict_answer_accuracy": _rate(sum(s.strict_correct for s in answerable), len(answerable)),
        "strict_gold_quoted": _rate(sum(s.gold_quoted for s in answerable), len(answerable)),
        "strict_lead": _rate(sum(s.lead for s in answerable), len(answerable)),
        "strict_precision": _rate(sum(s.on_topic_blocks for s in answered), blocks),
        "strict_off_topic_rate": _rate(sum(1 for s in answered if s.off_topic), len(answered)),
        "strict_false_refusals": sum(1 for s in answerable if s.refused),
        "strict_refusal_recall": _rate(sum(s.refused for s in refuse), len(refuse)),
        "answer_chars_p50": percentile(shown, 0.50),
        "answer_chars_p95": percentile(shown, 0.95),
        "strict_over_600_rate": _rate(sum(1 for c in shown if c > MAX_ANSWER_CHARS), len(shown)),
    }


def aggregate_by_tag(scores: list[QuestionScore]) -> dict[str, dict]:
    tags = sorted({t for s in scores for t in s.tags})
    return {t: aggregate([s for s in scores if t in s.tags]) for t in tags}
