"""Check every quote against the stored document at its offsets and every number against its sources.

Nothing is trusted because the writer produced it: the extractive writer and an LLM writer go
through the same checks, and whatever fails is dropped and reported.
"""
from __future__ import annotations

import re

from indexer.store import StoredIndex

# Citations are written 〔...〕 and are generated from metadata (section, paragraph, table item): the
# numbers in them are positions, not facts, so they are not checked as claims.
CITATION_SPAN = re.compile(r"〔[^〔〕]*〕")
QUOTE_SPAN = re.compile(r"「([^「」]*)」")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def numbers_in(text: str) -> list[str]:
    return _NUMBER.findall(text)


def quote_problem(index: StoredIndex, doc_id: str, passage_id: str, start: int, end: int, text: str) -> str | None:
    """None when the quote is verbatim at its offsets inside the passage it cites; else why not."""
    doc = index.documents.get(doc_id)
    if doc is None:
        return f"unknown document {doc_id!r}"
    passage = index.passage_by_id.get(passage_id) if passage_id else None
    if passage is None:
        return f"unknown passage {passage_id!r}"
    if passage.doc_id != doc_id:
        return "the cited passage belongs to another document"
    if not (passage.start <= start < end <= passage.end):
        return "offsets outside the cited passage"
    if doc.text[start:end] != text:
        return "text differs from the source at these offsets"
    if not text.strip():
        return "empty quote"
    return None


def unsupported_numbers(prose: str, sources: list[str]) -> list[str]:
    """Numbers in `prose` (outside citations) that occur in none of the source texts as a number."""
    body = CITATION_SPAN.sub("", prose)
    source_numbers = {n for s in sources for n in numbers_in(s)}
    return [n for n in numbers_in(body) if n not in source_numbers]


def answer_number_faithfulness(answer_text: str, quote_texts: list[str], passage_texts: list[str]) -> tuple[int, int]:
    """(numbers supported, numbers in the answer): a number counts as supported when it occurs in a
    cited quote or in the passage a quote was taken from (vote percentages stand in the table row)."""
    body = CITATION_SPAN.sub("", answer_text)
    nums = numbers_in(body)
    pool = {n for t in quote_texts + passage_texts for n in numbers_in(t)}
    return sum(1 for n in nums if n in pool), len(nums)
