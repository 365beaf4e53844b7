"""Plan an answer: which units of the document answer the question, in which order, or why none.

The plan is built once per question by `Bot.answer` and handed to a writer (extractive or LLM);
neither writer calls back into the bot. It follows the document's own structure, the strongest
signal there is without an LLM (answer-shapes.md):

  setting (bot/setting.py) -> the consensus topic(s) that may answer -> the facet asked decides
  the lead: what to do -> the panel's recommendation (我们推荐), whole, with the guideline sentence
  that carries the dose; a value -> the sentence stating it; why -> the mechanism; a vote -> the
  setting's vote item; who -> the byline.

Another setting's text comes in only when the question compares settings; a management question
that names no setting gets one labelled line per setting. Every decision is recorded in
`Plan.explain` for `gistqa ask --explain`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.compose import ATTRIBUTE_NAMES, NO_SUBJECT_TYPES, Candidate, Coverage, asks_about_literature, quotable, term_weights, with_qualifiers
from bot.query import DETAIL_CONCEPTS, Query, content_terms
from bot.retrieve import Hit
from bot.setting import (ADJUVANT, ALL_SETTINGS, AUTHORS, FIRST_LINE, MANAGEMENT, RECUR_AFTER, RECUR_DURING,
                         RECURRENCE, SETTING_LABELS, VALUE, VOTE, WHY, GUIDELINE_NAMED, NUMBER_ASKED, Reading,
                         detect_facet, detect_settings)
from indexer.lexicon import Lexicon, normalize_for_match, to_simplified
from indexer.store import StoredIndex

# --- named limits ------------------------------------------------------------------------------
MAX_BLOCKS = 3  # default of Settings.max_quotes: one more block is one more chance to show another setting's text
MAX_BLOCKS_DETAIL = 6  # default of Settings.max_quotes_detail (the 详细 / --detail mode)
LEAD_MAX_SENTENCES = 4  # a lead block (a mechanism told in steps) reads as one quote up to this
LEAD_MAX_CHARS = 260
WHY_KINDS = ("evidence", "intro", "reference", "fulltext")  # where a mechanism or a cause is told
KEEP_RATIO = 0.80  # default of Settings.sentence_keep_ratio: a further block must score this share of the lead's
NEIGHBOUR_RATIO = 0.75  # an adjacent sentence joins the lead block at this share of its score
# Properties a question can be about (预后, 生存, 疗效, 耐受), like the mechanisms it names (SCF,
# D5-D5): the lead must name the one asked.
# Sensitivity is left out: it is what the whole document is about.
ASKED_PROPERTIES = {"prognosis", "survival", "efficacy", "tolerance"}
# "400吃着进展了" / "标准剂量失败": the guideline's statement on failure of the standard dose answers it.
FAILURE_ASKED = re.compile(r"失败|fail")
ITEM_NUMBER = re.compile(r"第\s*([一二三四五六七八九]|\d)\s*(?:项|题|条)|(?:item|question)\s*(\d)", re.I)
COMPARE_WORDS = re.compile(r"区别|不同|差别|差异|相比|比较|对比|分别|compare|differ|versus|vs")
SPECIFIC_MARGIN = 0.15  # a sentence of the setting leads over its recommendation when it holds this much more of the question's wording
VOTE_OPTION_WEIGHT = 1.0  # an option repeated in the question marks its item
# "哪道题分歧最大" / "意见最一致的是哪项": the item is chosen by its own figures, not its wording.
# Divided = the smallest majority (the largest option's share is lowest); agreed = the largest.
VOTE_MOST_DIVIDED = re.compile(r"分歧(最大|最多|最明显)|争议最大|(意见|看法|观点|投票)最(不统一|分散|不一致)|最不(一致|统一)|"
                               r"共识(度)?最(低|弱)|most (divided|split|disputed|contested)|least (agreement|consensus)", re.I)
VOTE_MOST_AGREED = re.compile(r"(意见|看法|观点|投票)?最(一致|统一)|共识(度)?最(高|强)|分歧最小|争议最小|"
                              r"most (agreed|agreement|consensus|unanimous)|(strongest|highest) (agreement|consensus)", re.I)
# "那专家投票呢？" after "辅助治疗用多少剂量？": a bare follow-up asks how the panel voted on what the
# earlier question asked, what to do; so the items that ask what to do (…剂量应为： / …应选择：) are
# chosen from, not one asking agreement with a study finding, in the same setting.
VOTE_DECISION = re.compile(r"(?:应为|应选择|选择)\s*[:：]?\s*$")
ANSWER_BUDGET = 430  # characters of quoted text: above it, context blocks (a vote, a second sentence) are left out
GENERAL_MAX_BLOCKS = 2  # a question with no management facet: the sentence that answers and at most one more
MECHANISM_BONUS = 0.3  # for why: a sentence that names a mechanism or a cause leads
LEAD_POOL = 8  # the lead is chosen among this many best candidates of the setting
LEAD_WORDING_WEIGHT = 1.0  # weight of the question's own wording when choosing the lead
CAUSAL = re.compile(r"机制|导致|由于|因为|原因|所致|与以下因素有关")
DOSE_PATTERN = re.compile(r"\d+\s*(mg|毫克)")
GROUP_OF = {FIRST_LINE: FIRST_LINE, ADJUVANT: ADJUVANT, RECUR_DURING: "recurrence", RECUR_AFTER: "recurrence"}
GROUP_LABELS = {FIRST_LINE: SETTING_LABELS[FIRST_LINE], ADJUVANT: SETTING_LABELS[ADJUVANT],
                "recurrence": "辅助治疗期间或停药后复发转移"}


@dataclass
class Block:
    """One quote block: consecutive sentences of one passage, or one vote item, or one byline."""

    row: int  # passage row in the index
    sentences: list[int]  # sentence rows, consecutive, in document order (empty for a vote item)
    role: str  # lead / dose / context / vote / setting / authors
    label: str = ""  # a setting's name, for the labelled per-setting answer
    why: str = ""
    # Chosen for what the question names outright (a vote item's number or figures, a guideline,
    # "what else"): the learned lead (bot/decide.py) does not reorder such a plan.
    pinned: bool = False


@dataclass
class Plan:
    """What the answer will say, decided once: settings, facet, blocks, or a refusal and why."""

    reading: Reading
    blocks: list[Block] = field(default_factory=list)
    refused: bool = False
    reason: str = ""
    slots: tuple[int, ...] = ()
    literature: bool = False
    explain: list[str] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)  # for --explain: score parts, kept or dropped
    keep_ratio: float = KEEP_RATIO


# --- the document's map: topics, their settings, their parts ----------------------------------
@dataclass
class Topic:
    title: str
    settings: tuple[str, ...]
    rows: dict[str, list[int]]  # evidence kind -> passage rows, in document order


@dataclass
class DocumentMap:
    topics: list[Topic]
    topic_of_row: dict[int, Topic]
    vote_settings: dict[int, tuple[str, ...]]  # vote passage row -> its settings
    author_rows: list[int]
    author_names: tuple[str, ...]
    row_of: dict[str, int] = field(default_factory=dict)  # passage_id -> row


_MAPS: dict[str, DocumentMap] = {}
# Concepts that only place or name the subject of every question here (imatinib is in all of them).
PLACING_CONCEPTS = {"imatinib", "mutation"}
# Words of every clinical sentence here: they tell no sentence from another.
GENERIC_TERMS = {"患者", "病人", "治疗", "突变", "基因", "用药", "药物", "病例",
                 # words of asking what to do: the question's kind, not its subject
                 "处理", "方案", "选择", "推荐", "建议", "应该", "行不", "不行", "怎么", "如何", "下一", "一步"}
ENGLISH_FUNCTION_WORDS = {"it", "its", "was", "were", "has", "had", "have", "if", "when", "then", "than", "that",
                          "this", "there", "they", "we", "you", "can", "will", "would", "not", "no", "yes", "any", "mg"}
SETTING_ONLY = re.compile(r"[辅助术后治疗复发转移晚期一线停药结束期间]+")


def _bigrams(text: str) -> set[str]:
    t = normalize_for_match(text)
    return {t[i:i + 2] for i in range(len(t) - 1)}


def document_map(index: StoredIndex) -> DocumentMap:
    """Topics of the consensus with the settings each speaks of, read from the document itself:
    a topic's title, else its panel's recommendation; a vote item's own wording, else the topic
    whose text it shares most words with. Cached per index build."""
    key = str(index.build_dir)
    if key in _MAPS:
        return _MAPS[key]
    topics: dict[str, Topic] = {}
    topic_of_row: dict[int, Topic] = {}
    author_rows: list[int] = []
    for row, p in enumerate(index.passages):
        if p.doc_kind != "consensus" or p.vote is not None or p.evidence_kind == "intro":
            continue
        if p.evidence_kind == "authors":
            author_rows.append(row)
        t = topics.setdefault(p.section_path[0], Topic(p.section_path[0], (), {}))
        t.rows.setdefault(p.evidence_kind, []).append(row)
        topic_of_row[row] = t
    for t in topics.values():
        found = detect_settings(t.title).settings
        for kind in ("panel", "guideline"):
            if not found:
                found = detect_settings(" ".join(index.passages[r].text for r in t.rows.get(kind, []))).settings
        t.settings = found
    vote_settings: dict[int, tuple[str, ...]] = {}
    for row, p in enumerate(index.passages):
        if p.vote is None or p.doc_kind != "consensus":
            continue
        found = detect_settings(p.vote.question).settings
        if not found and topics:
            words = _bigrams(p.vote.question)
            best = max(topics.values(), key=lambda t: len(words & _bigrams(" ".join(
                index.passages[r].text for rows in t.rows.values() for r in rows))))
            found = best.settings
        vote_settings[row] = found
    names: list[str] = []
    for row in author_rows:
        head = re.split(r"[（(]", index.passages[row].text)[0]
        names += [n for n in re.split(r"[\s,，、]+", head) if 2 <= len(n) <= 4]
    dm = DocumentMap(list(topics.values()), topic_of_row, vote_settings, author_rows, tuple(names),
                     {p.passage_id: i for i, p in enumerate(index.passages)})
    _MAPS[key] = dm
    return dm


def _in_settings(topic_settings: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
    return bool(set(topic_settings) & set(wanted))


# --- helpers over sentences --------------------------------------------------------------------
def _sentence_text(index: StoredIndex, row: int) -> str:
    return index.sentences[row].text


def _names_treatment(text: str, lexicon: Lexicon) -> bool:
    """Does a sentence name a drug or a dose (the part of a recommendation a trainee acts on)?"""
    if DOSE_PATTERN.search(text):
        return True
    return any(lexicon.concepts[c].type in ("drug", "dose_level", "dose_value") for c in lexicon.concepts_in(text))


def _drugs(concepts, lexicon: Lexicon) -> set[str]:
    return {c for c in concepts if lexicon.concepts[c].type == "drug"}


def recommendation_block(index: StoredIndex, row: int, lexicon: Lexicon, minimal: bool = False) -> list[int]:
    """The panel's recommendation, whole: its sentences from the first through the one that names
    the drug or dose (never cut before it). `minimal`: just the sentence that names it."""
    rows = index.passage_sentences[row]
    for i, r in enumerate(rows):
        if _names_treatment(_sentence_text(index, r), lexicon):
            return [r] if minimal else rows[: i + 1]
    return rows[:1]


def dose_sentence(index: StoredIndex, topic: Topic, lexicon: Lexicon, drugs: set[str]) -> int | None:
    """The guideline sentence of a topic that carries the dose (for the drug asked, if one is named)."""
    for row in topic.rows.get("guideline", []):
        for r in index.passage_sentences[row]:
            text = _sentence_text(index, r)
            if DOSE_PATTERN.search(text) and (not drugs or drugs & lexicon.concepts_in(text)):
                return r
    return None


def joinable(index: StoredIndex, a: int, b: int) -> bool:
    """Sentence rows a and b (b right after a) read as one quote: same passage, same line. A list
    item on the next line is another quote (a quote never spans a line break)."""
    if b != a + 1 or b >= len(index.sentences):
        return False
    sa, sb = index.sentences[a], index.sentences[b]
    if sa.passage_id != sb.passage_id:
        return False
    p = index.passage_by_id[sa.passage_id]
    return "\n" not in index.documents[p.doc_id].text[sa.end:sb.start]


def _complete_clause(index: StoredIndex, rows: list[int]) -> list[int]:
    """A clause cut at "；" (the splitter ends sentences there) is completed by the next row of the
    same line, which carries on its subject ("目前尚有争议；包括…权威指南，均未提供…"): quote both."""
    last = rows[-1]
    nxt = last + 1
    if joinable(index, last, nxt) and _sentence_text(index, last).rstrip().endswith("；"):
        return rows + [nxt]
    return rows


# --- the planner ---------------------------------------------------------------------------------
def plan_answer(index: StoredIndex, query: Query, hits: list[Hit], coverage: Coverage, lexicon: Lexicon,
                detail: bool = False, scope: str = "all", max_blocks: int = MAX_BLOCKS,
                max_blocks_detail: int = MAX_BLOCKS_DETAIL, keep_ratio: float = KEEP_RATIO) -> Plan:
    reading = query.reading or Reading(detect_settings(query.text), None)  # type: ignore[arg-type]
    plan = Plan(reading, slots=coverage.slots)
    dm = document_map(index)
    settings = reading.setting.settings
    plan.literature = asks_about_literature(query, lexicon, coverage.slots)
    plan.explain.append(
        f"setting: {', '.join(settings) or 'none'}" + (" (compare)" if reading.setting.compare else "")
        + (" (from history)" if reading.setting_from_history else "")
        + (f" · cues: {'/'.join(reading.setting.cues)}" if reading.setting.cues else ""))
    plan.explain.append(f"facet: {reading.intent.facet}" + (f" (cue: {reading.intent.cue})" if reading.intent.cue else "")
                        + (" (from history)" if reading.facet_from_history else ""))
    plan.explain.extend(reading.notes)
    _record_candidates(plan, coverage.candidates, index, dm, settings)
    if coverage.refused:
        # Who wrote a part is answerable even when nothing else in the question is.
        if reading.intent.facet == AUTHORS and dm.author_rows and not query.unknown_entities:
            blocks = _authors(index, query, dm, settings)
            if blocks:
                plan.blocks = blocks
                plan.explain.append("refusal overruled: the byline answers a question about authors")
                return plan
        plan.refused, plan.reason = True, coverage.reason
        plan.explain.append(f"refused: {coverage.reason}")
        return plan
    facet = reading.intent.facet
    plan.keep_ratio = keep_ratio
    max_blocks = max_blocks_detail if detail else max_blocks
    if facet == AUTHORS and dm.author_rows:
        blocks = _authors(index, query, dm, settings)
    elif facet == VOTE:
        blocks = _vote(index, query, coverage, dm, settings, lexicon)
    elif plan.literature:
        blocks = _general(index, query, coverage, dm, settings, plan, lexicon, allow_cards=scope == "all")
    elif facet == MANAGEMENT and dm.topics:
        blocks = _management(index, query, coverage, dm, settings, reading.setting.compare, lexicon, plan)
    elif facet == VALUE and coverage.stating:
        blocks = _value(index, query, coverage, dm, settings, plan)
    else:
        blocks = _general(index, query, coverage, dm, settings, plan, lexicon, allow_cards=False)
    if not blocks:
        attr = reading.intent.cue if facet == VALUE else ""
        plan.refused = True
        plan.reason = (f"本知识库没有给出这个问题所问的{ATTRIBUTE_NAMES[attr]}" if attr in ATTRIBUTE_NAMES
                       else "本知识库中与所问临床情境相符的原文没有回答这个问题")
        plan.explain.append("refused: no unit of the asked setting answers the question")
        return plan
    plan.blocks = _within_budget(index, blocks, max_blocks, detail, plan)
    return plan


def _record_candidates(plan: Plan, candidates: list[Candidate], index: StoredIndex, dm: DocumentMap,
                       settings: tuple[str, ...]) -> None:
    for c in candidates[:12]:
        topic = dm.topic_of_row.get(c.hit.row)
        plan.candidates.append({
            "sentence": c.sentence.text[:40], "place": c.passage.section, "score": round(c.score, 3),
            "topic_settings": list(topic.settings) if topic else [],
            "in_setting": allowed(c.hit.row, c.passage, dm, settings, cards=True),
        })


def allowed(row: int, passage, dm: DocumentMap, settings: tuple[str, ...], cards: bool) -> bool:
    """May this passage answer a question about these settings? Its topic must be one of them;
    the introduction speaks of the disease in general and is always allowed; a reference card only
    for a question about the literature."""
    if passage.doc_kind != "consensus":
        return cards
    if passage.vote is not None:
        return not settings or _in_settings(dm.vote_settings.get(row, ()), settings)
    topic = dm.topic_of_row.get(row)
    if topic is None or not settings:
        return True
    return _in_settings(topic.settings, settings)


def _speaks_of_another_setting(c: Candidate, settings: tuple[str, ...]) -> bool:
    """A sentence of the introduction that is about one setting ("针对该类患者的辅助治疗管理尚未达成
    共识") is that setting's text: not for a question about another one."""
    if not settings or c.passage.evidence_kind != "intro":
        return False
    own = detect_settings(c.sentence.text).settings
    return bool(own) and not set(own) & set(settings)


def _lead_block(index: StoredIndex, c: Candidate, scores: dict[int, float], role: str, joins: set[int] = frozenset()) -> Block:
    """A sentence with its well-scoring neighbours of the same passage (a mechanism is two or three
    sentences in a row), up to LEAD_MAX_SENTENCES and LEAD_MAX_CHARS."""
    rows = [c.row]
    passage_rows = index.passage_sentences[c.hit.row]
    floor = NEIGHBOUR_RATIO * scores.get(c.row, c.score)
    def length(rs):
        return sum(len(_sentence_text(index, r)) for r in rs)
    for step in (1, -1):
        r = c.row + step
        while (r in passage_rows and (scores.get(r, 0.0) >= floor or r in joins) and len(rows) < LEAD_MAX_SENTENCES
               and length(rows + [r]) <= LEAD_MAX_CHARS and joinable(index, min(r, r - step), max(r, r - step))):
            rows.append(r)
            r += step
    rows.sort()
    return Block(c.hit.row, _complete_clause(index, rows), role, why=f"score {c.score:.3f}")


def _general(index: StoredIndex, query: Query, coverage: Coverage, dm: DocumentMap, settings: tuple[str, ...],
             plan: Plan, lexicon: Lexicon, allow_cards: bool) -> list[Block]:
    cands = [c for c in coverage.candidates if quotable(c.passage)
             and allowed(c.hit.row, c.passage, dm, settings, cards=allow_cards)
             and not _speaks_of_another_setting(c, settings)]
    if allow_cards and coverage.slots:
        # A question about reference n: the sentence citing it and the reference's own text.
        own = [c for c in cands if c.passage.doc_kind != "consensus" and c.passage.ref_slot in coverage.slots]
        citing = [c for c in cands if c.passage.doc_kind == "consensus"]
        cands = (citing[:1] + own[:2] + citing[1:] + own[2:]) if citing else own + citing
    why_asked = query.reading is not None and query.reading.intent.facet == WHY
    if why_asked:
        # Why: the evidence and its mechanism (sentences naming a mechanism or a cause), not the
        # guideline's or panel's wording.
        def why_score(c: Candidate) -> float:
            causal = bool(CAUSAL.search(c.sentence.text)) or any(
                lexicon.concepts[k].type == "mechanism" for k in lexicon.concepts_in(c.sentence.text))
            return c.score + (MECHANISM_BONUS if causal else 0.0)
        why = sorted((c for c in cands if c.passage.evidence_kind in WHY_KINDS),
                     key=lambda c: -why_score(c))
        cands = why + [c for c in cands if c not in why]
    if allow_cards and coverage.slots:
        # What a paper found is in its findings, not in its bibliographic record.
        cands.sort(key=lambda c: 0 if c.passage.doc_kind == "consensus" else (1 if c.passage.section_path[-1].startswith("主要发现") else 2))
    if cands and not coverage.slots:
        # The lead is the sentence that holds the question's own words ("一致吗" -> the sentence
        # saying 基本一致), not only the best-fused one: scores are re-weighed by that share.
        share = wording_share(index, query, lexicon)
        # What is asked about (预后, 敏感性, 疗效…): a sentence that names it leads over one that does not.
        asked_about = (query.concepts & ASKED_PROPERTIES) | {c for c in query.concepts if lexicon.concepts[c].type == "mechanism"}

        def names_asked(c: Candidate) -> bool:
            return not asked_about or bool(asked_about & lexicon.concepts_in(c.sentence.text))

        head = sorted(cands[:LEAD_POOL], key=lambda c: (not names_asked(c), -(
            c.score + LEAD_WORDING_WEIGHT * share(c.sentence.text)
            + (MECHANISM_BONUS if why_asked and why_score(c) > c.score else 0.0))))
        cands = head + cands[LEAD_POOL:]
    cands = with_qualifiers(cands[:1], coverage.candidates, index) + cands[1:] if cands else []
    dropped = len(coverage.candidates) - len([c for c in coverage.candidates if allowed(
        c.hit.row, c.passage, dm, settings, cards=allow_cards)])
    if dropped:
        plan.explain.append(f"{dropped} candidate sentences dropped: another setting, or a reference card for a clinical question")
    if not cands:
        return []
    if allow_cards and coverage.slots and RECORD_ASKED.search(query.text):
        # "［3］是哪篇文献？": the card's candidate record, whole, answers; then the citing sentence.
        blocks = [Block(row, list(index.passage_sentences[row][:1]), "lead", why="the candidate record of the reference asked")
                  for row in _record_rows(index, coverage.slots)]
        if blocks:
            return blocks
    if allow_cards and coverage.slots:
        # What a paper says is in its findings; its bibliographic record is named by the 所引文献 line.
        findings = [c for c in cands if not c.passage.section_path[-1].startswith("候选文献")]
        cands = findings or cands
    scores = {c.row: (why_score(c) if why_asked else c.score) for c in cands}
    if why_asked:
        # The mechanism is told in consecutive sentences ((1)…(2)…上述因素…): they read as one.
        causal = {c.row for c in cands if why_score(c) > c.score}
        blocks = [_lead_block(index, cands[0], scores, "lead", causal)]
    else:
        blocks = [Block(cands[0].hit.row, _complete_clause(index, [cands[0].row]), "lead", why=f"score {cands[0].score:.3f}")]
    used = set(blocks[0].sentences)
    best = cands[0].score
    for c in cands[1:]:
        if len(blocks) >= GENERAL_MAX_BLOCKS and not coverage.slots:
            break
        if c.row in used or c.score < plan.keep_ratio * best:
            continue
        if blocks[-1].row == c.hit.row and joinable(index, blocks[-1].sentences[-1], c.row):
            blocks[-1].sentences.append(c.row)
        elif not coverage.slots and ((not why_asked and c.hit.row != blocks[0].row) or (
                why_asked and (c.passage.section_path[0] != index.passages[blocks[0].row].section_path[0]
                               or why_score(c) <= c.score or c.passage.evidence_kind not in WHY_KINDS))):
            # Why: only more of the mechanism, from the same topic, joins.
            # Another passage is another subject more often than not: one block answers.
            plan.explain.append(f"not quoted (another passage): {c.sentence.text[:24]}…")
            continue
        else:
            blocks.append(Block(c.hit.row, [c.row], "context", why=f"score {c.score:.3f} ≥ {plan.keep_ratio}×lead"))
        used.add(c.row)
    if coverage.slots and allow_cards and not any(index.passages[b.row].doc_kind != "consensus" for b in blocks[:3]):
        own = [c for c in cands if c.passage.doc_kind != "consensus" and c.row not in used]
        if own:
            blocks.insert(1, Block(own[0].hit.row, [own[0].row], "context", why="the reference's own text"))
    if coverage.slots and allow_cards:
        # Which paper the reference is: the card's candidate record names it (its title), after
        # what it found; the answer's 所引文献 line says it is a candidate, not confirmed.
        quoted = {b.row for b in blocks}
        records = [row for row in _record_rows(index, coverage.slots) if row not in quoted]
        if records:
            blocks.insert(RECORD_POSITION, Block(records[0], list(index.passage_sentences[records[0]][:1]), "record",
                                                 why="the candidate record of the reference asked (names the paper)"))
    return blocks


RECORD_POSITION = 2  # the candidate record follows the citing sentence and the first finding (within MAX_BLOCKS)
RECORD_ASKED = re.compile(r"哪篇|哪一篇|是什么文献|(?:文献|[］\]])\s*是什么\W*$|候选文献|哪些研究|哪个版本|出处|which (?:paper|article|study|reference)|what is (?:reference|ref)", re.I)


def _record_rows(index: StoredIndex, slots: tuple[int, ...]) -> list[int]:
    rows = []
    for n in slots[:2]:
        record = index.slot_records.get(n)
        if record is not None:
            rows.append(next(i for i, p in enumerate(index.passages) if p.passage_id == record.passage_id))
    return rows


def _value(index: StoredIndex, query: Query, coverage: Coverage, dm: DocumentMap, settings: tuple[str, ...],
           plan: Plan) -> list[Block]:
    stating = [c for c in coverage.stating if quotable(c.passage) and allowed(c.hit.row, c.passage, dm, settings, cards=plan.literature)]
    if not stating:
        return []
    c = stating[0]
    lead = Block(c.hit.row, _complete_clause(index, [c.row]), "lead", why=f"states the value asked ({query.reading.intent.cue})")
    blocks = [lead]
    nxt = c.row + 1
    if joinable(index, c.row, nxt) and re.match(
            r"^(其中|但|但是|然而)", _sentence_text(index, nxt)):
        lead.sentences.append(nxt)  # "其中，20%~25%的小肠GIST…" refines the figure just stated
    return blocks


def _authors(index: StoredIndex, query: Query, dm: DocumentMap, settings: tuple[str, ...]) -> list[Block]:
    named = [r for r in dm.author_rows if any(n in query.text and n in index.passages[r].text for n in dm.author_names)]
    if not named:  # an e-mail address or a hospital named in the question
        named = [r for r in dm.author_rows if any(len(w) >= 5 and w in index.passages[r].text
                                                  for w in re.findall(r"[\w.@\-]+|[\u4e00-\u9fff]{5,}", query.text))]
    if not named and settings:
        named = [r for r in dm.author_rows if _in_settings(dm.topic_of_row[r].settings, settings)]
    if not named:
        words = _bigrams(query.text)
        scored = sorted(dm.author_rows, key=lambda r: -len(words & _bigrams(dm.topic_of_row[r].title)))
        overlap = [len(words & _bigrams(dm.topic_of_row[r].title)) for r in scored]
        unique_best = bool(overlap) and overlap[0] >= 1 and (len(overlap) == 1 or overlap[0] > overlap[1])
        named = [scored[0]] if unique_best else list(dm.author_rows)
    return [Block(r, list(index.passage_sentences[r]), "authors", why="byline of the part asked") for r in named]


def _subject_named(query: Query, lexicon: Lexicon) -> bool:
    """The question's own words name subject matter (a dose, a drug, a study), not only the vote,
    the panel or the setting."""
    return any(lexicon.concepts[c].type not in NO_SUBJECT_TYPES for c in query.concepts)


def _vote(index: StoredIndex, query: Query, coverage: Coverage, dm: DocumentMap, settings: tuple[str, ...],
          lexicon: Lexicon) -> list[Block]:
    from bot.compose import _vote_score

    votes = [(row, p) for row, p in enumerate(index.passages) if p.vote is not None and p.doc_kind == "consensus"
             and (not settings or _in_settings(dm.vote_settings.get(row, ()), settings))]
    if not votes:
        return []
    hit_of = {c.hit.row: c.hit for c in coverage.candidates}
    if coverage.vote_hit is not None:
        hit_of[coverage.vote_hit.row] = coverage.vote_hit
    best_fused = max((h.score for h in hit_of.values()), default=1.0) or 1.0
    dummy = {row: hit_of.get(row) or Hit(row, p, 0.0, 0.0, 0.0) for row, p in votes}
    best_dense = max((h.dense for h in dummy.values()), default=0.0)
    asked = _bigrams(query.text)

    def option_named(row: int) -> float:
        """The share of an option's wording the question repeats ("选标准剂量400的专家")."""
        return max((len(_bigrams(o.text) & asked) / max(1, len(_bigrams(o.text)))
                    for o in index.passages[row].vote.options), default=0.0)

    pool = list(dummy)
    earlier = query.history[-1] if query.history else ""
    if earlier and not _subject_named(query, lexicon) and detect_facet(
            earlier, lexicon.attributes_in(earlier), lexicon.concepts_in(earlier)).facet == MANAGEMENT:
        pool = [r for r in pool if VOTE_DECISION.search(index.passages[r].vote.question)] or pool
    best = max(pool, key=lambda r: _vote_score(dummy[r], query, lexicon, best_fused, best_dense)
               + VOTE_OPTION_WEIGHT * option_named(r))
    text = to_simplified(query.text)
    divided, agreed = VOTE_MOST_DIVIDED.search(text), VOTE_MOST_AGREED.search(text)
    if divided or agreed:
        majority = {row: max(o.percent for o in p.vote.options) for row, p in votes}
        target = (min if divided else max)(majority.values())
        kind = "most divided" if divided else "most agreed"
        # Every item at that figure, in table order (two at most: 表1 has 86% twice).
        return [Block(row, [], "vote", why=f"the {kind} item: its largest option has {target}%", pinned=True)
                for row, _ in votes if majority[row] == target][:2]
    m = ITEM_NUMBER.search(query.text)
    if m:  # "表1第3项": the item named by its number
        g = m.group(1) or m.group(2)
        n = "一二三四五六七八九".index(g) + 1 if g in "一二三四五六七八九" else int(g)
        best = next((row for row, p in votes if p.vote.number == n), best)
    blocks = [Block(best, [], "vote", why="the vote item of the asked setting", pinned=bool(m))]
    if query.reading is not None and query.reading.setting.compare or (len(settings) > 1 and COMPARE_WORDS.search(query.text)):
        # "辅助期间复发和停药后复发，投票有什么区别": one item per setting compared.
        for s_ in settings:
            other = [row for row, _ in votes if row != best and s_ in dm.vote_settings.get(row, ())
                     and s_ not in dm.vote_settings.get(best, ())]
            if other and len(blocks) < 2:
                blocks.append(Block(other[0], [], "vote", why=f"the vote item of the compared setting ({s_})"))
        if len(blocks) > 1:
            return blocks
    # The topic's own sentence on how the panel voted, if the topic has one.
    for c in coverage.candidates:
        if (c.passage.doc_kind == "consensus" and c.passage.vote is None and "投票" in c.sentence.text
                and allowed(c.hit.row, c.passage, dm, dm.vote_settings.get(best, ()), cards=False)
                and dm.topic_of_row.get(c.hit.row) is not None):
            blocks.append(Block(c.hit.row, [c.row], "context", why="the topic's sentence on the vote"))
            break
    return blocks


def _management_groups(settings: tuple[str, ...]) -> list[str]:
    groups: list[str] = []
    for s in settings or ALL_SETTINGS:
        g = GROUP_OF[s]
        if g not in groups:
            groups.append(g)
    return groups


def _topic_for(dm: DocumentMap, group: str) -> Topic | None:
    wanted = RECURRENCE if group == "recurrence" else (group,)
    for t in dm.topics:
        if _in_settings(t.settings, wanted):
            return t
    return None


# "还有什么建议" / "其他需要注意的" / "what else": the question asks past the headline, so the
# recommendation is quoted through its last sentence, not only through the one naming the dose.
MORE_ASKED = re.compile(r"还有(什么|哪些|别的|其他|没有|吗|呢)|其他(的)?(建议|推荐|注意|要求)|另外|此外|除此之外|"
                        r"除了.{0,12}(还|以外|之外)|what else|anything else|other (recommendation|advice)", re.I)


def _through_paragraph(index: StoredIndex, rows: list[int]) -> list[int]:
    """``rows`` extended through the rest of their line of the paragraph (one quote, never past a line break)."""
    last = rows[-1]
    while joinable(index, last, last + 1):
        last += 1
    return list(range(rows[0], last + 1))


def _management(index: StoredIndex, query: Query, coverage: Coverage, dm: DocumentMap, settings: tuple[str, ...],
                compare: bool, lexicon: Lexicon, plan: Plan) -> list[Block]:
    """What to do: the panel's recommendation of the setting's topic, whole, then the guideline
    sentence that carries the dose; with no setting named, one labelled line per setting."""
    drugs = _drugs(query.all_concepts, lexicon) - {"imatinib"}
    groups = _management_groups(settings)
    per_setting = not settings or compare or len(groups) > 1
    if not settings and not _names_a_treatment(query, lexicon):
        # "预后评估下一步需要做什么": no treatment named and no setting, so not a question of what to
        # give in which setting; the best sentences answer it.
        plan.explain.append("management words, but no treatment and no setting named: answered as a general question")
        return _general(index, query, coverage, dm, settings, plan, lexicon, allow_cards=False)
    blocks: list[Block] = []
    for g in groups:
        topic = _topic_for(dm, g)
        if topic is None or not topic.rows.get("panel"):
            continue
        panel_row = topic.rows["panel"][0]
        rec = recommendation_block(index, panel_row, lexicon, minimal=per_setting)
        topic_text = " ".join(index.passages[r].text for rows in topic.rows.values() for r in rows)
        if drugs and not drugs <= set(lexicon.concepts_in(topic_text)):
            plan.explain.append(f"{g}: its topic does not name {', '.join(sorted(drugs))}; left out")
            continue
        if drugs and not drugs & set(lexicon.concepts_in(" ".join(_sentence_text(index, r) for r in rec))):
            dose = dose_sentence(index, topic, lexicon, drugs)
            if dose is not None:  # the drug asked is named by the guideline, not the panel: lead with it
                blocks.append(Block(index.sentence_passage[dose].item(), [dose], "lead" if not blocks else "setting",
                                    label=GROUP_LABELS[g] if per_setting else "", why="guideline sentence naming the drug asked"))
                continue
        panel = Block(panel_row, rec, "lead" if not blocks else "setting", label=GROUP_LABELS[g] if per_setting else "",
                      why="the panel's recommendation of the setting's topic")
        if MORE_ASKED.search(to_simplified(query.text)) and len(whole := _through_paragraph(index, rec)) > len(rec):
            panel.sentences = whole
            panel.why += ", through its last sentence (the question asks what else)"
            panel.pinned = True
            rec = whole
        if per_setting:
            blocks.append(panel)
            continue
        guideline = _guideline_sentence(index, topic, query, lexicon, drugs)
        named_rows = _named_guideline_sentences(index, topic, query, lexicon)
        if named_rows:
            # "NCCN指南怎么说" / "ESMO和西班牙指南有什么分歧": each named guideline's own sentence
            # answers; the panel's view is another question.
            for r in named_rows:
                blocks.append(Block(index.sentence_passage[r].item(), [r], "lead" if not blocks else "context",
                                    why="the sentence of a guideline the question names", pinned=True))
            continue
        asks_number = bool(NUMBER_ASKED.search(to_simplified(query.text).lower()))
        lead_rows = set(rec)
        share = wording_share(index, query, lexicon, numbers=False)

        def weighed(c: Candidate) -> float:
            return c.score + LEAD_WORDING_WEIGHT * share(c.sentence.text)

        best = _best_in_topic(coverage, topic, dm, lead_rows, weighed)
        if best is not None and not asks_number:
            in_lead = [weighed(c) for c in coverage.candidates if c.row in lead_rows]
            if best.hit.row == panel_row and joinable_run(index, rec[-1], best.row):
                # The question is answered by a later sentence of the recommendation itself
                # ("个体化调整"): quote the recommendation through it.
                panel.sentences = list(range(rec[0], best.row + 1))
                lead_rows = set(panel.sentences)
            elif (_says_more(index, query, best.row, rec, lexicon) >= SPECIFIC_MARGIN
                  and (not in_lead or weighed(best) >= max(in_lead))):
                # A sentence of the setting that answers this particular question better than the
                # recommendation does ("剂量可以调整吗"): it leads, the recommendation follows.
                blocks.append(Block(best.hit.row, _complete_clause(index, [best.row]), "lead",
                                    why=f"answers the question better than the recommendation (score {best.score:.3f})"))
                panel.role = "context"
        rec_states_dose = any(DOSE_PATTERN.search(_sentence_text(index, r)) for r in rec)
        asks_guideline = bool(GUIDELINE_NAMED.search(query.text) or guideline_named(query, lexicon)
                              or (query.reading is not None and query.reading.setting.failure and guideline is not None
                                  and FAILURE_ASKED.search(_sentence_text(index, guideline))))
        if rec_states_dose and not asks_guideline:
            guideline = None  # the recommendation names drug and dose itself: the guideline would repeat it
        if blocks and guideline is not None and any(guideline in b.sentences for b in blocks):
            guideline = None
        if guideline is not None and (asks_guideline or (asks_number and not rec_states_dose)) and not blocks:
            # "CSCO指南推荐什么" / "加到多少": the guideline sentence that states it leads.
            blocks.append(Block(index.sentence_passage[guideline].item(), [guideline], "lead",
                                why="the guideline sentence the question asks for (it names the guideline or the number)"))
            panel.role = "context"
            blocks.append(panel)
        else:
            blocks.append(panel)
            if guideline is not None:
                blocks.append(Block(index.sentence_passage[guideline].item(), [guideline], "dose",
                                    why="the guideline sentence that carries the dose"))
        if not per_setting:
            vote = None if asks_guideline else _management_vote(index, dm, settings, lexicon)
            if vote is not None:
                blocks.append(Block(vote, [], "vote", why="the vote on what to do in this setting"))
    if per_setting:
        plan.explain.append("management question " + ("comparing settings" if compare else "naming no setting")
                            + ": one labelled line per setting")
    return blocks


def _names_a_treatment(query: Query, lexicon: Lexicon) -> bool:
    """A drug, a dose or a therapy named, or a dose asked: the question is about what to give."""
    return "dose" in query.attributes or any(
        lexicon.concepts[c].type in ("drug", "dose_level", "dose_value", "therapy") for c in query.all_concepts)


def _best_in_topic(coverage: Coverage, topic: Topic, dm: DocumentMap, exclude: set[int], weigh) -> Candidate | None:
    """The topic's sentence (outside the recommendation) that best answers this question."""
    own = [c for c in coverage.candidates if dm.topic_of_row.get(c.hit.row) is topic and c.row not in exclude
           and c.passage.evidence_kind in ("panel", "guideline", "evidence")]
    return max(own, key=weigh, default=None)


def _says_more(index: StoredIndex, query: Query, row: int, rows: list[int], lexicon: Lexicon) -> float:
    """How much more of the question's own wording (weighted by rarity) a sentence holds than the
    recommendation does: "剂量可以调整吗" is answered by the sentence on adjusting the dose. Doses
    named in the question ("400还是800") do not count: the recommendation answers which one."""
    share = wording_share(index, query, lexicon, numbers=False)
    return share(_sentence_text(index, row)) - share(" ".join(_sentence_text(index, r) for r in rows))


def asked_terms(query: Query, lexicon: Lexicon, doses: bool = True) -> set[str]:
    """The question's own subject words: its terms without the words that only place it (the
    setting: "辅助治疗结束后复发") or name what every question here is about (KIT, exon 9, GIST,
    伊马替尼, in any spelling): those say nothing about which sentence of the setting answers."""
    text = to_simplified(query.text)
    spans = [(m.start, m.end) for m in lexicon.concept_matches(text)
             if lexicon.concepts[m.id].topic or m.id in PLACING_CONCEPTS | DETAIL_CONCEPTS
             or lexicon.concepts[m.id].type in ("setting", "question_word", "method", "site")
             or (not doses and lexicon.concepts[m.id].type in ("dose_level", "dose_value"))]
    # The words that ask ("剂量", "比例", "为什么") say what kind of answer is wanted, not which
    # sentence gives it ("辅助用药剂量" must not pick the NCCN sentence on 用药剂量).
    spans += [(m.start, m.end) for m in lexicon.attribute_matches(text)]
    # "还有其他建议吗" asks for more; it names nothing ("其他" must not pick "全球其他权威指南").
    spans += [m.span() for m in MORE_ASKED.finditer(text)]
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + " " * (end - start) + text[end:]
    for cue in (query.reading.setting.cues if query.reading else ()):
        text = re.sub(re.escape(cue), " ", text, flags=re.I)
    return {t for t in content_terms(normalize_for_match(text)) if not SETTING_ONLY.fullmatch(t) and t not in GENERIC_TERMS
            and t not in ENGLISH_FUNCTION_WORDS}


def wording_share(index: StoredIndex, query: Query, lexicon: Lexicon, numbers: bool = True):
    """text -> the share (weighted by rarity) of the question's own subject words it holds."""
    terms = {t for t in asked_terms(query, lexicon, doses=numbers) if numbers or not re.search(r"\d", t)}
    weights = term_weights(index, terms) if terms else {}
    total = sum(weights.values()) or 1.0

    def share(text: str) -> float:
        if not weights:
            return 0.0
        norm = normalize_for_match(text)
        return sum(w for t, w in weights.items() if (t in norm if not t.isascii() else re.search(rf"(?<![a-z0-9]){re.escape(t)}(?![a-z0-9])", norm))) / total

    return share


def joinable_run(index: StoredIndex, a: int, b: int) -> bool:
    """Rows a..b read as one quote (each next to the one before, on one line)."""
    return b > a and all(joinable(index, r, r + 1) for r in range(a, b))


def guideline_named(query: Query, lexicon: Lexicon) -> set[str]:
    return {c for c in query.all_concepts if lexicon.concepts[c].type == "guideline"}


def _named_guideline_sentences(index: StoredIndex, topic: Topic, query: Query, lexicon: Lexicon) -> list[int]:
    """One guideline sentence of the topic per guideline the question names (the ones it names
    itself first: "那西班牙指南呢" after an ESMO question is about the Spanish one). CSCO alone is
    not here (its sentence is the topic's dose sentence); beside another ("CSCO、NCCN、ESMO有何
    不同") it is one of those compared."""
    own = {c for c in query.concepts if lexicon.concepts[c].type == "guideline"}
    named = own or guideline_named(query, lexicon)
    if not named - {"csco"}:
        return []
    rows: list[int] = []
    for g in sorted(named):
        for row in topic.rows.get("guideline", []):
            hit = next((r for r in index.passage_sentences[row] if g in lexicon.concepts_in(_sentence_text(index, r))), None)
            if hit is not None and hit not in rows:
                rows.append(hit)
                break
    return sorted(rows)


def _guideline_sentence(index: StoredIndex, topic: Topic, query: Query, lexicon: Lexicon, drugs: set[str]) -> int | None:
    """The guideline sentence for this question: the one naming the guideline asked (ESMO, 西班牙…),
    else the one that carries the dose (for the drug asked)."""
    named = guideline_named(query, lexicon) - {"csco"}
    if named:
        for row in topic.rows.get("guideline", []):
            for r in index.passage_sentences[row]:
                if named & lexicon.concepts_in(_sentence_text(index, r)):
                    return r
    return dose_sentence(index, topic, lexicon, drugs)


def _management_vote(index: StoredIndex, dm: DocumentMap, settings: tuple[str, ...], lexicon: Lexicon) -> int | None:
    """The vote item on what to do in exactly this setting (its options name a drug or dose)."""
    found = [row for row, s in dm.vote_settings.items() if set(s) == set(settings)
             and any(_names_treatment(o.text, lexicon) for o in index.passages[row].vote.options)]
    return found[0] if len(found) == 1 else None


def block_chars(index: StoredIndex, b: Block) -> int:
    p = index.passages[b.row]
    if p.vote is not None:
        return len(p.vote.question) + sum(len(o.text) + 6 for o in p.vote.options)
    return sum(len(_sentence_text(index, r)) for r in b.sentences)


def _within_budget(index: StoredIndex, blocks: list[Block], max_blocks: int, detail: bool, plan: Plan) -> list[Block]:
    """At most max_blocks; context beyond the character budget is left out (never the lead, never a
    labelled per-setting line)."""
    kept: list[Block] = []
    used = 0
    for b in blocks:
        if len(kept) >= max_blocks:
            plan.explain.append(f"dropped ({b.role}): more than {max_blocks} blocks")
            continue
        size = block_chars(index, b)
        if kept and b.role in ("context", "vote", "dose") and used + size > ANSWER_BUDGET and not detail:
            plan.explain.append(f"dropped ({b.role}, {size} chars): over the {ANSWER_BUDGET}-character budget")
            continue
        kept.append(b)
        used += size
    return kept
