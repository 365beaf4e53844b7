"""Users' own reference files (PDF, TXT, Markdown) and the problems issue 5 lists, each named."""
from __future__ import annotations

import io
import shutil

import pypdf
import pytest
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from indexer.build import build_index
from indexer.load import load_corpus
from indexer.store import load_build
from tests.conftest import REPO

pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))  # built into reportlab: no font file


def make_pdf(pages: list[list[str]]) -> bytes:
    """A real PDF with Chinese text, one list of printed lines per page."""
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    for lines in pages:
        c.setFont("STSong-Light", 11)
        for i, line in enumerate(lines):
            c.drawString(40, 800 - 16 * i, line)
        c.showPage()
    c.save()
    return buf.getvalue()


PAGE1 = ["本研究为欧洲多中心回顾性研究，纳入185例接受手术切除的", "KIT exon 9突变胃肠间质瘤患者。"]
PAGE2 = ["结论：与400 mg相比，800 mg伊马替尼辅助治疗并未改善无复发", "生存或总生存。"]


@pytest.fixture
def corpus_with_consensus(tmp_settings):
    shutil.copy(REPO / "corpus" / "consensus_kit_exon9.md", tmp_settings.corpus_dir)
    return tmp_settings


def test_pdf_full_text_is_cleaned_indexed_and_cited_by_page(corpus_with_consensus):
    s = corpus_with_consensus
    (s.corpus_dir / "vincenzi.pdf").write_bytes(make_pdf([PAGE1, PAGE2]))
    (s.corpus_dir / "vincenzi.pdf.yaml").write_text("slot: 16\ntitle: Vincenzi 2022\n", encoding="utf-8")
    report = build_index(s)
    assert report.problems == []
    index = load_build(s.index_dir)
    full = [p for p in index.passages if p.doc_kind == "reference_fulltext"]
    assert full and all(p.ref_slot == 16 for p in full)
    doc = index.documents[full[0].doc_id]
    # CJK line joining: the printed line break inside the sentence is gone, no space added.
    assert "纳入185例接受手术切除的KIT exon 9突变胃肠间质瘤患者。" in doc.text
    assert "无复发生存或总生存。" in doc.text
    conclusion = next(p for p in full if "结论" in p.text)
    assert conclusion.page == 2 and full[0].page == 1
    assert doc.text[conclusion.start : conclusion.end] == conclusion.text

    from bot.answer import Bot

    answer = Bot(s).answer("文献16的全文结论是什么？")
    assert not answer.refused
    page_quotes = [q for q in answer.quotes if q.doc_id == full[0].doc_id]
    assert page_quotes and page_quotes[0].page in (1, 2)
    assert "第2页" in answer.answer or "第1页" in answer.answer


def _problems(settings) -> dict[str, str]:
    _, problems = load_corpus(settings.corpus_dir)
    return {p.path: p.message for p in problems}


def test_encrypted_image_only_corrupt_and_empty_pdfs_are_named(corpus_with_consensus):
    s = corpus_with_consensus
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf([PAGE1]))))
    writer.encrypt("secret")
    buf = io.BytesIO()
    writer.write(buf)
    (s.corpus_dir / "locked.pdf").write_bytes(buf.getvalue())
    img = io.BytesIO()
    c = canvas.Canvas(img)
    c.rect(50, 50, 200, 200, fill=1)  # a drawing, no text: what a scanned page gives
    c.showPage()
    c.save()
    (s.corpus_dir / "scan.pdf").write_bytes(img.getvalue())
    (s.corpus_dir / "broken.pdf").write_bytes(make_pdf([PAGE1])[:300])
    (s.corpus_dir / "empty.txt").write_text("", encoding="utf-8")
    (s.corpus_dir / "gbk.txt").write_bytes("伊马替尼辅助治疗。".encode("gbk"))
    problems = _problems(s)
    assert "加密" in problems["locked.pdf"]
    assert "图片" in problems["scan.pdf"] or "文字" in problems["scan.pdf"]
    assert "损坏" in problems["broken.pdf"]
    assert "空" in problems["empty.txt"]
    assert "GBK" in problems["gbk.txt"]
    report = build_index(s)  # the rest is still indexed
    assert report.documents == 1 and report.passages > 10


def test_two_files_claiming_one_slot_and_a_slot_not_cited(corpus_with_consensus):
    s = corpus_with_consensus
    for name in ("a.txt", "b.txt"):
        (s.corpus_dir / name).write_text("800 mg并不优于400 mg。\n", encoding="utf-8")
        (s.corpus_dir / f"{name}.yaml").write_text("slot: 16\n", encoding="utf-8")
    (s.corpus_dir / "c.md").write_text("---\nslot: 42\n---\n某文献正文。\n", encoding="utf-8")
    problems = _problems(s)
    assert "a.txt" not in problems
    assert "b.txt" in problems and "a.txt" in problems["b.txt"] and "16" in problems["b.txt"]
    assert "42" in problems["c.md"] and "没有引用" in problems["c.md"]
