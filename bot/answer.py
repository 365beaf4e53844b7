"""`answer()`: the one pipeline behind the CLI, the chat page and the evaluation.

question -> analyse -> embed -> retrieve -> plan (select or refuse) -> render -> verify -> Answer
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path


from bot.compose import CARD_WEIGHT_FOR_CONSENSUS_QUESTIONS, Plan, asks_about_literature, plan_answer, question_slots
from bot.query import Query, analyse
from bot.retrieve import Hit, in_scope, prefer_sources, promote_references, retrieve
from bot.types import Answer, Dropped, Quote, ReferenceNote, RetrievedPassage, VoteResult
from bot.verify import QUOTE_SPAN, quote_problem, unsupported_numbers
from indexer.lexicon import Lexicon, normalize_for_match
from indexer.settings import Settings, get_settings
from indexer.store import IndexModelMismatch, IndexMissing, StoredIndex, current_build_dir, load_build
from indexer.structure import cited_slots
from indexer.types import EVIDENCE_LABELS, Passage

SCOPE_NOTE = "本工具只依据本知识库收录的CSCO胃肠间质瘤专家委员会专家共识及其引用文献作答，不使用其他来源，"
DISCLAIMER = "本工具仅供医学教育参考，答案只摘录专家共识及其引用文献，不能替代临床判断。"
MAX_MERGED_QUOTE = 160  # neighbouring sentences join into one quote up to this many characters
CONFIDENCE_ZH = {"strong": "较确定", "moderate": "中等", "weak": "较弱"}


def place_of(p: Passage) -> str:
    """Where a quote stands, as a reader would look it up."""
    if p.doc_kind == "consensus":
        where = f"共识 · {p.section}" + ("" if p.vote else f" · 第{p.paragraph}段")
    elif p.doc_kind == "reference_card":
        where = f"文献卡片［{p.ref_slot}］ · {p.section}"
    elif p.doc_kind == "reference_fulltext":
        where = f"文献［{p.ref_slot}］全文 · {p.section}" + (f" · 第{p.page}页" if p.page else "")
    else:
        where = f"{p.doc_title} · {p.section} · 第{p.paragraph}段"
    return where


class Bot:
    """Holds the loaded index, model and lexicon; safe to share between threads."""

    def __init__(self, settings: Settings | None = None, auto_build: bool = False):
        self.settings = settings or get_settings()
        self.auto_build = auto_build
        self._lock = threading.Lock()
        self._index: StoredIndex | None = None
        self._embedder = None
        self.lexicon = Lexicon.load(self.settings.lexicon_path)
        self._scope_concepts: dict[str, set[str]] = {}
        self._corpus_norm = ""
        self._corpus_text = ""

    # --- loading ---------------------------------------------------------------------------
    def _ensure_loaded(self) -> StoredIndex:
        current = current_build_dir(Path(self.settings.index_dir))
        if self._index is not None and current == self._index.build_dir:
            return self._index
        with self._lock:
            current = current_build_dir(Path(self.settings.index_dir))
            if self._index is not None and current == self._index.build_dir:
                return self._index
            if current is None:
                if not self.auto_build:
                    raise IndexMissing(f"还没有索引: {self.settings.index_dir}. 运行 `gistqa index` 建立索引 (no index yet: run `gistqa index`).")
                from indexer.build import build_index

                build_index(self.settings)
            index = load_build(Path(self.settings.index_dir))
            self._check_model(index)
            self._scope_concepts = {
                scope: set().union(*[c for p, c in zip(index.passages, index.passage_concepts) if in_scope(p, scope)] or [set()])
                for scope in ("all", "consensus")
            }
            self._corpus_text = "\n".join(p.text for p in index.passages)
            self._corpus_norm = normalize_for_match(self._corpus_text)
            self._index = index
            return index

    def _check_model(self, index: StoredIndex) -> None:
        from indexer.e5_model import ensure_default_model, model_fingerprint

        model_dir = ensure_default_model(self.settings)
        want = index.manifest.get("model", {}).get("fingerprint")
        have = model_fingerprint(model_dir)
        if want != have:
            raise IndexModelMismatch(
                f"索引是用另一个嵌入模型建立的（索引: {index.manifest.get('model', {}).get('path')}，当前: {model_dir}）。"
                f"请运行 `gistqa index --rebuild`，或改回建索引时的模型 (the index was built with another model)."
            )

    def embedder(self):
        if self._embedder is None:
            from indexer.embed import get_embedder

            self._embedder = get_embedder(self.settings)
        return self._embedder

    def warm_up(self) -> None:
        self._ensure_loaded()
        self.embedder().encode_queries(["预热"])
        if self.settings.writer == "llm":
            from bot.llm_writer import writer_for

            writer_for(self)  # importing the LLM client takes seconds: not in a user's time

    # --- answering -------------------------------------------------------------------------
    def answer(self, question: str, history: list[str] | None = None, scope: str | None = None) -> Answer:
        if self.settings.writer == "llm":
            from bot.llm_writer import llm_answer, use_llm_writer

            # The LLM writer asks this method for the extractive answer first (it decides refusal
            # and is the fallback); the guard stops that call from coming back here.
            if use_llm_writer(self):
                return llm_answer(self, question, history, scope)
        t0 = time.perf_counter()
        timing: dict[str, float] = {}
        scope = scope or self.settings.scope
        index = self._ensure_loaded()
        timing["load"] = (time.perf_counter() - t0) * 1000
        t = time.perf_counter()
        query = analyse(question, history, self.lexicon, self._corpus_norm, self.settings.max_question_chars,
                        self._corpus_text)
        timing["analyse"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        qvec = self.embedder().encode_queries([query.retrieval_text])[0]
        timing["embed_query"] = (time.perf_counter() - t) * 1000
        hits = retrieve(index, self.lexicon, qvec, query.retrieval_text, dense_k=self.settings.dense_top_k,
                        lexical_k=self.settings.lexical_top_k, rrf_k=self.settings.rrf_k, scope=scope, timing=timing)
        slots = question_slots(query)
        literature = asks_about_literature(query, self.lexicon, slots)
        if "consensus_doc" in query.concepts and not literature and scope == "all":
            # "这份共识建议……": the user asks what the consensus itself says, not our cards.
            scope = "consensus"
            hits = [h for h in hits if in_scope(h.passage, scope)]
        hits = promote_references(prefer_sources(hits, not literature, CARD_WEIGHT_FOR_CONSENSUS_QUESTIONS), slots)
        t = time.perf_counter()
        plan = plan_answer(index, query, hits, qvec, self.lexicon, self._scope_concepts[scope],
                           self.settings.max_quotes, self.settings.sentence_keep_ratio, scope)
        timing["select"] = (time.perf_counter() - t) * 1000
        result = render(index, query, plan, hits, self.settings.passages_returned, scope, timing)
        timing["total"] = (time.perf_counter() - t0) * 1000
        result.timing_ms = {k: round(v, 2) for k, v in timing.items()}
        return result


def _quote_for(p: Passage, start: int, end: int, text: str, marker: int) -> Quote:
    return Quote(text=text, doc_id=p.doc_id, passage_id=p.passage_id, section=p.section, paragraph=p.paragraph,
                 start=start, end=end, kind=EVIDENCE_LABELS[p.evidence_kind], evidence_kind=p.evidence_kind,
                 page=p.page, marker=marker)


def _merge_adjacent(plan: Plan, index: StoredIndex) -> list[tuple[Passage, int, int]]:
    """Chosen sentences as spans; neighbours in one passage become one quote (read as one)."""
    spans = sorted(((c.passage, c.sentence.start, c.sentence.end, c.score) for c in plan.sentences),
                   key=lambda s: (s[0].passage_id, s[1]))
    merged: list[list] = []
    for p, s, e, score in spans:
        if (merged and merged[-1][0].passage_id == p.passage_id and e - merged[-1][1] <= MAX_MERGED_QUOTE
                and index.documents[p.doc_id].text[merged[-1][2]:s].strip() == ""):
            merged[-1][2] = e
            merged[-1][3] = max(merged[-1][3], score)
        else:
            merged.append([p, s, e, score])
    # Read in the source's own order: topics by their best quote, and within a topic (or document)
    # by position, so a topic reads 目前指南推荐 -> 存在争议及相关证据 -> 我们推荐 as written.
    def group(m):
        p = m[0]
        return (p.doc_id, p.section_path[0] if p.doc_kind == "consensus" else "")

    best: dict = {}
    for m in merged:
        best[group(m)] = max(best.get(group(m), float("-inf")), m[3])
    merged.sort(key=lambda m: (-best[group(m)], m[1]))
    return [(p, s, e) for p, s, e, _ in merged]


def rerank_by_answer(hits: list[Hit], plan: Plan, cited: list[str] = ()) -> list[Hit]:
    """Second stage: the passages whose sentences the writer chose (a finer relevance signal than
    passage-level fusion) come first, in answer order, then the vote item, then the reference
    records the answer cites, then the rest."""
    first: list[str] = []
    for c in plan.sentences:
        if c.passage.passage_id not in first:
            first.append(c.passage.passage_id)
    if plan.vote_hit is not None and plan.vote_hit.passage.passage_id not in first:
        first.append(plan.vote_hit.passage.passage_id)
    first += [pid for pid in cited if pid not in first]
    order = {pid: i for i, pid in enumerate(first)}
    ranked = sorted(hits, key=lambda h: order.get(h.passage.passage_id, len(order)))
    for i, h in enumerate(ranked, start=1):
        h.rank = i
    return ranked


def _retrieved(hits: list[Hit], n: int) -> list[RetrievedPassage]:
    return [RetrievedPassage(h.passage.doc_id, h.passage.passage_id, h.passage.section, h.passage.text,
                             round(h.score, 6), h.rank, h.passage.evidence_kind, round(h.dense, 4), round(h.lexical, 4))
            for h in hits[:n]]


def render(index: StoredIndex, query: Query, plan: Plan, hits: list[Hit], n_passages: int, scope: str,
           timing: dict) -> Answer:
    t = time.perf_counter()
    if plan.refused:
        passages = _retrieved(hits, n_passages)
        # No digits in this text: every number a user sees must come from a cited source.
        text = f"抱歉，{plan.reason}。{SCOPE_NOTE}因此无法回答这个问题。"
        timing["format"] = (time.perf_counter() - t) * 1000
        return Answer(question=query.text, answer=text, refused=True, refusal_reason=plan.reason, passages=passages, scope=scope)

    quotes: list[Quote] = []
    lines: list[tuple[str, list[Quote], list[str]]] = []  # (markdown line, its quotes, texts its numbers may come from)
    dropped: list[Dropped] = []
    for p, s, e in _merge_adjacent(plan, index):
        q = _quote_for(p, s, e, index.documents[p.doc_id].text[s:e], len(quotes) + 1)
        quotes.append(q)
        lines.append((f"- **{q.kind}**：「{q.text}」〔{place_of(p)}〕", [q], [p.text]))
    vote = None
    if plan.vote_hit is not None:
        p = plan.vote_hit.passage
        item = p.vote
        head = _quote_for(p, item.start, item.end, item.question, len(quotes) + 1)
        quotes.append(head)
        lines.append((f"- **投票结果**：「{head.text}」〔{place_of(p)}〕", [head], [p.text]))
        for o in item.options:
            oq = _quote_for(p, o.start, o.end, o.text, len(quotes) + 1)
            quotes.append(oq)
            lines.append((f"    - 「{oq.text}」：{o.percent}%", [oq], [p.text]))
        vote = VoteResult(item.number, item.question, p.passage_id, [{"text": o.text, "percent": o.percent} for o in item.options])
    references = reference_notes(index, quotes, scope, plan.slots)
    if references:
        chips = []
        for ref in references:
            card = index.passage_by_id[ref.passage_id]
            start = index.documents[card.doc_id].text.index(ref.candidates, card.start)
            quotes.append(_quote_for(card, start, start + len(ref.candidates), ref.candidates, len(quotes) + 1))
            first_author = re.split(r"[,，(（]", ref.candidates)[0].strip()
            chips.append(f"〔［{ref.slot}］{first_author} 等 · 置信度{CONFIDENCE_ZH.get(ref.confidence, ref.confidence)}〕")
        # The full records are in the JSON and the sources panel; the answer names them briefly.
        lines.append(("- **所引文献**（文献卡片中的候选文献，未经确认）：" + "".join(chips), quotes[-len(references):], []))
    # The passages returned: those the answer quotes first, then the reference records it cites.
    cited = [r.passage_id for r in references]
    listed = {h.passage.passage_id for h in hits}
    hits = hits + [Hit(-1, index.passage_by_id[pid], 0.0, 0.0, 0.0) for pid in cited if pid not in listed]
    passages = _retrieved(rerank_by_answer(hits, plan, cited), n_passages)
    timing["format"] = (time.perf_counter() - t) * 1000

    # Verify: every quote at its offsets; every number outside quotes and citations in its sources.
    t = time.perf_counter()
    kept_lines = []
    for line, line_quotes, sources in lines:
        ok = True
        for q in line_quotes:
            problem = quote_problem(index, q.doc_id, q.passage_id, q.start, q.end, q.text)
            q.verified = problem is None
            if problem:
                dropped.append(Dropped("quote", q.text, problem))
                ok = False
        bad = unsupported_numbers(QUOTE_SPAN.sub("", line), sources)
        if bad:
            dropped.append(Dropped("number", line, f"numbers not in the cited source: {', '.join(bad)}"))
            ok = False
        if ok:
            kept_lines.append(line)
    verified_quotes = [q for q in quotes if q.verified]
    timing["verify"] = (time.perf_counter() - t) * 1000
    if not kept_lines:
        return Answer(question=query.text, answer="抱歉，没有能通过原文核对的内容可以引用，因此不作回答。", refused=True,
                      refusal_reason="no verified quote", passages=passages, dropped=dropped, scope=scope)
    intro = "根据共识原文（逐字引用）：" if scope == "consensus" else "根据共识原文及文献卡片（逐字引用）："
    text = intro + "\n\n" + "\n".join(kept_lines)
    return Answer(question=query.text, answer=text, refused=False, quotes=verified_quotes, passages=passages,
                  vote=vote, references=references, dropped=dropped, scope=scope)



def reference_notes(index: StoredIndex, quotes: list[Quote], scope: str, asked_slots: tuple[int, ...]) -> list[ReferenceNote]:
    """For each ［n］ in the quoted consensus text (or asked about), the candidate record of card n."""
    if scope != "all":
        return []
    slots: list[int] = []
    for q in quotes:
        if q.doc_id == "consensus" or asked_slots:
            for n in cited_slots(q.text) + tuple(asked_slots):
                if n not in slots:
                    slots.append(n)
    notes = []
    for n in slots[:4]:
        card = index.slot_records.get(n)
        if card is None:
            continue
        # The first candidate record, whole: the card's list item without its marker.
        record = re.sub(r"^\s*[-*+]\s+", "", card.text.split("\n")[0]).strip()
        if not record:
            continue
        doc = index.documents[card.doc_id]
        notes.append(ReferenceNote(n, str(doc.meta.get("confidence", "")), card.doc_id, card.passage_id, record))
    return notes
