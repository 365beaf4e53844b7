"""The lexicon matcher: longest term first, Latin words on boundaries, question phrases masked."""
from __future__ import annotations

from indexer.lexicon import load_lexicon
from tests.conftest import REPO

LEX = load_lexicon(str(REPO / "corpus" / "lexicon.json"))


def test_longest_term_wins_and_masks_its_parts():
    assert "stomach" not in LEX.concepts_in("胃肠间质瘤")
    assert LEX.concepts_in("新辅助治疗") == {"neoadjuvant"}
    assert "high_dose" not in LEX.concepts_in("辅助治疗用多大剂量？")


def test_synonyms_and_languages_meet_in_one_concept():
    for text in ("伊马替尼", "imatinib", "Imatinib", "格列卫", "伊馬替尼", "IM辅助"):
        assert "imatinib" in LEX.concepts_in(text), text
    for text in ("exon 9", "exon9", "外显子9", "9号外显子"):
        assert "exon9" in LEX.concepts_in(text), text


def test_short_abbreviations_need_their_case_and_boundaries():
    assert "imatinib" not in LEX.concepts_in("im")
    assert "imatinib" not in LEX.concepts_in("SIMPLE")


def test_attribute_trigger_inside_a_concept_term_does_not_fire():
    assert "dose" not in LEX.attributes_in("为什么对标准剂量伊马替尼不敏感？")
    assert "dose" in LEX.attributes_in("辅助治疗用多大剂量？")
    assert "duration" in LEX.attributes_in("辅助治疗持续多少年？")


def _every_regex(matcher, text):
    """The matcher without its substring prefilter: every term's regex scanned, longest first."""
    from indexer.lexicon import Match

    taken, found = bytearray(len(text)), []
    for i, (term, key, _literal) in enumerate(matcher._terms):
        for m in matcher.pattern(i).finditer(text):
            if not any(taken[m.start():m.end()]):
                taken[m.start():m.end()] = b"\x01" * (m.end() - m.start())
                found.append(Match(key, m.start(), m.end(), term))
    return sorted(found, key=lambda m: m.start)


def test_the_substring_prefilter_finds_what_every_regex_finds(stored_index):
    from evals.schema import load_set

    texts = [p.text for p in stored_index.passages]
    texts += [i.question for name in ("questions.jsonl", "holdout.jsonl") for i in load_set(REPO / "evals" / name)]
    texts += [t.upper() for t in texts] + [t.swapcase() for t in texts]
    # Letters that re.IGNORECASE equates with ASCII but str.lower() does not: the long s, the
    # dotted capital I, the Kelvin sign; spaces stretched inside multi-word terms.
    texts += ["ſunitinib 与 İmatinib 的 \u212aIT exon 9", "KIT   exon\t9", "exon9 400mg/d", "ＫＩＴ外显子9"]
    for matcher in (LEX._concepts, LEX._attributes):
        for text in texts:
            assert matcher.find(text) == _every_regex(matcher, text), text
    assert {"sunitinib", "imatinib"} <= LEX.concepts_in("ſunitinib 与 İmatinib")
