"""Feedback from the chat page: one JSON line per thumb, appended, summarised by `gistqa feedback`."""
from __future__ import annotations

import json
import os
import subprocess
import threading
from datetime import datetime
from pathlib import Path

import pytest

from bot.feedback import read_feedback, save_feedback, summarise

REPO = Path(__file__).resolve().parents[2]


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_vote_is_one_json_line_with_time_question_answer_rating_comment(tmp_path):
    path = tmp_path / "deep" / "er" / "feedback.jsonl"  # the folders do not exist yet
    save_feedback(path, "辅助治疗用多大剂量？", "- **专家推荐**：「400 mg」", "up", "清楚")
    [record] = _lines(path)
    assert set(record) == {"time", "question", "answer", "rating", "comment"}
    assert record["question"] == "辅助治疗用多大剂量？"
    assert record["answer"] == "- **专家推荐**：「400 mg」"
    assert (record["rating"], record["comment"]) == ("up", "清楚")
    assert datetime.fromisoformat(record["time"]).tzinfo is not None


def test_votes_are_appended_and_earlier_lines_kept(tmp_path):
    path = tmp_path / "feedback.jsonl"
    save_feedback(path, "问1", "答1", "up")
    save_feedback(path, "问2\n第二行", "答2", "down", "多行\n评论")
    records = _lines(path)
    assert [r["question"] for r in records] == ["问1", "问2\n第二行"]
    assert records[1]["comment"] == "多行\n评论"
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2  # newlines stay inside their JSON strings


def test_a_rating_other_than_up_or_down_is_refused(tmp_path):
    path = tmp_path / "feedback.jsonl"
    with pytest.raises(ValueError):
        save_feedback(path, "问", "答", "meh")
    assert not path.exists()


def test_many_threads_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "feedback.jsonl"
    threads = [threading.Thread(target=lambda i=i: [save_feedback(path, f"问题{i}-{k}", "答" * 500, "up" if k % 2 else "down")
                                                    for k in range(20)]) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    records, broken = read_feedback(path)
    assert broken == 0
    assert len(records) == 160
    assert len({r["question"] for r in records}) == 160


def test_a_line_cut_short_by_a_crash_is_kept_and_the_next_vote_starts_a_new_line(tmp_path):
    path = tmp_path / "feedback.jsonl"
    save_feedback(path, "问1", "答1", "up")
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"time": "2025-01-01T00:00:00+00:00", "question": "半')  # no newline: a writer died
    save_feedback(path, "问2", "答2", "down")
    raw = path.read_text(encoding="utf-8").splitlines()
    assert len(raw) == 3 and raw[1].endswith("半")
    records, broken = read_feedback(path)
    assert [r["question"] for r in records] == ["问1", "问2"]
    assert broken == 1


def test_summary_counts_share_and_latest_thumbs_down_with_comments(tmp_path):
    path = tmp_path / "feedback.jsonl"
    for i in range(3):
        save_feedback(path, f"好问题{i}", "答", "up")
    for i in range(7):
        save_feedback(path, f"差问题{i}", "答", "down", f"评论{i}" if i % 2 == 0 else "")
    text = summarise(path)
    assert "总数 (total): 10" in text
    assert "(up): 3" in text and "(down): 7" in text
    assert "30%" in text
    shown = [i for i in range(7) if f"差问题{i}" in text]
    assert shown == [2, 3, 4, 5, 6]  # the last five thumbs down
    assert text.index("差问题6") < text.index("差问题2")  # newest first
    assert "评论6" in text and "评论4" in text
    assert "（无 / none）" in text  # a thumbs down without a comment says so
    assert "跳过" not in text


def test_summary_skips_broken_lines_and_says_how_many(tmp_path):
    path = tmp_path / "feedback.jsonl"
    save_feedback(path, "问1", "答", "up")
    with open(path, "a", encoding="utf-8") as f:
        f.write("not json at all\n")
        f.write('{"question": "没有评分"}\n')
        f.write("\n")
    save_feedback(path, "问2", "答", "down", "不对")
    text = summarise(path)
    assert "跳过 2 行" in text and "skipped 2 broken lines" in text
    assert "总数 (total): 2" in text and "50%" in text
    assert "问2" in text and "不对" in text


def test_summary_of_a_missing_file_says_there_is_no_feedback_yet(tmp_path):
    path = tmp_path / "nothing.jsonl"
    text = summarise(path)
    assert "还没有反馈" in text and "no feedback yet" in text and str(path) in text


def test_summary_of_a_file_with_only_broken_lines(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_text("{oops\n", encoding="utf-8")
    text = summarise(path)
    assert "跳过 1 行" in text and "没有可用的反馈" in text


def test_gistqa_feedback_prints_the_summary(tmp_path):
    path = tmp_path / "fb.jsonl"
    save_feedback(path, "命令行问题", "答", "down", "命令行评论")
    run = subprocess.run([str(REPO / ".venv" / "bin" / "gistqa"), "feedback"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "GISTQA_FEEDBACK_PATH": str(path)})
    assert run.returncode == 0, run.stderr
    assert "总数 (total): 1" in run.stdout and "命令行评论" in run.stdout
