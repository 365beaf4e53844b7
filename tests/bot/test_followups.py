"""Suggested follow-ups: drawn from where the answer sits in the document, each one answerable."""
from __future__ import annotations

from bot.app import answer_record
from bot.followups import (MAX_FOLLOWUPS, VOTE_QUESTION, candidate_questions, settings_of_answer,
                           suggest_followups)
from bot.plan import document_map
from bot.setting import ADJUVANT, FIRST_LINE, RECUR_AFTER, SETTING_LABELS


def record_of(bot, question, history=()):
    return answer_record(bot, bot.answer(question, history=list(history)), list(history), 1)


def test_an_adjuvant_answer_suggests_its_missing_parts_then_the_next_settings(bot):
    dm = document_map(bot._ensure_loaded())
    rec = record_of(bot, "术后辅助治疗用高剂量有什么证据？")  # the panel's line only: no vote, no dispute
    assert settings_of_answer(rec, dm) == (ADJUVANT,)
    cands = candidate_questions(rec, dm)
    assert cands[0] == VOTE_QUESTION.format(label=SETTING_LABELS[ADJUVANT])
    assert any(SETTING_LABELS[RECUR_AFTER] in c for c in cands)
    assert all(SETTING_LABELS[ADJUVANT] not in c or "投票" in c or "争议" in c for c in cands)


def test_every_suggestion_is_answered_and_shows_something_new(bot):
    dm = document_map(bot._ensure_loaded())
    for question in ("KIT exon 9突变患者辅助治疗用多大剂量？", "晚期exon 9 GIST一线伊马替尼用多少？",
                     "停药后复发，专家多数选什么？", "肺癌患者的化疗方案是什么？"):
        rec = record_of(bot, question)
        shown = {q["passage_id"] for q in rec["quotes"]}
        suggestions = suggest_followups(rec, dm, lambda q: bot.answer(q, history=[question]), [question])
        assert 2 <= len(suggestions) <= MAX_FOLLOWUPS, (question, suggestions)
        assert question not in suggestions
        for s in suggestions:
            a = bot.answer(s, history=[question])
            assert not a.refused, s
            assert {q.passage_id for q in a.quotes} - shown, f"{s} repeats the answer"


def test_a_refused_candidate_is_never_offered(bot):
    dm = document_map(bot._ensure_loaded())
    rec = record_of(bot, "晚期exon 9 GIST一线伊马替尼用多少？")
    assert FIRST_LINE in settings_of_answer(rec, dm)

    def refusing(question):
        result = bot.answer(question)
        if "投票" in question:
            result.refused = True
        return result

    offered = suggest_followups(rec, dm, refusing)
    assert offered and not any("投票" in q for q in offered)
