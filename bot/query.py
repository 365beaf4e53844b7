"""Understand a question: clean it, find its concepts and what it asks for, resolve follow-ups.

The analysis is what coverage is judged on (baseline-findings §5): a similarity threshold cannot tell
"the dose of sunitinib" (not in the corpus) from "the dose of imatinib" (in it), but the concepts
and the attribute asked can.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from indexer.clean import remove_control_chars
from bot.setting import PERCENT_ASKED, Reading, detect_facet, detect_settings
from indexer.lexicon import Lexicon, normalize_for_match, to_simplified

# Concept types that decide whether a question is covered (the others are context words).
FOCAL_TYPES = {"drug", "gene", "mutation", "disease", "therapy", "population", "other", "trial", "setting", "site"}
# Details of a patient only refine a question (age, site, imaging, risk grade, timing relative to
# surgery): they never make it "not covered", and they need not meet the other concepts in one
# passage. Named by concept type and, within a mixed type, by concept id.
DETAIL_TYPES = {"site"}
DETAIL_CONCEPTS = {"imaging", "surgery", "elderly", "risk", "follow_up", "biopsy", "genetic_testing"}
# The clinical setting is placed by bot/setting.py and answered from its topic: setting words are
# checked to exist in the corpus (neoadjuvant does not) but need not meet the rest in one passage.
SETTING_TYPES = {"setting"}
# Attributes whose value must be stated in the source for an answer to exist.
VALUE_ATTRIBUTES = {"dose", "duration", "timing", "percentage", "vote", "side_effects", "survival_rate", "median_survival", "schedule", "count",
                    "response_rate", "site",
                    "doi", "pmid", "pages", "sample_size", "hazard_ratio", "follow_up_time"}

_FOLLOWUP_START = re.compile(r"^(那|那么|那如果|如果|还有|然后|另外|再问|and\b|what about|how about|then\b|so\b)", re.I)
_FOLLOWUP_MARK = re.compile(r"(呢[？?]?$|这种情况|这类|该类|上述|它们?|这个|那个|以后|之后|\bit\b|\bthat\b|\bthose\b|\bthem\b)", re.I)
# Entity-looking words that the lexicon may not know: drug stems, gene symbols, mutation codes.
_LATIN_ENTITY = re.compile(r"(?<![A-Za-z0-9])([A-Z][A-Z0-9]{2,}[A-Z0-9]*|[A-Z]\d{2,4}[A-Z]|[a-z]+(?:tinib|fenib|ciclib|mab|platin|taxel|rafenib))(?![A-Za-z0-9])")
_HAN_ENTITY = re.compile(r"[\u4e00-\u9fff]{1,4}(?:替尼|非尼|单抗|铂|紫杉醇|他滨|霉素|白血病|淋巴瘤|肉瘤|癌)")
# Words a question is built from that carry no subject matter (kept out of overlap measures).
_QUESTION_WORDS = re.compile(
    r"(请问|请|问一下|一下|什么|多少|哪些|哪个|哪种|怎么|如何|为什么|为何|是否|是不是|能否|可以|应该|需要|吗|呢|吧|啊|的|了|是|有|在|和|与|及|对|"
    r"\b(?:what|which|who|how|why|does|do|is|are|the|a|an|of|for|in|on|to|should|be|with|and|or|about)\b)", re.I)


class QuestionError(ValueError):
    """A question that cannot be answered as given; the message tells the user what to change."""


@dataclass
class Query:
    raw: str
    text: str  # cleaned question
    norm: str  # normalized for matching
    history: list[str]
    concepts: set[str]  # concepts named in the question itself
    context_concepts: set[str]  # concepts carried over from earlier turns (follow-ups only)
    attributes: set[str]
    focal: set[str]  # concepts that must be covered
    unknown_entities: list[str]
    is_followup: bool
    retrieval_text: str  # what is embedded and searched
    content_terms: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # author/trial names the corpus has ("Vincenzi")
    asked: set[str] = field(default_factory=set)  # concepts the corpus must mention (focal + settings)
    reading: Reading | None = None  # setting and facet (bot/setting.py)
    history_refused: bool = False  # the previous turn asked about something the corpus lacks

    @property
    def all_concepts(self) -> set[str]:
        return self.concepts | self.context_concepts


def clean_question(raw: str, max_chars: int) -> str:
    if not isinstance(raw, str):
        raise QuestionError("问题必须是文本 (the question must be text)")
    # Lone surrogates (from broken clients) cannot be encoded; replace them rather than crash.
    text = raw.encode("utf-8", "replace").decode("utf-8")
    text = remove_control_chars(text).replace("\u0000", "")
    text = unicodedata.normalize("NFC", text)
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise QuestionError("请输入问题（问题为空） (the question is empty)")
    if len(text) > max_chars:
        raise QuestionError(
            f"问题太长：{len(text)} 个字符，上限为 {max_chars}。请只保留要问的内容 "
            f"(the question has {len(text)} characters; the limit is {max_chars})"
        )
    return text


def is_followup(text: str, history: list[str], focal: set[str]) -> bool:
    if not history:
        return False
    short = len(re.sub(r"\s", "", text)) <= 14
    # Only a marker ("那…呢", "这种情况") or a short question without a subject of its own continues
    # the conversation; a long unrelated question must not inherit the previous topic.
    return bool(_FOLLOWUP_START.search(text) or _FOLLOWUP_MARK.search(text) or (short and not focal))


def content_terms(norm: str) -> list[str]:
    """Subject-matter character bigrams and Latin words of a question (for overlap measures)."""
    stripped = _QUESTION_WORDS.sub(" ", norm)
    terms: list[str] = []
    for run in re.findall(r"[\u4e00-\u9fff]+", stripped):
        terms.extend(run[i : i + 2] for i in range(len(run) - 1)) if len(run) > 1 else terms.append(run)
    terms.extend(re.findall(r"[a-z][a-z0-9\-]+|\d+", stripped))
    return terms


_NAME = re.compile(r"(?<![A-Za-z])([A-Z][a-z]{3,}(?:-[A-Z][a-z]+)?)(?![A-Za-z])")
_COMMON_WORDS = {"What", "Which", "Who", "When", "Where", "Does", "Should", "Could", "Would", "Please", "Tell",
                 "The", "This", "That", "These", "Those", "Is", "Are", "Can", "How", "Why", "And", "With", "From",
                 "About", "After", "Before", "During", "Give", "List", "Show", "Explain", "Compare",
                 # adjectives of place are not names of a paper or trial
                 "Chinese", "China", "European", "Europe", "American", "Spanish", "Asian", "Japanese", "Korean"}


def corpus_names(text: str, corpus_text: str) -> list[str]:
    """Capitalised Latin words that the corpus itself uses, e.g. an author: they name what is asked."""
    return [w for w in dict.fromkeys(_NAME.findall(text)) if w not in _COMMON_WORDS and w in corpus_text]


# A protein change inside a named exon ("exon 9 A502_Y503dup"): a detail of the mutation asked
# about, not another entity.
_VARIANT = re.compile(r"^[A-Z]\d{2,4}(?:_[A-Z]\d{2,4})?(?:dup|del|ins)?", re.I)


def unknown_entities(text: str, lexicon: Lexicon, corpus_norm: str) -> list[str]:
    """Entity-looking words that the corpus never mentions (e.g. a drug or gene it does not cover)."""
    text = to_simplified(text)  # the corpus is simplified: "伊馬替尼" is "伊马替尼"
    known_spans = [(m.start, m.end) for m in lexicon.concept_matches(text)]
    in_known_exon = any(lexicon.concepts[m.id].type == "mutation" and m.id in ("exon9",) for m in lexicon.concept_matches(text))
    out = []
    for pattern in (_LATIN_ENTITY, _HAN_ENTITY):
        for m in pattern.finditer(text):
            if any(s < m.end() and m.start() < e for s, e in known_spans):  # overlaps a known term
                continue
            word = m.group(0)
            if in_known_exon and _VARIANT.match(word):
                continue
            if normalize_for_match(word) not in corpus_norm:
                out.append(word)
    return out


def _is_detail(concept_id: str, lexicon: Lexicon) -> bool:
    return lexicon.concepts[concept_id].type in DETAIL_TYPES or concept_id in DETAIL_CONCEPTS


def asked_concepts(concepts: set[str], lexicon: Lexicon) -> set[str]:
    """The concepts a question asks about (a drug, gene, setting...), without patient details."""
    return {c for c in concepts if lexicon.concepts[c].type in FOCAL_TYPES and not lexicon.concepts[c].topic
            and not _is_detail(c, lexicon)}


def focal_concepts(concepts: set[str], lexicon: Lexicon) -> set[str]:
    """The asked concepts that must meet in one passage (settings are placed by topic instead)."""
    return {c for c in asked_concepts(concepts, lexicon) if lexicon.concepts[c].type not in SETTING_TYPES}


def _refused_before(text: str, lexicon: Lexicon, corpus_norm: str, known: set[str] | None) -> bool:
    """Would this earlier question have been refused for naming what the corpus lacks? Then
    nothing of it is carried into the next turn (a refused PDGFRA question must not make the
    follow-up about PDGFRA too)."""
    asked = asked_concepts(set(lexicon.concepts_in(text)), lexicon)
    if known is not None and asked - known:
        return True
    return bool(unknown_entities(text, lexicon, corpus_norm))


def analyse(raw: str, history: list[str] | None, lexicon: Lexicon, corpus_norm: str, max_chars: int,
            corpus_text: str = "", known_concepts: set[str] | None = None, author_names: tuple[str, ...] = ()) -> Query:
    text = clean_question(raw, max_chars)
    try:
        history = [h for h in (clean_question(h, max_chars) for h in (history or []) if isinstance(h, str) and h.strip())]
    except QuestionError as err:
        raise QuestionError(f"对话历史中有一条问题无法使用：{err} (a history item is unusable)") from None
    concepts = set(lexicon.concepts_in(text))
    attributes = lexicon.attributes_in(text)
    if PERCENT_ASKED.search(to_simplified(text).lower()):
        attributes.add("percentage")
    focal = focal_concepts(concepts, lexicon)
    setting = detect_settings(text)
    followup = is_followup(text, history, focal) or (bool(history) and not setting.specific and not focal
                                                     and len(re.sub(r"\s", "", text)) <= 20)
    context: set[str] = set()
    retrieval = to_simplified(text)  # the corpus is in simplified characters
    reading = Reading(setting, detect_facet(text, attributes, concepts, author_names, setting))
    refused_before = False
    if followup:
        last = history[-1]
        refused_before = _refused_before(last, lexicon, corpus_norm, known_concepts)
        if refused_before:
            reading.notes.append("上一问未被覆盖：不沿用其内容")
        else:
            # The follow-up replaces what it names (a setting, a facet) and keeps the rest.
            last_setting = detect_settings(last)
            context = set(lexicon.concepts_in(last)) - concepts
            if setting.specific:
                context = {c for c in context if lexicon.concepts[c].type not in SETTING_TYPES}
            elif last_setting.specific:
                reading.setting, reading.setting_from_history = last_setting, True
            last_attributes = lexicon.attributes_in(last)
            earlier = detect_facet(last, last_attributes, set(lexicon.concepts_in(last)), author_names, last_setting)
            if ((reading.intent.facet == "general" and reading.intent.cue != "evidence")
                    or (reading.intent.cue == "setting named bare" and earlier.facet != "general")):
                attributes = attributes | last_attributes
                reading.intent = earlier
                reading.facet_from_history = True
            retrieval = f"{text} {last}" if not setting.specific else f"{text} {_without_setting_words(last)}"
    # Canonical (corpus-language) names of the concepts, so English or synonym wording finds the
    # Chinese passages in both the dense and the lexical search.
    expansions = [lexicon.canonical(c) for c in sorted(concepts | context) if lexicon.canonical(c) not in retrieval]
    expansions += [lexicon.attributes[a].expand for a in sorted(attributes) if lexicon.attributes[a].expand]
    if expansions:
        retrieval = retrieval + " " + " ".join(expansions)
    norm = normalize_for_match(text)
    return Query(
        raw=raw, text=text, norm=norm, history=history, concepts=concepts, context_concepts=context,
        attributes=attributes, focal=focal | focal_concepts(context, lexicon),
        unknown_entities=unknown_entities(text, lexicon, corpus_norm), is_followup=followup,
        retrieval_text=retrieval, content_terms=content_terms(norm),
        names=[n for n in corpus_names(text, corpus_text) if not lexicon.concepts_in(n)],
        asked=asked_concepts(concepts | context, lexicon), reading=reading, history_refused=refused_before,
    )


_SETTING_WORDS = re.compile(r"(?<!新)辅助治疗|辅助|术后|晚期|转移性|一线|复发|转移|停药后?|adjuvant|metastatic|advanced|first-line|recurrence", re.I)


def _without_setting_words(text: str) -> str:
    """An earlier question minus its setting words, when the follow-up names a setting of its own."""
    return _SETTING_WORDS.sub(" ", to_simplified(text))
