"""The page's HTML builders without a browser: markers, sources, reader, faults, mount options."""
from __future__ import annotations

import re

import pytest

from bot.app import (answer_html, answer_segments, answer_plain_text, answer_record, chinese_message, document_html, marker_label,
                     page_mount_options, reader_html, source_entry_html, status_html, transcript_html)

Q_ADJUVANT = "KIT exon 9突变患者辅助治疗用多大剂量？"


@pytest.fixture(scope="module")
def record(bot):
    return answer_record(bot, bot.answer(Q_ADJUVANT, history=[]), [], 1)


def test_markers_are_circled_one_per_source_in_answer_order(record):
    html = answer_html(record)
    shown = re.findall(r'class="gq-mk" data-src="gq-src-1-(\d+)"', html)
    assert [int(n) for n in shown] == [s["n"] for s in record["sources"]]
    assert [marker_label(n) for n in (1, 2, 20, 21)] == ["①", "②", "⑳", "(21)"]
    # a vote item and its options are one source: as many sources as quote blocks
    votes = [s for s in record["sources"] if s["vote"]]
    assert votes and all(len(s["quotes"]) > 1 for s in votes)


@pytest.mark.parametrize("question", [Q_ADJUVANT, "辅助治疗期间复发了，专家投票结果如何？", "文献16讲了什么？"])
def test_each_marker_opens_the_source_that_holds_its_quote(bot, question):
    """The marker after a quote names the source entry whose passage holds that very quote, and the
    source entry the marker links to (data-src) is that source."""
    rec = answer_record(bot, bot.answer(question, history=[]), [], 3)
    by_n = {s["n"]: s for s in rec["sources"]}
    checked = 0
    for _indent, segs, _bullet in answer_segments(rec):
        for kind, text, source in segs:
            if kind != "quote":
                continue
            assert source in by_n, f"「{text[:20]}」 has no source"
            held = [rec["quotes"][i]["text"] for i in by_n[source]["quotes"]]
            assert text in held, f"「{text[:20]}」 marked as source {source}, which holds {held}"
            checked += 1
    assert checked >= 2
    html = answer_html(rec)
    for n in re.findall(r'class="gq-mk" data-src="gq-src-3-(\d+)"', html):
        assert int(n) in by_n


def test_a_streaming_answer_shows_a_prefix_and_no_half_marker(record):
    part = answer_html(record, budget=40)
    assert "gq-mk" not in part or part.count("gq-mk") < answer_html(record).count("gq-mk")
    assert len(re.sub(r"<[^>]+>", "", part)) <= 40 + 4  # the characters shown, plus closing brackets


def test_copy_text_is_plain_with_question_answer_and_sources(record):
    text = answer_plain_text(record)
    assert text.startswith(f"问：{Q_ADJUVANT}\n")
    assert "**" not in text and "<" not in text
    for s in record["sources"]:
        assert f"{marker_label(s['n'])} {s['kind']} · {s['place']}：「{s['text']}」" in text


def test_a_source_whose_passage_is_gone_says_so(bot, record):
    gone = dict(record["sources"][0], passage_id="consensus#p999")
    html = source_entry_html(bot, record, gone)
    assert "已不在当前索引中" in html and f"<mark>{gone['text']}</mark>" in html
    assert "gq-open-reader" not in html  # nothing to open


def test_a_source_with_offsets_from_another_build_is_shown_unhighlighted(bot, record):
    moved = dict(record, quotes=[dict(q, start=q["start"] + 3, end=q["end"] + 3) for q in record["quotes"]])
    source = next(s for s in moved["sources"] if not s["vote"])
    html = source_entry_html(bot, moved, source)
    assert "引用位置无法标出" in html and "<mark>" not in html


def test_the_reader_holds_every_document_and_an_unknown_one_says_so(bot):
    index = bot._ensure_loaded()
    html = reader_html(bot)
    for doc_id in index.documents:
        assert f'data-doc="{doc_id}"' in html
    assert "<table" in html and "作者" not in html or "gq-byline" in html
    missing = document_html(bot, "ref-99")
    assert "找不到文档" in missing and "ref-99" in missing
    # every paragraph's text is the document's text at its offsets
    doc = index.documents["consensus"]
    for s, e, body in re.findall(r'class="gq-para gq-cell" data-pid="[^"]+" data-s="(\d+)" data-e="(\d+)">(.*?)</p>',
                                 document_html(bot, "consensus")):
        import html as h
        assert h.unescape(re.sub(r"</?b>", "", body)) == doc.text[int(s):int(e)]


def test_status_and_errors_are_chinese_only(record):
    assert chinese_message("请输入问题（问题为空） (the question is empty)") == "请输入问题（问题为空）"
    assert "(" not in status_html(error="问题太长 (the question is too long)")
    assert "用时" not in status_html(record) and "not covered" not in status_html(dict(record, refused=True))


def test_the_transcript_is_busy_only_while_an_answer_is_pending_or_streaming(bot, record):
    assert 'data-busy="0"' in transcript_html(bot, [])
    assert 'data-busy="1"' in transcript_html(bot, [{"question": "q", "pending": True}])
    assert 'data-busy="1"' in transcript_html(bot, [{"question": "q", "record": record, "budget": 10}])
    assert 'data-busy="0"' in transcript_html(bot, [{"question": "q", "record": record}])
    assert 'data-busy="0"' in transcript_html(bot, [{"question": "q", "error": "坏了"}])


def test_mount_options_serve_the_page_from_a_fastapi_app(bot):
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from bot.app import build_app

    app = gr.mount_gradio_app(FastAPI(), build_app(bot), path="/", **page_mount_options())
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200
        config = client.get("/config").json()
        assert 'document.documentElement.lang = "zh-CN"' in (config.get("head") or "")  # Gradio puts it in <head>
        assert config.get("footer_links") == []
