"""Which clinical setting a question is about, and what it asks of it (the facet).

The consensus is organised by clinical setting (`../shared/notes/answer-shapes.md`): first-line
treatment of metastatic disease (topic 1, with the mechanism), adjuvant therapy after resection
(topic 2), and recurrence during or after adjuvant therapy (topic 3). The same words ("剂量",
"800 mg", "高剂量") answer three different questions there, so the setting decides which text may
answer. It is read from the question's own words; a vignette that carries two settings
("术后辅助一年后肝转移") is placed by the event that happened last (recurrence).

Everything here works on simplified, lower-cased text, so traditional characters and English
phrasing reach the same patterns.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from indexer.lexicon import to_simplified

FIRST_LINE, ADJUVANT, RECUR_DURING, RECUR_AFTER = "first_line", "adjuvant", "recur_during", "recur_after"
RECURRENCE = (RECUR_DURING, RECUR_AFTER)
ALL_SETTINGS = (FIRST_LINE, ADJUVANT, RECUR_DURING, RECUR_AFTER)
# What a trainee reads as the setting's name (shown in labelled per-setting answers and citations).
SETTING_LABELS = {
    FIRST_LINE: "转移性GIST一线治疗",
    ADJUVANT: "术后辅助治疗",
    RECUR_DURING: "辅助治疗期间复发转移",
    RECUR_AFTER: "辅助治疗停药后复发转移",
}
# Short names of the consensus topics, used in citations ("共识 · 辅助治疗 · 我们推荐").
TOPIC_SHORT = {FIRST_LINE: "转移性一线与机制", ADJUVANT: "辅助治疗", RECUR_DURING: "复发转移", RECUR_AFTER: "复发转移"}

# --- the words that place a question ---------------------------------------------------------
# "新辅助" (neoadjuvant) is another setting the corpus does not cover: never read as adjuvant.
_ADJUVANT = re.compile(r"(?<!新)辅助|(?<!新)辅组|付助|术后|切除后|手术后|根治术|切除术后|adjuvant|post-?operative|after (?:surgery|resection)|resected|"
                       r"r0|完整切除|切完")
# Recurrence or progression as an event. "复发风险/复发率/危险度" is a risk grade (a detail of an
# adjuvant question), not an event.
_RECUR = re.compile(r"复发(?!风险|危险|率|的风险|可能)|再发|进展(?!期)|又长|长出|新发|新病灶|出现.{0,4}转移|发现.{0,6}转移|肝转移|腹膜转移|"
                    r"发现.{0,10}(?:结节|病灶|占位|肿块)|(?:肝|腹膜|腹腔)(?:内)?(?:结节|占位|病灶)|"
                    r"转移了|(?<!性)转移(?!性)|recurs|recurr(?:ed|ence|ent|ing)(?! risk)|relaps|progress|metasta")
_DURING = re.compile(r"期间|过程中|治疗中|服药中|用药中|吃着|正在|还在吃|还在服|在吃|在服|服用中|服药时|吃药时|的时候|当中|仍在|"
                     r"第\d+个?(?:月|年)|第[一二三四五六七八九十]+个?(?:月|年)|"
                     r"while on|during|on adjuvant|on imatinib|still taking|while taking")
_AFTER = re.compile(r"停药|停了|停用|结束后|结束以后|完成后|治疗后|辅助后|(?:辅助|治疗|服药|用药|吃药|疗程|或)(?:结束)?(?:之后|以后)|吃完|服完|疗程结束|治疗结束|辅助结束|停止|"
                    r"after stopping|after (?:completing|completion|finishing)|after (?:the )?adjuvant|discontinu|stopped|completed|finished|off imatinib")
_FIRST_LINE = re.compile(r"晚期|转移性|(?<!复发)转移|肝转移|腹膜转移|初诊|一线|首选|不可切除|无法切除|不能切除|初始治疗|首次治疗|初治|"
                         r"advanced|metastatic|unresectable|first[- ]line|frontline|initial (?:treatment|therapy)|newly diagnosed")
_FIRST_EXPLICIT = re.compile(r"一线|初诊|初治|初始治疗|首次治疗|晚期|first[- ]line|frontline|newly diagnosed|advanced")
# Failure of the standard dose is the CSCO statement that topic 3 quotes.
_FAILURE = re.compile(r"失败|耐药|无效|不管用|进展|fail|resist|progress")
_COMPARE = re.compile(r"区别|不同|差别|差异|相比|比较|对比|一样吗|一样么|有什么两样|vs\.?|versus|compare|differ|same as|和.{0,12}(?:一样|相同)|分别")


@dataclass(frozen=True)
class SettingRead:
    """The settings a question is about, and the words that placed it (for --explain)."""

    settings: tuple[str, ...] = ()
    compare: bool = False
    cues: tuple[str, ...] = ()
    failure: bool = False  # placed by failure of the standard dose (no adjuvant course named)

    @property
    def specific(self) -> bool:
        return bool(self.settings)


def _norm(text: str) -> str:
    return to_simplified(text).lower()


def detect_settings(text: str) -> SettingRead:
    t = _norm(text)
    cues: list[str] = []

    def seen(pattern: re.Pattern) -> bool:
        m = pattern.search(t)
        if m:
            cues.append(m.group(0))
        return bool(m)

    adj, rec, during, after = seen(_ADJUVANT), seen(_RECUR), seen(_DURING), seen(_AFTER)
    first = seen(_FIRST_LINE)
    failure = seen(_FAILURE)
    compare = bool(_COMPARE.search(t))
    settings: list[str] = []
    failed = False
    if adj and (rec or failure):
        # Recurrence after resection: the last event decides. During or after adjuvant therapy
        # when the question says so; otherwise both (topic 3 treats them together).
        if after and not during:
            settings = [RECUR_AFTER]
        elif during and not after:
            settings = [RECUR_DURING]
        else:
            settings = [RECUR_DURING, RECUR_AFTER]
        if compare and first and re.search(r"一线|晚期|转移性|first|advanced|metastatic", t):
            settings = [FIRST_LINE, *settings]
    elif adj:
        settings = [ADJUVANT]
        if first and compare:
            settings = [FIRST_LINE, ADJUVANT]
    elif rec and (not first or ((after or during) and not _FIRST_EXPLICIT.search(t))):
        # "停药后复发" / "吃着药复发" / "停药1年后肝转移": stopping or taking the drug implies the
        # adjuvant course, unless the question says first-line treatment of metastatic disease.
        settings = [RECUR_AFTER] if after and not during else [RECUR_DURING] if during and not after else [RECUR_DURING, RECUR_AFTER]
    elif failure and re.search(r"400|标准剂量|常规剂量|standard", t):
        # "first-line 400 mg failed" / "标准剂量失败": the CSCO failure statement (topic 3) answers it.
        settings, failed = [RECUR_DURING, RECUR_AFTER], True
    elif first:
        settings = [FIRST_LINE]
    return SettingRead(tuple(settings), compare and len({s if s not in RECURRENCE else "r" for s in settings}) > 1,
                       tuple(cues), failed)


# --- what the question asks of the setting ---------------------------------------------------
MANAGEMENT, WHY, VALUE, VOTE, AUTHORS, GENERAL = "management", "why", "value", "vote", "authors", "general"
_AUTHORS = re.compile(r"谁写|谁执笔|作者|执笔|撰写|哪个医院|哪家医院|什么医院|哪个单位|哪里的医生|单位|邮箱|email|e-mail|联系方式|"
                      r"who wrote|written by|author|affiliat|which hospital|contact")
_MANAGEMENT = re.compile(r"怎么办|咋办|咋整|咋治|怎么弄|用啥|该用|吃啥|换啥|怎么处理|如何处理|怎么治|如何治|用什么药|吃什么药|换什么药|用药|方案|加量|加到|加至|减量|首选|推荐|建议|应该|"
                         r"下一步|选什么|吃多少|用多少|多大剂量|多少剂量|剂量多少|剂量是多少|要不要|需不需要|能不能|可以用|还能用|怎么调整|如何调整|调整|"
                         r"上800|上600|换药|换成|怎么用|如何用|行不行|可不可以|可以吗|能行吗|行吗|合适吗|够不够|够吗|需要(?:上|用|加|吃|换)|要(?:上|用|加|换)|能(?:上|用|加)|可以(?:上|加|换)|"
                         r"what (?:should|to do|next)|how (?:to|should)|\bshould\b|manage|which drug|next step|escalat|increase|what dose|which dose|recommend")
# A question about the state of the evidence or of the guidelines ("证据充分吗", "一致吗") is not
# one about what to do, even when it names a treatment.
_EVIDENCE_QUESTION = re.compile(r"证据|研究|一致|明确|达成|阐明|充分|支持|争议|效果如何|疗效如何|有没有.{0,6}推荐|有.{0,4}推荐吗|"
                                r"evidence|studies|study|consistent|agree|clear recommendation")
# A question asking for a number ("加到多少", "多大剂量", "how much"): the sentence stating it leads.
NUMBER_ASKED = re.compile(r"多少|多大|几毫克|几级|几成|上限|最多|最高|最大|how much|(?:what|which) (?:\w+ )?dose|how many|what level|grade|maximum|up to")
# A question that names a guideline: the guideline's own sentence leads.
GUIDELINE_NAMED = re.compile(r"指南|csco|nccn|esmo|guideline|西班牙|spanish", re.I)


_VOTE = re.compile(r"多数专家|专家多数|大多数专家|专家.{0,4}(?:倾向|怎么选|选什么|选哪|意见分布)|majority|most experts|panel (?:voted|chose|preferred)")
# A share of the panel asked for: "投“是”的专家占多少", "选…的比例", "有人选吗", "what percentage of experts".
_VOTE_SHARE = re.compile(r"(?:专家|投|选|认同|赞同|同意).{0,24}(?:比例|占多少|占比|占几成|几成|有人选|有没有人选|百分|多少%|多少人)|"
                         r"多少(?:位|名|个)?专家(?:认为|支持|选|赞同|认同|同意|倾向|投)|认同率|赞同率|支持率|"
                         r"有人选|有没有人选|多少人选|几个人选|的?专家有多少|有多少专家|"
                         r"(?:percentage|share|proportion|how many) of (?:the )?(?:experts|panel)|experts? (?:chose|voted|agreed)")
_VOTE_ITEM = re.compile(r"表\s*1|第\s*[一二三四五1-5]\s*(?:项|题)|问卷|vote item|table 1")
# A share asked for in words the lexicon's triggers miss: "占GIST多少", "占多大比例".
PERCENT_ASKED = re.compile(r"占.{0,14}(?:多少|几成|多大|比例|百分)|what (?:share|fraction|percent)|how many percent")
SHORT_QUESTION = 16  # characters: a question this short that names only a setting is a follow-up on it


@dataclass(frozen=True)
class Intent:
    facet: str
    cue: str = ""


def detect_facet(text: str, attributes: set[str], concepts: set[str], author_names: tuple[str, ...] = (),
                 setting: SettingRead | None = None) -> Intent:
    """One facet per question, most specific first: who wrote it, the vote, why, a stated value,
    what to do, anything else."""
    t = _norm(text)
    m = _AUTHORS.search(t)
    if m:
        return Intent(AUTHORS, m.group(0))
    named = [n for n in author_names if n and n in text]
    if named and not attributes - {"recommendation"}:
        return Intent(AUTHORS, named[0])
    if "count" in attributes and re.search(r"参与|参加|讨论|组成|多少位|几位|how many experts (?:took part|were)", t):
        return Intent(VALUE, "count")  # the size of the panel, not a vote's share
    m = _VOTE.search(t) or _VOTE_SHARE.search(t) or _VOTE_ITEM.search(t)
    if "vote" in attributes or m:
        return Intent(VOTE, m.group(0) if m else "vote")
    if "mechanism" in attributes:
        return Intent(WHY, "mechanism")
    value_attrs = attributes & {"percentage", "count", "response_rate", "site", "duration", "timing", "side_effects", "survival_rate", "median_survival",
                                "schedule", "doi", "pmid", "pages", "sample_size", "hazard_ratio", "follow_up_time"}
    if value_attrs:
        return Intent(VALUE, sorted(value_attrs)[0])
    m = _MANAGEMENT.search(t)
    number = NUMBER_ASKED.search(t)
    if _EVIDENCE_QUESTION.search(t) and not number and not re.search(r"怎么办|怎么处理|如何处理|what (?:should|to do)", t):
        return Intent(GENERAL, "evidence")
    if m or "dose" in attributes:
        return Intent(MANAGEMENT, m.group(0) if m else (number.group(0) if number else "dose"))
    if len(re.sub(r"\s", "", t)) <= SHORT_QUESTION and (setting or detect_settings(t)).specific and not re.search(
            r"证据|研究|文献|指南|预后|机制|比例|为什么|evidence|study|guideline|prognos", t):
        # "那辅助治疗呢？" / "停药后复发？": a setting named bare asks for its bottom line.
        return Intent(MANAGEMENT, "setting named bare")
    return Intent(GENERAL)


@dataclass
class Reading:
    """The question as the planner reads it: settings, facet, and where each came from."""

    setting: SettingRead
    intent: Intent
    setting_from_history: bool = False
    facet_from_history: bool = False
    notes: list[str] = field(default_factory=list)
