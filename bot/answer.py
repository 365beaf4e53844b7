"""`answer()`: the one pipeline behind the CLI, the chat page and the evaluation.

question -> search (analyse, embed, retrieve) -> coverage (compose) -> plan (setting, facet, units,
or a refusal) -> render -> verify -> Answer; with writer = "llm", the LLM writer then drafts from the
same plan (bot/llm_writer.py), the extractive answer as its fallback.
"""
from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.compose import CARD_WEIGHT_FOR_CONSENSUS_QUESTIONS, Coverage, asks_about_literature, judge_coverage, question_slots
from bot.decide import (REASON_TEXT, analysis_of, apply_reading, fallback_blocks, refusal_text, refuses, relead,
                         rule_view)
from bot.learn import LearnedArtefactError, LearnedModel, reading_text, unsupported_language
from bot.split import join_answers, split_questions
from bot.plan import GROUP_LABELS, GROUP_OF, DocumentMap, Plan, allowed, document_map, plan_answer
from bot.setting import SETTING_LABELS, TOPIC_SHORT
from bot.query import Query, analyse
from bot.retrieve import Hit, in_scope, prefer_sources, promote_references, retrieve
from bot.types import Answer, Dropped, Quote, ReferenceNote, RetrievedPassage, VoteResult
from bot.verify import QUOTE_SPAN, quote_problem, unsupported_numbers
from indexer.lexicon import Lexicon
from indexer.settings import Settings, get_settings
from indexer.store import IndexModelMismatch, IndexMissing, StoredIndex, current_build_dir, load_build
from indexer.structure import cited_slots
from indexer.types import EVIDENCE_LABELS, Passage

SCOPE_NOTE = "本工具只依据本知识库收录的CSCO胃肠间质瘤专家委员会专家共识及其引用文献作答，不使用其他来源，"
DISCLAIMER = "本工具仅供医学教育参考，答案只摘录专家共识及其引用文献，不能替代临床判断。"


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors whose message is meant for the user (the CLI, the page and the API show it as text,
    never as a traceback)."""
    from bot.query import QuestionError
    from indexer.build import BuildBusy
    from indexer.e5_model import ModelError
    from indexer.store import IndexError_

    return (QuestionError, IndexError_, ModelError, BuildBusy)  # LearnedArtefactError is an IndexError_


# Asked once by `Bot.warm_up`: one question per setting, a vote, a reference, English, a follow-up
# (what each touches is built once; the answers are thrown away and change nothing).
WARM_UP_QUESTIONS = ("转移性KIT 9号外显子突变患者一线伊马替尼怎么用？", "术后辅助治疗的剂量有投票结果吗？",
                     "辅助治疗中复发了怎么办", "文献3是哪篇文章？", "Why is exon 9 less sensitive to imatinib?")
MAX_MERGED_QUOTE = 160  # neighbouring sentences join into one quote up to this many characters
CONFIDENCE_ZH = {"strong": "较确定", "moderate": "中等", "weak": "较弱"}


def place_of(p: Passage, dm: DocumentMap | None = None) -> str:
    """Where a quote stands, as a reader would look it up: short enough to read on a phone (the
    topic by its short name), exact enough to find (part and paragraph, or the table's item)."""
    if p.doc_kind == "consensus":
        topic = dm.topic_of_row.get(dm.row_of.get(p.passage_id, -1)) if dm is not None else None
        if p.evidence_kind == "authors":
            where = f"共识 · {p.section_path[0]} · 作者信息"
        elif topic is not None and topic.settings:
            where = f"共识 · {TOPIC_SHORT[topic.settings[0]]} › {p.section_path[-1]} · 第{p.paragraph}段"
        else:
            where = f"共识 · {p.section}" + ("" if p.vote else f" · 第{p.paragraph}段")
    elif p.doc_kind == "reference_card":
        where = f"文献卡片［{p.ref_slot}］ · {p.section}"
    elif p.doc_kind == "reference_fulltext":
        where = f"文献［{p.ref_slot}］全文 · {p.section}" + (f" · 第{p.page}页" if p.page else "")
    else:
        where = f"{p.doc_title} · {p.section} · 第{p.paragraph}段"
    return where


@dataclass
class Search:
    """What `Bot.search` found: the loaded index, the analysed question, its vector, the ranked
    passages and the scope actually searched."""

    index: StoredIndex
    query: Query
    qvec: object
    hits: list[Hit]
    scope: str


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
        # Text embedded -> its vector, most recent last. A follow-up the page offers is answered
        # before it is shown, so the click finds its vector here; so does the same question from
        # the next trainee. The encoder is fixed for a Bot (the index check refuses another one).
        self._query_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._query_vectors_lock = threading.Lock()
        # The learned decisions for the loaded build (bot/learn.py); `use_model` sets one trained
        # elsewhere (leave-one-author-out evaluation).
        self._learned: LearnedModel | None = None
        self._learned_for: str = ""
        self._model_override: LearnedModel | None = None

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
            self._corpus_norm = index.corpus_norm
            self._index = index
            return index

    def _check_model(self, index: StoredIndex) -> None:
        from indexer.embed import encoder_identity

        model_dir, have = encoder_identity(self.settings)
        want = index.manifest.get("model", {}).get("fingerprint")
        if want != have:
            raise IndexModelMismatch(
                f"索引是用另一个嵌入模型建立的（索引: {index.manifest.get('model', {}).get('path')}，当前: {model_dir}）。"
                f"请运行 `gistqa index --rebuild`，或改回建索引时的模型 (the index was built with another model)."
            )

    def learned_model(self) -> LearnedModel | None:
        """The models trained on the question bank for the loaded index build; None when the
        settings ask for the rules alone. Missing or damaged: LearnedArtefactError (with the
        command that rebuilds it), never a silent fall back to the rules."""
        if self._model_override is not None:
            return self._model_override
        if self.settings.decisions == "rules":
            return None
        from bot.learn import load_model
        from bot.train import bank_checksum, learned_dir, train
        from evals.bank import bank_files

        index = self._ensure_loaded()
        key = index.build_dir.name
        if self._learned is not None and self._learned_for == key:
            return self._learned  # every answer comes here: no file system look-up on this path
        if not bank_files(self.settings.bank_dir):
            raise LearnedArtefactError(f"问题库为空或不存在: {self.settings.bank_dir}；"
                                       f"设置 decisions = \"rules\" 或补回问题库 (the question bank is missing)")
        with self._lock:
            folder = learned_dir(self.settings, key, bank_checksum(self.settings.bank_dir),
                                 self.settings.decisions == "combined")
            if not folder.is_dir() and self.auto_build:
                train(self.settings)
            if not folder.is_dir():
                raise LearnedArtefactError(f"没有与当前索引和问题库相符的学习模型: {folder}. 运行 `gistqa index` 训练 "
                                           f"(no learned model for this index and question bank: run `gistqa index`)")
            model = load_model(folder)
            for u in model.units:  # trained on this build's rows: check they still say the same
                if u.kind == "sentence" and (u.row >= len(index.sentences) or index.sentences[u.row].text != u.text):
                    raise LearnedArtefactError(f"学习模型与索引不符: {folder}. 运行 `gistqa index` (the learned model is for another index)")
            self._learned, self._learned_for = model, key
            return model

    def use_model(self, model: LearnedModel | None) -> None:
        """Answer with this learned model (trained on some authors only) instead of the stored one."""
        self._model_override = model

    def embedder(self):
        if self._embedder is None:
            from indexer.embed import get_embedder

            self._embedder = get_embedder(self.settings)
        return self._embedder

    def warm_up(self) -> None:
        """Pay now what the first questions would otherwise pay (a server does this before it
        says it is ready; `gistqa ask` answers one question and does not): the index and the
        encoder, the corpus-wide sentence frequencies, and the lazily built tables of analysis,
        plan and composer (the first answer builds the sentence frequencies, ~130 ms). Measured:
        the first question took 254 ms and the second 58 ms after a bare load, ~20 ms once warm."""
        self._ensure_loaded()
        self.learned_model()
        self.embedder().encode_queries(["预热"])
        for question in WARM_UP_QUESTIONS:
            self.answer(question)
        if self.settings.writer == "llm":
            from bot.llm_writer import writer_for

            writer_for(self)  # importing the LLM client takes seconds: not in a user's time

    def query_vector(self, text: str) -> np.ndarray:
        """The embedding of ``text`` as a query, from the recent ones when it was embedded before."""
        size = self.settings.query_cache_size
        with self._query_vectors_lock:
            vec = self._query_vectors.get(text)
            if vec is not None:
                self._query_vectors.move_to_end(text)
                return vec
        vec = self.embedder().encode_queries([text])[0]
        vec.setflags(write=False)  # shared by every answer that asks the same
        if size:
            with self._query_vectors_lock:
                self._query_vectors[text] = vec
                while len(self._query_vectors) > size:
                    self._query_vectors.popitem(last=False)
        return vec

    def prefill_query_vectors(self, texts: list[str]) -> None:
        """Embed many questions in batches into the recent vectors (training embeds the bank)."""
        # Sorted by length: a batch is padded to its longest text, so like lengths batch together.
        missing = sorted(dict.fromkeys(t for t in texts if t not in self._query_vectors), key=len)
        if not missing:
            return
        embedder = self.embedder()
        vecs = getattr(embedder, "encode_queries_bulk", embedder.encode_queries)(missing)
        with self._query_vectors_lock:
            for t, v in zip(missing, vecs):
                v.setflags(write=False)
                self._query_vectors[t] = v
            while len(self._query_vectors) > max(self.settings.query_cache_size, len(missing)):
                self._query_vectors.popitem(last=False)

    def forget_query_vectors(self) -> None:
        """Empty the recent query vectors (a benchmark measuring the model's own time)."""
        with self._query_vectors_lock:
            self._query_vectors.clear()

    # --- answering -------------------------------------------------------------------------
    def analyse(self, question: str, history: list[str] | None = None, scope: str | None = None) -> Query:
        """The rules' reading of a question (no embedding, no retrieval). The question is read as
        simplified Chinese without noise, as the corpus is written: traditional script, emoji or a
        pasted lab value never change what is read."""
        index = self._ensure_loaded()
        return analyse(reading_text(question) if isinstance(question, str) else question,
                       [reading_text(h) if isinstance(h, str) else h for h in (history or [])], self.lexicon,
                       self._corpus_norm, self.settings.max_question_chars, self._corpus_text,
                       self._scope_concepts[scope or self.settings.scope], document_map(index).author_names)

    def rule_view(self, query: Query, scope: str | None = None):
        """What the lexicon finds and the rules decide of an analysed question (the models' analysis
        and rule columns), and its vector."""
        found = self.search(query.raw, query.history, scope, query=query)
        coverage = self._coverage(found)
        return analysis_of(found.query, self._scope_concepts[found.scope]), rule_view(found.query, coverage), found.qvec

    def _coverage(self, found: "Search", lenient: bool = False):
        dm = document_map(found.index)
        settings = found.query.reading.setting.settings if found.query.reading else ()
        setting_rows = tuple(row for row, topic in dm.topic_of_row.items() if set(topic.settings) & set(settings))
        return judge_coverage(found.index, found.query, found.hits, found.qvec, self.lexicon,
                              self._scope_concepts[found.scope], found.scope, setting_rows, lenient=lenient)

    def search(self, question: str, history: list[str] | None = None, scope: str | None = None,
               timing: dict | None = None, query: Query | None = None) -> "Search":
        """The question analysed and its passages ranked, as every answer starts (and as the
        LangChain retriever returns them): query analysis, query embedding, hybrid retrieval,
        scope (a question about the consensus itself searches the consensus only), sources."""
        timing = timing if timing is not None else {}
        t0 = time.perf_counter()
        scope = scope or self.settings.scope
        index = self._ensure_loaded()
        dm = document_map(index)
        timing["load"] = (time.perf_counter() - t0) * 1000
        t = time.perf_counter()
        query = query or self.analyse(question, history, scope)
        timing["analyse"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        qvec = self.query_vector(query.retrieval_text)
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
        return Search(index, query, qvec, hits, scope)

    def answer(self, question: str, history: list[str] | None = None, scope: str | None = None, *,
               detail: bool = False, stream: bool = False, llm_writer=None, passages_k: int | None = None) -> Answer:
        """question -> analyse -> embed -> retrieve -> coverage -> decide -> plan -> writer -> verify.
        A message holding two questions is split and each part answered (bot/split.py). The plan
        is built once; the extractive writer renders it, and the LLM writer (when the settings name
        it) writes from the same plan's passages, with the extractive answer as its fallback."""
        if self.settings.decisions != "rules" and isinstance(question, str):
            from bot.query import clean_question

            parts = split_questions(reading_text(clean_question(question, self.settings.max_question_chars)))
            if len(parts) > 1:
                t0 = time.perf_counter()
                answers = [self._answer_one(part, list(history or []) + parts[:i], scope, detail=detail, passages_k=passages_k)
                           for i, part in enumerate(parts)]
                joined = join_answers(parts, answers)
                if joined is not None:
                    joined.timing_ms = {"total": round((time.perf_counter() - t0) * 1000, 2)}
                    return joined
        return self._answer_one(question, history, scope, detail=detail, stream=stream, llm_writer=llm_writer,
                                passages_k=passages_k)

    def _answer_one(self, question: str, history: list[str] | None = None, scope: str | None = None, *,
                    detail: bool = False, stream: bool = False, llm_writer=None, passages_k: int | None = None) -> Answer:
        t0 = time.perf_counter()
        timing: dict[str, float] = {}
        found = self.search(question, history, scope, timing)
        index, query, qvec, hits, scope = found.index, found.query, found.qvec, found.hits, found.scope
        dm = document_map(index)
        t = time.perf_counter()
        coverage = self._coverage(found)
        model = self.learned_model()
        decision = None
        if unsupported_language(query.text):
            coverage = Coverage([], [], None, True, REASON_TEXT["unsupported_language"])
        elif model is not None:
            decision = model.decide(query.text, query.history, qvec, analysis_of(query, self._scope_concepts[scope]),
                                    rule_view(query, coverage), neighbours=True)
            decision.refused = refuses(decision, coverage.refused)
            if decision.refused:
                if not coverage.refused:
                    reason = decision.reason if decision.reason != "unsupported_language" else "not_covered"
                    coverage = Coverage([], [], None, True, refusal_text(reason, query))
            elif apply_reading(query, decision) or coverage.refused:
                coverage = self._coverage(found, lenient=True)
        max_blocks = self.settings.max_quotes_detail if detail else self.settings.max_quotes
        plan = plan_answer(index, query, hits, coverage, self.lexicon, detail=detail, scope=scope,
                           max_blocks=self.settings.max_quotes, max_blocks_detail=self.settings.max_quotes_detail,
                           keep_ratio=self.settings.sentence_keep_ratio)
        if decision is not None:
            plan.explain.append(f"learned: p(refuse) {decision.p_refuse:.2f}" + (f" (refused: {decision.reason})" if decision.refused else "")
                                + " · settings " + ", ".join(f"{s} {p:.2f}" for s, p in decision.settings.items() if p >= 0.1)
                                + f" · facet {decision.facet} {decision.facet_p[decision.facet]:.2f}")
            if not decision.refused and plan.refused and not coverage.refused:
                blocks = fallback_blocks(plan, decision, model, index, dm, self.lexicon)
                if blocks:
                    plan.blocks, plan.refused, plan.reason = blocks, False, ""
            if not plan.refused:
                relead(plan, decision, model, index, dm, self.lexicon, max_blocks)
        timing["select"] = (time.perf_counter() - t) * 1000
        result = render(index, query, plan, hits, passages_k or self.settings.passages_returned, scope, timing)
        if decision is not None:
            result.explain["learned"] = decision.to_dict([u.text[:40] for u in model.units])
        timing["total"] = (time.perf_counter() - t0) * 1000
        result.timing_ms = {k: round(v, 2) for k, v in timing.items()}
        if self.settings.writer == "llm" and not result.refused:
            from bot.llm_writer import llm_answer

            # The plan's own passages first (the setting-aware evidence), then the rest retrieved.
            planned = list(dict.fromkeys(index.passages[b.row].passage_id for b in plan.blocks))
            by_id = index.passage_by_id
            settings = plan.reading.setting.settings
            passages = [by_id[pid] for pid in planned] + [
                by_id[rp.passage_id] for rp in result.passages if rp.passage_id not in planned and rp.passage_id in by_id
                and allowed(dm.row_of[rp.passage_id], by_id[rp.passage_id], dm, settings, cards=plan.literature)]
            return llm_answer(self, result, passages[: self.settings.passages_returned], query.history,
                              writer=llm_writer, stream=stream)
        return result


def _quote_for(p: Passage, start: int, end: int, text: str, marker: int) -> Quote:
    return Quote(text=text, doc_id=p.doc_id, passage_id=p.passage_id, section=p.section, paragraph=p.paragraph,
                 start=start, end=end, kind=EVIDENCE_LABELS[p.evidence_kind], evidence_kind=p.evidence_kind,
                 page=p.page, marker=marker)


def rerank_by_answer(hits: list[Hit], plan: Plan, index: StoredIndex, cited: list[str] = ()) -> list[Hit]:
    """Second stage: the passages the plan quotes come first, in answer order, then the reference
    records the answer cites, then the rest."""
    first: list[str] = []
    for b in plan.blocks:
        pid = index.passages[b.row].passage_id
        if pid not in first:
            first.append(pid)
    first += [pid for pid in cited if pid not in first]
    listed = {h.passage.passage_id for h in hits}
    hits = hits + [Hit(row, index.passages[row], 0.0, 0.0, 0.0) for row in
                   dict.fromkeys(b.row for b in plan.blocks) if index.passages[row].passage_id not in listed]
    order = {pid: i for i, pid in enumerate(first)}
    ranked = sorted(hits, key=lambda h: order.get(h.passage.passage_id, len(order)))
    for i, h in enumerate(ranked, start=1):
        h.rank = i
    return ranked


def _retrieved(hits: list[Hit], n: int) -> list[RetrievedPassage]:
    return [RetrievedPassage(h.passage.doc_id, h.passage.passage_id, h.passage.section, h.passage.text,
                             round(h.score, 6), h.rank, h.passage.evidence_kind, round(h.dense, 4), round(h.lexical, 4))
            for h in hits[:n]]


def _intro(plan: Plan, scope: str) -> str:
    settings = plan.reading.setting.settings
    source = "共识原文" if scope == "consensus" or not plan.literature else "共识原文及文献卡片"
    if any(b.label for b in plan.blocks):
        return f"按临床情境分述（{source}，逐字引用）："
    if settings and not plan.reading.setting.compare and plan.reading.intent.facet != "authors":
        groups = dict.fromkeys(GROUP_LABELS[GROUP_OF[s]] for s in settings)
        name = "、".join(groups) if len(settings) > 1 else SETTING_LABELS[settings[0]]
        return f"**{name}**（{source}，逐字引用）："
    return f"根据{source}（逐字引用）："


def render(index: StoredIndex, query: Query, plan: Plan, hits: list[Hit], n_passages: int, scope: str,
           timing: dict) -> Answer:
    t = time.perf_counter()
    if plan.refused:
        passages = _retrieved(hits, n_passages)
        # No digits in this text: every number a user sees must come from a cited source.
        text = f"抱歉，{plan.reason}。{SCOPE_NOTE}因此无法回答这个问题。"
        timing["format"] = (time.perf_counter() - t) * 1000
        return Answer(question=query.text, answer=text, refused=True, refusal_reason=plan.reason, passages=passages,
                      scope=scope, notes=list(plan.explain), explain=explain_of(plan, index, document_map(index)))

    dm = document_map(index)
    quotes: list[Quote] = []
    lines: list[tuple[str, list[Quote], list[str]]] = []  # (markdown line, its quotes, texts its numbers may come from)
    dropped: list[Dropped] = []
    vote = None
    for b in plan.blocks:
        p = index.passages[b.row]
        where = place_of(p, dm)
        if p.vote is not None:
            item = p.vote
            head = _quote_for(p, item.start, item.end, item.question, len(quotes) + 1)
            quotes.append(head)
            lines.append((f"- **投票结果**：「{head.text}」〔{where}〕", [head], [p.text]))
            # Every option, the majority first (the order a reader wants; each is its own quote).
            for o in sorted(item.options, key=lambda o: -o.percent):
                oq = _quote_for(p, o.start, o.end, o.text, len(quotes) + 1)
                quotes.append(oq)
                lines.append((f"    - 「{oq.text}」：{o.percent}%", [oq], [p.text]))
            if vote is None:
                vote = VoteResult(item.number, item.question, p.passage_id,
                                  [{"text": o.text, "percent": o.percent} for o in item.options])
            continue
        s, e = index.sentences[b.sentences[0]].start, index.sentences[b.sentences[-1]].end
        q = _quote_for(p, s, e, index.documents[p.doc_id].text[s:e], len(quotes) + 1)
        quotes.append(q)
        head = f"**{b.label}**（{q.kind}）" if b.label else f"**{q.kind}**"
        lines.append((f"- {head}：「{q.text}」〔{where}〕", [q], [p.text]))
    references = reference_notes(index, quotes, scope, plan.slots) if plan.literature else []
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
    passages = _retrieved(rerank_by_answer(hits, plan, index, cited), n_passages)
    timing["format"] = (time.perf_counter() - t) * 1000

    # Verify: every quote at its offsets; every number outside quotes and citations in its sources.
    t = time.perf_counter()
    kept_lines, shown = [], []
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
            shown += line_quotes
    verified_quotes = [q for q in quotes if q.verified]
    if vote is not None and not any(q.passage_id == vote.passage_id and q.text == vote.question for q in shown):
        vote = None  # the vote panel shows only an item the answer quotes (its line kept, verified)
    timing["verify"] = (time.perf_counter() - t) * 1000
    if not kept_lines:
        return Answer(question=query.text, answer="抱歉，没有能通过原文核对的内容可以引用，因此不作回答。", refused=True,
                      refusal_reason="no verified quote", passages=passages, dropped=dropped, scope=scope)
    text = _intro(plan, scope) + "\n\n" + "\n".join(kept_lines)
    return Answer(question=query.text, answer=text, refused=False, quotes=verified_quotes, passages=passages,
                  vote=vote, references=references, dropped=dropped, scope=scope, notes=list(plan.explain),
                  explain=explain_of(plan, index, dm))


def explain_of(plan: Plan, index: StoredIndex, dm: DocumentMap) -> dict:
    """The plan's decisions as data: what `--explain` prints and `ask --json` carries."""
    r = plan.reading
    return {
        "settings": list(r.setting.settings), "compare": r.setting.compare, "setting_cues": list(r.setting.cues),
        "setting_from_history": r.setting_from_history, "facet": r.intent.facet, "facet_cue": r.intent.cue,
        "facet_from_history": r.facet_from_history, "candidates": plan.candidates,
        "blocks": [{"role": b.role, "label": b.label, "place": place_of(index.passages[b.row], dm), "why": b.why}
                   for b in plan.blocks],
        "decisions": list(plan.explain),
    }


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
