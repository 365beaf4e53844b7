"""Split a document into passages that follow its own structure.

A passage is one paragraph (or one list, or one vote item of a table); it never crosses a heading.
Its section path is the heading stack plus, in the consensus, the part it belongs to: each topic
is written as 目前指南推荐 / 存在争议及相关证据 / 我们推荐, and a paragraph opening with one of those
labels starts that part, which the following paragraphs continue until the next label or heading.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from indexer.load import parse_front_matter
from indexer.types import Document, EvidenceKind, Passage, VoteItem, VoteOption

# Paragraph labels that open a part, and the kind of evidence that part is.
PART_LABELS: dict[str, EvidenceKind] = {
    "导语": "intro",
    "目前指南推荐": "guideline",
    "存在争议及相关证据": "evidence",
    "我们推荐": "panel",
}
_LABEL_RE = re.compile("^(" + "|".join(PART_LABELS) + ")[：:]")
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LIST_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)、])\s+")
# ［1］ ［2-3］ ［10-12］ ［4，6］ and the ASCII-bracket forms [1] [2-3]
CITATION_RE = re.compile(r"[［\[](\d{1,3}(?:\s*[-–~～—]\s*\d{1,3})?(?:\s*[，,、]\s*\d{1,3}(?:\s*[-–~～—]\s*\d{1,3})?)*)[］\]]")
VOTE_HEADER_HINT = "赞同率"


def cited_slots(text: str) -> tuple[int, ...]:
    """All reference slots named by citation markers, ranges expanded: ［10-12］ -> 10, 11, 12."""
    slots: set[int] = set()
    for m in CITATION_RE.finditer(text):
        for part in re.split(r"[，,、]", m.group(1)):
            bounds = [int(x) for x in re.split(r"[-–~～—]", part.strip()) if x.strip()]
            if len(bounds) == 2 and bounds[0] <= bounds[1] and bounds[1] - bounds[0] < 50:
                slots.update(range(bounds[0], bounds[1] + 1))
            elif bounds:
                slots.add(bounds[0])
    return tuple(sorted(slots))


@dataclass
class _Line:
    start: int
    end: int  # excluding the newline
    text: str


def _lines(text: str, offset: int) -> list[_Line]:
    out, pos = [], offset
    for raw in text[offset:].split("\n"):
        out.append(_Line(pos, pos + len(raw), raw))
        pos += len(raw) + 1
    return out


def _table_cells(line: _Line) -> list[tuple[int, int]]:
    """Offsets of each cell's stripped content in a Markdown table row."""
    cells, text = [], line.text
    bars = [i for i, ch in enumerate(text) if ch == "|"]
    for a, b in zip(bars, bars[1:]):
        s, e = a + 1, b
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        cells.append((line.start + s, line.start + e))
    return cells


def _is_separator_row(line: _Line) -> bool:
    return bool(re.fullmatch(r"\s*\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*\|?\s*", line.text))


def _default_evidence(doc: Document) -> EvidenceKind:
    return {"consensus": "text", "reference_card": "reference", "reference_fulltext": "fulltext"}.get(doc.kind, "text")


class _PassageBuilder:
    def __init__(self, doc: Document):
        self.doc = doc
        self.passages: list[Passage] = []
        self.headings: list[tuple[int, str]] = []
        self.part: str | None = None
        self.part_kind: EvidenceKind | None = None
        self.para_in_section = 0
        self.ref_slot = doc.meta.get("slot") if isinstance(doc.meta.get("slot"), int) else None
        self.page_spans = doc.meta.get("page_spans") or []

    def page_of(self, start: int) -> int | None:
        for s, e, page in self.page_spans:
            if s <= start < e:
                return page
        return None

    def heading(self, level: int, title: str) -> None:
        self.headings = [h for h in self.headings if h[0] < level] + [(level, title)]
        self.part, self.part_kind, self.para_in_section = None, None, 0

    def section_path(self) -> tuple[str, ...]:
        path = tuple(t for _, t in self.headings)
        # A document title heading (# ...) is the document, not a section.
        if self.headings and self.headings[0][0] == 1 and len(path) > 1:
            path = path[1:]
        if self.part:
            path = path + (self.part,) if path and path[-1] != self.part else (path or (self.part,))
        return path

    def add(self, start: int, end: int, *, evidence: EvidenceKind | None = None, vote: VoteItem | None = None,
            section: tuple[str, ...] | None = None, page: int | None = None) -> None:
        text = self.doc.text[start:end]
        if not text.strip():
            return
        label = _LABEL_RE.match(text)
        if label and evidence is None:
            self.part = label.group(1)
            self.part_kind = PART_LABELS[self.part]
        self.para_in_section += 1
        kind = evidence or self.part_kind or _default_evidence(self.doc)
        self.passages.append(
            Passage(
                passage_id=f"{self.doc.doc_id}#p{len(self.passages) + 1}",
                doc_id=self.doc.doc_id,
                doc_kind=self.doc.kind,
                doc_title=self.doc.title,
                section_path=section or self.section_path() or (self.doc.title,),
                evidence_kind=kind,
                paragraph=self.para_in_section,
                start=start,
                end=end,
                text=text,
                page=page if page is not None else self.page_of(start),
                cites=cited_slots(text),
                ref_slot=self.ref_slot,
                vote=vote,
            )
        )


    def add_byline(self, start: int, end: int) -> None:
        # Kept out of the paragraph count, so that 第n段 of the text keeps its numbering.
        count = self.para_in_section
        self.add(start, end, evidence="authors", section=(self.headings[-1][1], "作者信息"))
        self.para_in_section = count


def _vote_items(doc: Document, rows: list[_Line]) -> list[tuple[VoteItem, int, int]]:
    """Group a vote table's rows into items: a row with a first cell opens an item."""
    items: list[tuple[list[tuple[int, int]], list[_Line]]] = []
    for row in rows:
        cells = _table_cells(row)
        if len(cells) < 3:
            continue
        if cells[0][1] > cells[0][0]:
            items.append((cells[0], [row]))
        elif items:
            items[-1][1].append(row)
    out = []
    for n, (q, item_rows) in enumerate(items, start=1):
        options = []
        for row in item_rows:
            cells = _table_cells(row)
            (os_, oe), (ps, pe) = cells[1], cells[2]
            pct = doc.text[ps:pe].strip()
            if not pct.isdigit():
                continue
            options.append(VoteOption(doc.text[os_:oe], os_, oe, int(pct), ps, pe))
        item = VoteItem(n, doc.text[q[0] : q[1]], q[0], q[1], tuple(options))
        out.append((item, item_rows[0].start, item_rows[-1].end))
    return out


def split_passages(doc: Document) -> list[Passage]:
    """Markdown-aware structural split; plain text splits on blank lines."""
    _, body = parse_front_matter(doc.text) if doc.text.startswith("---\n") else ({}, 0)
    b = _PassageBuilder(doc)
    lines = _lines(doc.text, body)
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.text.strip()
        if not stripped:
            i += 1
            continue
        h = _HEADING_RE.match(line.text)
        if h:
            b.heading(len(h.group(1)), h.group(2))
            i += 1
            continue
        if stripped.startswith(">"):
            # In the consensus a quoted line under a topic's heading is its byline (authors,
            # affiliation, e-mail): quotable, labelled 作者信息. Elsewhere such lines are notes.
            if doc.kind == "consensus" and b.headings:
                lead = len(line.text) - len(line.text.lstrip(" >"))
                b.add_byline(line.start + lead, line.end)
            i += 1
            continue
        if stripped.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].text.strip().startswith("|"):
                rows.append(lines[i])
                i += 1
            _add_table(doc, b, rows)
            continue
        # paragraph or list: consecutive non-blank lines that are not structure
        start = line.start
        end = line.end
        is_list = bool(_LIST_RE.match(line.text))
        i += 1
        while i < len(lines):
            nxt = lines[i]
            s = nxt.text.strip()
            if not s or _HEADING_RE.match(nxt.text) or s.startswith(("|", ">")):
                break
            if bool(_LIST_RE.match(nxt.text)) != is_list and not is_list:
                break
            end = nxt.end
            i += 1
        # A paragraph before any heading that opens with a part label (导语：) sets its part.
        b.add(start, end)
    return b.passages


def _add_table(doc: Document, b: _PassageBuilder, rows: list[_Line]) -> None:
    header = rows[0] if rows else None
    data = [r for r in rows[1:] if not _is_separator_row(r)]
    if header and VOTE_HEADER_HINT in header.text:
        table_title = b.headings[-1][1] if b.headings else "表"
        b.part, b.part_kind = None, None
        for item, start, end in _vote_items(doc, data):
            b.add(start, end, evidence="vote", vote=item, section=(table_title, f"第{item.number}项"))
        return
    if rows:
        b.add(rows[0].start, rows[-1].end)
