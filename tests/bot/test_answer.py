"""answer(): verbatim quotes at their offsets, numbers from the cited source, plain refusals."""
from __future__ import annotations

import json
import re

import pytest

from bot.query import QuestionError
from bot.verify import CITATION_SPAN, QUOTE_SPAN, numbers_in, quote_problem
from tests.conftest import REPO


def _questions() -> list[dict]:
    lines = (REPO / "evals" / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def all_answers(bot):
    """Every question of the evaluation set, answered once for the checks below."""
    return [(item, bot.answer(item["question"], history=item.get("history", []))) for item in _questions()]


def test_every_quote_in_every_answer_is_verbatim_at_its_offsets(all_answers, stored_index):
    """Over the whole evaluation set: each 「span」 in the Markdown is a verified quote whose text
    is the document's text at its offsets, inside the passage it cites."""
    checked = 0
    for item, result in all_answers:
        by_text = {q.text for q in result.quotes}
        for span in QUOTE_SPAN.findall(result.answer):
            assert span in by_text, (item["id"], span)
        for q in result.quotes:
            assert q.verified
            assert quote_problem(stored_index, q.doc_id, q.passage_id, q.start, q.end, q.text) is None
            assert stored_index.documents[q.doc_id].text[q.start : q.end] == q.text
            checked += 1
    assert checked > 200


def test_every_number_in_every_answer_stands_in_a_cited_source(all_answers, stored_index):
    passages = {p.passage_id: p for p in stored_index.passages}
    for item, result in all_answers:
        sources = [q.text for q in result.quotes] + [passages[q.passage_id].text for q in result.quotes]
        pool = {n for s in sources for n in numbers_in(s)}
        body = CITATION_SPAN.sub("", result.answer)
        for n in numbers_in(body):
            assert n in pool, (item["id"], n, result.answer)


def test_refusal_quotes_nothing_and_says_so(bot):
    result = bot.answer("瑞派替尼治疗GIST的推荐剂量是多少？")
    assert result.refused
    assert result.quotes == [] and "「" not in result.answer
    assert "没有" in result.answer and "mg" not in result.answer


def test_dose_of_a_drug_the_text_names_without_a_dose_is_refused(bot):
    """舒尼替尼 is in the consensus, but no dose of it is: the 600 mg/d beside it belongs to imatinib."""
    result = bot.answer("舒尼替尼的剂量是多少？")
    assert result.refused and "剂量" in result.refusal_reason


def test_vote_answer_gives_every_option_with_its_percentage(bot):
    result = bot.answer("KIT exon 9突变中高危GIST辅助治疗剂量的投票结果如何？")
    assert not result.refused and result.vote is not None
    assert result.vote.number == 2
    for option, pct in [("标准剂量400 mg/d", 86), ("高剂量600 mg/d", 14), ("高剂量800 mg/d", 0), ("不推荐辅助治疗", 0)]:
        assert f"「{option}」：{pct}%" in result.answer


def test_every_quote_is_labelled_with_its_kind_of_evidence(bot):
    result = bot.answer("KIT exon 9辅助治疗期间复发应该怎么办？")
    assert not result.refused
    labels = {"指南推荐", "争议与证据", "专家推荐", "投票结果", "文献卡片", "背景（导语）"}
    for line in result.answer.splitlines():
        if line.startswith("- **"):
            assert re.match(r"- \*\*(.+?)\*\*", line).group(1) in labels | {"所引文献"}
    assert all(q.kind in labels for q in result.quotes)


def test_english_question_and_synonyms_find_the_same_passage(bot):
    zh = bot.answer("KIT exon 9突变转移性GIST一线用多大剂量伊马替尼？")
    en = bot.answer("What first-line imatinib dose is recommended for metastatic KIT exon 9 GIST?")
    syn = bot.answer("9号外显子突变晚期间质瘤一线格列卫剂量？")
    for r in (zh, en, syn):
        assert not r.refused
        assert "600 mg/d" in r.answer.replace(" ", "") or "600mg/d" in r.answer.replace(" ", "")


def test_follow_up_uses_the_history(bot):
    first = "KIT exon 9突变患者辅助治疗用多大剂量？"
    alone = bot.answer("那复发以后呢？")
    follow = bot.answer("那复发以后呢？", history=[first])
    assert not follow.refused
    assert any("复发" in q.section for q in follow.quotes)
    assert alone.refused or alone.answer != follow.answer


def test_scope_consensus_quotes_only_the_consensus(bot):
    result = bot.answer("文献16的结论是什么？", scope="consensus")
    assert all(q.doc_id == "consensus" for q in result.quotes)
    assert result.references == []


@pytest.mark.parametrize("bad, expected", [
    ("", "为空"), ("   \n\t ", "为空"), ("\x00\x01\x02", "为空"), ("问" * 2001, "太长"),
])
def test_bad_questions_get_a_clear_message(bot, bad, expected):
    with pytest.raises(QuestionError, match=expected):
        bot.answer(bad)


def test_control_characters_and_surrogates_are_cleaned_not_fatal(bot):
    result = bot.answer("伊马替尼\x00辅助\x07治疗\ud800剂量？")
    assert result.question == "伊马替尼辅助治疗?剂量？"


def test_timing_is_reported_by_stage(bot):
    result = bot.answer("为什么KIT exon 9突变对伊马替尼不敏感？")
    assert {"embed_query", "dense_search", "lexical_search", "fusion", "select", "verify", "total"} <= set(result.timing_ms)
