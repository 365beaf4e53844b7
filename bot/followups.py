"""Suggested next questions: drawn from where an answer sits in the document, each one checked.

The consensus is organised by clinical setting (topic 1 first-line, topic 2 adjuvant, topic 3
recurrence during or after adjuvant therapy), each with its guideline text, its evidence, the
panel's recommendation and a vote item of 表1. After an answer a trainee usually wants the part of
the same setting it did not show (the vote, the evidence), then the neighbouring settings. The
candidates are built from that map (the settings the answer's quotes stand in), and every one is
answered by the bot before it is offered: a suggestion that would be refused, or that would only
repeat the passages already shown, is dropped. Plain functions, no state: the page calls
`suggest_followups` once per finished answer.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from bot.plan import DocumentMap
from bot.setting import ADJUVANT, ALL_SETTINGS, FIRST_LINE, RECUR_AFTER, RECUR_DURING, SETTING_LABELS
from bot.types import Answer

MAX_FOLLOWUPS = 3  # "two or three next questions": more is a menu, not a suggestion
MAX_CHECKED = 8  # candidates answered at most (about 30 ms each) before giving up on more

# How a trainee asks each facet of a setting; {label} is the setting's name (SETTING_LABELS).
MANAGE_QUESTION = {
    FIRST_LINE: "{label}推荐多大剂量？",
    ADJUVANT: "{label}推荐多大剂量？",
    RECUR_DURING: "{label}怎么办？",
    RECUR_AFTER: "{label}怎么办？",
}
VOTE_QUESTION = "{label}，专家投票结果如何？"
DISPUTE_QUESTION = "{label}存在哪些争议？"
MECHANISM_QUESTION = "为什么KIT exon 9突变对标准剂量伊马替尼不敏感？"  # topic 1 is titled for the mechanism
# Evidence kinds of the parts a setting's answer can still lack.
DISPUTE_KINDS = {"guideline", "evidence"}


def settings_of_answer(record: dict, dm: DocumentMap) -> tuple[str, ...]:
    """The settings whose topics (or vote items) the answer's quotes stand in, in document order."""
    found: set[str] = set()
    for q in record.get("quotes", []):
        row = dm.row_of.get(q["passage_id"])
        if row is None:
            continue
        topic = dm.topic_of_row.get(row)
        if topic is not None:
            found.update(topic.settings)
        found.update(dm.vote_settings.get(row, ()))
    return tuple(s for s in ALL_SETTINGS if s in found)


def candidate_questions(record: dict, dm: DocumentMap) -> list[str]:
    """Next questions in the order worth offering: the same setting's vote and dispute (when the
    answer did not show them), the mechanism after a first-line answer, then the other settings'
    recommendations, nearest first."""
    settings = settings_of_answer(record, dm) if not record.get("refused") else ()
    kinds = {q.get("evidence_kind") for q in record.get("quotes", [])}
    out: list[str] = []
    for s in settings:
        label = SETTING_LABELS[s]
        if "vote" not in kinds:
            out.append(VOTE_QUESTION.format(label=label))
        if not kinds & DISPUTE_KINDS:
            out.append(DISPUTE_QUESTION.format(label=label))
        if s == FIRST_LINE:
            out.append(MECHANISM_QUESTION)
    if settings:
        # The other settings, starting from the one after the answer's own (the document's order).
        start = ALL_SETTINGS.index(settings[-1]) + 1
        ring = ALL_SETTINGS[start:] + ALL_SETTINGS[:start]
        others = [s for s in ring if s not in settings]
    else:
        others = list(ALL_SETTINGS)
    out += [MANAGE_QUESTION[s].format(label=SETTING_LABELS[s]) for s in others]
    if not settings and MECHANISM_QUESTION not in out:
        out.insert(1, MECHANISM_QUESTION)
    return list(dict.fromkeys(out))


def suggest_followups(record: dict, dm: DocumentMap, answer: Callable[[str], Answer],
                      asked: Iterable[str] = (), limit: int = MAX_FOLLOWUPS) -> list[str]:
    """Candidates that the bot answers (not refused) with at least one passage the answer did not
    quote; `answer(question)` is the page's own call (same scope and history)."""
    shown = {q["passage_id"] for q in record.get("quotes", [])}
    asked_norm = {_norm(q) for q in asked} | {_norm(record.get("question", ""))}
    chosen: list[str] = []
    for n, question in enumerate(candidate_questions(record, dm)):
        if len(chosen) >= limit or n >= MAX_CHECKED:
            break
        if _norm(question) in asked_norm:
            continue
        try:
            result = answer(question)
        except ValueError:  # QuestionError and its kin: not a question worth offering
            continue
        if result.refused or not result.quotes:
            continue
        if {q.passage_id for q in result.quotes} <= shown:
            continue
        chosen.append(question)
    return chosen


def _norm(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())
