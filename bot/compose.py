"""The extractive writer: choose the sentences that answer, or decide that nothing does.

No LLM: the answer is made only of verbatim sentences of the retrieved passages, each quoted
「...」 with its citation and the kind of evidence, plus the vote table's figures as data.

Coverage is judged from the question's concepts and the attribute it asks (dose, duration,
percentage...) against what the passages actually state, never from a similarity threshold:
- a concept the corpus never mentions (another drug, gene, tumour) -> not covered;
- a value the question asks for (a dose, a duration) that no retrieved sentence states, for the
  drug asked about -> not covered;
- a question with no subject matter in common with the corpus -> not covered.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from bot.query import VALUE_ATTRIBUTES, Query, content_terms
from bot.retrieve import Hit
from indexer.lexicon import Lexicon, normalize_for_match, to_simplified
from indexer.store import StoredIndex
from indexer.structure import cited_slots
from indexer.types import Passage, Sentence

ATTRIBUTE_NAMES = {
    "dose": "剂量", "duration": "疗程（持续时间）", "timing": "时机", "percentage": "比例",
    "vote": "投票结果", "side_effects": "不良反应", "survival_rate": "生存率", "median_survival": "中位生存期",
    "schedule": "给药方案", "doi": "DOI", "pmid": "PMID", "pages": "卷期页码", "sample_size": "样本量",
    "hazard_ratio": "风险比", "follow_up_time": "随访时间", "count": "人数", "response_rate": "缓解率",
    "site": "发生部位",
}
_SLOT_QUESTION = re.compile(r"(?:参考文献|文献|引用|ref(?:erence)?\.?|citation)\s*[［\[]?\s*(\d{1,2})(?!\d)|[［\[]\s*(\d{1,2})\s*[］\]]", re.I)
# Score weights of a sentence (see score_sentences); named, not buried.
W_PASSAGE, W_DENSE, W_TERMS, W_CONCEPTS, W_ATTRIBUTE, W_KIND = 0.30, 0.30, 0.45, 0.20, 0.30, 0.20
# A reference card summarises a paper in our own words: for a question about the consensus it yields
# to the consensus text, and it leads only when the question is about the literature.
CARD_WEIGHT_FOR_CONSENSUS_QUESTIONS = 0.6
# Card sections that are bookkeeping (the caveat) or restate the consensus: kept for retrieval,
# never quoted as evidence (the consensus sentence itself is quoted instead).
CARD_SECTIONS_NOT_QUOTED = ("说明", "共识引用时的表述")
# Sentences of our own cards that speak about the card itself, not about the paper.
CARD_SELF_REFERENCE = re.compile(r"本项目|本卡片")
_LITERATURE_WORDS = re.compile(r"(文献|研究|引用|参考|试验|作者|期刊|论文|reference|study|studies|trial|paper|author|journal|cited|cite)", re.I)
# Concept types that place or qualify a question but are no subject of their own ("一线" alone is
# as much about hypertension as about GIST).
NO_SUBJECT_TYPES = {"setting", "generic", "method", "question_word", "property", "dose_level"}
SUBJECT_CONCEPTS = {"vote"}  # the panel's vote (表1) is this corpus's own subject, unlike "experts" or "consensus"
FUNCTION_CHARS = re.compile(r"[之或的了和与在是及其而也都就还又把被让给向从]")  # a bigram across them names nothing
FOREIGN_SHARE = 0.5  # a question half of whose subject words the corpus never uses is about something else
FOLLOWUP_FILLERS = re.compile(r"^(那么|那|还有|然后|另外)|呢|吧|啊|治疗")
SETTING_BIGRAM = re.compile(r"一线|二线|辅助|术后|复发|转移|晚期|停药|初诊|治疗")
DENSE_WINDOW = 0.08  # cosines within this distance of the best count as close (e5 cosines are compressed)
TOP_PASSAGES = 6
COOCCURRENCE_PASSAGES = 10  # focal concepts must meet in one of the best passages
VOTE_MATCH = 0.6  # vote-item match (see _vote_score) at which an unasked vote joins the answer  # sentences are drawn from the best fused passages


@dataclass
class Candidate:
    row: int  # sentence row in the index
    sentence: Sentence
    passage: Passage
    hit: Hit
    score: float = 0.0
    states: set[str] = field(default_factory=set)  # value attributes this sentence states


def question_slots(query: Query) -> tuple[int, ...]:
    slots = set()
    for m in _SLOT_QUESTION.finditer(query.text):
        n = int(m.group(1) or m.group(2))
        if 1 <= n <= 99:
            slots.add(n)
    return tuple(sorted(slots))


def _drug_bound(text: str, value_start: int, lexicon: Lexicon) -> str | None:
    """The drug a value belongs to: the nearest drug named before it in the sentence."""
    drugs = [m for m in lexicon.concept_matches(text) if lexicon.concepts[m.id].type == "drug" and m.end <= value_start]
    return drugs[-1].id if drugs else None


def states_attribute(text: str, passage_concepts: frozenset[str], attribute: str, query: Query, lexicon: Lexicon) -> bool:
    """Does this sentence state the value asked for, for the drug asked about?"""
    pattern = lexicon.attributes[attribute].stated_by
    if pattern is None:
        return True
    focal_drugs = {c for c in query.all_concepts if lexicon.concepts[c].type == "drug"}
    for m in pattern.finditer(text):
        if not focal_drugs:
            return True
        bound = _drug_bound(text, m.start(), lexicon)
        if bound in focal_drugs or (bound is None and focal_drugs & passage_concepts):
            return True
    return False


def asks_about_literature(query: Query, lexicon: Lexicon, slots: tuple[int, ...]) -> bool:
    return bool(slots) or bool(_LITERATURE_WORDS.search(query.text)) or any(
        lexicon.concepts[c].type == "trial" for c in query.concepts)


def quotable(passage: Passage) -> bool:
    return passage.vote is None and not (passage.doc_kind == "reference_card" and passage.section_path[-1] in CARD_SECTIONS_NOT_QUOTED)


_IDF_CACHE: dict[str, tuple[int, dict[str, int]]] = {}


def term_weights(index: StoredIndex, terms: set[str]) -> dict[str, float]:
    """Inverse sentence frequency of each question term: "阐明" or "一致" say more about which
    sentence answers than "替尼", which stands in half the corpus."""
    key = str(index.build_dir)
    cached = _IDF_CACHE.get(key)
    if cached is None:
        df: dict[str, int] = {}
        for s in index.sentences:
            norm = normalize_for_match(s.text)
            grams = {norm[i : i + 2] for i in range(len(norm) - 1)} | set(re.findall(r"[a-z][a-z0-9\-]+|\d+", norm))
            for g in grams:
                df[g] = df.get(g, 0) + 1
        cached = (len(index.sentences), df)
        _IDF_CACHE[key] = cached
    n, df = cached
    # A term no sentence contains tells nothing about which sentence answers: weight 0.
    return {t: math.log((n + 1) / (df[t] + 0.5)) if t in df else 0.0 for t in terms}


def _kind_preference(passage: Passage, query: Query) -> float:
    if passage.doc_kind == "reference_fulltext":
        return 1.0  # a paper's own text, which a user supplied, outranks our summary card of it
    if "finding" in query.attributes:
        return 1.0 if passage.section_path[-1].startswith("主要发现") or passage.evidence_kind == "evidence" else 0.0
    if "recommendation" in query.attributes:
        return {"panel": 1.0, "guideline": 0.6}.get(passage.evidence_kind, 0.0)
    if "mechanism" in query.attributes:
        return {"evidence": 1.0}.get(passage.evidence_kind, 0.0)
    return 0.0


def score_sentences(index: StoredIndex, query: Query, hits: list[Hit], qvec: np.ndarray, lexicon: Lexicon,
                    slots: tuple[int, ...], scope: str = "all") -> list[Candidate]:
    top = [h for h in hits if quotable(h.passage)][:TOP_PASSAGES]
    if slots:  # a question about reference n: its card and the consensus sentences citing it
        top = [h for h in hits if quotable(h.passage) and (
            h.passage.ref_slot in slots if h.passage.doc_kind != "consensus" else set(h.passage.cites) & set(slots))]
        # Every passage of the reference's own card or full text is a candidate, retrieved or not.
        seen = {h.row for h in top}
        floor = min((h.score for h in top), default=0.0) or min((h.score for h in hits), default=0.0)
        for row in index.slot_rows.get(slots[0], []) if len(slots) == 1 and scope == "all" else []:
            if row not in seen and quotable(index.passages[row]):
                p = index.passages[row]
                top.append(Hit(row, p, floor, float(index.passage_vectors[row] @ qvec), 0.0))
    if not top:
        return []
    best_fused = max(h.score for h in top) or 1.0  # added reference passages may all score 0
    rows = [r for h in top for r in index.passage_sentences[h.row]]
    if not rows:
        return []
    dense = index.sentence_vectors[rows] @ qvec
    dmax = float(dense.max())
    terms = set(query.content_terms)
    weights = term_weights(index, terms)
    total_weight = sum(weights.values()) or 1.0
    concepts = query.all_concepts
    hit_of = {h.row: h for h in top}
    value_attrs = (query.attributes & VALUE_ATTRIBUTES) - {"vote"}
    literature = asks_about_literature(query, lexicon, slots)
    speaking_attrs = {a for a in query.attributes - VALUE_ATTRIBUTES if lexicon.attributes[a].expand}
    out = []
    for r, d in zip(rows, dense):
        s = index.sentences[r]
        if index.passages[int(index.sentence_passage[r])].doc_kind == "reference_card" and CARD_SELF_REFERENCE.search(s.text):
            continue
        prow = int(index.sentence_passage[r])
        h = hit_of[prow]
        # The section path counts: "what to do on recurrence" is answered by the section titled so.
        snorm = normalize_for_match(s.text + " " + " ".join(h.passage.section_path))
        term_share = sum(weights[t] for t in terms if t in snorm) / total_weight if terms else 0.0
        s_concepts = lexicon.concepts_in(s.text)
        concept_share = len(concepts & s_concepts) / len(concepts) if concepts else 0.0
        states = {a for a in value_attrs if states_attribute(s.text, index.passage_concepts[prow], a, query, lexicon)}
        # A sentence in the words of what is asked ("机制" for a why-question, "建议" for what to do).
        speaks = {a for a in speaking_attrs if any(w in s.text for w in lexicon.attributes[a].expand.split())}
        if slots and (set(cited_slots(s.text)) & set(slots) or h.passage.ref_slot in slots):
            concept_share = 1.0  # the reference asked about: its own text, or the sentence citing it
        score = (W_PASSAGE * h.score / best_fused
                 + W_DENSE * max(0.0, 1.0 - (dmax - float(d)) / DENSE_WINDOW)
                 + W_TERMS * term_share + W_CONCEPTS * concept_share
                 + W_ATTRIBUTE * (len(states | speaks) / len(value_attrs | speaking_attrs) if value_attrs | speaking_attrs else 0.0)
                 + W_KIND * _kind_preference(h.passage, query))
        if h.passage.doc_kind != "consensus" and not literature:
            score *= CARD_WEIGHT_FOR_CONSENSUS_QUESTIONS
        out.append(Candidate(r, s, h.passage, h, score, states))
    out.sort(key=lambda c: -c.score)
    return out


def _vote_score(hit: Hit, query: Query, lexicon: Lexicon, best_fused: float, best_dense: float) -> float:
    """How well a vote item matches the question: its wording, its concepts (an item about "after
    stopping" loses to one without it when the question does not say so), its embedding (what
    carries an English question to Chinese wording), its fused rank, and options named verbatim."""
    vote = hit.passage.vote
    text = normalize_for_match(vote.question + " " + " ".join(o.text for o in vote.options))
    terms = set(query.content_terms)
    # The item's own wording weighs most: a trainee often repeats it ("800 mg剂量疗效并不优于400 mg").
    item_text = normalize_for_match(vote.question)
    share = (sum(1 for t in terms if t in text) + sum(1 for t in terms if t in item_text)) / (2 * len(terms)) if terms else 0.0
    concepts = query.all_concepts
    item_concepts = lexicon.concepts_in(vote.question + " " + " ".join(o.text for o in vote.options))
    c_share = len(concepts & item_concepts) / len(concepts) if concepts else 0.0
    # A setting the item is about and the question is not (e.g. "after stopping") counts against it.
    settings = {c for c in item_concepts if lexicon.concepts[c].type == "setting"}
    c_share -= 0.5 * len(settings - concepts) / len(settings) if settings else 0.0
    # A question that names one of the item's options word for word is about that item.
    named = any(len(o.text) >= 3 and normalize_for_match(o.text).replace(" ", "") in query.norm.replace(" ", "")
                for o in vote.options)
    dense = max(0.0, 1.0 - (best_dense - hit.dense) / DENSE_WINDOW)
    # Options that state the value asked (a dose for a dose question) mark the item that answers it.
    wanted = [lexicon.attributes[a].stated_by for a in query.attributes & VALUE_ATTRIBUTES - {"vote", "percentage"}
              if lexicon.attributes[a].stated_by is not None]
    asked_vote = bool({"vote", "percentage"} & query.attributes)
    states = any(p.search(o.text) for p in wanted for o in vote.options) if wanted and not asked_vote else False
    return (0.3 * hit.score / best_fused + 0.4 * share + 0.3 * c_share + 0.3 * dense
            + (0.3 if states else 0.0) + (0.3 if named else 0.0))


def choose_vote(hits: list[Hit], query: Query, lexicon: Lexicon) -> Hit | None:
    votes = [h for h in hits if h.passage.vote is not None]
    if not votes:
        return None
    best_fused = max(h.score for h in hits)
    best_dense = max(h.dense for h in votes)
    scored = sorted(votes, key=lambda h: -_vote_score(h, query, lexicon, best_fused, best_dense))
    best = scored[0]
    asked = "vote" in query.attributes
    # Unasked, a vote item joins the answer only when it is among the very best passages or its
    # wording matches the question closely.
    if asked or best.rank <= 3 or _vote_score(best, query, lexicon, best_fused, best_dense) >= VOTE_MATCH:
        return best
    return None


@dataclass
class Coverage:
    """What the coverage judgement leaves to the planner: the scored candidate sentences, the
    sentences that state each value asked (checked to exist), and the best-matching vote item;
    or a refusal with its reason."""

    candidates: list[Candidate]
    stating: list[Candidate]
    vote_hit: Hit | None
    refused: bool = False
    reason: str = ""
    slots: tuple[int, ...] = ()


def _refuse(reason: str) -> Coverage:
    return Coverage([], [], None, True, reason)


def judge_coverage(index: StoredIndex, query: Query, hits: list[Hit], qvec: np.ndarray, lexicon: Lexicon,
                   scope_concepts: set[str], scope: str = "all", setting_rows: tuple[int, ...] = (),
                   lenient: bool = False) -> Coverage:
    """Is the question covered? Judged from the concepts and the values it asks about against what
    the passages state (baseline-findings §5), never from a similarity threshold. `setting_rows`:
    the passages of the clinical setting the question names, where its concepts may meet even when
    a long vignette pulled retrieval elsewhere. `lenient`: the learned answerability decided that the
    question is answered (bot/decide.py), so only "nothing was found" refuses; the candidates are
    scored and filtered as usual."""
    # 1. Entities the corpus never mentions (a drug, gene, disease or setting it does not cover).
    absent = [lexicon.canonical(c) for c in sorted(query.asked) if c not in scope_concepts]
    unknown = absent + query.unknown_entities
    if unknown and not lenient:
        # Names in “” (「」 is reserved for verbatim quotes of the source).
        named = "、".join(f"“{w}”" for w in unknown if not re.search(r"\d", w))
        what = f"问题中的{named}" if named else "问题中提到的药物、基因或突变类型"
        return _refuse(f"本知识库没有涉及{what}的内容")
    # 1b. Concepts the corpus has, but never together: no passage speaks of all of them at once.
    together = [h.row for h in hits[:COOCCURRENCE_PASSAGES]] + list(setting_rows)
    meet_in_setting = bool(query.focal) and any(query.focal <= index.passage_concepts[r] for r in setting_rows)
    if query.focal and not lenient and not any(query.focal <= index.passage_concepts[r] for r in together):
        names = "、".join(f"“{lexicon.canonical(c)}”" for c in sorted(query.focal) if not re.search(r"\d", lexicon.canonical(c)))
        return _refuse(f"本知识库没有同时涉及{names or '问题中这几个方面'}的内容")
    slots = question_slots(query)
    candidates = score_sentences(index, query, hits, qvec, lexicon, slots, scope)
    vote_hit = None if slots else choose_vote(hits, query, lexicon)

    # 2. No subject matter in common with the corpus.
    has_subject = any(lexicon.concepts[c].type not in NO_SUBJECT_TYPES or c in SUBJECT_CONCEPTS
                      for c in query.all_concepts) or bool(slots)
    # Words that only place a question (一线, 辅助, 复发) or single characters are no shared subject.
    simplified = to_simplified(query.text)
    placed = normalize_for_match(simplified)
    # The words that ask (多大剂量, 吃多久, 怎么办) are no subject either: they are what the facet and
    # attribute readers matched, and their bigrams (用多, 多大) would count as words the corpus never uses.
    asking = [simplified[m.start:m.end] for m in lexicon.attribute_matches(simplified)]
    if query.reading and query.reading.intent.cue:
        asking.append(query.reading.intent.cue)
    cues = (*(query.reading.setting.cues if query.reading else ()), *asking)
    for cue in sorted(cues, key=len, reverse=True):  # 多大剂量 before the 剂量 inside it
        placed = placed.replace(normalize_for_match(cue), " ")
    placed = FOLLOWUP_FILLERS.sub(" ", placed)
    subject_terms = {t for t in content_terms(placed) if len(t) >= 2 and not SETTING_BIGRAM.fullmatch(t)
                     and not FUNCTION_CHARS.search(t)}
    best_terms = max((sum(1 for t in subject_terms if t in normalize_for_match(c.sentence.text))
                      for c in candidates[:10]), default=0)
    # "那辅助治疗呢？": a setting of this corpus named bare, with no foreign subject words, is about
    # the corpus's own subject; "高血压一线降压药怎么选" names a setting word but a foreign subject.
    # A foreign word is a run of bigrams the corpus never uses (高血 血压, 降压 压药); one such bigram
    # alone is mostly the seam between two words (患者|一线 -> 者一), not a subject.
    weights = term_weights(index, subject_terms)
    foreign = {t for t, w in weights.items() if w == 0.0}
    foreign_word = any(placed[i:i + 2] in foreign and placed[i + 1:i + 3] in foreign for i in range(len(placed) - 2))
    bare_setting = bool(query.reading and query.reading.setting.specific) and (
        len(foreign) <= FOREIGN_SHARE * max(1, len(weights)) or not foreign_word)
    if not has_subject and best_terms < 2 and not bare_setting and not lenient:
        return _refuse("问题与本知识库的主题（KIT突变胃肠间质瘤的伊马替尼治疗）无关")
    if not candidates and vote_hit is None:
        return _refuse("没有检索到相关段落")

    # 3. Values asked for must be stated (vote figures come from the table).
    value_attrs = (query.attributes & VALUE_ATTRIBUTES) - {"vote"}
    if "vote" in query.attributes and vote_hit is None and not lenient:
        return _refuse("本知识库没有与此相关的投票结果")
    stating: list[Candidate] = []
    for attr in sorted(value_attrs):
        found = [c for c in candidates if attr in c.states and _covers_focal(c, query, index, lexicon)]
        if not found and attr == "percentage" and vote_hit is not None:
            continue  # a share may be a vote's figure: the table states it
        if not found and lenient:
            continue
        if not found:
            return _refuse(f"本知识库没有给出这个问题所问的{ATTRIBUTE_NAMES[attr]}")
        stating += [c for c in found if c not in stating]

    # 4. A passage must speak of every focal concept (and name) of the question.
    if (query.focal or query.names) and candidates:
        lead = [c for c in candidates if query.focal <= index.passage_concepts[c.hit.row]
                and all(n in c.passage.text for n in query.names)]
        vote_covers = vote_hit is not None and query.focal <= index.passage_concepts[vote_hit.row]
        if not lead and not stating and not vote_covers and not meet_in_setting and lenient:
            return Coverage(candidates, stating, vote_hit, slots=slots)
        if not lead and not stating and not vote_covers and not meet_in_setting:
            names = "、".join(f"“{lexicon.canonical(c)}”" for c in sorted(query.focal) if not re.search(r"\d", lexicon.canonical(c)))
            return _refuse(f"本知识库没有同时涉及{names or '问题中这几个方面'}的内容")
        candidates = lead[:1] + [c for c in candidates if c not in lead[:1] and (
            query.focal & index.passage_concepts[c.hit.row] or any(n in c.passage.text for n in query.names))]
    return Coverage(candidates, stating, vote_hit, slots=slots)


# A sentence opening with these qualifies the one before it ("研究显示… 但目前相关研究仍不足"):
# quoting the claim without its qualifier would misrepresent the source.
QUALIFIER_START = re.compile(r"^(但|但是|然而|不过|因此|然|而)")


def with_qualifiers(chosen: list[Candidate], candidates: list[Candidate], index: StoredIndex) -> list[Candidate]:
    rows = {c.row for c in chosen}
    by_row = {c.row: c for c in candidates}
    out = list(chosen)
    for c in chosen:
        nxt = c.row + 1
        if nxt in rows or nxt >= len(index.sentences) or index.sentences[nxt].passage_id != c.sentence.passage_id:
            continue
        if QUALIFIER_START.match(index.sentences[nxt].text) and nxt in by_row:
            q = by_row[nxt]
            out.append(Candidate(q.row, q.sentence, q.passage, q.hit, c.score - 1e-6, q.states))
            rows.add(nxt)
    return out


def _covers_focal(c: Candidate, query: Query, index: StoredIndex, lexicon: Lexicon) -> bool:
    """A value answers only if its passage speaks of every focal concept and name of the question.
    In a reference card each line is one fact about one paper, so there the sentence itself must."""
    if c.passage.doc_kind == "consensus":
        concepts, text = index.passage_concepts[c.hit.row], c.passage.text
    else:
        concepts, text = lexicon.concepts_in(c.sentence.text), c.sentence.text
    return query.focal <= concepts and all(n in text for n in query.names)
