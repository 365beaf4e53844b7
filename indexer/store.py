"""The index on disk: plain files a person can inspect, no pickle.

    <index_dir>/CURRENT                  name of the build in use (replaced atomically)
    <index_dir>/builds/<name>/manifest.json      model fingerprint, corpus hashes, versions, checksums
                              documents.jsonl    document texts (quotes are verified against these)
                              passages.jsonl     passages with section path, offsets, citations, concepts
                              sentences.npy      sentences as (passage row, index, start, end); text = document slice
                              passage_vectors.npy, sentence_vectors.npy   float32, L2-normalised
                              dense.faiss        FAISS index over passage vectors (FAISS's own format)
                              lexical/           bm25s index (JSON + numpy arrays)

A build is written to a fresh folder and only then named in CURRENT, so a crash at any point
leaves the previous index in use.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from indexer.checksums import read_stamp, sha256_file, unchanged_since_stamp, write_stamp
from indexer.lexicon import normalize_for_match
from indexer.types import Document, Passage, Sentence, VoteItem, VoteOption

FORMAT_VERSION = 4  # 2: corpus_norm.txt; 3: sentences.npy; 4: a passage's text only when not its document's slice
# HNSW search breadth: measured recall@10 against exact search at 100k synthetic passages was
# 0.78 at FAISS's default 16, 0.99 at 128 and 0.998 at 256 (under 1 ms a query).
HNSW_EF_SEARCH = 256
REBUILD_HINT = "运行 `gistqa index --rebuild` 重建索引 (run `gistqa index --rebuild`)"


class IndexError_(RuntimeError):
    """Base of the index problems a user can act on; the message says what to do."""


class IndexMissing(IndexError_):
    pass


class IndexCorrupt(IndexError_):
    pass


class IndexModelMismatch(IndexError_):
    pass


def text_key(text: str) -> str:
    """Key of an embedding cache entry: the exact text embedded."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    """All rows at once: one JSON array parsed by orjson from the file's bytes (json.loads line by
    line cost ~7 s for the 200k rows of a 100k-passage index, the stdlib on one array ~1.1 s with
    decoding, orjson ~0.4 s). json.dumps never writes a raw newline inside a row."""
    import orjson

    data = path.read_bytes().strip()  # orjson's errors are json.JSONDecodeError (ValueError) too
    return orjson.loads(b"[" + data.replace(b"\n", b",") + b"]") if data else []


def _frozen(cls, fields: dict):
    """A frozen dataclass instance from a stored row without its __init__: a frozen __init__ sets
    each field through object.__setattr__ (~3 s for 360k sentences). The rows were written from
    such instances by `write_build` and their files are checksummed, so there is nothing to check."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def passage_from_dict(d: dict) -> Passage:
    vote = d.get("vote")
    if vote:
        vote = VoteItem(
            vote["number"], vote["question"], vote["start"], vote["end"],
            tuple(VoteOption(**o) for o in vote["options"]),
        )
    # The fields in Passage's own order (so a stored passage equals a built one, repr and all).
    return _frozen(Passage, {
        "passage_id": d["passage_id"], "doc_id": d["doc_id"], "doc_kind": d["doc_kind"], "doc_title": d["doc_title"],
        "section_path": tuple(d["section_path"]), "evidence_kind": d["evidence_kind"], "paragraph": d["paragraph"],
        "start": d["start"], "end": d["end"], "text": d["text"], "page": d.get("page"),
        "cites": tuple(d.get("cites", ())), "ref_slot": d.get("ref_slot"), "vote": vote,
    })


@dataclass
class BuildContent:
    """Everything one build writes, in memory."""

    documents: list[Document]
    passages: list[Passage]
    sentences: list[Sentence]
    passage_concepts: list[list[str]]
    passage_vectors: np.ndarray
    sentence_vectors: np.ndarray
    lexical_tokens: list[list[str]]
    manifest: dict = field(default_factory=dict)


def current_build_dir(index_dir: Path) -> Path | None:
    pointer = Path(index_dir) / "CURRENT"
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = Path(index_dir) / "builds" / name
    return path if name and path.is_dir() else None


def read_manifest(build_dir: Path) -> dict:
    path = build_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexCorrupt(f"索引清单损坏: {path} ({err}). {REBUILD_HINT}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int) for v in files.values()
    ):
        raise IndexCorrupt(f"索引清单格式不对: {path}. {REBUILD_HINT}")
    return manifest


def verify_files(build_dir: Path, manifest: dict, full: bool = True) -> list[str]:
    """Names of files whose size or sha256 differs from the manifest (empty list: all intact).

    ``full=False`` (every load) skips hashing a file whose size and mtime are those recorded when
    its checksum last matched: at 100k passages the files hold ~800 MB, ~2 s of sha256 on each
    start. Any write to a file changes its mtime, so damage is still hashed and found.
    `gistqa index --verify` and the build's reuse check hash everything.
    """
    bad = []
    stamp = {} if full else read_stamp(build_dir)
    hashed = False
    for rel, info in manifest.get("files", {}).items():
        path = build_dir / rel
        if not path.is_file():
            bad.append(f"{rel} (missing)")
        elif path.stat().st_size != info["bytes"]:
            bad.append(f"{rel} (size {path.stat().st_size}, expected {info['bytes']})")
        elif unchanged_since_stamp(stamp, build_dir, rel):
            continue
        elif sha256_file(path) != info["sha256"]:
            bad.append(f"{rel} (checksum differs)")
        else:
            hashed = True
    if hashed and not bad:
        write_stamp(build_dir, manifest.get("files", {}))
    return bad


def write_build(index_dir: Path, content: BuildContent, exact_search_max: int) -> Path:
    """Write a complete build into a new folder, then point CURRENT at it; returns the folder."""
    import bm25s
    import faiss

    index_dir = Path(index_dir)
    builds = index_dir / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{time.monotonic_ns() % 10**6:06d}"
    tmp = builds / f".tmp-{name}"
    tmp.mkdir()
    try:
        _write_jsonl(tmp / "documents.jsonl", (asdict(d) for d in content.documents))
        text_of = {d.doc_id: d.text for d in content.documents}
        _write_jsonl(
            tmp / "passages.jsonl",
            (_passage_row(p, c, text_of) for p, c in zip(content.passages, content.passage_concepts)),
        )
        np.save(tmp / "sentences.npy", sentence_rows(content.passages, content.sentences, content.documents),
                allow_pickle=False)
        # What answering matches question words against, normalised here once: at 100k passages
        # OpenCC and NFKC took ~20 s on every start.
        (tmp / "corpus_norm.txt").write_text(
            normalize_for_match("\n".join(p.text for p in content.passages)), encoding="utf-8")
        np.save(tmp / "passage_vectors.npy", content.passage_vectors, allow_pickle=False)
        np.save(tmp / "sentence_vectors.npy", content.sentence_vectors, allow_pickle=False)
        faiss.write_index(make_dense_index(content.passage_vectors, exact_search_max), str(tmp / "dense.faiss"))
        bm25 = bm25s.BM25()
        bm25.index(content.lexical_tokens or [[""]], show_progress=False)
        bm25.save(str(tmp / "lexical"), show_progress=False)
        files = {}
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                files[path.relative_to(tmp).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {**content.manifest, "format_version": FORMAT_VERSION, "build": name, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        _fsync_tree(tmp)
        write_stamp(tmp, files)  # just hashed: the first load need not hash again
        previous = current_build_dir(index_dir)
        final = builds / name
        os.rename(tmp, final)
        _point_current(index_dir, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Keep the new build and the one readers were using (not merely the newest-named orphan).
    _remove_old_builds(builds, keep={name} | ({previous.name} if previous else set()))
    return builds / name


def make_dense_index(vectors: np.ndarray, exact_search_max: int):
    """Exact inner product for a corpus this size; an HNSW graph past `exact_search_max` vectors."""
    import faiss

    dim = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[0] else 384
    if len(vectors) > exact_search_max:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(vectors)
    return index


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _point_current(index_dir: Path, name: str) -> None:
    tmp = index_dir / f".CURRENT.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, index_dir / "CURRENT")  # atomic on POSIX: readers see the old or the new name


def _remove_old_builds(builds: Path, keep: set[str]) -> None:
    """Keep the new build and the one before it (a reader may still have it open)."""
    for old in builds.iterdir():
        if old.is_dir() and not old.name.startswith(".tmp-") and old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    # Leftovers of builds that were killed mid-write.
    for tmp in builds.glob(".tmp-*"):
        pid = tmp.name.split("-")[-2] if tmp.name.count("-") >= 4 else ""
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


SENTENCE_COLUMNS = ("passage_row", "index", "start", "end")


def sentence_rows(passages: list[Passage], sentences: list[Sentence], documents: list[Document]) -> np.ndarray:
    """Sentences as an int64 matrix, one row (passage row, index in passage, start, end) each.
    A sentence is stored by its offsets only, so its text must be its document's slice."""
    row_of = {p.passage_id: i for i, p in enumerate(passages)}
    text_of = {d.doc_id: d.text for d in documents}
    rows = np.zeros((len(sentences), len(SENTENCE_COLUMNS)), dtype=np.int64)
    for j, s in enumerate(sentences):
        passage = passages[row_of[s.passage_id]]
        if text_of[passage.doc_id][s.start:s.end] != s.text:
            raise ValueError(f"sentence {s.passage_id}/{s.index} is not its document's text at {s.start}-{s.end}")
        rows[j] = (row_of[s.passage_id], s.index, s.start, s.end)
    return rows


def _passage_row(p: Passage, concepts: list[str], text_of: dict[str, str]) -> dict:
    """A passage as stored: its text is left out when it is its document's slice (it nearly always
    is), which takes a third off the JSON a 100k-passage index parses at each start."""
    row = {**asdict(p), "concepts": concepts}
    if text_of[p.doc_id][p.start:p.end] == p.text:
        del row["text"]
    return row


class SentenceTable(Sequence):
    """The index's sentences, made on access from their offsets and the documents' text.

    A 100k-passage index holds ~360k sentences: parsing them from JSON and making every object
    took ~5 s of each start; a sentence is needed only when its passage is scored. The text is the
    document's slice at the sentence's offsets, which is what the sentence is (the build cuts it so;
    quotes are verified against the same slices).
    """

    def __init__(self, rows: np.ndarray, passages: list[Passage], documents: dict):
        if rows.ndim != 2 or rows.shape[1] != len(SENTENCE_COLUMNS) or (len(rows) and (
                rows[:, 0].min() < 0 or rows[:, 0].max() >= len(passages))):
            raise ValueError(f"sentences.npy has the wrong shape or passage rows: {rows.shape}")
        self._rows = rows
        self._passages = passages
        self._documents = documents
        self.passage_rows = np.ascontiguousarray(rows[:, 0])

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        passage_row, index, start, end = self._rows[j].tolist()
        passage = self._passages[passage_row]
        return _frozen(Sentence, {"passage_id": passage.passage_id, "index": index, "start": start, "end": end,
                                  "text": self._documents[passage.doc_id].text[start:end]})


@dataclass
class StoredIndex:
    build_dir: Path
    manifest: dict
    documents: dict[str, Document]
    passages: list[Passage]
    passage_concepts: list[frozenset[str]]
    sentences: SentenceTable
    sentence_passage: np.ndarray  # row of sentences -> row of its passage
    passage_sentences: list[list[int]]  # row of passage -> rows of its sentences
    passage_vectors: np.ndarray
    sentence_vectors: np.ndarray
    dense: object  # faiss index
    lexical: object  # bm25s.BM25
    passage_by_id: dict = field(default_factory=dict)  # passage_id -> Passage (verification looks up by id)
    slot_rows: dict = field(default_factory=dict)  # reference slot -> rows of its card / full-text passages
    slot_records: dict = field(default_factory=dict)  # reference slot -> its card's candidate-record passage
    corpus_norm: str = ""  # normalize_for_match of the passages' text joined by newlines (built once)


def load_build(index_dir: Path, verify: bool = True) -> StoredIndex:
    """The current build, checked, in memory (vectors memory-mapped)."""
    # Hundreds of thousands of new objects trigger the cyclic garbage collector again and again
    # (a third of a 100k-passage load); none of them can form a cycle, so it waits until the end.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_build(index_dir, verify)
    finally:
        if enabled:
            gc.enable()


def _load_build(index_dir: Path, verify: bool) -> StoredIndex:
    import bm25s
    import faiss

    index_dir = Path(index_dir)
    build_dir = current_build_dir(index_dir)
    if build_dir is None:
        raise IndexMissing(f"还没有索引: {index_dir}. 运行 `gistqa index` 建立索引 (no index yet: run `gistqa index`).")
    manifest = read_manifest(build_dir)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexCorrupt(f"索引格式版本不符 ({manifest.get('format_version')} != {FORMAT_VERSION}). {REBUILD_HINT}")
    if verify:
        bad = verify_files(build_dir, manifest, full=False)
        if bad:
            raise IndexCorrupt(f"索引文件损坏或被改动: {', '.join(bad)} in {build_dir}. {REBUILD_HINT}")
    try:
        documents = {}
        for d in _read_jsonl(build_dir / "documents.jsonl"):
            documents[d["doc_id"]] = Document(**d)
        rows = _read_jsonl(build_dir / "passages.jsonl")
        for r in rows:
            if "text" not in r:
                r["text"] = documents[r["doc_id"]].text[r["start"]:r["end"]]
        passages = [passage_from_dict(r) for r in rows]
        concepts = [frozenset(r.get("concepts", ())) for r in rows]
        sentences = SentenceTable(np.load(build_dir / "sentences.npy", allow_pickle=False), passages, documents)
        corpus_norm = (build_dir / "corpus_norm.txt").read_text(encoding="utf-8")
        # Memory-mapped, read-only: pages come from the page cache on use (shared by every worker
        # process on the machine), not ~700 MB read at each start of a 100k-passage index.
        pv = np.load(build_dir / "passage_vectors.npy", mmap_mode="r", allow_pickle=False)
        sv = np.load(build_dir / "sentence_vectors.npy", mmap_mode="r", allow_pickle=False)
        dense = faiss.read_index(str(build_dir / "dense.faiss"))
        if hasattr(dense, "hnsw"):
            dense.hnsw.efSearch = max(dense.hnsw.efSearch, HNSW_EF_SEARCH)
        lexical = bm25s.BM25.load(str(build_dir / "lexical"), show_progress=False)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as err:
        raise IndexCorrupt(f"索引无法读取 ({type(err).__name__}: {err}) in {build_dir}. {REBUILD_HINT}") from None
    if len(pv) != len(passages) or len(sv) != len(sentences) or dense.ntotal != len(passages):
        raise IndexCorrupt(f"索引各文件的条目数不一致 in {build_dir}. {REBUILD_HINT}")
    sentence_passage = sentences.passage_rows
    # Rows of each passage's sentences: one stable sort instead of a Python loop over every sentence.
    order = np.argsort(sentence_passage, kind="stable")
    bounds = np.searchsorted(sentence_passage[order], np.arange(len(passages) + 1))
    flat = order.tolist()
    passage_sentences: list[list[int]] = [flat[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
    slot_rows: dict[int, list[int]] = {}
    slot_records: dict[int, Passage] = {}
    for i, p in enumerate(passages):
        if p.doc_kind != "consensus" and p.ref_slot is not None:
            slot_rows.setdefault(p.ref_slot, []).append(i)
            if p.doc_kind == "reference_card" and p.section_path[-1].startswith("候选文献"):
                slot_records.setdefault(p.ref_slot, p)
    return StoredIndex(build_dir, manifest, documents, passages, concepts, sentences, sentence_passage,
                       passage_sentences, pv, sv, dense, lexical, {p.passage_id: p for p in passages},
                       slot_rows, slot_records, corpus_norm)
