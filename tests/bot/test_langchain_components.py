"""gistqa as LangChain components: the retriever gives the passages answer() plans from, with their
provenance; the answer Runnable gives what `ask --json` prints; bad input is a message, not a trace."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import typing

import pytest
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable

from bot.answer import Bot
from bot.langchain_components import GistqaAnswer, GistqaRetriever
from bot.query import QuestionError
from indexer.types import EVIDENCE_LABELS
from tests.conftest import REPO

DOSE = "KIT exon 9突变患者辅助治疗用多大剂量？"
REFUSED = "肺癌患者的化疗方案是什么？"
# One question per path of the retrieval: plain, English, a question about the consensus itself
# (searched in the consensus only), a reference slot named (its card first), an author named.
QUESTIONS = [DOSE, "What first-line dose is recommended for exon 9 GIST?", "这份共识建议辅助治疗用什么剂量？",
             "文献［16］是哪篇研究？", "Vincenzi的研究结论是什么？", REFUSED]


def _answered(bot, question: str, k: int, scope=None) -> tuple[list[tuple], str]:
    """The passages answer() returns for the question (id, text, score, rank), and its scope."""
    result = bot.answer(question, scope=scope, passages_k=k)
    return [(p.passage_id, p.text, p.score, p.rank) for p in result.passages], result.scope


def _without_timing(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "timing_ms"}


# --- the retriever ---------------------------------------------------------------------------------
@pytest.mark.parametrize("question", QUESTIONS)
def test_retriever_returns_the_passages_answer_returns(bot, question):
    planned, scope = _answered(bot, question, 8)
    docs = GistqaRetriever(bot=bot, k=8).invoke(question)
    assert isinstance(docs, list) and all(isinstance(d, Document) for d in docs)
    got = [(d.metadata["passage_id"], d.page_content, d.metadata["score"], d.metadata["rank"]) for d in docs]
    assert got == planned
    assert {d.metadata["scope"] for d in docs} == {scope}


def test_a_question_about_the_consensus_itself_searches_the_consensus_only(bot):
    question = "这份共识建议辅助治疗用什么剂量？"
    _, scope = _answered(bot, question, 5)
    assert scope == "consensus"
    docs = GistqaRetriever(bot=bot, k=50, scope="all").invoke(question)
    assert docs and all(d.metadata["doc_kind"] == "consensus" for d in docs)


def test_by_default_the_retriever_returns_as_many_passages_as_an_answer_lists(bot):
    """A refused answer lists the retrieved passages as they came: the same as the retriever's."""
    result = bot.answer(REFUSED)
    assert result.refused
    docs = GistqaRetriever(bot=bot).invoke(REFUSED)
    assert len(docs) == bot.settings.passages_returned
    assert [(d.id, d.page_content, d.metadata["score"], d.metadata["rank"]) for d in docs] == \
        [(p.passage_id, p.text, p.score, p.rank) for p in result.passages]


@pytest.mark.parametrize("question", [DOSE, "文献［16］是哪篇研究？", "表1第3项投票结果是什么？"])
def test_document_metadata_is_the_passages_provenance(bot, stored_index, question):
    docs = GistqaRetriever(bot=bot, k=8).invoke(question)
    assert len(docs) == 8
    for rank, d in enumerate(docs, start=1):
        p = stored_index.passage_by_id[d.id]
        m = d.metadata
        assert d.page_content == p.text
        assert stored_index.documents[m["doc_id"]].text[m["start"]:m["end"]] == d.page_content
        assert (m["passage_id"], m["doc_id"], m["doc_kind"], m["paragraph"], m["start"], m["end"]) == \
            (p.passage_id, p.doc_id, p.doc_kind, p.paragraph, p.start, p.end)
        assert m["section_path"] == list(p.section_path) and m["section"] == " › ".join(p.section_path)
        assert m["evidence_kind"] == p.evidence_kind and m["evidence_label"] == EVIDENCE_LABELS[p.evidence_kind]
        assert m["cites"] == list(p.cites) and m["ref_slot"] == p.ref_slot and m["page"] == p.page
        assert m["source"] == stored_index.documents[p.doc_id].path
        assert m["vote_item"] == (p.vote.number if p.vote else None)
        assert m["rank"] == rank and isinstance(m["score"], float) and m["score"] >= 0  # 0: a cited record the answer adds
        assert m["place"] and (m["place"].startswith("共识") or m["place"].startswith("文献"))


def test_metadata_carries_cited_slots_reference_slots_and_vote_items(bot):
    docs = GistqaRetriever(bot=bot, k=10).invoke("文献［16］是哪篇研究？")
    assert docs[0].metadata["ref_slot"] == 16 and docs[0].metadata["evidence_label"] == "文献卡片"
    assert any(16 in d.metadata["cites"] and d.metadata["doc_id"] == "consensus" for d in docs)
    vote = GistqaRetriever(bot=bot, k=10).invoke(DOSE)
    assert any(d.metadata["vote_item"] == 3 and d.metadata["evidence_label"] == "投票结果" for d in vote)


def test_scope_consensus_returns_only_consensus_passages(bot):
    question = "Vincenzi的研究结论是什么？"
    everything = GistqaRetriever(bot=bot, k=20, scope="all").invoke(question)
    assert any(d.metadata["doc_kind"] != "consensus" for d in everything)  # the filter has work to do
    consensus = GistqaRetriever(bot=bot, k=20, scope="consensus").invoke(question)
    assert consensus
    assert all(d.metadata["doc_kind"] == "consensus" and d.metadata["doc_id"] == "consensus" for d in consensus)
    assert {d.metadata["scope"] for d in consensus} == {"consensus"}


@pytest.mark.parametrize("k", [1, 2, 7])
def test_k_is_how_many_documents_come_back(bot, k):
    seven = GistqaRetriever(bot=bot, k=7).invoke(DOSE)
    docs = GistqaRetriever(bot=bot, k=k).invoke(DOSE)
    assert len(docs) == k
    assert [d.id for d in docs] == [d.id for d in seven[:k]]


def test_ainvoke_and_batch_give_what_invoke_gives(bot):
    retriever = GistqaRetriever(bot=bot, k=4)
    assert isinstance(retriever, BaseRetriever)
    sync = retriever.invoke(DOSE)
    assert asyncio.run(retriever.ainvoke(DOSE)) == sync
    assert retriever.batch([DOSE, REFUSED]) == [sync, retriever.invoke(REFUSED)]


def test_a_component_makes_its_bot_on_first_use_and_keeps_it():
    retriever = GistqaRetriever(k=1)
    assert retriever.bot is None
    first = retriever.invoke(DOSE)
    made = retriever.bot
    assert isinstance(made, Bot)
    assert retriever.invoke(DOSE) == first and retriever.bot is made


# --- the answer Runnable ---------------------------------------------------------------------------
def test_answer_runnable_returns_what_ask_json_prints(bot):
    runnable = GistqaAnswer(bot=bot)
    assert isinstance(runnable, Runnable)
    out = runnable.invoke(DOSE)
    assert out["timing_ms"]["total"] > 0
    assert _without_timing(out) == _without_timing(bot.answer(DOSE).to_dict())
    assert not out["refused"] and out["quotes"] and all(q["verified"] for q in out["quotes"])


def test_answer_runnable_takes_history_and_scope(bot):
    history = [DOSE]
    out = GistqaAnswer(bot=bot).invoke({"question": "那复发以后呢？", "history": history, "scope": "consensus"})
    expected = bot.answer("那复发以后呢？", history=history, scope="consensus").to_dict()
    assert _without_timing(out) == _without_timing(expected)
    assert out["scope"] == "consensus" and out["references"] == []
    assert all(q["doc_id"] == "consensus" for q in out["quotes"])


def test_answer_runnable_types(bot):
    runnable = GistqaAnswer(bot=bot)
    schema = runnable.get_input_schema().model_json_schema()
    kinds = [s.get("type") or s.get("$ref") for s in schema["anyOf"]]
    assert "string" in kinds and any(str(k).endswith("AnswerInput") for k in kinds)
    fields = schema["$defs"]["AnswerInput"]
    assert fields["required"] == ["question"] and fields["properties"]["scope"]["enum"] == ["all", "consensus"]
    assert typing.get_origin(runnable.OutputType) is dict


def test_batch_answers_each_input_in_order(bot):
    inputs = [DOSE, {"question": REFUSED}]
    outs = GistqaAnswer(bot=bot).batch(inputs)
    assert len(outs) == 2
    assert _without_timing(outs[0]) == _without_timing(bot.answer(DOSE).to_dict())
    assert _without_timing(outs[1]) == _without_timing(bot.answer(REFUSED).to_dict())
    assert not outs[0]["refused"] and outs[1]["refused"]


def test_stream_yields_one_chunk_the_verified_answer(bot):
    runnable = GistqaAnswer(bot=bot)
    chunks = list(runnable.stream(DOSE))
    assert len(chunks) == 1
    assert _without_timing(chunks[0]) == _without_timing(runnable.invoke(DOSE))
    assert all(q["verified"] for q in chunks[0]["quotes"])

    async def collect():
        return [c async for c in runnable.astream({"question": DOSE})]

    async_chunks = asyncio.run(collect())
    assert len(async_chunks) == 1 and _without_timing(async_chunks[0]) == _without_timing(chunks[0])


def test_a_question_the_corpus_does_not_cover_comes_back_refused(bot):
    out = GistqaAnswer(bot=bot).invoke(REFUSED)
    assert out["refused"] and out["refusal_reason"]
    assert out["quotes"] == [] and "「" not in out["answer"] and out["answer"].startswith("抱歉")


# --- bad input: a QuestionError (a ValueError) whose message says what to change -------------------
@pytest.mark.parametrize("fields, expected", [
    ({"scope": "both"}, r"范围只能是 all 或 consensus.*\(scope must be"),
    ({"k": 0}, r"k 必须是不小于 1 的整数.*\(k must be"),
    ({"k": -3}, r"k 必须是不小于 1 的整数"),
    ({"k": "3"}, r"k 必须是不小于 1 的整数"),
    ({"k": True}, r"k 必须是不小于 1 的整数"),
])
def test_bad_retriever_settings_are_refused_when_made(bot, fields, expected):
    with pytest.raises(QuestionError, match=expected):
        GistqaRetriever(bot=bot, **fields)


@pytest.mark.parametrize("question, expected", [
    ("", r"问题为空"),
    ("   \n ", r"问题为空"),
    (123, r"问题必须是文本"),
    (None, r"问题必须是文本"),
    ("剂量" * 1001, r"问题太长：2002 个字符，上限为 2000"),
])
def test_bad_questions_to_the_retriever_raise_a_message(bot, question, expected):
    with pytest.raises(QuestionError, match=expected) as caught:
        GistqaRetriever(bot=bot).invoke(question)
    assert isinstance(caught.value, ValueError) and "(" in str(caught.value)  # English after the Chinese


def test_settings_changed_after_making_are_checked_when_used(bot):
    retriever = GistqaRetriever(bot=bot)
    with pytest.raises(QuestionError, match="范围只能是"):
        retriever.model_copy(update={"scope": "guidelines"}).invoke(DOSE)
    with pytest.raises(QuestionError, match="k 必须是"):
        retriever.model_copy(update={"k": 0}).invoke(DOSE)


@pytest.mark.parametrize("value, expected", [
    (123, r"输入必须是问题文本，或含 question 的字典，收到 int"),
    (["问题"], r"输入必须是问题文本"),
    ({}, r"输入缺少 question"),
    ({"question": DOSE, "scope": "everything"}, r"范围只能是 all 或 consensus"),
    ({"question": DOSE, "history": "上一问"}, r"history 必须是之前问题文本的列表"),
    ({"question": DOSE, "history": [1, 2]}, r"history 必须是之前问题文本的列表"),
    ({"question": DOSE, "detail": "yes"}, r"detail 只能是 true 或 false"),
    ({"question": DOSE, "qustion": DOSE}, r"不认识的输入项：qustion"),
    ({"question": ""}, r"问题为空"),
    ({"question": 5}, r"问题必须是文本"),
    ("剂量" * 1001, r"问题太长"),
])
def test_bad_input_to_the_answer_runnable_raises_a_message(bot, value, expected):
    with pytest.raises(QuestionError, match=expected):
        GistqaAnswer(bot=bot).invoke(value)


def test_batch_can_return_the_bad_inputs_error_beside_the_good_answers(bot):
    outs = GistqaAnswer(bot=bot).batch([DOSE, {"question": ""}], return_exceptions=True)
    assert not outs[0]["refused"]
    assert isinstance(outs[1], QuestionError) and "问题为空" in str(outs[1])


# --- packaging and the README ----------------------------------------------------------------------
def test_importing_the_answer_pipeline_does_not_import_langchain():
    code = "import bot.answer, sys; print('langchain_core' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _readme_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.index("## LangChain") < readme.index("<!-- langchain-example -->") < readme.index("## Optional LLM writer")
    found = re.findall(r"<!-- langchain-example -->\s*```python\n(.*?)```\s*<!-- /langchain-example -->", readme, re.S)
    assert len(found) == 1
    return found[0]


def test_the_readme_example_runs(capsys):
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(_readme_example(), "README.md:langchain-example", "exec"), namespace)
    printed = capsys.readouterr().out
    # The chain: the question and the passages with their places, in the prompt.
    assert f"问题：{DOSE}" in printed
    assert "〔共识 · " in printed and "[1] " in printed
    # The tool call: a verified answer in quotes, as the agent's ToolMessage.
    tool_output = printed.split(f"问题：{DOSE}", 1)[1]
    assert "「" in tool_output and "mg/d" in tool_output
    assert namespace["retriever"].bot is namespace["answerer"].bot is namespace["bot"]


def test_a_missing_index_says_how_to_build_it(settings, tmp_path):
    from bot.answer import Bot as _Bot
    from indexer.store import IndexMissing

    empty = _Bot(settings.model_copy(update={"index_dir": tmp_path / "no-index"}))
    for component in (GistqaRetriever(bot=empty), GistqaAnswer(bot=empty)):
        with pytest.raises(IndexMissing, match="gistqa index"):
            component.invoke(DOSE)
