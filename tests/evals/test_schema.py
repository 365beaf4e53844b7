"""The evaluation set's format: a bad line is reported with its file, line number and field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.schema import EvalSetError, Item, load_set
from indexer.settings import REPO_ROOT

GOOD = {"id": "q1", "question": "KIT exon 9突变占比？", "expect": "answer", "must_include_any": [["6%~9%"]]}


def write_set(tmp_path: Path, *lines) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l, ensure_ascii=False) for l in lines) + "\n",
                    encoding="utf-8")
    return path


def problems_of(path) -> list[str]:
    with pytest.raises(EvalSetError) as e:
        load_set(path)
    assert isinstance(e.value, ValueError)
    return e.value.problems


def test_a_good_item_gets_the_defaults(tmp_path):
    [item] = load_set(write_set(tmp_path, GOOD))
    assert item == Item(id="q1", question="KIT exon 9突变占比？", expect="answer", must_include_any=[["6%~9%"]])
    assert item.history == [] and item.must_not_include == [] and item.gold == [] and item.tags == []


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    path = write_set(tmp_path, GOOD, "", "   ", {**GOOD, "id": "q2", "expect": "maybe"})
    assert problems_of(path) == [f"{path} line 4: field 'expect': Input should be 'answer' or 'refuse' (got 'maybe')"]


def test_invalid_json_names_the_line(tmp_path):
    path = write_set(tmp_path, GOOD, '{"id": "q2", "question": "x",', {**GOOD, "id": "q3"})
    [problem] = problems_of(path)
    assert problem.startswith(f"{path} line 2: invalid JSON:")


def test_a_line_that_is_not_an_object(tmp_path):
    path = write_set(tmp_path, GOOD, '["q2", "x"]')
    assert problems_of(path) == [f"{path} line 2: expected a JSON object, got list"]


def test_missing_field(tmp_path):
    item = dict(GOOD)
    del item["expect"]
    assert problems_of(write_set(tmp_path, item)) == [f"{tmp_path / 'questions.jsonl'} line 1: field 'expect': Field required"]


def test_extra_key_is_forbidden(tmp_path):
    [problem] = problems_of(write_set(tmp_path, {**GOOD, "answer": "6%~9%"}))
    assert "questions.jsonl line 1: field 'answer': Extra inputs are not permitted" in problem


def test_wrong_type_deep_inside_a_group_names_the_position(tmp_path):
    [problem] = problems_of(write_set(tmp_path, {**GOOD, "must_include_any": [["6%~9%", 6]]}))
    assert "line 1: field 'must_include_any[0][1]': Input should be a valid string (got 6)" in problem


def test_a_number_is_not_silently_turned_into_an_id(tmp_path):
    [problem] = problems_of(write_set(tmp_path, {**GOOD, "id": 7}))
    assert "line 1: field 'id': Input should be a valid string" in problem


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_set(tmp_path, GOOD, {**GOOD, "id": "q2"}, {**GOOD, "question": "again"})
    assert problems_of(path) == [f"{path} line 3: field 'id': duplicate id 'q1' (first on line 1)"]


def test_an_answer_item_needs_must_include_any(tmp_path):
    path = write_set(tmp_path, {**GOOD, "must_include_any": []})
    [problem] = problems_of(path)
    assert problem.startswith(f"{path} line 1: field 'must_include_any': an 'answer' item needs at least one group")


def test_groups_that_match_nothing_or_everything_are_errors(tmp_path):
    path = write_set(tmp_path, {**GOOD, "must_include_any": [[], ["6%", " "]]})
    assert [p.split(": ", 2)[1] for p in problems_of(path)] == ["field 'must_include_any[0]'", "field 'must_include_any[1][1]'"]


def test_a_refuse_item_needs_no_groups(tmp_path):
    [item] = load_set(write_set(tmp_path, {"id": "r", "question": "天气？", "expect": "refuse", "must_not_include": ["mg"]}))
    assert item.expect == "refuse" and item.must_not_include == ["mg"]


def test_every_problem_is_reported_at_once(tmp_path):
    path = write_set(tmp_path, "{bad", {**GOOD, "expect": "x"}, {**GOOD, "foo": 1})
    assert [p.split(":")[0] for p in problems_of(path)] == [f"{path} line {n}" for n in (1, 2, 3)]


def test_a_missing_file_is_an_eval_set_error(tmp_path):
    [problem] = problems_of(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in problem


def test_an_empty_file_is_an_error(tmp_path):
    assert problems_of(write_set(tmp_path, "")) == [f"{tmp_path / 'questions.jsonl'}: the evaluation set is empty"]


def test_the_shipped_set_is_valid():
    items = load_set(REPO_ROOT / "evals" / "questions.jsonl")
    assert len(items) > 100
    assert {i.expect for i in items} == {"answer", "refuse"}
