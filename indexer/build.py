"""Build or update the index: load -> passages -> sentences -> embed (only what is new) -> write.

An unchanged corpus does no work at all (not even a model load). Vectors of the previous build are
reused for every passage and sentence whose exact text is unchanged, so a changed file re-embeds
only its own new text. One build at a time: a second waits for the lock, up to a limit.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from indexer.embed import uses_onnx
from indexer.lexicon import Lexicon
from indexer.load import LoadProblem, load_corpus
from indexer.sentences import split_sentences
from indexer.settings import Settings
from indexer.store import (
    FORMAT_VERSION,
    BuildContent,
    current_build_dir,
    load_build,
    read_manifest,
    text_key,
    verify_files,
    write_build,
)
from indexer.structure import split_passages
from indexer.tokenize import lexical_tokens

# Bump when passage/sentence splitting or tokenisation changes: the index must then be rebuilt.
CHUNKER_VERSION = "2026-11-23.2"


class BuildBusy(RuntimeError):
    pass


@dataclass
class BuildReport:
    noop: bool
    documents: int = 0
    passages: int = 0
    sentences: int = 0
    embedded: int = 0
    reused: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    build_dir: str = ""
    problems: list[LoadProblem] = field(default_factory=list)

    @property
    def embed_rate(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0


def _versions() -> dict:
    from importlib.metadata import version

    # Read from the installed metadata: importing sentence-transformers would load torch.
    return {"python": platform.python_version(), "faiss": version("faiss-cpu"),
            "sentence_transformers": version("sentence-transformers"), "onnxruntime": version("onnxruntime"),
            "chunker": CHUNKER_VERSION}


def _lexicon_hash(settings: Settings) -> str:
    return hashlib.sha256(Path(settings.lexicon_path).read_bytes()).hexdigest()


def _model_identity(settings: Settings) -> tuple[Path, str]:
    from indexer.embed import ensure_encoder

    return ensure_encoder(settings)


def _previous_vectors(index_dir: Path, fingerprint: str) -> dict[str, np.ndarray]:
    """Embedding cache from the build in use, if it was made by the same model and is intact."""
    build = current_build_dir(index_dir)
    if build is None:
        return {}
    try:
        manifest = read_manifest(build)
        if manifest.get("model", {}).get("fingerprint") != fingerprint or verify_files(build, manifest):
            return {}
        old = load_build(index_dir)
        cache: dict[str, np.ndarray] = {}
        for items, vecs in ((old.passages, old.passage_vectors), (old.sentences, old.sentence_vectors)):
            for item, vec in zip(items, vecs):
                cache[text_key(item.text)] = np.array(vec)
        return cache
    except Exception:  # a damaged old build only means no cache
        return {}


def build_index(settings: Settings, rebuild: bool = False, progress: bool = False,
                lock_timeout_s: float = 600.0) -> BuildReport:
    t0 = time.perf_counter()
    index_dir = Path(settings.index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(index_dir / ".build.lock"))
    try:
        lock.acquire(timeout=lock_timeout_s)
    except Timeout:
        raise BuildBusy(f"另一个索引构建正在进行 ({index_dir}); 请稍后再试 (another build is running)") from None
    try:
        return _build_locked(settings, rebuild, progress, t0)
    finally:
        lock.release()


def _build_locked(settings: Settings, rebuild: bool, progress: bool, t0: float) -> BuildReport:
    index_dir = Path(settings.index_dir)
    docs, problems = load_corpus(Path(settings.corpus_dir))
    model_dir, fingerprint = _model_identity(settings)
    corpus_state = {d.path: d.sha256 for d in docs}
    lexicon_hash = _lexicon_hash(settings)

    current = current_build_dir(index_dir)
    if current is not None and not rebuild:
        try:
            m = read_manifest(current)
            same = (m.get("format_version") == FORMAT_VERSION and m.get("corpus") == corpus_state and m.get("model", {}).get("fingerprint") == fingerprint
                    and m.get("lexicon_sha256") == lexicon_hash and m.get("versions", {}).get("chunker") == CHUNKER_VERSION
                    and not verify_files(current, m))
            if same:
                return BuildReport(noop=True, documents=len(docs), passages=m["counts"]["passages"],
                                   sentences=m["counts"]["sentences"], seconds=time.perf_counter() - t0,
                                   build_dir=str(current), problems=problems)
        except Exception:
            pass  # unreadable manifest: rebuild

    lexicon = Lexicon.load(settings.lexicon_path)
    passages, sentences = [], []
    for doc in docs:
        ps = split_passages(doc)
        passages.extend(ps)
        for p in ps:
            sentences.extend(split_sentences(p))
    concepts = [sorted(lexicon.concepts_in(" ".join(p.section_path) + " " + p.text)) for p in passages]
    tokens = [lexical_tokens(" ".join(p.section_path) + " " + p.text, lexicon) for p in passages]

    cache = {} if rebuild else _previous_vectors(index_dir, fingerprint)
    texts = [p.text for p in passages] + [s.text for s in sentences]
    missing = sorted({t for t in texts if text_key(t) not in cache})
    embed_seconds = 0.0
    dim = None
    if missing:
        from indexer.embed import get_embedder

        embedder = get_embedder(settings)
        te = time.perf_counter()
        vecs = embedder.encode_passages(missing, progress=progress)
        embed_seconds = time.perf_counter() - te
        for t, v in zip(missing, vecs):
            cache[text_key(t)] = v
        dim = embedder.dim
    if dim is None:
        dim = len(next(iter(cache.values()))) if cache else 384

    def matrix(items) -> np.ndarray:
        if not items:
            return np.zeros((0, dim), dtype=np.float32)
        return np.ascontiguousarray(np.stack([cache[text_key(x.text)] for x in items]), dtype=np.float32)

    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"path": str(model_dir), "fingerprint": fingerprint, "dim": int(dim),
                  "encoder": "onnx" if uses_onnx(settings) else "torch",
                  "query_prefix": settings.query_prefix, "passage_prefix": settings.passage_prefix},
        "corpus": corpus_state,
        "documents": {d.doc_id: {"path": d.path, "kind": d.kind, "sha256": d.sha256} for d in docs},
        "lexicon_sha256": lexicon_hash,
        "counts": {"documents": len(docs), "passages": len(passages), "sentences": len(sentences)},
        "problems": [str(p) for p in problems],
        "versions": _versions(),
    }
    content = BuildContent(docs, passages, sentences, concepts, matrix(passages), matrix(sentences), tokens, manifest)
    build_dir = write_build(index_dir, content, settings.exact_search_max)
    return BuildReport(noop=False, documents=len(docs), passages=len(passages), sentences=len(sentences),
                       embedded=len(missing), reused=len(set(texts)) - len(missing),
                       seconds=time.perf_counter() - t0, embed_seconds=embed_seconds,
                       build_dir=str(build_dir), problems=problems)


def describe_manifest(build_dir: Path) -> str:
    return json.dumps(read_manifest(build_dir), ensure_ascii=False, indent=1)
