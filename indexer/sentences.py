"""Chinese-aware sentence splitting with offsets into the document.

Boundaries: after 。！？；!? (with any closing quote or bracket that follows), at line breaks, and
after an English full stop followed by a space and a capital. A decimal point ("1.5") or the dot in
an e-mail address never ends a sentence. List markers and table pipes are left out of a sentence's
span so that a quote never begins with "- ".
"""
from __future__ import annotations

import re

from indexer.types import Passage, Sentence

_END = "。！？；!?"
_CLOSERS = "”’」』）)］]】"
_LEADING_JUNK = re.compile(r"^(?:\s|[-*+]\s|\d+[.)、]\s|\|)+")


_ABBREVIATIONS = ("al", "vs", "Dr", "et", "No", "Fig", "e.g", "i.e", "Ann", "Eur", "Clin", "Med", "Mol", "Natl", "Compr", "Netw", "Surg", "Pathol", "Oncol", "Gastroenterol")


def _abbreviation_before(text: str, dot: int) -> bool:
    """A full stop after a digit, an initial ("Blay JY.") or a known abbreviation ends no sentence."""
    word = re.search(r"([A-Za-z.]+)$", text[max(0, dot - 16) : dot])
    if text[dot - 1 : dot].isdigit():
        return True
    if not word:
        return False
    w = word.group(1)
    return w in _ABBREVIATIONS or (len(w) <= 2 and w.isupper())


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) pairs of the sentences of `text`, stripped of outer whitespace and markers."""
    spans: list[tuple[int, int]] = []
    start = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        cut = None
        if ch in _END:
            j = i + 1
            while j < n and text[j] in _CLOSERS:
                j += 1
            cut = j
        elif ch == "\n":
            cut = i
        elif ch == "." and i + 2 < n and text[i + 1] == " " and text[i + 2].isupper() and not _abbreviation_before(text, i):
            cut = i + 1
        if cut is not None:
            spans.append((start, cut))
            start = cut
            i = cut if cut > i else i + 1
            continue
        i += 1
    if start < n:
        spans.append((start, n))
    out = []
    for s, e in spans:
        m = _LEADING_JUNK.match(text[s:e])
        if m:
            s += m.end()
        while e > s and (text[e - 1].isspace() or text[e - 1] == "|"):
            e -= 1
        if e - s >= 2:
            out.append((s, e))
    return out


def split_sentences(passage: Passage) -> list[Sentence]:
    """Sentences of a passage; for a vote item: its wording and each option, as the table gives them."""
    if passage.vote is not None:
        spans = [(passage.vote.start, passage.vote.end)] + [(o.start, o.end) for o in passage.vote.options]
        return [
            Sentence(passage.passage_id, k, s, e, passage.text[s - passage.start : e - passage.start])
            for k, (s, e) in enumerate(spans)
        ]
    return [
        Sentence(passage.passage_id, k, passage.start + s, passage.start + e, passage.text[s:e])
        for k, (s, e) in enumerate(sentence_spans(passage.text))
    ]
