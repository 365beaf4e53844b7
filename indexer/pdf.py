"""PDF full texts a user is entitled to add: text per page, repaired like the consensus, pages kept.

The document's text is the pages' repaired text joined by blank lines; `meta["page_spans"]` keeps
[start, end, page] for each page so a passage (and a quote from it) can cite its page.
"""
from __future__ import annotations

import io
import logging

from indexer.clean import clean_extracted_text
from indexer.load import CorpusFileError, read_sidecar, sha256_bytes
from indexer.types import Document

# pypdf logs every odd object it meets; the user gets one clear message per file instead.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def load_pdf_document(path, rel: str, data: bytes) -> Document:
    import pypdf
    from pypdf.errors import PdfReadError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception:
                ok = 0
            if not ok:
                raise CorpusFileError("PDF 已加密，无法读取；请提供未加密的文件 (encrypted PDF)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except CorpusFileError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, IndexError) as err:
        raise CorpusFileError(f"PDF 文件损坏或无法解析 (corrupt PDF): {type(err).__name__}: {err}") from None
    if not pages:
        raise CorpusFileError("PDF 没有页面 (no pages)")
    parts, spans, pos = [], [], 0
    for number, raw in enumerate(pages, start=1):
        text = clean_extracted_text(raw).strip() if raw.strip() else ""
        if not text:
            continue
        if parts:
            pos += 2  # the blank line between pages
        spans.append([pos, pos + len(text), number])
        parts.append(text)
        pos += len(text)
    if not parts:
        raise CorpusFileError("PDF 中没有可提取的文字（可能是扫描图片），请提供文字版或OCR后的文本 (image-only PDF)")
    meta = read_sidecar(path)
    meta["page_spans"] = spans
    meta.setdefault("kind", "reference_fulltext")
    title = str(meta.get("title") or path.stem)
    doc_id = str(meta.get("doc_id") or rel.rsplit(".", 1)[0])
    return Document(doc_id=doc_id, path=rel, kind=meta["kind"], title=title, text="\n\n".join(parts) + "\n",
                    sha256=sha256_bytes(data + repr(sorted((k, str(v)) for k, v in meta.items())).encode()), meta=meta)
