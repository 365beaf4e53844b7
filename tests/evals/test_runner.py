"""The runner on a small set with the real Bot over the default index: reports, errors, the ratchet."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.answer import Bot
from evals.runner import (CHART_PNG, DEFAULT_BASELINE, GATED_METRICS, MACHINE_METRICS, RATCHET_PLACES, REPORT_MD,
                          RESULTS_JSON, ratchet_failures, read_baseline, run_cli, run_eval, write_reports)
from evals.schema import load_set
from indexer.settings import get_settings

SMALL_SET = [
    {"id": "share", "question": "KIT exon 9突变在GIST患者中占多大比例？", "expect": "answer",
     "must_include_any": [["6%~9%"]], "gold": ["占GIST患者总人群的"], "tags": ["intro"]},
    # Right passage, but the item asks for wording no answer has: fails with a missing group.
    {"id": "site", "question": "KIT exon 9突变的胃肠间质瘤主要发生在哪些部位？", "expect": "answer",
     "must_include_any": [["小肠"], ["这句话不会出现在答案里"]], "gold": ["主要发生于小肠或结直肠"], "tags": ["intro", "hard"]},
    {"id": "weather", "question": "今天天气怎么样？", "expect": "refuse", "must_not_include": ["mg", "%"], "tags": ["refuse"]},
    {"id": "dose", "question": "那用多大剂量？", "history": ["KIT exon 9突变转移性GIST一线用伊马替尼吗？"], "expect": "answer",
     "must_include_any": [["mg"]], "tags": ["followup"]},
]


@pytest.fixture(scope="module")
def bot() -> Bot:
    return Bot(get_settings(), auto_build=True)


@pytest.fixture
def set_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in SMALL_SET), encoding="utf-8")
    return path


@pytest.fixture
def result(bot, set_file):
    return run_eval(load_set(set_file), bot, k=10, progress=False)


def write_baseline(tmp_path: Path, set_name: str, **metrics) -> Path:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"set": set_name, "metrics": metrics}), encoding="utf-8")
    return path


def test_every_question_is_answered_and_scored(result):
    by_id = {s.id: s for s in result.scores}
    assert list(by_id) == ["share", "site", "weather", "dose"]
    assert by_id["share"].problems() == [] and by_id["share"].rank is not None
    assert by_id["weather"].refused and by_id["weather"].correct
    assert "missing group: 这句话不会出现在答案里" in by_id["site"].problems()
    assert result.overall["questions"] == 4 and result.overall["counts"]["errors"] == 0
    assert result.overall["quote_verbatim_rate"] == 1.0
    assert result.overall["numeric_faithfulness"] == 1.0
    assert result.overall["citation_accuracy"] == 1.0
    assert result.overall["refusal_recall"] == 1.0
    assert set(result.per_tag) == {"intro", "hard", "refuse", "followup"}


def test_reports_are_written(result, tmp_path):
    paths = write_reports(result, tmp_path / "out")
    data = json.loads((tmp_path / "out" / RESULTS_JSON).read_text(encoding="utf-8"))
    assert data["overall"] == result.overall
    assert set(data["per_tag"]) == set(result.per_tag)
    first = data["questions"][0]
    # The answer object is exactly what `gistqa ask --json` prints.
    assert first["answer"] == json.loads(json.dumps(result.answers[0].to_dict(), ensure_ascii=False))
    assert first["passed"] is True and first["scores"]["rank"] is not None
    site = data["questions"][1]
    assert site["passed"] is False and "missing group: 这句话不会出现在答案里" in site["problems"]

    report = paths["report"].read_text(encoding="utf-8")
    assert paths["report"].name == REPORT_MD
    assert "## 总体 (overall)" in report and "## 按标签 (per tag)" in report
    failing = report.split("## 未通过的问题 (failing questions)")[1]
    assert "### site" in failing and "- missing group: 这句话不会出现在答案里" in failing
    assert "### share" not in failing and "### weather" not in failing

    png = (tmp_path / "out" / CHART_PNG).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


class FlakyBot(Bot):
    """The real bot, except that one question raises."""

    def answer(self, question, history=None, scope=None):
        if "天气" in question:
            raise RuntimeError("simulated failure")
        return super().answer(question, history=history, scope=scope)


def test_a_question_that_raises_is_a_recorded_failure_not_a_crash(set_file, tmp_path):
    result = run_eval(load_set(set_file), FlakyBot(get_settings(), auto_build=True), k=10, progress=False)
    weather = result.scores[2]
    assert weather.error.startswith("RuntimeError: simulated failure at test_runner.py:")
    assert not weather.correct and result.answers[2] is None
    assert result.overall["counts"]["errors"] == 1
    assert result.scores[0].correct  # the others ran
    write_reports(result, tmp_path)
    data = json.loads((tmp_path / RESULTS_JSON).read_text(encoding="utf-8"))
    assert data["questions"][2]["answer"] is None
    assert data["questions"][2]["problems"][0].startswith("error: RuntimeError: simulated failure")


def test_the_ratchet_fails_below_the_baseline_and_passes_above_it(set_file, tmp_path, capsys):
    high = write_baseline(tmp_path, str(set_file), answer_accuracy=1.0, false_refusal_rate=0.0)
    assert run_cli(set_file, tmp_path / "out", 10, high, None, None) == 1
    printed = capsys.readouterr().out
    assert "below the bar" in printed and "answer_accuracy = " in printed and "below baseline 1.0000" in printed

    low = write_baseline(tmp_path, str(set_file), answer_accuracy=0.5, false_refusal_rate=0.5, **{"hit@5": 0.5})
    assert run_cli(set_file, tmp_path / "out", 10, low, None, None) == 0
    printed = capsys.readouterr().out
    assert "below the bar" not in printed and "通过 (pass)" in printed
    assert json.loads((tmp_path / "out" / RESULTS_JSON).read_text(encoding="utf-8"))["set"] == str(set_file.resolve())


def test_a_baseline_for_another_set_does_not_apply(set_file, tmp_path, capsys):
    other = write_baseline(tmp_path, "evals/questions.jsonl", answer_accuracy=1.0)
    assert run_cli(set_file, tmp_path / "out", 10, other, None, None) == 0
    assert "no baseline applies" in capsys.readouterr().out


def test_unusable_input_is_exit_code_2_with_the_reason(set_file, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "question": "q", "expect": "later"}\n', encoding="utf-8")
    assert run_cli(bad, tmp_path / "out", 10, None, None, None) == 2
    assert "bad.jsonl line 1: field 'expect'" in capsys.readouterr().err
    assert run_cli(set_file, tmp_path / "out", 10, tmp_path / "missing.json", None, None) == 2
    typo = write_baseline(tmp_path, str(set_file), answer_acuracy=0.5)
    assert run_cli(set_file, tmp_path / "out", 10, typo, None, None) == 2
    assert "field 'metrics.answer_acuracy': unknown metric" in capsys.readouterr().err
    assert run_cli(set_file, tmp_path / "out", 10, None, "everything", None) == 2


def test_ratchet_rules():
    metrics = {"answer_accuracy": 0.8, "false_refusal_rate": 0.05, "quote_verbatim_rate": 1.0,
               "numeric_faithfulness": 0.99, "refusal_recall": None}
    assert ratchet_failures(metrics, None) == ["numeric_faithfulness = 0.9900 < 1.0 (must be perfect whatever the baseline)"]
    failures = ratchet_failures(metrics | {"numeric_faithfulness": 1.0},
                                {"answer_accuracy": 0.8, "false_refusal_rate": 0.04, "refusal_recall": 0.9})
    # equal is not worse; a lower-is-better rate fails above its baseline; a baselined metric that
    # comes out unmeasured fails (it was measured when the baseline was taken)
    assert failures == ["false_refusal_rate = 0.0500 above baseline 0.0400",
                        "refusal_recall = — not measured (baseline 0.9000): the check measured nothing"]


def test_a_baselined_metric_that_comes_out_unmeasured_fails():
    """Number extraction broken: numeric faithfulness is None ("—"), which must not pass as
    "nothing to compare" when the baseline measured it."""
    baseline = {"numeric_faithfulness": 1.0, "hit@1": 0.9}
    failures = ratchet_failures({"numeric_faithfulness": None, "hit@1": 0.9}, baseline)
    assert failures == ["numeric_faithfulness = — not measured (baseline 1.0000): the check measured nothing"]
    # Absent from the run's figures counts as not measured too.
    assert ratchet_failures({}, {"hit@1": 0.9}) == ["hit@1 = — not measured (baseline 0.9000): the check measured nothing"]
    # Not baselined and not measured (a set without refusal items): nothing to compare.
    assert ratchet_failures({"refusal_recall": None, "hit@1": 0.9}, {"hit@1": 0.9}) == []


@pytest.mark.parametrize("name", ["hit@1", "hit@3", "mrr@10"])
def test_retrieval_ranks_are_gated(name):
    baseline = {name: 0.9}
    assert ratchet_failures({name: 0.8999}, baseline) == [f"{name} = 0.8999 below baseline 0.9000"]
    assert ratchet_failures({name: 0.9}, baseline) == []


def test_float_noise_below_the_compared_places_is_not_a_change():
    """Compared at RATCHET_PLACES decimals: a float sum that differs in the 6th place is equal; one
    unit in the 4th place (far less than one question of the set) is a change."""
    assert RATCHET_PLACES == 4
    assert ratchet_failures({"answer_accuracy": 0.96739999, "false_refusal_rate": 0.00470001},
                            {"answer_accuracy": 0.9674, "false_refusal_rate": 0.0047}) == []
    assert ratchet_failures({"answer_accuracy": 0.9673}, {"answer_accuracy": 0.9674}) == [
        "answer_accuracy = 0.9673 below baseline 0.9674"]
    assert ratchet_failures({"false_refusal_rate": 0.0048}, {"false_refusal_rate": 0.0047}) == [
        "false_refusal_rate = 0.0048 above baseline 0.0047"]


def test_the_shipped_baseline_gates_every_metric_but_latency():
    """A metric left out of the baseline is not gated at all; latency depends on the machine."""
    base = read_baseline(DEFAULT_BASELINE)
    assert base["set"] == "evals/questions.jsonl"
    assert set(GATED_METRICS) <= set(base["metrics"]), set(GATED_METRICS) - set(base["metrics"])
    assert {"hit@1", "hit@3", "mrr@10", "numeric_faithfulness"} <= set(GATED_METRICS)
    assert not set(MACHINE_METRICS) & set(base["metrics"])


def test_an_unmeasured_metric_fails_the_command(set_file, tmp_path, capsys, monkeypatch):
    """End to end: with the number extractor broken, `gistqa eval` exits 1 against a baseline that
    holds numeric faithfulness, instead of printing "—" and passing."""
    import evals.metrics

    monkeypatch.setattr(evals.metrics, "answer_number_faithfulness", lambda *a: (0, 0))
    base = write_baseline(tmp_path, str(set_file), numeric_faithfulness=1.0)
    assert run_cli(set_file, tmp_path / "out", 10, base, None, None) == 1
    assert "numeric_faithfulness = — not measured" in capsys.readouterr().out


def test_history_only_items_need_their_history(bot):
    """The items tagged history_only are answered right with their history and wrong without it
    (refused, or the standalone reading's text is forbidden): the set notices a bot that ignores history."""
    from evals.metrics import Sources, score_answer
    from evals.runner import DEFAULT_SET

    items = [i for i in load_set(DEFAULT_SET) if "history_only" in i.tags]
    assert len(items) >= 8
    sources = Sources.from_index(bot._ensure_loaded())
    for item in items:
        assert item.history and item.must_not_include, item.id
        with_history = score_answer(item, bot.answer(item.question, history=item.history), sources, 10)
        alone = score_answer(item, bot.answer(item.question), sources, 10)
        assert with_history.problems() == [], (item.id, with_history.problems())
        assert not alone.correct, (item.id, "answered right without its history")
