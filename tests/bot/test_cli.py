"""The real `gistqa` command, as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import REPO

GISTQA = str(REPO / ".venv" / "bin" / "gistqa")


def run(*args, env=None):
    return subprocess.run([GISTQA, *args], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, **(env or {})})


def test_ask_json_has_the_documented_fields(built_index):
    proc = run("ask", "KIT exon 9突变患者辅助治疗用多大剂量？", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"question", "answer", "refused", "quotes", "passages", "timing_ms"} <= set(data)
    assert data["refused"] is False
    q = data["quotes"][0]
    assert {"text", "doc_id", "section", "start", "end", "kind", "verified"} <= set(q)
    p = data["passages"][0]
    assert {"doc_id", "section", "text", "score", "rank"} <= set(p)


def test_ask_with_history(built_index):
    """The same words answer differently with the earlier question: "专家投票结果如何？" alone is read
    as the first item of the vote table; after a question on recurrence during adjuvant therapy, it is
    that setting's item (4)."""
    question, earlier = "专家投票结果如何？", "辅助治疗期间复发应该怎么办？"
    alone = json.loads(run("ask", question, "--json").stdout)
    follow = json.loads(run("ask", question, "--history", earlier, "--json").stdout)
    assert not follow["refused"] and follow["vote"]["number"] == 4
    assert "辅助治疗过程中" in follow["answer"]
    assert alone["refused"] or (alone["vote"] or {}).get("number") != 4
    assert follow["answer"] != alone["answer"]
    bare = json.loads(run("ask", "那复发以后呢？", "--history", "KIT exon 9突变患者辅助治疗用多大剂量？", "--json").stdout)
    assert not bare["refused"] and any("复发" in q["section"] for q in bare["quotes"])


def test_empty_question_message_without_traceback(built_index):
    proc = run("ask", "   ")
    assert proc.returncode == 2
    assert "为空" in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_index_message_names_rebuild(copy_of_index):
    from indexer.store import current_build_dir

    build = current_build_dir(copy_of_index.index_dir)
    (build / "dense.faiss").write_bytes(b"garbage")
    env = {"GISTQA_INDEX_DIR": str(copy_of_index.index_dir)}
    proc = run("ask", "伊马替尼剂量？", env=env)
    assert proc.returncode == 2 and "gistqa index --rebuild" in proc.stderr and "Traceback" not in proc.stderr
    verify = run("index", "--verify", env=env)
    assert verify.returncode == 2 and "dense.faiss" in verify.stderr
    fixed = run("index", "--rebuild", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert run("index", "--verify", env=env).returncode == 0


def test_config_prints_settings_without_secrets(built_index):
    proc = run("config", env={"GISTQA_LLM_API_KEY": "sk-secret-123"})
    data = json.loads(proc.stdout)
    assert data["host"] == "127.0.0.1" and data["share"] is False
    assert "sk-secret-123" not in proc.stdout
    # "0 = decide for me" is printed next to what was decided: one answer process gets every core.
    assert data["encoder_threads"] == 0 and data["workers"] == 1
    assert data["resolved"]["encoder_threads"] == data["resolved"]["usable_cores"] >= 1
