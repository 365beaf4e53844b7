"""Reading the clinical setting and the facet of a question (no model, no index)."""
from __future__ import annotations

import pytest

from bot.setting import (ADJUVANT, AUTHORS, FIRST_LINE, GENERAL, MANAGEMENT, RECUR_AFTER, RECUR_DURING, VALUE, VOTE, WHY,
                         detect_facet, detect_settings)

BOTH = (RECUR_DURING, RECUR_AFTER)


@pytest.mark.parametrize("question, settings", [
    ("KIT exon 9突变的转移性GIST一线用多大剂量的伊马替尼？", (FIRST_LINE,)),
    ("晚期exon 9患者伊马替尼最多能加到多少？", (FIRST_LINE,)),
    ("exon 9 GIST肝转移，初始治疗怎么用药？", (FIRST_LINE,)),
    ("What first-line dose for metastatic exon 9 GIST?", (FIRST_LINE,)),
    ("我的病人exon 9突变，小肠GIST术后，高危，辅助治疗吃多少？", (ADJUVANT,)),
    ("高复发风险的exon 9患者术后辅助用多少？", (ADJUVANT,)),  # a risk grade is no recurrence
    ("輔助治療劑量多少？", (ADJUVANT,)),  # traditional characters
    ("新辅助治疗用多少？", ()),  # neoadjuvant is not adjuvant
    ("辅助治疗吃着400的时候复发了怎么办", (RECUR_DURING,)),
    ("Exon 9 patient relapsed while on adjuvant imatinib - what next?", (RECUR_DURING,)),
    ("辅助治疗结束停药后复发怎么办？", (RECUR_AFTER,)),
    ("停药后复发，专家多数选什么？", (RECUR_AFTER,)),
    ("What if it recurs after adjuvant imatinib was stopped?", (RECUR_AFTER,)),
    ("术后辅助一年后肝转移怎么办？", BOTH),  # the event that happened last decides
    ("exon 9 停药1年后肝转移，再用伊马替尼用多少？", (RECUR_AFTER,)),  # stopping implies the adjuvant course
    ("吃着药的时候肝转移了", (RECUR_DURING,)),
    ("辅助治疗第二年复查发现肝转移，exon 9，下一步？", (RECUR_DURING,)),  # the n-th year of the course
    ("晚期GIST一线吃着伊马替尼进展了", (FIRST_LINE,)),  # first-line named: not the adjuvant course
    ("复发转移怎么处理？", BOTH),
    ("标准剂量失败后怎么办？", BOTH),
    ("exon 9占GIST多少？", ()),
])
def test_setting_is_read_from_the_question(question, settings):
    assert detect_settings(question).settings == settings


def test_comparing_settings_is_marked():
    read = detect_settings("晚期一线和术后辅助的剂量有什么区别？")
    assert read.compare and set(read.settings) == {FIRST_LINE, ADJUVANT}
    assert not detect_settings("晚期一线用多少？").compare


@pytest.mark.parametrize("question, attributes, facet", [
    ("辅助治疗吃着400的时候复发了怎么办", set(), MANAGEMENT),
    ("晚期exon 9患者伊马替尼最多能加到多少？", {"dose"}, MANAGEMENT),
    ("为什么exon 9突变对伊马替尼不敏感？", {"mechanism"}, WHY),
    ("exon 9突变占GIST的比例？", {"percentage"}, VALUE),
    ("停药后复发，专家多数选什么？", set(), VOTE),
    ("投“是”的专家占多少？", set(), VOTE),
    ("张鹏是哪个医院的？", set(), AUTHORS),
    ("谁写的复发转移那部分？", set(), AUTHORS),
    ("复发处理方案有高等级证据支持吗？", set(), GENERAL),  # the state of the evidence, not what to do
    ("那辅助治疗呢？", set(), MANAGEMENT),  # a setting named bare asks for its bottom line
])
def test_facet_is_read_from_the_question(question, attributes, facet):
    assert detect_facet(question, attributes, set()).facet == facet
