"""What an answer is made of. `gistqa ask --json`, the chat page and the evaluation all read these."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Quote:
    text: str
    doc_id: str
    passage_id: str
    section: str
    paragraph: int
    start: int  # offsets in the document's text
    end: int
    kind: str  # evidence label: 指南推荐 / 争议与证据 / 专家推荐 / 投票结果 / 文献卡片 ...
    evidence_kind: str
    page: int | None = None
    verified: bool = False
    marker: int = 0  # the [n] shown after the quote in the answer


@dataclass
class RetrievedPassage:
    doc_id: str
    passage_id: str
    section: str
    text: str
    score: float
    rank: int
    evidence_kind: str
    dense: float = 0.0
    lexical: float = 0.0


@dataclass
class VoteResult:
    number: int
    question: str
    passage_id: str
    options: list[dict]  # {"text", "percent"}


@dataclass
class ReferenceNote:
    slot: int
    confidence: str
    doc_id: str
    passage_id: str
    candidates: str  # the card's candidate record, quoted verbatim


@dataclass
class Dropped:
    what: str  # "quote" or "number" or "sentence"
    text: str
    reason: str


@dataclass
class Answer:
    question: str
    answer: str  # Markdown shown to the user
    refused: bool
    quotes: list[Quote] = field(default_factory=list)
    passages: list[RetrievedPassage] = field(default_factory=list)
    refusal_reason: str = ""
    vote: VoteResult | None = None
    references: list[ReferenceNote] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    timing_ms: dict = field(default_factory=dict)
    scope: str = "all"
    writer: str = "extractive"
    notes: list[str] = field(default_factory=list)
    # Why the answer is what it is (gistqa ask --explain): setting, facet, candidates, blocks.
    explain: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
