"""Read corpus files into Documents. A bad file is reported by name and skipped; the rest load.

Markdown files carry YAML front matter (doc_id, kind, title, ...); offsets of passages refer to the
whole file text, so a citation can be found by opening the file. TXT files are PDF-style extracted
text and are repaired by `clean.clean_extracted_text`; their offsets refer to the repaired text.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from indexer.clean import clean_extracted_text
from indexer.types import Document

SUPPORTED_SUFFIXES = (".md", ".txt", ".pdf")
# Files in the corpus folder that are configuration, not documents.
NOT_DOCUMENTS = {"lexicon.json", "README.md"}
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


@dataclass(frozen=True)
class LoadProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class CorpusFileError(ValueError):
    """A corpus file that cannot be used; the message names the problem in the user's terms."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        hint = ""
        try:
            data.decode("gb18030")
            hint = "看起来是 GBK/GB18030 编码，请另存为 UTF-8 (looks like GBK; save it as UTF-8)"
        except UnicodeDecodeError:
            hint = "请另存为 UTF-8 (save it as UTF-8)"
        raise CorpusFileError(f"不是 UTF-8 文本（第 {err.start} 字节起）; {hint}") from None


def parse_front_matter(text: str) -> tuple[dict, int]:
    """Return (metadata, offset where the body starts)."""
    m = _FRONT_MATTER.match(text)
    if not m:
        return {}, 0
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as err:
        raise CorpusFileError(f"front matter is not valid YAML: {err}") from None
    if not isinstance(meta, dict):
        raise CorpusFileError("front matter must be a mapping of keys to values")
    return meta, m.end()


def read_sidecar(path: Path) -> dict:
    """Metadata for a file without front matter (PDF, TXT): `<file>.yaml` beside it, e.g.
    `vincenzi2022.pdf.yaml` with `slot: 16` and an optional `title`."""
    side = Path(str(path) + ".yaml")
    if not side.is_file():
        return {}
    try:
        meta = yaml.safe_load(side.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CorpusFileError(f"{side.name} is not valid YAML: {err}") from None
    if not isinstance(meta, dict):
        raise CorpusFileError(f"{side.name} must be a mapping of keys to values")
    if "slot" in meta:
        meta.setdefault("kind", "reference_fulltext")
    return meta


def load_document(path: Path, corpus_dir: Path) -> Document:
    rel = path.relative_to(corpus_dir).as_posix()
    data = path.read_bytes()
    if path.suffix.lower() == ".pdf":
        from indexer.pdf import load_pdf_document  # PDF support lives with the PDF library

        return load_pdf_document(path, rel, data)
    raw = decode_text(data).replace("\r\n", "\n").replace("\r", "\n")
    if not raw.strip():
        raise CorpusFileError("文件为空 (empty file)")
    if path.suffix.lower() == ".md":
        meta, _ = parse_front_matter(raw)
        if "slot" in meta:
            meta.setdefault("kind", "reference_fulltext")
        text = raw
    else:
        meta, text = read_sidecar(path), clean_extracted_text(raw)
    sidecar = Path(str(path) + ".yaml")
    if sidecar.is_file():  # metadata is part of what the document is: a changed slot re-indexes it
        data = data + sidecar.read_bytes()
    kind = meta.get("kind", "text")
    if kind not in ("consensus", "reference_card", "reference_fulltext", "text"):
        raise CorpusFileError(f"unknown kind {kind!r} in front matter")
    doc_id = str(meta.get("doc_id") or Path(rel).with_suffix("").as_posix())
    title = str(meta.get("title") or path.stem)
    return Document(doc_id=doc_id, path=rel, kind=kind, title=title, text=text, sha256=sha256_bytes(data), meta=meta)


def corpus_files(corpus_dir: Path) -> list[Path]:
    files = []
    for p in sorted(Path(corpus_dir).rglob("*")):
        if not p.is_file() or p.suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        if p.name in NOT_DOCUMENTS or any(part.startswith((".", "_")) for part in p.relative_to(corpus_dir).parts):
            continue
        files.append(p)
    return files


def load_corpus(corpus_dir: Path) -> tuple[list[Document], list[LoadProblem]]:
    corpus_dir = Path(corpus_dir)
    docs: list[Document] = []
    problems: list[LoadProblem] = []
    if not corpus_dir.is_dir():
        return [], [LoadProblem(str(corpus_dir), "corpus folder does not exist")]
    seen: dict[str, str] = {}
    for path in corpus_files(corpus_dir):
        rel = path.relative_to(corpus_dir).as_posix()
        try:
            doc = load_document(path, corpus_dir)
        except (CorpusFileError, OSError) as err:
            problems.append(LoadProblem(rel, str(err)))
            continue
        if doc.doc_id in seen:
            problems.append(LoadProblem(rel, f"doc_id {doc.doc_id!r} is already used by {seen[doc.doc_id]}; skipped"))
            continue
        seen[doc.doc_id] = rel
        docs.append(doc)
    return check_reference_slots(docs, problems)


def check_reference_slots(docs: list[Document], problems: list[LoadProblem]) -> tuple[list[Document], list[LoadProblem]]:
    """A reference file must name a slot the consensus cites, and one slot has one file of a kind."""
    from indexer.structure import cited_slots  # structure imports this module

    cited: set[int] = set()
    for d in docs:
        if d.kind == "consensus":
            cited.update(cited_slots(d.text))
    kept: list[Document] = []
    owner: dict[tuple[str, int], str] = {}
    for d in docs:
        if d.kind not in ("reference_card", "reference_fulltext"):
            kept.append(d)
            continue
        slot = d.meta.get("slot")
        if not isinstance(slot, int) or isinstance(slot, bool):
            problems.append(LoadProblem(d.path, f"参考文献文件必须给出整数 slot（文献编号），现在是 {slot!r} (missing or non-integer slot)"))
            continue
        if cited and slot not in cited:
            problems.append(LoadProblem(d.path, f"共识没有引用文献［{slot}］（共识引用的是［{min(cited)}］-［{max(cited)}］）(slot not cited)"))
            continue
        key = (d.kind, slot)
        if key in owner:
            problems.append(LoadProblem(d.path, f"文献［{slot}］已由 {owner[key]} 提供；两个文件不能对应同一编号 (two files claim slot {slot}); skipped"))
            continue
        owner[key] = d.path
        kept.append(d)
    return kept, problems
