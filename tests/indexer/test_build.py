"""Index builds: incremental, atomic, checked; bad corpus files are named and skipped."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from indexer.build import build_index
from indexer.store import IndexCorrupt, IndexMissing, current_build_dir, load_build, read_manifest, verify_files

DOC = """---
doc_id: {doc_id}
kind: text
title: {title}
---
# {title}

{body}
"""


def _write(corpus: Path, name: str, doc_id: str, body: str) -> None:
    (corpus / name).write_text(DOC.format(doc_id=doc_id, title=doc_id, body=body), encoding="utf-8")


def test_unchanged_corpus_does_no_work_and_changed_file_embeds_only_itself(tmp_settings):
    corpus = tmp_settings.corpus_dir
    _write(corpus, "a.md", "a", "伊马替尼是一种酪氨酸激酶抑制剂。它用于治疗胃肠间质瘤。")
    _write(corpus, "b.md", "b", "舒尼替尼用于二线治疗。")
    first = build_index(tmp_settings)
    assert not first.noop and first.embedded > 0 and first.reused == 0
    second = build_index(tmp_settings)
    assert second.noop and second.embedded == 0
    _write(corpus, "b.md", "b", "舒尼替尼用于二线治疗。新增一句话。")
    third = build_index(tmp_settings)
    assert not third.noop
    # Only the new passage text and the new sentence are embedded; file a is reused entirely.
    assert third.embedded == 2
    assert third.reused >= 3


def test_bad_files_are_named_and_the_rest_is_indexed(tmp_settings):
    corpus = tmp_settings.corpus_dir
    _write(corpus, "good.md", "good", "伊马替尼400 mg辅助治疗。")
    (corpus / "empty.md").write_text("", encoding="utf-8")
    (corpus / "gbk.txt").write_bytes("伊马替尼的剂量为每日400毫克。".encode("gbk"))
    (corpus / "broken.md").write_text("---\ndoc_id: [unclosed\n---\n正文。", encoding="utf-8")
    report = build_index(tmp_settings)
    problems = {p.path: p.message for p in report.problems}
    assert set(problems) == {"empty.md", "gbk.txt", "broken.md"}
    assert "empty" in problems["empty.md"]
    assert "UTF-8" in problems["gbk.txt"] and "GBK" in problems["gbk.txt"]
    assert "YAML" in problems["broken.md"]
    assert report.documents == 1 and report.passages >= 1


def test_missing_index_message_says_how(tmp_settings):
    with pytest.raises(IndexMissing, match="gistqa index"):
        load_build(tmp_settings.index_dir)


@pytest.mark.parametrize("victim", ["dense.faiss", "passage_vectors.npy", "passages.jsonl", "lexical/vocab.index.json"])
def test_truncated_file_is_detected_and_names_the_fix(copy_of_index, victim):
    build = current_build_dir(copy_of_index.index_dir)
    path = build / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorrupt) as info:
        load_build(copy_of_index.index_dir)
    assert victim in str(info.value) and "gistqa index --rebuild" in str(info.value)


def test_altered_byte_is_detected(copy_of_index):
    build = current_build_dir(copy_of_index.index_dir)
    path = build / "documents.jsonl"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    assert verify_files(build, read_manifest(build)) == ["documents.jsonl (checksum differs)"]


def test_a_tampered_file_that_still_reads_is_refused_on_load(copy_of_index):
    """A dose changed in the stored passages (400 -> 800: same size, valid JSON, a quote of it would
    pass every later check) is caught by its checksum when the index is loaded, not only by `--verify`."""
    build = current_build_dir(copy_of_index.index_dir)
    path = build / "passages.jsonl"
    data = path.read_bytes()
    assert b"400 mg" in data
    path.write_bytes(data.replace(b"400 mg", b"800 mg", 1))
    with pytest.raises(IndexCorrupt) as info:
        load_build(copy_of_index.index_dir)
    assert "passages.jsonl (checksum differs)" in str(info.value) and "gistqa index --rebuild" in str(info.value)


def test_corrupt_manifest_is_detected(copy_of_index):
    build = current_build_dir(copy_of_index.index_dir)
    (build / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(IndexCorrupt, match="rebuild"):
        load_build(copy_of_index.index_dir)


def test_crash_mid_write_leaves_previous_index_usable(tmp_settings, monkeypatch):
    corpus = tmp_settings.corpus_dir
    _write(corpus, "a.md", "a", "伊马替尼400 mg辅助治疗。")
    build_index(tmp_settings)
    before = current_build_dir(tmp_settings.index_dir)
    _write(corpus, "a.md", "a", "伊马替尼600 mg。")

    import indexer.store as store

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(store.faiss if hasattr(store, "faiss") else __import__("faiss"), "write_index", crash)
    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_settings)
    monkeypatch.undo()
    assert current_build_dir(tmp_settings.index_dir) == before
    assert "400 mg" in load_build(tmp_settings.index_dir).passages[0].text
    assert not list((Path(tmp_settings.index_dir) / "builds").glob(".tmp-*"))
    after = build_index(tmp_settings)
    assert not after.noop and "600 mg" in load_build(tmp_settings.index_dir).passages[0].text


def test_index_built_with_another_model_is_refused(copy_of_index, tmp_path):
    """A second real model folder (same weights, different prompt config) has another fingerprint."""
    from bot.answer import Bot
    from indexer.e5_model import ensure_default_model
    from indexer.store import IndexModelMismatch

    default = ensure_default_model(copy_of_index)
    other = tmp_path / "other-model"
    other.mkdir()
    for item in default.iterdir():
        if item.name in ("gistqa_model.json", "config_sentence_transformers.json"):
            continue
        os.symlink(item, other / item.name)
    cfg = json.loads((default / "config_sentence_transformers.json").read_text())
    cfg["prompts"] = {"query": "q: ", "passage": "p: "}
    (other / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    settings = copy_of_index.model_copy(update={"model_path": other})
    with pytest.raises(IndexModelMismatch, match="gistqa index --rebuild"):
        Bot(settings).answer("伊马替尼的剂量？")


def test_manifest_records_model_corpus_and_versions(built_index):
    m = read_manifest(current_build_dir(built_index))
    assert m["model"]["fingerprint"] and m["model"]["dim"] == 384
    assert "consensus_kit_exon9.md" in m["corpus"]
    assert {"python", "faiss", "sentence_transformers", "chunker"} <= set(m["versions"])
    assert all(len(v["sha256"]) == 64 for v in m["files"].values())


def test_no_pickle_in_index(built_index):
    build = current_build_dir(built_index)
    for path in build.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80\x04"), f"{path} looks like a pickle"
