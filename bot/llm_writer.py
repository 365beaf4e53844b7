"""The optional LLM writer: the model drafts, the verifier decides what the user sees.

    the plan, built once by Bot.answer (setting, facet, the units that answer, or a refusal), and the
    extractive answer rendered from it; this module never calls back into Bot.answer
      -> refused? return it; the model is never called
      -> the plan's passages (the setting-aware evidence), numbered [1]..[n] (bot/prompts.py)
      -> LLMWriter.draft / .stream, under a hard deadline
      -> verify_llm_answer: sentence by sentence, every 「quote」 verbatim in the passage [n] it cites,
         every number of the sentence in a passage it cites, little unquoted prose; the rest is removed
      -> Answer(writer="llm"), or the extractive answer with a visible note when the model failed
         or fewer than MIN_KEPT_QUOTES verified quotes survive.

Streaming: `LLMWriter.stream` yields the model's raw chunks; they are unverified and are not for
display. `llm_answer(..., stream=True)` collects the whole stream and verifies it; a stream that is
cut off (connection dropped, or ended without a finish reason) counts as a failed model call and
the extractive answer is shown: a truncated draft could lose the sentence that qualifies another.
"""
from __future__ import annotations

import os
import queue
import re
import threading
import time
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterator
from urllib.parse import urlparse

from bot.prompts import (FENCES, HISTORY_TEMPLATE, MAX_UNQUOTED_CHARS, NOT_COVERED_PHRASE, PASSAGE_TEMPLATE,
                         SYSTEM_PROMPT, USER_TEMPLATE)
from bot.types import Answer, Dropped, Quote
from bot.verify import QUOTE_SPAN, numbers_in, quote_problem
from indexer.sentences import sentence_spans
from indexer.settings import Settings
from indexer.types import EVIDENCE_LABELS, Passage

if TYPE_CHECKING:
    from indexer.lexicon import Lexicon
    from indexer.store import StoredIndex

# Fewer verified quotes than this and the extractive answer is shown instead.
MIN_KEPT_QUOTES = 1
# The hard deadline of one model call: the client's timeout plus this (seconds), even if the
# server keeps trickling bytes so that no single read ever times out.
DEADLINE_GRACE_S = 0.5
API_KEY_ENV = "GISTQA_LLM_API_KEY"
OLLAMA_PORT = 11434

# What the user reads (no digits: every number a user sees must come from a cited source).
LLM_INTRO = "以下回答由大模型依据检索到的原文撰写；引文均逐字摘自原文，并已逐条与原文核对："
LLM_SOME_DROPPED = "（另有部分句子未能通过原文核对，已删去。）"
NOTE_UNAVAILABLE = "（大模型暂不可用，以下为原文摘录。）"
NOTE_NOT_VERIFIED = "（大模型的回答未能通过原文核对，以下为原文摘录。）"
NOTE_NOT_COVERED = "（大模型认为检索到的原文不足以回答，以下为原文摘录。）"

# [n] as the model is asked to write it (ASCII brackets; the sources' own ［n］ are full-width).
MARKER = re.compile(r"\[\s*(\d{1,3})\s*\]")
_MARKERS_AFTER_QUOTE = re.compile(r"[ \t]*[。，；、,;]?[ \t]*((?:\[\s*\d{1,3}\s*\][ \t]*)+)")
_MARKERS_ONLY = re.compile(r"^\s*(?:\[\s*\d{1,3}\s*\]\s*)+[。；;！？!?.]?\s*$")
_BULLET = re.compile(r"^\s*[-*+•]\s+$")
_QUOTE_MASK = "口"  # stands in for quoted text while splitting, so a 。 inside 「」 ends no sentence
# A quote that starts inside a clause whose earlier words hold a negation could flip its meaning
# ("不建议X" quoted as 「建议X」 or 「X」): such a quote is refused.
_NEGATION = re.compile(r"[不未非无勿否没禁]")
_CLAUSE_END = re.compile(r"[，。；：！？,;:!?\n]")
# Lexicon concept types that do not make a sentence a claim ("专家投票结果如下：" is connective).
CONNECTIVE_CONCEPT_TYPES = frozenset({"question_word", "method"})



class LLMUnavailable(RuntimeError):
    """The model gave no usable draft: timeout, HTTP error, malformed reply, refused connection, cut stream."""


# --- the model -------------------------------------------------------------------------------
def is_ollama_native(base_url: str) -> bool:
    """An Ollama server addressed by its own API (port 11434 or 'ollama' in the host, no /v1)."""
    u = urlparse(base_url)
    if u.path.rstrip("/").endswith("/v1"):
        return False
    return u.port == OLLAMA_PORT or "ollama" in (u.hostname or "")


def chat_model(settings: Settings):
    """The LangChain chat model the settings name: ChatOpenAI for any OpenAI-compatible /v1 URL."""
    if is_ollama_native(settings.llm_base_url):
        from langchain_ollama import ChatOllama

        return ChatOllama(base_url=settings.llm_base_url, model=settings.llm_model,
                          temperature=settings.llm_temperature, client_kwargs={"timeout": settings.llm_timeout_s})
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=settings.llm_base_url, model=settings.llm_model,
                      api_key=os.environ.get(API_KEY_ENV, "not-needed"), timeout=settings.llm_timeout_s,
                      max_retries=0, temperature=settings.llm_temperature)


def _unfenced(text: str) -> str:
    for fence in FENCES:
        text = text.replace(fence, "")
    return text


def format_passages(passages: list[Passage]) -> str:
    from bot.answer import place_of  # bot.answer may import this module

    return "\n\n".join(
        PASSAGE_TEMPLATE.format(n=n, place=place_of(p), kind=EVIDENCE_LABELS[p.evidence_kind], text=_unfenced(p.text))
        for n, p in enumerate(passages, 1))


def build_messages(question: str, passages: list[Passage], history: list[str] | None = None) -> list:
    from langchain_core.messages import HumanMessage, SystemMessage

    history_block = HISTORY_TEMPLATE.format(history="\n".join(_unfenced(h) for h in history)) if history else ""
    user = USER_TEMPLATE.format(count=len(passages), passages=format_passages(passages), history_block=history_block,
                                question=_unfenced(question), not_covered=NOT_COVERED_PHRASE)
    return [SystemMessage(SYSTEM_PROMPT), HumanMessage(user)]


def _finished(chunk) -> bool:
    meta = getattr(chunk, "response_metadata", None) or {}
    return bool(meta.get("finish_reason") or meta.get("done_reason") or meta.get("done"))


class LLMWriter:
    """Drafts an answer from numbered passages. Every failure is raised as LLMUnavailable, within
    `deadline_s` of the call (the model's timeout + DEADLINE_GRACE_S)."""

    def __init__(self, settings: Settings, model=None):
        self.settings = settings
        self.deadline_s = settings.llm_timeout_s + DEADLINE_GRACE_S
        self.model = model if model is not None else chat_model(settings)

    def draft(self, question: str, passages: list[Passage], history: list[str] | None = None) -> str:
        messages = build_messages(question, passages, history)
        reply = _call_with_deadline(lambda: self.model.invoke(messages), self.deadline_s)
        if (reply.response_metadata or {}).get("finish_reason") == "length":
            raise LLMUnavailable("the reply was cut off at the model's length limit")
        return str(reply.text)

    def stream(self, question: str, passages: list[Passage], history: list[str] | None = None) -> Iterator[str]:
        """The model's text chunks as they come (unverified). Raises LLMUnavailable when the deadline
        passes, the connection fails, or the stream ends before the model says it has finished."""
        messages = build_messages(question, passages, history)
        deadline = time.monotonic() + self.deadline_s
        chunks: queue.Queue = queue.Queue()
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                finished = False
                for chunk in self.model.stream(messages):
                    if stop.is_set():
                        return
                    finished = finished or _finished(chunk)
                    chunks.put(str(chunk.text))
                chunks.put(done if finished else LLMUnavailable("the stream ended before the model finished"))
            except Exception as e:  # noqa: BLE001 - any client error is "model unavailable"
                chunks.put(LLMUnavailable(f"{type(e).__name__}: {e}"))

        threading.Thread(target=produce, name="gistqa-llm-stream", daemon=True).start()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LLMUnavailable(f"no complete reply within {self.deadline_s:.1f} s")
                try:
                    item = chunks.get(timeout=remaining)
                except queue.Empty:
                    raise LLMUnavailable(f"no complete reply within {self.deadline_s:.1f} s") from None
                if item is done:
                    return
                if isinstance(item, LLMUnavailable):
                    raise item
                if item:
                    yield item
        finally:
            stop.set()  # the producer stops at its next chunk; a blocked read ends with the client's timeout


_writers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def writer_for(bot) -> LLMWriter:
    """The bot's LLMWriter, made once per bot and model settings (the first one imports LangChain's
    client, a few seconds cold: call this from Bot.warm_up when writer == "llm")."""
    s = bot.settings
    key = (s.llm_base_url, s.llm_model, s.llm_timeout_s, s.llm_temperature)
    with _writers_lock:
        cached = _writers.get(bot)
        if cached is None or cached[0] != key:
            cached = _writers[bot] = (key, LLMWriter(s))
        return cached[1]


def _call_with_deadline(fn: Callable, deadline_s: float):
    """fn() in a daemon thread; LLMUnavailable if it fails or has not returned within deadline_s.
    (The client's own timeout bounds each read, not a reply that trickles in; this bounds the whole.)"""
    box: dict = {}
    finished = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e
        finally:
            finished.set()

    threading.Thread(target=run, name="gistqa-llm-call", daemon=True).start()
    if not finished.wait(deadline_s):
        raise LLMUnavailable(f"no complete reply within {deadline_s:.1f} s")
    if "error" in box:
        e = box["error"]
        raise LLMUnavailable(f"{type(e).__name__}: {e}") from e
    return box["value"]


# --- verification ----------------------------------------------------------------------------
def draft_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans of a draft. Quoted text is masked while splitting (a 。 inside 「」 ends no
    sentence), and a span of bare markers ("[2]。") joins the sentence before it."""
    masked = QUOTE_SPAN.sub(lambda m: "「" + _QUOTE_MASK * len(m.group(1)) + "」", text)
    spans: list[tuple[int, int]] = []
    for s, e in sentence_spans(masked):
        if spans and _MARKERS_ONLY.match(text[s:e]) and "\n" not in text[spans[-1][1] : s]:
            spans[-1] = (spans[-1][0], e)
        else:
            spans.append((s, e))
    return spans


def _outside_quotes(sentence: str, fn: Callable[[str], str]) -> str:
    """Apply fn to the parts of the sentence outside 「」 (quoted text may hold brackets of its own)."""
    out, last = [], 0
    for m in QUOTE_SPAN.finditer(sentence):
        out.append(fn(sentence[last : m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(fn(sentence[last:]))
    return "".join(out)


def _check_sentence(sentence: str, passages: list[Passage], index: StoredIndex,
                    lexicon: Lexicon | None) -> tuple[list[tuple[Passage, int, str]], Dropped | None]:
    """The sentence's quotes located in their passages, or why the sentence must go."""
    def drop(what: str, reason: str) -> tuple[list, Dropped]:
        return [], Dropped(what, sentence, reason)

    n = len(passages)
    if "「" in QUOTE_SPAN.sub("", sentence) or "」" in QUOTE_SPAN.sub("", sentence):
        return drop("quote", "unbalanced 「」: a quote is not closed")
    prose_with_markers = QUOTE_SPAN.sub("", sentence)
    cited = [int(x) for x in MARKER.findall(prose_with_markers)]
    outside = [k for k in cited if not 1 <= k <= n]
    if outside:
        return drop("citation", f"cites passage [{outside[0]}], but only [1]–[{n}] were given")
    located: list[tuple[Passage, int, str]] = []
    for m in QUOTE_SPAN.finditer(sentence):
        quote = m.group(1)
        after = _MARKERS_AFTER_QUOTE.match(sentence, m.end())
        if not after:
            return drop("quote", f"「{quote}」 is not followed by the [n] of its passage")
        if not quote.strip():
            return drop("quote", "empty quote")
        marks = [int(x) for x in MARKER.findall(after.group(1))]
        home = next((k for k in marks if quote in passages[k - 1].text), None)
        if home is None:
            where = "、".join(f"[{k}]" for k in marks)
            return drop("quote", f"「{quote}」 is not verbatim in passage {where}")
        p = passages[home - 1]
        at = p.text.find(quote)
        clause_head = _CLAUSE_END.split(p.text[:at])[-1]
        if _NEGATION.search(clause_head):
            return drop("quote", f"「{quote}」 leaves out the negation before it in its clause: “{clause_head}”")
        start = p.start + at
        problem = quote_problem(index, p.doc_id, p.passage_id, start, start + len(quote), quote)
        if problem:
            return drop("quote", f"「{quote}」: {problem}")
        located.append((p, start, quote))
    prose = MARKER.sub("", prose_with_markers)
    pool = {x for k in set(cited) for x in numbers_in(passages[k - 1].text)}
    bad = [x for x in numbers_in(prose) if x not in pool]
    if bad:
        if not cited:
            return drop("number", f"numbers with no cited passage: {', '.join(bad)}")
        return drop("number", f"numbers not in the cited passage(s) {'、'.join(f'[{k}]' for k in sorted(set(cited)))}: {', '.join(bad)}")
    own_words = len(re.sub(r"\s", "", prose))
    if own_words > MAX_UNQUOTED_CHARS:
        return drop("sentence", f"unquoted claim: {own_words} characters outside quotes (at most {MAX_UNQUOTED_CHARS})")
    if not located and lexicon is not None:
        named = [lexicon.canonical(c) for c in sorted(lexicon.concepts_in(prose))
                 if lexicon.concepts[c].type not in CONNECTIVE_CONCEPT_TYPES]
        if named:
            return drop("sentence", f"unquoted claim: names {'、'.join(named)} without quoting the source")
    return located, None


def verify_llm_answer(text: str, passages: list[Passage], index: StoredIndex,
                      lexicon: Lexicon | None = None) -> tuple[str, list[Quote], list[Dropped]]:
    """Keep the sentences of a draft that pass every check; render their [n] as citations 〔…〕.

    A sentence goes when a quote is not verbatim in the passage its [n] names, an [n] names a
    passage not given, a number outside the quotes is in none of the passages it cites, or its own
    words exceed MAX_UNQUOTED_CHARS. With a lexicon, a sentence without a quote also goes when it
    names a drug, gene, setting... (a claim in the model's own words, however short).

    Returns (Markdown of the kept sentences, their verified quotes in order, what was removed and why).
    """
    from bot.answer import place_of  # bot.answer may import this module

    quotes: list[Quote] = []
    dropped: list[Dropped] = []
    lines: dict[int, list[str]] = {}
    bullets: set[int] = set()
    for s, e in draft_sentences(text):
        sentence = text[s:e]
        located, problem = _check_sentence(sentence, passages, index, lexicon)
        if problem:
            dropped.append(problem)
            continue
        for p, start, quote in located:
            quotes.append(Quote(text=quote, doc_id=p.doc_id, passage_id=p.passage_id, section=p.section,
                                paragraph=p.paragraph, start=start, end=start + len(quote), kind=EVIDENCE_LABELS[p.evidence_kind],
                                evidence_kind=p.evidence_kind, page=p.page, verified=True, marker=len(quotes) + 1))
        rendered = _outside_quotes(sentence, lambda part: MARKER.sub(lambda m: f"〔{place_of(passages[int(m.group(1)) - 1])}〕", part))
        line_start = text.rfind("\n", 0, s) + 1
        line = text.count("\n", 0, s)
        if line not in lines and _BULLET.match(text[line_start:s]):
            bullets.add(line)
        lines.setdefault(line, []).append(rendered)
    markdown = "\n".join(("- " if k in bullets else "") + "".join(parts) for k, parts in sorted(lines.items()))
    return markdown, quotes, dropped


# --- the answer ------------------------------------------------------------------------------
def retrieved_passages(index: StoredIndex, result: Answer) -> list[Passage]:
    """The index's passages behind an answer's retrieved passages, in their order."""
    by_id = {p.passage_id: p for p in index.passages}
    return [by_id[rp.passage_id] for rp in result.passages if rp.passage_id in by_id]


def _fallback(extractive: Answer, note: str, why: str, dropped: list[Dropped], timing: dict) -> Answer:
    return replace(extractive, answer=f"{note}\n\n{extractive.answer}", writer="extractive",
                   notes=[*extractive.notes, why], dropped=[*extractive.dropped, *dropped], timing_ms=timing)


def llm_answer(bot, extractive: Answer, passages: list[Passage], history: list[str] | None = None, *,
               writer: LLMWriter | None = None, stream: bool = False) -> Answer:
    """The LLM writer's answer, verified. It takes what `Bot.answer` planned once (the extractive
    answer, rendered from the plan, and the plan's passages: the setting-aware evidence) and never
    calls back into the bot. The extractive answer (with a note) when the model fails or too little
    survives; a refusal as it is, without calling the model."""
    t0 = time.perf_counter()
    timing = dict(extractive.timing_ms)
    timing["extractive"] = timing.get("total", 0.0)  # the plan and its extractive rendering, done once
    if extractive.refused:
        return extractive
    question = extractive.question

    def done() -> dict:
        timing["total"] = round(timing.get("total", 0.0) + (time.perf_counter() - t0) * 1000, 2)
        return timing

    index = bot._ensure_loaded()
    t = time.perf_counter()
    try:
        if writer is None:
            try:
                writer = writer_for(bot)
            except Exception as e:  # noqa: BLE001 - a bad URL or setting: the model is unavailable
                raise LLMUnavailable(f"cannot set up the model client: {type(e).__name__}: {e}") from e
            timing["llm_setup"] = round((time.perf_counter() - t) * 1000, 2)
            t = time.perf_counter()
        if stream:
            draft = "".join(writer.stream(question, passages, history))
        else:
            draft = writer.draft(question, passages, history)
    except LLMUnavailable as e:
        timing["llm"] = round((time.perf_counter() - t) * 1000, 2)
        return _fallback(extractive, NOTE_UNAVAILABLE, f"llm unavailable: {e}", [], done())
    timing["llm"] = round((time.perf_counter() - t) * 1000, 2)

    t = time.perf_counter()
    markdown, quotes, dropped = verify_llm_answer(draft, passages, index, bot.lexicon)
    timing["llm_verify"] = round((time.perf_counter() - t) * 1000, 2)
    if len(quotes) < MIN_KEPT_QUOTES:
        if NOT_COVERED_PHRASE in draft:
            return _fallback(extractive, NOTE_NOT_COVERED, "llm: the passages do not answer the question", dropped, done())
        return _fallback(extractive, NOTE_NOT_VERIFIED,
                         f"llm: {len(quotes)} verified quotes (at least {MIN_KEPT_QUOTES} needed)", dropped, done())
    text = LLM_INTRO + "\n\n" + markdown + (f"\n\n{LLM_SOME_DROPPED}" if dropped else "")
    return Answer(question=extractive.question, answer=text, refused=False, quotes=quotes, passages=extractive.passages,
                  vote=extractive.vote, references=extractive.references, dropped=dropped, timing_ms=done(),
                  scope=extractive.scope, writer="llm", notes=list(extractive.notes))
