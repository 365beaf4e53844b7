"""The learned question side: the bank it is trained on, the artefacts it is kept in, and what it
changes in answers (noise, languages, two questions, refusals for a detail)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from bot.learn import LearnedArtefactError, denoise, load_model, unsupported_language
from bot.split import split_questions
from evals.bank import load_bank

REPO = Path(__file__).resolve().parents[2]
BANK = REPO / "evals" / "bank"


@pytest.fixture(scope="module")
def bank():
    return load_bank(BANK)


def test_bank_is_large_varied_and_reviewed(bank):
    authors = {i.author for i in bank}
    assert len(bank) >= 2000 and len(authors) >= 8
    assert sum(i.expect == "refuse" for i in bank) >= 0.25 * len(bank)
    for a in authors:  # a second helper reviewed each author's labels; the resolutions are kept
        assert (BANK / "reviews" / f"{a}.jsonl").is_file(), a


def test_every_answer_unit_names_a_unit_of_the_index(bank, stored_index):
    from bot.train import examples_of, match_units, unit_table

    units = unit_table(stored_index)
    missing = [e.item_id for e in examples_of(bank) if not e.refuse and not match_units(e.unit_texts, units)]
    assert len(missing) <= 0.01 * len(bank), missing[:20]


def test_training_is_deterministic(bot, bank):
    from bot.train import examples_of, feature_table, fit

    examples = examples_of(bank)[::8]
    table = feature_table(bot, examples)
    rows = list(range(len(examples)))
    a, b = fit(table, rows), fit(table, rows)
    for name in a.heads:
        assert np.array_equal(a.heads[name].w_sparse, b.heads[name].w_sparse), name
        assert np.array_equal(a.heads[name].w_dense, b.heads[name].w_dense), name


def _learned_folder(settings, stored_index) -> Path:
    from bot.train import bank_checksum, learned_dir

    return learned_dir(settings, stored_index.build_dir.name, bank_checksum(settings.bank_dir), True)


@pytest.mark.parametrize("damage", ["truncate", "remove", "garble_manifest"])
def test_a_damaged_learned_artefact_is_refused_with_the_rebuild_command(tmp_path, settings, stored_index, damage):
    folder = tmp_path / "model"
    shutil.copytree(_learned_folder(settings, stored_index), folder)
    if damage == "truncate":
        data = (folder / "heads.npz").read_bytes()
        (folder / "heads.npz").write_bytes(data[: len(data) // 2])
    elif damage == "remove":
        (folder / "vocab.json").unlink()
    else:
        (folder / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LearnedArtefactError, match="gistqa index"):
        load_model(folder)


def test_a_missing_learned_model_stops_the_bot_with_the_command(copy_of_index, settings):
    from bot.answer import Bot

    shutil.rmtree(Path(copy_of_index.index_dir) / "learned")
    with pytest.raises(LearnedArtefactError, match="gistqa index"):
        Bot(copy_of_index).answer("辅助治疗用多大剂量？")


def _quotes(answer) -> list[str]:
    return [q.text for q in answer.quotes]


EMOJI = ["🙏", "😅😅", "👍🏻", "🤔"]
PUNCT = ["！！！", "？？？", "……", "!!", "??"]
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def noisy(question: str, rng: random.Random) -> str:
    """Noise as a phone adds it: an emoji between words or clauses, punctuation repeated at the
    end, full-width digits."""
    gaps = [i for i, ch in enumerate(question) if ch in " ，,。？?"] + [len(question)]
    cut = rng.choice(gaps)
    return (question[:cut] + rng.choice(EMOJI) + question[cut:]).translate(FULLWIDTH) + rng.choice(PUNCT)


def test_noise_gives_the_same_answer_as_the_clean_question(bot, bank):
    rng = random.Random(7)
    sample = rng.sample(bank, 150)
    differ = []
    for item in sample:
        clean = bot.answer(item.question, history=list(item.history))
        dirty = bot.answer(noisy(item.question, rng), history=list(item.history))
        if (clean.refused, _quotes(clean)) != (dirty.refused, _quotes(dirty)):
            differ.append(item.id)
    assert not differ, differ


LABS = ["，Hb 95g/L，肌酐110", "，ALT：40 U/L", "，WBC 3.2×10^9/L，PLT 150", "，CEA 5.6"]


def with_lab_values(question: str, rng: random.Random) -> str:
    """Lab values pasted into the story at a clause boundary (or at the end)."""
    gaps = [i for i, ch in enumerate(question) if ch in "，,"] + [len(question.rstrip("？?。"))]
    cut = rng.choice(gaps)
    return question[:cut] + rng.choice(LABS) + question[cut:]


def test_pasted_lab_values_and_mixed_scripts_give_the_same_answer(bot, bank):
    from opencc import OpenCC

    s2t = OpenCC("s2t")
    rng = random.Random(11)
    sample = [i for i in rng.sample(bank, 160) if not i.history][:100]
    differ = []
    for item in sample:
        clean = bot.answer(item.question)
        for variant in (with_lab_values(item.question, rng), s2t.convert(item.question)):
            other = bot.answer(variant)
            if (clean.refused, _quotes(clean)) != (other.refused, _quotes(other)):
                differ.append((item.id, variant))
    assert not differ, differ[:10]


def test_denoise_keeps_the_words_and_drops_the_noise():
    assert denoise("辅助治疗用多少？？？🙏🙏") == "辅助治疗用多少？"
    assert denoise("吃６００ｍｇ可以吗!!!😅") == "吃600mg可以吗"
    assert denoise("what about rel🙏apse?？？") == "what about relapse?"
    assert denoise("exon9晚期，Hb 95g/L，肌酐110，伊马起始多少") == "exon9晚期，伊马起始多少"
    assert denoise("辅助400 吃着 WBC 3.2×10^9/L 能减量吗") == "辅助400 吃着 能减量吗"  # the dose stays


@pytest.mark.parametrize("question", ["エクソン9変異のGISTの術後補助療法の用量は？", "엑손 9 GIST 보조요법 용량은?",
                                      "Quelle est la dose adjuvante pour les GIST exon 9 ?"])
def test_a_language_the_bank_does_not_cover_is_refused_naming_the_languages(bot, question):
    a = bot.answer(question)
    assert a.refused and "中文或英文" in a.answer and "English" in a.answer and not a.quotes


def test_english_and_chinese_are_not_taken_for_another_language():
    assert not unsupported_language("What is the adjuvant dose for ex9?")
    assert not unsupported_language("exon 9 辅助治疗用多少")


def test_two_questions_in_one_message_are_both_answered(bot):
    a = bot.answer("KIT exon 9辅助治疗用多大剂量？辅助治疗期间复发了怎么办？")
    assert not a.refused
    assert "问题一" in a.answer and "问题二" in a.answer
    text = "".join(_quotes(a))
    assert "400 mg" in text and "舒尼替尼" in text


def test_split_keeps_one_question_whole():
    assert split_questions("exon9辅助治疗剂量是多少？400还是600？") == ["exon9辅助治疗剂量是多少？400还是600？"]
    assert len(split_questions("What is the adj dose? And who wrote the adjuvant part?")) == 2


def test_a_side_effect_in_the_vignette_does_not_refuse_the_ask(bot):
    a = bot.answer("晚期exon 9患者吃600乏力、眼睑水肿明显，剂量能个体化调整吗")
    assert not a.refused
    assert "个体化调整伊马替尼剂量" in "".join(_quotes(a))


def test_explain_shows_the_nearest_bank_questions_and_each_probability(bot):
    a = bot.answer("ex9 met 1L dose?")
    learned = a.explain["learned"]
    assert 0.0 <= learned["p_refuse"] <= 1.0 and set(learned["settings"]) == {"first_line", "adjuvant", "recur_during", "recur_after"}
    assert learned["neighbours"] and {"id", "question", "expect", "settings", "facet", "cosine"} <= set(learned["neighbours"][0])
    assert learned["settings"]["first_line"] > 0.5


def test_compare_lists_changed_verdicts_and_tag_deltas():
    from evals.by_author import compare_runs

    a = {"items": [{"id": "x", "right": True, "tags": ["t"], "question": "q", "problems": []},
                   {"id": "y", "right": False, "tags": ["t"], "question": "q", "problems": ["p"]}]}
    b = {"items": [{"id": "x", "right": False, "tags": ["t"], "question": "q", "problems": ["p"]},
                   {"id": "y", "right": False, "tags": ["t"], "question": "q", "problems": ["p"]}]}
    diff = compare_runs(a, b)
    assert [i["id"] for i in diff["broken"]] == ["x"] and not diff["fixed"]
    assert diff["per_tag"]["t"]["delta"] == -0.5


def test_a_bad_bank_line_is_named_and_nothing_is_trained_on_it(tmp_path):
    from evals.bank import load_bank_file
    from evals.schema import EvalSetError

    path = tmp_path / "x9.jsonl"
    good = {"id": "x9-1", "question": "辅助治疗用多少？", "expect": "answer", "settings": ["adjuvant"], "facets": ["dose"],
            "answer_units": ["周内应启动伊马替尼400 mg 辅助治疗"], "must_include_any": [["400 mg"]]}
    path.write_text("\n".join([json.dumps(good, ensure_ascii=False), "{not json",
                               json.dumps({**good, "id": "x9-2", "expect": "refuse"}, ensure_ascii=False),
                               json.dumps({**good, "id": "x9-3", "settings": ["later"]})]) + "\n", encoding="utf-8")
    with pytest.raises(EvalSetError) as err:
        load_bank_file(path)
    text = str(err.value)
    assert "line 2: invalid JSON" in text and "line 3" in text and "refusal_reason" in text and "line 4" in text
    assert "line 1" not in text


def test_index_verify_names_a_damaged_learned_model(copy_of_index, settings, stored_index):
    import os
    import subprocess

    folder = _learned_folder(copy_of_index, stored_index)
    heads = folder / "heads.npz"
    data = bytearray(heads.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the checksum can tell
    heads.write_bytes(bytes(data))
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "gistqa"), "index", "--verify"], text=True, capture_output=True,
                          timeout=300, env={**os.environ, "GISTQA_INDEX_DIR": str(copy_of_index.index_dir)})
    said = " ".join(proc.stderr.split())  # the console wraps long lines
    assert proc.returncode == 2 and "Traceback" not in said
    assert "heads.npz (checksum differs)" in said and "gistqa index" in said


def test_a_dose_after_a_word_ending_like_a_lab_name_is_kept():
    assert denoise("Should I take at least 400 mg?") == "Should I take at least 400 mg?"
    assert denoise("week 400 then?") == "week 400 then?"


def test_a_japanese_question_opening_with_kanji_is_refused(bot):
    a = bot.answer("胃腸間質腫瘍の術後補助療法は何年ですか")
    assert a.refused and "中文或英文" in a.answer


def test_the_gate_fails_when_a_lower_is_better_figure_rises():
    from evals.by_author import gate_failures

    floors = {"answerable_right": 0.7, "false_refusal_rate": 0.08, "wrong_setting": 67}
    assert gate_failures({"answerable_right": 0.7, "false_refusal_rate": 0.08, "wrong_setting": 67}, floors) == []
    assert len(gate_failures({"answerable_right": 0.69, "false_refusal_rate": 0.08, "wrong_setting": 67}, floors)) == 1
    assert len(gate_failures({"answerable_right": 0.7, "false_refusal_rate": 0.09, "wrong_setting": 68}, floors)) == 2


def test_a_confident_unit_of_another_setting_never_leads(bot, monkeypatch):
    """The models may rate another setting's sentence highest; the setting guard keeps it out."""
    from bot.learn import LearnedModel

    model = bot.learned_model()
    first_line = next(i for i, u in enumerate(model.units) if "一线治疗的首选方案" in u.text)
    real = LearnedModel.decide

    def decide_wrongly(self, *args, **kwargs):
        d = real(self, *args, **kwargs)
        d.units = [(first_line, 0.99)] + [(n, 0.0) for n, p in d.units if n != first_line]
        return d

    monkeypatch.setattr(LearnedModel, "decide", decide_wrongly)
    a = bot.answer("KIT exon 9突变患者术后辅助治疗用多大剂量？")
    assert not a.refused and "一线治疗的首选方案" not in a.answer
