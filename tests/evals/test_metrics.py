"""Scoring on hand-made answers over a two-paragraph document, where the right numbers are known."""
from __future__ import annotations

import pytest

from bot.types import Answer, Quote, RetrievedPassage
from evals.metrics import (
    Sources,
    aggregate,
    aggregate_by_tag,
    contains,
    missing_groups,
    percentile,
    retrieval_rank,
    score_answer,
    score_error,
)
from evals.schema import Item
from indexer.types import Document, Passage

PARA1 = "KIT exon 9基因突变占GIST患者总人群的 6%~9%，主要发生于小肠或结直肠。"
PARA2 = "推荐高剂量伊马替尼600 mg/d作为一线治疗。"
TEXT = f"导语\n\n{PARA1}\n\n一线治疗\n\n{PARA2}\n"
DOC = Document(doc_id="consensus", path="consensus.md", kind="consensus", title="共识", text=TEXT, sha256="x")


def passage(n: int, para: str, section: str) -> Passage:
    start = TEXT.index(para)
    return Passage(passage_id=f"consensus#p{n}", doc_id="consensus", doc_kind="consensus", doc_title="共识",
                   section_path=(section,), evidence_kind="intro", paragraph=1, start=start, end=start + len(para), text=para)


P1 = passage(1, PARA1, "导语")
P2 = passage(2, PARA2, "一线治疗")
SOURCES = Sources({"consensus": DOC}, {P1.passage_id: P1, P2.passage_id: P2})


def quote(p: Passage, text: str, marker: int = 1, shift: int = 0) -> Quote:
    start = TEXT.index(text) + shift
    return Quote(text=text, doc_id=p.doc_id, passage_id=p.passage_id, section=p.section, paragraph=p.paragraph,
                 start=start, end=start + len(text), kind="背景（导语）", evidence_kind=p.evidence_kind, marker=marker)


def retrieved(*ps: Passage) -> list[RetrievedPassage]:
    return [RetrievedPassage(p.doc_id, p.passage_id, p.section, p.text, 1.0 / r, r, p.evidence_kind)
            for r, p in enumerate(ps, start=1)]


def item(**kw) -> Item:
    base = {"id": "q", "question": "KIT exon 9突变占比？", "expect": "answer", "must_include_any": [["6% ~9%"]]}
    return Item(**(base | kw))


def answer(text: str, quotes: list[Quote], passages=(), refused: bool = False, total_ms: float = 50.0) -> Answer:
    return Answer(question="q", answer=text, refused=refused, quotes=quotes, passages=list(passages),
                  refusal_reason="与主题无关" if refused else "", timing_ms={"total": total_ms})


Q1 = quote(P1, PARA1)
GOOD_TEXT = f"根据共识原文（逐字引用）：\n\n- **背景（导语）**：「{PARA1}」〔共识 · 导语 · 第1段〕"
REFUSAL = "抱歉，问题与本知识库的主题无关。本工具只依据关于KIT exon 9突变GIST的专家意见作答。"


# --- matching ---------------------------------------------------------------------------------
def test_matching_removes_all_whitespace_on_both_sides():
    assert contains("占总人群的 6%~9%", "6% ~ 9%")
    assert contains("600\u3000mg/d", "600mg/d")
    assert contains("600 mg/d", "600mg /d")
    assert not contains("600 mg/d", "800 mg/d")


def test_a_group_is_matched_by_any_of_its_strings():
    groups = [["小肠", "空肠"], ["胃"], ["结 直肠"]]
    assert missing_groups(PARA1, groups) == [["胃"]]


def test_retrieval_rank_is_the_first_passage_holding_a_gold_string_within_k():
    ps = retrieved(P2, P1)
    assert retrieval_rank(ps, ["总人群的6%"], k=10) == 2  # gold written without the source's space
    assert retrieval_rank(ps, ["总人群的6%"], k=1) is None
    assert retrieval_rank(ps, ["不在任何段落里", "600 mg/d"], k=10) == 1
    assert retrieval_rank(ps, ["不在任何段落里"], k=10) is None


# --- one answer -------------------------------------------------------------------------------
def test_a_correct_answer_passes_every_check():
    s = score_answer(item(must_include_any=[["6% ~9%"], ["空肠", "小 肠"]], gold=["总人群的6%"]),
                     answer(GOOD_TEXT, [Q1], retrieved(P2, P1)), SOURCES, k=10)
    assert s.correct and not s.refused
    assert s.rank == 2
    assert (s.quote_checks, s.quote_verbatim) == (2, 2)  # the quote object and the 「」 span showing it
    # 9, 6, 9 in the quote; the 1 of "第1段" is inside the citation 〔〕 and not a claim.
    assert (s.numbers_supported, s.numbers_total) == (3, 3)
    assert (s.citations_ok, s.citations_total) == (1, 1)
    assert s.latency_ms == 50.0
    assert s.problems() == []


def test_a_missing_group_makes_the_answer_wrong():
    s = score_answer(item(must_include_any=[["6%~9%"], ["胃"]]), answer(GOOD_TEXT, [Q1]), SOURCES, k=10)
    assert not s.correct
    assert s.missing_groups == [["胃"]]
    assert s.problems() == ["missing group: 胃"]


def test_a_forbidden_string_makes_the_answer_wrong_even_with_other_spacing():
    s = score_answer(item(must_not_include=["600mg", "结 直肠"]), answer(GOOD_TEXT, [Q1]), SOURCES, k=10)
    assert not s.correct
    assert s.forbidden_found == ["结 直肠"]
    assert s.problems() == ["forbidden string found: 结 直肠"]


def test_a_fabricated_quote_not_backed_by_a_quote_object_is_non_verbatim():
    text = GOOD_TEXT + "\n- **专家推荐**：「该突变患者预后良好」〔共识 · 导语 · 第2段〕"
    s = score_answer(item(), answer(text, [Q1]), SOURCES, k=10)
    assert (s.quote_checks, s.quote_verbatim) == (3, 2)
    assert s.non_verbatim == ["「该突变患者预后良好」 (shown in the answer, backed by no verified quote)"]
    assert s.correct  # wording checks pass; the fabrication is its own failure
    assert "non-verbatim quote: 「该突变患者预后良好」 (shown in the answer, backed by no verified quote)" in s.problems()


def test_a_quote_object_whose_text_is_not_at_its_offsets_is_non_verbatim():
    shifted = quote(P1, PARA1, shift=1)
    s = score_answer(item(), answer(GOOD_TEXT, [shifted]), SOURCES, k=10)
    # The object fails at its offsets, so the span it would back is unbacked too.
    assert (s.quote_checks, s.quote_verbatim) == (2, 0)
    assert s.citations_ok == 0 and len(s.bad_citations) == 1


def test_a_verbatim_quote_citing_the_wrong_passage_is_a_citation_error_only():
    wrong = quote(P2, PARA1)  # text and offsets from paragraph 1, passage_id of paragraph 2
    s = score_answer(item(), answer(GOOD_TEXT, [wrong]), SOURCES, k=10)
    assert (s.quote_checks, s.quote_verbatim) == (2, 2)
    assert (s.citations_ok, s.citations_total) == (0, 1)
    assert s.bad_citations[0].endswith(f"outside passage consensus#p2 ({P2.start}-{P2.end})")


def test_a_number_in_no_quote_and_no_cited_passage_is_unsupported():
    text = GOOD_TEXT + "\n常用剂量为800 mg/d，疗程3年。"
    s = score_answer(item(), answer(text, [Q1]), SOURCES, k=10)
    assert (s.numbers_supported, s.numbers_total) == (3, 5)
    assert s.unsupported_numbers == ["800", "3"]
    assert "unsupported number: 800, 3" in s.problems()


def test_a_number_from_the_cited_passage_outside_the_quote_is_supported():
    q = quote(P2, "推荐高剂量伊马替尼")
    text = "- 「推荐高剂量伊马替尼」：600 mg/d〔共识 · 一线治疗 · 第1段〕"
    s = score_answer(item(must_include_any=[["高剂量"]]), answer(text, [q]), SOURCES, k=10)
    assert (s.numbers_supported, s.numbers_total) == (1, 1)


def test_an_expected_refusal():
    s = score_answer(item(expect="refuse", must_include_any=[], must_not_include=["mg"]),
                     answer(REFUSAL, [], retrieved(P1), refused=True), SOURCES, k=10)
    assert s.correct and s.refused
    assert (s.numbers_total, s.quote_checks) == (0, 0)  # refusal wording makes no claim
    assert s.problems() == []


def test_a_refusal_that_repeats_a_forbidden_string_is_wrong():
    s = score_answer(item(expect="refuse", must_include_any=[], must_not_include=["exon 9"]),
                     answer(REFUSAL, [], refused=True), SOURCES, k=10)
    assert not s.correct
    assert s.problems() == ["forbidden string found: exon 9"]


def test_a_false_refusal_and_a_missed_refusal():
    false_refusal = score_answer(item(gold=["总人群的"]), answer(REFUSAL, [], retrieved(P2), refused=True), SOURCES, k=10)
    assert not false_refusal.correct
    assert false_refusal.problems() == ["false refusal: 与主题无关", "retrieval miss: no gold passage among the retrieved"]
    missed = score_answer(item(expect="refuse", must_include_any=[]), answer(GOOD_TEXT, [Q1]), SOURCES, k=10)
    assert not missed.correct
    assert missed.problems() == ["missed refusal: answered a question that should be refused"]


def test_an_error_is_a_wrong_unrefused_answer_with_the_error_recorded():
    s = score_error(item(gold=["x"]), "RuntimeError: boom")
    assert not s.correct and not s.refused and s.rank is None
    assert s.problems() == ["error: RuntimeError: boom", "retrieval miss: no gold passage among the retrieved"]


# --- many answers -----------------------------------------------------------------------------
def test_percentile_interpolates_between_ranks():
    assert percentile([40, 10, 30, 20], 0.5) == 25.0
    assert percentile([10, 20, 30, 40], 0.95) == 38.5
    assert percentile([7], 0.95) == 7
    assert percentile([], 0.5) is None


def test_aggregate_over_known_scores():
    scores = [
        # rank 1, correct, 3/3 numbers, 2/2 quote checks, 1/1 citation
        score_answer(item(id="a", gold=["总人群"], tags=["intro"]), answer(GOOD_TEXT, [Q1], retrieved(P1), total_ms=10),
                     SOURCES, k=10),
        # rank 2, wrong (missing group), plus an unsupported number: 3/4 numbers
        score_answer(item(id="b", gold=["总人群"], must_include_any=[["胃"]], tags=["intro"]),
                     answer(GOOD_TEXT + "\n疗程3年。", [Q1], retrieved(P2, P1), total_ms=20), SOURCES, k=10),
        # a false refusal; retrieval miss
        score_answer(item(id="c", gold=["不存在"], tags=["dose"]), answer(REFUSAL, [], retrieved(P1), refused=True, total_ms=30),
                     SOURCES, k=10),
        # an expected refusal
        score_answer(item(id="d", expect="refuse", must_include_any=[], tags=["dose"]),
                     answer(REFUSAL, [], refused=True, total_ms=40), SOURCES, k=10),
        # a missed refusal with a fabricated quote: 1 quote + 2 spans, one span unbacked
        score_answer(item(id="e", expect="refuse", must_include_any=[], tags=["dose"]),
                     answer(GOOD_TEXT + "「编造的话」", [Q1], total_ms=50), SOURCES, k=10),
    ]
    m = aggregate(scores)
    assert m["questions"] == 5
    assert m["answer_accuracy"] == 0.4  # a and d
    assert (m["hit@1"], m["hit@3"], m["hit@5"]) == (0.3333, 0.6667, 0.6667)
    assert m["mrr@10"] == 0.5  # (1 + 1/2 + 0) / 3
    assert m["refusal_recall"] == 0.5  # d of d, e
    assert m["false_refusal_rate"] == 0.3333  # c of a, b, c
    assert m["quote_verbatim_rate"] == round(6 / 7, 4)  # 2 + 2 + 3 checks, one fails
    assert m["numeric_faithfulness"] == round(9 / 10, 4)  # 3/3 + 3/4 + 3/3 (e) ; refusals not counted
    assert m["citation_accuracy"] == 1.0
    assert (m["latency_p50_ms"], m["latency_p95_ms"]) == (30.0, 48.0)
    assert m["counts"]["with_gold"] == 3 and m["counts"]["errors"] == 0

    by_tag = aggregate_by_tag(scores)
    assert list(by_tag) == ["dose", "intro"]
    assert by_tag["intro"]["answer_accuracy"] == 0.5 and by_tag["intro"]["refusal_recall"] is None
    assert by_tag["dose"]["refusal_recall"] == 0.5 and by_tag["dose"]["false_refusal_rate"] == 1.0


def test_nothing_measured_is_none_not_zero():
    m = aggregate([score_answer(item(expect="refuse", must_include_any=[]), answer(REFUSAL, [], refused=True), SOURCES, k=10)])
    assert m["answer_accuracy"] == 1.0
    assert m["hit@5"] is None and m["mrr@10"] is None and m["false_refusal_rate"] is None
    assert m["quote_verbatim_rate"] is None and m["numeric_faithfulness"] is None


@pytest.mark.parametrize("k, expected", [(1, None), (2, 2)])
def test_k_cuts_the_retrieved_list(k, expected):
    s = score_answer(item(gold=["总人群"]), answer(GOOD_TEXT, [Q1], retrieved(P2, P1)), SOURCES, k=k)
    assert s.rank == expected
