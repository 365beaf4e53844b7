"""Strict scoring reads the answer as the user sees it: quote blocks, units, lead, length."""
from __future__ import annotations

from bot.types import Answer
from evals.metrics import MAX_ANSWER_CHARS, quote_blocks, score_answer, strict_metrics
from evals.schema import Item

ANSWER = """**术后辅助治疗**（共识原文，逐字引用）：

- **专家推荐**：「不建议KIT外显子9突变患者接受高剂量伊马替尼辅助治疗。」〔共识〕
- **投票结果**：「应接受伊马替尼辅助治疗的剂量应为：」〔表1〕
    - 「标准剂量400 mg/d」：86%
- **争议与证据**：「KIT exon 9 基因突变增强了胞外域 D5-D5 的相互作用」〔共识〕"""


class NoSources:
    documents: dict = {}
    passages: dict = {}


def item(**kw) -> Item:
    base = dict(id="t", question="q", expect="answer", must_include_any=[["不建议"]])
    return Item.model_validate(base | kw)


def test_quote_blocks_group_a_vote_item_with_its_options():
    b = quote_blocks(ANSWER)
    assert len(b) == 3 and "标准剂量400 mg/d" in b[1] and "不建议" in b[0]


def test_lead_gold_and_off_topic_blocks():
    s = score_answer(item(answer_units=["不建议KIT外显子9突变患者"], acceptable_units=["辅助治疗的剂量应为"]),
                     Answer("q", ANSWER, refused=False), NoSources(), 10)
    assert s.gold_quoted and s.lead and s.blocks == 3 and s.on_topic_blocks == 2
    assert len(s.off_topic) == 1 and "D5-D5" in s.off_topic[0]
    assert s.strict_correct  # off-topic quotes cost precision, not correctness


def test_a_unit_outside_quotes_does_not_count_and_length_is_enforced():
    text = "不建议KIT外显子9突变患者接受高剂量 (paraphrase)\n\n- **x**：「其他」〔共识〕"
    s = score_answer(item(answer_units=["不建议KIT外显子9突变患者"]), Answer("q", text, refused=False), NoSources(), 10)
    assert not s.gold_quoted and not s.strict_correct
    long = ANSWER + "\n" + "。" * MAX_ANSWER_CHARS
    s = score_answer(item(answer_units=["不建议KIT外显子9突变患者"]), Answer("q", long, refused=False), NoSources(), 10)
    assert s.gold_quoted and not s.strict_correct


def test_strict_metrics_count_false_refusals_and_lengths():
    answered = score_answer(item(answer_units=["不建议KIT外显子9突变患者"]), Answer("q", ANSWER, refused=False), NoSources(), 10)
    refused = score_answer(item(answer_units=["不建议KIT外显子9突变患者"]), Answer("q", "抱歉", refused=True), NoSources(), 10)
    m = strict_metrics([answered, refused])
    assert m["strict_false_refusals"] == 1 and m["strict_answer_accuracy"] == 0.5
    assert m["strict_lead"] == 0.5 and m["strict_off_topic_rate"] == 1.0
    assert m["answer_chars_p50"] == len(ANSWER)
