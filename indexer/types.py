"""Plain data types passed along gistqa's path: documents -> passages -> sentences.

Every span carries character offsets into its document's ``text``, so that a quote can be checked
by slicing (``doc.text[start:end] == quote``) instead of by fuzzy matching.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

DocKind = Literal["consensus", "reference_card", "reference_fulltext", "text"]
# What kind of evidence a passage is: the three parts of each consensus topic, the vote table,
# the introduction, and the reference cards / full texts.
EvidenceKind = Literal["guideline", "evidence", "panel", "vote", "intro", "reference", "fulltext", "text", "authors"]

EVIDENCE_LABELS: dict[str, str] = {
    "guideline": "指南推荐",
    "evidence": "争议与证据",
    "panel": "专家推荐",
    "vote": "投票结果",
    "intro": "背景（导语）",
    "reference": "文献卡片",
    "fulltext": "文献全文",
    "text": "正文",
    "authors": "作者信息",
}


@dataclass(frozen=True)
class VoteOption:
    text: str
    start: int  # offsets of the option's text in the document
    end: int
    percent: int
    percent_start: int  # offsets of the percentage figure in the document
    percent_end: int


@dataclass(frozen=True)
class VoteItem:
    number: int  # 1-based position in 表1
    question: str
    start: int  # offsets of the item's wording in the document
    end: int
    options: tuple[VoteOption, ...]


@dataclass(frozen=True)
class Sentence:
    passage_id: str
    index: int  # 0-based within the passage
    start: int  # offsets in the document
    end: int
    text: str


@dataclass(frozen=True)
class Passage:
    passage_id: str  # "<doc_id>#p<n>", stable for an unchanged document
    doc_id: str
    doc_kind: DocKind
    doc_title: str
    section_path: tuple[str, ...]  # e.g. ("KIT exon 9基因患者的辅助治疗", "我们推荐")
    evidence_kind: EvidenceKind
    paragraph: int  # 1-based position within its (deepest) section
    start: int
    end: int
    text: str
    page: int | None = None  # PDF page, for full texts supplied as PDF
    cites: tuple[int, ...] = ()  # reference slots named by ［n］ markers inside the passage
    ref_slot: int | None = None  # for reference cards and full texts: the slot they belong to
    vote: VoteItem | None = None

    @property
    def section(self) -> str:
        return " › ".join(self.section_path)

    @property
    def evidence_label(self) -> str:
        return EVIDENCE_LABELS[self.evidence_kind]


@dataclass(frozen=True)
class Document:
    doc_id: str
    path: str  # relative to the corpus folder
    kind: DocKind
    title: str
    text: str  # the exact text offsets refer to
    sha256: str
    meta: dict = field(default_factory=dict)


def to_jsonable(obj) -> dict:
    """dataclass -> JSON-ready dict (tuples become lists)."""
    return asdict(obj)
