"""Answers from the right clinical setting, led by the sentence that answers, nothing off-topic
(issue "Right answer first"). The real model and index; the shapes of answers-shapes.md."""
from __future__ import annotations

import re

import pytest

from bot.plan import MAX_BLOCKS

ADJUVANT_PANEL = "不建议KIT外显子9突变患者接受高剂量伊马替尼辅助治疗"
ADJUVANT_DOSE = "术后 4~8 周内应启动伊马替尼400 mg"
ADJUVANT_VOTE = "应接受伊马替尼辅助治疗的剂量应为"
FIRST_LINE_PANEL = "高剂量伊马替尼仍应是KIT exon 9 基因突变的转移性 GIST 一线治疗的首选方案"
FIRST_LINE_DOSE = "对于我国患者，可将剂量增加至600 mg/d"
RECURRENCE_DRUGS = "可选择舒尼替尼或伊马替尼加量至 600 mg/d。"
MECHANISM_SCF = "干细胞因子"
TOPIC_HEADS = ("KIT exon 9突变对标准剂量", "KIT exon 9基因患者的辅助治疗", "KIT exon 9基因患者辅助治疗期间或治疗后")


def blocks(answer) -> list[str]:
    """Top-level quote lines of the answer, in order."""
    return [line for line in answer.answer.splitlines() if line.startswith("- ") and "「" in line]


def topic_of(quote) -> str:
    return next((t for t in TOPIC_HEADS if quote.section.startswith(t)), quote.section)


def test_first_line_dose_comes_from_first_line_only(bot):
    a = bot.answer("KIT exon 9突变的转移性GIST一线用多大剂量的伊马替尼？")
    assert not a.refused and a.vote is None
    assert FIRST_LINE_DOSE in a.answer and FIRST_LINE_PANEL in a.answer
    assert {topic_of(q) for q in a.quotes} == {TOPIC_HEADS[0]}
    for other in (ADJUVANT_PANEL, ADJUVANT_DOSE, ADJUVANT_VOTE, RECURRENCE_DRUGS):
        assert other not in a.answer


def test_colloquial_first_line_maximum_is_answered_by_the_sentence_stating_it(bot):
    a = bot.answer("晚期exon 9患者伊马替尼最多能加到多少？")
    assert FIRST_LINE_DOSE in blocks(a)[0], "a number asked: the sentence stating it leads"
    assert all(topic_of(q) == TOPIC_HEADS[0] for q in a.quotes)


def test_recurrence_during_adjuvant_quotes_the_recommendation_whole(bot):
    a = bot.answer("辅助治疗吃着400的时候复发了怎么办")
    first = blocks(a)[0]
    assert "专家推荐" in first and RECURRENCE_DRUGS in first, "the sentence naming the drugs is never cut off"
    assert ADJUVANT_PANEL not in a.answer
    assert a.vote is not None and a.vote.number == 4  # the vote of this setting, not item 5


def test_patient_details_never_cause_a_refusal(bot):
    for q in ("我的病人exon 9突变，小肠GIST术后，高危，辅助治疗吃多少？", "exon 9 GIST肝转移，初始治疗怎么用药？",
              "65岁女性，结肠GIST，CT示肝转移，KIT exon 9 A502_Y503dup突变，一线伊马替尼用多少？"):
        a = bot.answer(q)
        assert not a.refused, (q, a.refusal_reason)
    adjuvant = bot.answer("我的病人exon 9突变，小肠GIST术后，高危，辅助治疗吃多少？")
    assert ADJUVANT_PANEL in adjuvant.answer and FIRST_LINE_PANEL not in adjuvant.answer


def test_authors_and_affiliations_are_quotable(bot):
    a = bot.answer("张鹏是哪个医院的？")
    assert not a.refused and "华中科技大学附属协和医院" in a.answer and "作者信息" in a.answer
    b = bot.answer("谁写的复发转移那部分？")
    assert not b.refused and "伍小军" in b.answer and "张鹏" not in b.answer


def test_a_refused_question_does_not_poison_the_follow_up(bot):
    refused = "PDGFRA D842V突变用什么药？"
    assert bot.answer(refused).refused
    lit = bot.answer("文献16讲了什么？", history=[refused])
    assert not lit.refused and "PDGFRA" not in lit.answer
    adj = bot.answer("那辅助治疗呢？", history=[refused])
    assert not adj.refused and ADJUVANT_PANEL in blocks(adj)[0]


def test_follow_up_replaces_the_setting_and_keeps_the_facet(bot):
    a = bot.answer("那复发以后呢？", history=["KIT exon 9突变患者辅助治疗用多大剂量？"])
    assert not a.refused and RECURRENCE_DRUGS in blocks(a)[0]
    assert ADJUVANT_PANEL not in a.answer


def test_why_leads_with_the_mechanism_and_has_no_vote(bot):
    a = bot.answer("为什么exon 9突变对伊马替尼不敏感？")
    assert MECHANISM_SCF in blocks(a)[0] and a.vote is None
    assert "投票结果" not in a.answer


def test_management_without_a_setting_answers_each_setting_labelled(bot):
    a = bot.answer("exon 9突变伊马替尼要加量吗？")
    lines = blocks(a)
    assert len(lines) == 3
    for label, text in (("转移性GIST一线治疗", FIRST_LINE_PANEL), ("术后辅助治疗", ADJUVANT_PANEL),
                        ("复发转移", RECURRENCE_DRUGS)):
        assert any(label in line and text in line for line in lines), label


def test_a_number_question_gets_the_sentence_stating_it_alone(bot):
    a = bot.answer("exon9占GIST多少？")
    assert len(blocks(a)) == 1 and "6%~9%" in blocks(a)[0] and a.vote is None


def test_a_vote_question_shows_the_setting_item_majority_first(bot):
    a = bot.answer("停药后复发，专家多数选什么？")
    assert a.vote is not None and a.vote.number == 5
    options = re.findall(r"「([^」]+)」：(\d+)%", a.answer)
    assert [int(p) for _, p in options] == sorted((int(p) for _, p in options), reverse=True)
    assert "表1 问卷及投票结果 › 第4项" not in a.answer


def test_not_covered_duration_is_refused_without_a_dose(bot):
    a = bot.answer("exon 9辅助治疗要吃几年？")
    assert a.refused and "疗程" in a.answer and "「" not in a.answer


def test_answers_are_short(bot):
    for q in ("辅助治疗吃着400的时候复发了怎么办", "exon 9突变伊马替尼要加量吗？", "为什么exon 9突变对伊马替尼不敏感？"):
        a = bot.answer(q)
        assert len(blocks(a)) <= MAX_BLOCKS and len(a.answer) <= 600, q


def test_explain_says_why(bot):
    a = bot.answer("辅助治疗吃着400的时候复发了怎么办")
    assert a.explain["settings"] == ["recur_during"] and a.explain["facet"] == "management"
    assert a.explain["blocks"][0]["role"] == "lead" and a.explain["blocks"][0]["why"]
    assert any(not c["in_setting"] for c in a.explain["candidates"]), "other settings' sentences are shown as dropped"


def test_words_that_ask_for_a_dose_do_not_pick_the_lead(bot):
    """"辅助用药剂量" asks for the adjuvant dose; the NCCN sentence that happens to say 用药剂量 does
    not answer it."""
    a = bot.answer("60岁女性，结肠GIST术后高危，KIT exon 9，辅助用药剂量？")
    assert ADJUVANT_PANEL in blocks(a)[0] and ADJUVANT_DOSE in a.answer
    assert "NCCN指南的推荐较为相似" not in a.answer


def test_a_reference_question_names_the_candidate_paper_with_its_caveat(bot):
    """"文献16讲了什么？": what the paper found, and which paper it is (the card's candidate record,
    its title quoted), said to be a candidate, not confirmed."""
    index = bot._ensure_loaded()
    record = index.slot_records[16]
    for question in ("文献16讲了什么？", "［4］的结论是什么？"):
        a = bot.answer(question)
        assert not a.refused
        slot = 16 if "16" in question else 4
        record = index.slot_records[slot]
        assert any(q.passage_id == record.passage_id and q.text in a.answer and q.kind == "文献卡片"
                   for q in a.quotes), "the candidate record is quoted in the answer"
        assert "候选文献" in a.answer and "未经确认" in a.answer
        assert len(blocks(a)) <= MAX_BLOCKS + 1  # the quote blocks, plus the 所引文献 line
    a = bot.answer("文献16讲了什么？")
    assert "Adjuvant imatinib in patients with GIST harboring exon 9 KIT mutations" in a.answer


def test_a_clinical_question_gets_no_candidate_record(bot):
    a = bot.answer("KIT exon 9突变患者辅助治疗用多大剂量？")
    assert "候选文献" not in a.answer and all(q.kind != "文献卡片" for q in a.quotes)


def test_a_bare_vote_follow_up_after_a_dose_question_quotes_the_dose_vote(bot):
    """"那专家投票呢？" after an adjuvant dose question: the panel's vote on the dose (表1 item 2), not
    its vote on agreeing with a study (item 3), which the same setting also holds; a follow-up that
    names the study still gets the study's item."""
    dose = "KIT exon 9突变辅助治疗推荐用多少剂量？"
    bare = bot.answer("那专家投票呢？", history=[dose])
    assert bare.vote is not None and bare.vote.number == 2
    named = bot.answer("那800 mg不优于400 mg的投票呢？", history=[dose])
    assert named.vote is not None and named.vote.number == 3


@pytest.mark.parametrize("question", [
    "专家组对转移性exon 9患者剂量调整还有什么建议？",
    "转移性患者一线治疗，除了高剂量，还有其他建议吗？",
    "What else does the panel advise on the imatinib dose for metastatic exon 9 GIST?",
])
def test_asking_what_else_quotes_the_recommendation_through_its_last_sentence(bot, question):
    """"还有什么建议": the panel's recommendation leads, whole paragraph, so the individual dose
    adjustment after the headline is there; "其他" does not pick "全球其他权威指南"."""
    result = bot.answer(question)
    lead = result.quotes[0].text
    assert lead.startswith("我们推荐") and "首选方案" in lead and "个体化调整伊马替尼剂量" in lead
    assert not any("全球其他权威指南" in q.text for q in result.quotes)


def test_the_recommendation_stops_at_its_dose_sentence_when_nothing_more_is_asked(bot):
    for question in ("KIT exon 9突变的转移性GIST一线用多少伊马替尼？", "转移性exon 9患者一线治疗专家组推荐什么？"):
        (panel,) = [q.text for q in bot.answer(question).quotes if q.text.startswith("我们推荐")]
        assert panel.endswith("首选方案。"), question


@pytest.mark.parametrize("question, item, figure", [
    ("表1里专家分歧最大的是哪道题？", 4, "43%"),
    ("Which vote item was the most divided?", 4, "43%"),
    ("专家投票中意见最一致的是哪一项？", 1, "86%"),
])
def test_the_most_divided_or_agreed_vote_item_is_chosen_by_its_figures(bot, question, item, figure):
    """表1's item 4 splits 43/29/14/14 (the smallest majority); items 1 and 2 share the largest, 86%."""
    a = bot.answer(question)
    assert a.vote is not None and a.vote.number == item
    assert figure in a.answer
    if item == 1:  # both items at 86%, in table order
        assert "应接受伊马替尼辅助治疗的剂量应为" in a.answer


def test_guidelines_compared_include_csco_when_it_is_named_beside_others(bot):
    a = bot.answer("CSCO、NCCN、ESMO对exon 9辅助剂量的说法有何不同？")
    texts = [q.text for q in a.quotes]
    assert any("CSCO 指南 2024 版建议" in t for t in texts)
    assert any("NCCN指南的推荐较为相似" in t for t in texts) and any("ESMO 指南指出" in t for t in texts)
    # CSCO alone is still its own question: the dose sentence, not a comparison.
    alone = bot.answer("CSCO指南对辅助剂量怎么说？")
    assert "CSCO 指南 2024 版建议" in alone.quotes[0].text and "ESMO" not in alone.answer
