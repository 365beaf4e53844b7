"""gistqa as LangChain components: a retriever and the answer pipeline as a Runnable.

- `GistqaRetriever` (a `BaseRetriever`): question -> the passages `Bot.answer()` plans from, as
  `Document`s carrying their provenance (document, section path, paragraph, offsets, evidence kind,
  cited slots, score, rank).
- `GistqaAnswer` (a `RunnableSerializable`): question or {"question", "history", "scope", "detail"}
  -> the dict `gistqa ask --json` prints. `stream` yields that one verified dict, never draft text.

Only this module imports langchain_core; `bot.answer` does not import it. Each component holds one
`Bot` (its `bot` field), made with the default settings on first use unless one is given; pass the
same `Bot` to both to load the index and model once.
"""
from __future__ import annotations

import threading
from typing import Any, Literal, Union

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, Field, PrivateAttr
from typing_extensions import NotRequired, TypedDict

from bot.answer import Bot, place_of
from bot.plan import document_map
from bot.query import QuestionError
from bot.types import RetrievedPassage

SCOPES = ("all", "consensus")
Scope = Literal["all", "consensus"]
INPUT_KEYS = ("question", "history", "scope", "detail")


class AnswerInput(TypedDict):
    """The dict form of `GistqaAnswer`'s input (a bare question string is also accepted)."""

    question: str
    history: NotRequired[list[str]]  # earlier questions, oldest first
    scope: NotRequired[Scope]  # "consensus": the consensus text only, no reference cards
    detail: NotRequired[bool]  # up to 6 quote blocks instead of 3


# --- input checks: the same kind of message as bot.query.QuestionError ------------------------------
def check_scope(scope: Any) -> None:
    if scope is not None and scope not in SCOPES:
        raise QuestionError(f"范围只能是 all 或 consensus，收到 {scope!r} (scope must be 'all' or 'consensus', got {scope!r})")


def check_k(k: Any) -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise QuestionError(f"k 必须是不小于 1 的整数，收到 {k!r} (k must be an integer of at least 1, got {k!r})")


def parse_answer_input(value: Any) -> tuple[Any, list[str], str | None, bool]:
    """A question string or an `AnswerInput` dict -> (question, history, scope, detail). The
    question itself is checked by `bot.query.analyse` (text, not empty, not too long)."""
    if isinstance(value, str):
        return value, [], None, False
    if not isinstance(value, dict):
        raise QuestionError(
            f"输入必须是问题文本，或含 question 的字典，收到 {type(value).__name__} "
            f"(the input must be a question string or a dict with 'question', got {type(value).__name__})")
    unknown = [str(key) for key in value if key not in INPUT_KEYS]
    if unknown:
        raise QuestionError(
            f"不认识的输入项：{'、'.join(unknown)}；可用的是 {'、'.join(INPUT_KEYS)} "
            f"(unknown input keys: {', '.join(unknown)}; the keys are {', '.join(INPUT_KEYS)})")
    if "question" not in value:
        raise QuestionError("输入缺少 question（要问的问题） (the input dict has no 'question')")
    history = value.get("history") or []
    if not isinstance(history, (list, tuple)) or not all(isinstance(h, str) for h in history):
        raise QuestionError("history 必须是之前问题文本的列表 (history must be a list of earlier questions as text)")
    scope = value.get("scope")
    check_scope(scope)
    detail = value.get("detail", False)
    if not isinstance(detail, bool):
        raise QuestionError(f"detail 只能是 true 或 false，收到 {detail!r} (detail must be true or false)")
    return value["question"], list(history), scope, detail


# --- the retrieval `Bot.answer()` does, up to the plan ---------------------------------------------
def document_of(rp: RetrievedPassage, bot: Bot, scope: str) -> Document:
    """A passage an answer returned, as a LangChain Document: its text, and where it stands."""
    index = bot._ensure_loaded()
    p = index.passage_by_id[rp.passage_id]
    return Document(
        id=p.passage_id,
        page_content=p.text,
        metadata={
            "passage_id": p.passage_id,
            "doc_id": p.doc_id,
            "doc_kind": p.doc_kind,
            "doc_title": p.doc_title,
            "source": index.documents[p.doc_id].path,  # relative to the corpus folder
            "section": p.section,
            "section_path": list(p.section_path),
            "paragraph": p.paragraph,
            "start": p.start,  # offsets in the document's text: text[start:end] == page_content
            "end": p.end,
            "page": p.page,
            "evidence_kind": p.evidence_kind,
            "evidence_label": p.evidence_label,  # 指南推荐 / 争议与证据 / 专家推荐 / 投票结果 / 文献卡片 ...
            "cites": list(p.cites),  # reference slots ［n］ named in the passage
            "ref_slot": p.ref_slot,  # the slot a reference card or full text belongs to
            "vote_item": p.vote.number if p.vote is not None else None,
            "place": place_of(p, document_map(index)),  # as an answer cites it
            "score": rp.score,  # fused (reciprocal rank), after source preference
            "dense": rp.dense,
            "lexical": rp.lexical,
            "rank": rp.rank,  # the answer's order: the passages it quotes first
            "scope": scope,
        },
    )


class _SharesBot:
    """One `Bot` per component, made on first use (threads of a `batch` share it)."""

    def get_bot(self) -> Bot:
        if self.bot is None:
            with self._bot_lock:
                if self.bot is None:
                    self.bot = Bot()
        return self.bot


class GistqaRetriever(_SharesBot, BaseRetriever):
    """gistqa's hybrid retrieval (dense + BM25 + best sentence, fused by reciprocal rank) as a
    LangChain retriever: `invoke(question)` -> the `k` passages `Bot.answer()` returns for it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    bot: Bot | None = Field(default=None, exclude=True, repr=False)
    scope: Scope | None = None  # None: the bot's settings (GISTQA_SCOPE, default "all")
    k: int | None = None  # None: the bot's settings.passages_returned
    _bot_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any):
        check_scope(data.get("scope"))
        check_k(data.get("k"))
        super().__init__(**data)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        check_scope(self.scope)
        check_k(self.k)
        bot = self.get_bot()
        k = self.k or bot.settings.passages_returned
        # The passages answer() returns for this question, in its order (those it quotes first):
        # the plan is what ranks them last, so the retriever runs it too (a few milliseconds).
        result = bot.answer(query, scope=self.scope, passages_k=k)
        return [document_of(rp, bot, result.scope) for rp in result.passages[:k]]


class GistqaAnswer(_SharesBot, RunnableSerializable[Union[str, AnswerInput], dict[str, Any]]):
    """`Bot.answer()` as a Runnable: the output is `Answer.to_dict()`, what `gistqa ask --json`
    prints. invoke / batch / ainvoke / abatch come from the base class; `stream` yields one chunk,
    the verified answer (the base class's stream calls invoke), never unverified text."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    bot: Bot | None = Field(default=None, exclude=True, repr=False)
    _bot_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def invoke(self, input: Union[str, AnswerInput], config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._call_with_config(self._answer, input, config)

    def _answer(self, value: Union[str, AnswerInput]) -> dict[str, Any]:
        question, history, scope, detail = parse_answer_input(value)
        return self.get_bot().answer(question, history=history, scope=scope, detail=detail).to_dict()
