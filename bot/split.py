"""A message holding two questions ("辅助吃多少？复发了怎么办？") is answered part by part.

Split after a question mark, or before a word that opens a second question (另外 / 还有 / 顺便 /
also); a part too short to be a question of its own ("呢？", "对吗？") stays with the one before.
A later part is answered with the earlier parts as its history, so "患者术后辅助第8个月肝转移。
现在吃400？下一步怎么办？" keeps its vignette. The answers are joined under a label per part.
"""
from __future__ import annotations

import re

from bot.types import Answer

MIN_PART_CHARS = 6  # Han characters or Latin letters a part needs to stand as a question of its own
MAX_PARTS = 3
_BOUNDARY = re.compile(r"(?<=[？?])\s*|\s*(?=(?:另外|还有就是|还有个问题|顺便问一?下|再问一下|此外)[，,]?)|(?<=[。.;；])\s*(?=(?:and also|also)\b)", re.I)
_SUBSTANCE = re.compile(r"[\u4e00-\u9fffA-Za-z]")
NUMERALS = "一二三"


def split_questions(text: str) -> list[str]:
    pieces = [p.strip() for p in _BOUNDARY.split(text) if p and p.strip()]
    parts: list[str] = []
    for p in pieces:
        if parts and len(_SUBSTANCE.findall(p)) < MIN_PART_CHARS:
            parts[-1] = parts[-1] + p  # "…400？" + "还是600？" too short: one question
        else:
            parts.append(p)
    # A leading statement (a vignette without a question mark) is context, not a question: it
    # joins the part after it.
    merged: list[str] = []
    for p in parts:
        if merged and not re.search(r"[？?吗呢么]|怎么|如何|多少|什么|哪|是否|能否|要不要|可以|\b(?:what|how|which|who|why|should|is|are|does|do|can)\b", merged[-1], re.I):
            merged[-1] = merged[-1] + p
        else:
            merged.append(p)
    if len(merged) > MAX_PARTS:
        merged = merged[: MAX_PARTS - 1] + ["".join(merged[MAX_PARTS - 1:])]
    return merged if len(merged) > 1 else [text]


def _lead(a: Answer) -> str:
    return a.quotes[0].text if a.quotes else ""


def join_answers(parts: list[str], answers: list[Answer]) -> Answer | None:
    """One answer for the message: each part under its label, a refused part said so in a line.
    None when the parts do not make two questions (every part led by the same quote, or all
    refused): the message is then answered whole."""
    answered = [a for a in answers if not a.refused]
    if not answered or len({_lead(a) for a in answered}) < len(answered):
        return None
    english = not re.search(r"[\u4e00-\u9fff]", "".join(parts))
    sections, quotes, passages, notes = [], [], [], []
    explain: dict = {"parts": []}
    for k, (part, a) in enumerate(zip(parts, answers)):
        # No digits in a label: every number a user sees must come from a cited source.
        label = f"**Question {('one', 'two', 'three')[k]}**" if english else f"**问题{NUMERALS[k]}**"
        shown = part if not re.search(r"\d", part) else ""
        head = label + (f"（“{shown}”）" if shown else "")
        if a.refused:
            sections.append(f"{head}：{a.answer}")
        else:
            sections.append(f"{head}\n\n{a.answer}")
            for q in a.quotes:
                q.marker = len(quotes) + 1
                quotes.append(q)
            passages += [p for p in a.passages if p.passage_id not in {x.passage_id for x in passages}]
        notes += [f"part {k + 1}: {n}" for n in a.notes]
        explain["parts"].append({"question": part, **a.explain})
    return Answer(question="".join(parts), answer="\n\n".join(sections), refused=False, quotes=quotes,
                  passages=passages[:5], vote=next((a.vote for a in answered if a.vote), None),
                  references=[r for a in answered for r in a.references],
                  dropped=[d for a in answers for d in a.dropped], scope=answered[0].scope, notes=notes, explain=explain)
