"""The medical lexicon: concepts with their surface forms, and the attributes a question can ask.

Matching is longest-first with masking, so "胃" inside "胃肠间质瘤" or "辅助" inside "新辅助" never
count on their own. Latin terms match on word boundaries, case-insensitively, except short
abbreviations (IM, SCF, D5...), which must be written as such.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_T2S = None


@lru_cache(maxsize=100_000)
def to_simplified(text: str) -> str:
    """Traditional -> simplified Chinese (trainees paste from Taiwanese/HK sources)."""
    global _T2S
    if _T2S is None:
        from opencc import OpenCC  # opencc-python-reimplemented: pure Python, no data download

        _T2S = OpenCC("t2s")
    return _T2S.convert(text)


@lru_cache(maxsize=100_000)
def normalize_for_match(text: str) -> str:
    """NFKC folds full-width digits/letters and "～"; simplified characters; lower case.
    Cached: corpus sentences are normalised again for every question (OpenCC is pure Python)."""
    return to_simplified(unicodedata.normalize("NFKC", text)).lower()


@dataclass(frozen=True)
class Concept:
    id: str
    type: str
    terms: tuple[str, ...]
    topic: bool = False


@dataclass(frozen=True)
class Attribute:
    id: str
    triggers: tuple[str, ...]
    stated_by: re.Pattern | None
    expand: str = ""


@dataclass(frozen=True)
class Match:
    id: str
    start: int
    end: int
    term: str


def _is_latin(term: str) -> bool:
    return bool(re.search(r"[A-Za-z0-9]", term)) and not re.search(r"[\u4e00-\u9fff]", term)


def _term_pattern(term: str) -> re.Pattern:
    body = re.escape(term).replace(r"\ ", r"\s*")
    case_sensitive = _is_latin(term) and len(term) <= 3 and term.isupper()
    if _is_latin(term):
        body = rf"(?<![A-Za-z0-9]){body}(?![A-Za-z])"
    return re.compile(body, 0 if case_sensitive else re.IGNORECASE)


def _required_literal(term: str) -> str | None:
    """A lower-cased piece of ``term`` that every match of its pattern contains, or None.

    The pattern lets spaces in the term stretch or vanish (``\\s*``), so the longest space-free
    piece is the literal. Pieces with non-ASCII cased letters get None: their regex always runs.
    """
    piece = max(term.split(), key=len, default="")
    if not piece or not (piece.isascii() or piece.lower() == piece.upper()):
        return None
    return piece.lower()


def _lowers_like_re(text: str) -> bool:
    """Does ``text.lower()`` equate exactly what re.IGNORECASE does? Yes when its only cased
    letters are ASCII (Chinese has no case); "ſ", "İ" or "K" (Kelvin) match ASCII letters under
    re.IGNORECASE but lower-case to something else, so such a text runs every regex."""
    return text.isascii() or all(ch.isascii() or ch.lower() == ch.upper() for ch in text)


class Matcher:
    """Finds non-overlapping term occurrences, longest term first."""

    def __init__(self, entries: dict[str, tuple[str, ...]]):
        pairs = [(term, key) for key, terms in entries.items() for term in terms]
        pairs.sort(key=lambda p: -len(p[0]))
        self._terms = [(t, k, _required_literal(t)) for t, k in pairs]
        # ~500 terms, of which a text holds a handful: a term is only tried when its literal's
        # first character is in the text and the literal itself is (a substring test at C speed);
        # an answer went from ~3,400 regex scans to a few dozen. Regexes are compiled on first use
        # (all of them cost ~0.25 s of a fresh `gistqa ask`; a benign race: two threads compile one).
        self._compiled: list[re.Pattern | None] = [None] * len(pairs)
        self._by_first: dict[str, list[int]] = {}
        self._always: list[int] = []
        for i, (_t, _k, literal) in enumerate(self._terms):
            if literal is None:
                self._always.append(i)
            else:
                self._by_first.setdefault(literal[0], []).append(i)

    def _candidates(self, text: str):
        """Indices of the patterns that can match ``text``, longest term first."""
        if not _lowers_like_re(text):
            return range(len(self._terms))
        lowered = text.lower()
        chosen = set(self._always)
        for ch in set(lowered):
            for i in self._by_first.get(ch, ()):
                if self._terms[i][2] in lowered:
                    chosen.add(i)
        return sorted(chosen)

    def pattern(self, i: int) -> re.Pattern:
        """The regex of term ``i`` (in longest-first order)."""
        compiled = self._compiled[i]
        if compiled is None:
            compiled = self._compiled[i] = _term_pattern(self._terms[i][0])
        return compiled

    def find(self, text: str) -> list[Match]:
        taken = bytearray(len(text))
        found: list[Match] = []
        for i in self._candidates(text):
            term, key, _literal = self._terms[i]
            for m in self.pattern(i).finditer(text):
                if any(taken[m.start() : m.end()]):
                    continue
                taken[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
                found.append(Match(key, m.start(), m.end(), term))
        found.sort(key=lambda m: m.start)
        return found


class Lexicon:
    def __init__(self, concepts: list[Concept], attributes: list[Attribute]):
        self.concepts = {c.id: c for c in concepts}
        self.attributes = {a.id: a for a in attributes}
        self._concepts = Matcher({c.id: c.terms for c in concepts})
        self._attributes = Matcher({a.id: a.triggers for a in attributes})

    @classmethod
    def load(cls, path: Path) -> "Lexicon":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        concepts = [
            Concept(c["id"], c["type"], tuple(c["terms"]), bool(c.get("topic", False))) for c in data["concepts"]
        ]
        attributes = [
            Attribute(a["id"], tuple(a["triggers"]), re.compile(a["stated_by"], re.IGNORECASE) if a.get("stated_by") else None,
                      a.get("expand", ""))
            for a in data["attributes"]
        ]
        return cls(concepts, attributes)

    def concept_matches(self, text: str) -> list[Match]:
        # Ids starting with "_" only mask question phrases; they are not concepts.
        return [m for m in self._concepts.find(text) if not m.id.startswith("_")]

    def concepts_in(self, text: str) -> frozenset[str]:
        return self._concepts_cached(text)

    @lru_cache(maxsize=200_000)
    def _concepts_cached(self, text: str) -> frozenset[str]:
        # Passage and sentence texts recur across questions; matching ~400 patterns is the cost.
        return frozenset(m.id for m in self._concepts.find(to_simplified(text)) if not m.id.startswith("_"))

    def attribute_matches(self, text: str) -> list[Match]:
        """Where the words that ask for an attribute stand ("剂量", "比例", "为什么")."""
        return self._attributes.find(to_simplified(text))

    def attributes_in(self, text: str) -> set[str]:
        # A trigger inside a longer concept term is part of that term: "剂量" in "标准剂量" names a
        # dose level, it does not ask for a dose.
        text = to_simplified(text)
        spans = [(m.start, m.end) for m in self._concepts.find(text) if not m.id.startswith("_")]
        return {a.id for a in self._attributes.find(text)
                if not any(s <= a.start and a.end <= e and e - s > a.end - a.start for s, e in spans)}

    def canonical(self, concept_id: str) -> str:
        """The first surface form: the corpus's own wording (Chinese where the corpus is Chinese)."""
        return self.concepts[concept_id].terms[0]

    def expansion_terms(self, concept_id: str) -> tuple[str, ...]:
        return self.concepts[concept_id].terms


@lru_cache(maxsize=4)
def load_lexicon(path: str) -> Lexicon:
    return Lexicon.load(Path(path))
