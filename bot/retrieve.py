"""Hybrid retrieval: dense (FAISS) and lexical (BM25) rankings fused by reciprocal rank.

Both searches run over passages; the fused list is what the answer writer reads. Scope "consensus"
keeps only the consensus text; "all" adds reference cards and user-supplied full texts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.lexicon import Lexicon
from indexer.store import StoredIndex
from indexer.tokenize import lexical_tokens
from indexer.types import Passage


@dataclass
class Hit:
    row: int
    passage: Passage
    score: float  # fused (RRF)
    dense: float  # cosine similarity
    lexical: float  # BM25 score
    rank: int = 0


def in_scope(passage: Passage, scope: str) -> bool:
    return scope == "all" or passage.doc_kind == "consensus"


def fuse_rankings(rankings: list[list[int]], k: int) -> dict[int, float]:
    """Reciprocal-rank fusion: each list adds 1/(k + rank) to every row it ranks."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (k + rank)
    return fused


def dense_search(index: StoredIndex, qvec: np.ndarray, k: int, scope: str) -> tuple[list[int], dict[int, float]]:
    n = len(index.passages)
    if n == 0:
        return [], {}
    # Ask for more when filtering by scope, so that k in-scope rows remain.
    want = min(n, k if scope == "all" else k * 4)
    scores, rows = index.dense.search(qvec.reshape(1, -1).astype(np.float32), want)
    ranked, sims = [], {}
    for s, r in zip(scores[0], rows[0]):
        if r < 0 or not in_scope(index.passages[r], scope):
            continue
        ranked.append(int(r))
        sims[int(r)] = float(s)
    return ranked[:k], sims


def lexical_search(index: StoredIndex, tokens: list[str], k: int, scope: str) -> tuple[list[int], np.ndarray]:
    vocab = index.lexical.vocab_dict
    known = [t for t in tokens if t in vocab]
    if not known:
        return [], np.zeros(len(index.passages), dtype=np.float32)
    scores = np.asarray(index.lexical.get_scores(known), dtype=np.float32)
    # Top candidates by partial sort (a full sort of 100k rows cost ~80 ms); extra room for scope.
    want = min(len(scores), k if scope == "all" else k * 4)
    top = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    ranked = [int(r) for r in top if scores[r] > 0 and in_scope(index.passages[r], scope)][:k]
    return ranked, scores


def best_sentence_search(index: StoredIndex, qvec: np.ndarray, k: int, scope: str) -> list[int]:
    """Passages ranked by their best sentence's similarity: one sentence that answers should not be
    diluted by the six others of a long paragraph."""
    if len(index.sentences) == 0:
        return []
    sims = index.sentence_vectors @ qvec
    best = np.full(len(index.passages), -np.inf, dtype=np.float32)
    np.maximum.at(best, index.sentence_passage, sims)
    want = min(len(best), k if scope == "all" else k * 4)
    top = np.argpartition(-best, want - 1)[:want] if want < len(best) else np.arange(len(best))
    top = top[np.argsort(-best[top], kind="stable")]
    return [int(r) for r in top if np.isfinite(best[r]) and in_scope(index.passages[r], scope)][:k]


def retrieve(index: StoredIndex, lexicon: Lexicon, qvec: np.ndarray, retrieval_text: str, *,
             dense_k: int, lexical_k: int, rrf_k: int, scope: str, timing: dict | None = None) -> list[Hit]:
    import time

    t = time.perf_counter()
    dense_rank, sims = dense_search(index, qvec, dense_k, scope)
    t_dense = time.perf_counter()
    lex_rank, lex_scores = lexical_search(index, lexical_tokens(retrieval_text, lexicon), lexical_k, scope)
    t_lex = time.perf_counter()
    sentence_rank = best_sentence_search(index, qvec, dense_k, scope)
    fused = fuse_rankings([dense_rank, lex_rank, sentence_rank], rrf_k)
    rows = sorted(fused, key=lambda r: -fused[r])
    missing = [r for r in rows if r not in sims]
    if missing:  # cosine for rows only the lexical search found: one small matrix product
        for r, s in zip(missing, index.passage_vectors[missing] @ qvec):
            sims[r] = float(s)
    hits = [Hit(r, index.passages[r], fused[r], sims[r], float(lex_scores[r]) if len(lex_scores) else 0.0, i + 1)
            for i, r in enumerate(rows)]
    if timing is not None:
        timing["dense_search"] = (t_dense - t) * 1000
        timing["lexical_search"] = (t_lex - t_dense) * 1000  # fusion below includes the sentence search
        timing["fusion"] = (time.perf_counter() - t_lex) * 1000
    return hits


def prefer_sources(hits: list[Hit], consensus_first: bool, card_weight: float) -> list[Hit]:
    """For a question about the consensus, reference cards (our summaries, some restating the
    consensus) yield to the consensus text; for a question about the literature, nothing changes."""
    if not consensus_first:
        return hits
    for h in hits:
        if h.passage.doc_kind != "consensus":
            h.score *= card_weight
    hits = sorted(hits, key=lambda h: -h.score)
    for i, h in enumerate(hits, start=1):
        h.rank = i
    return hits


def promote_references(hits: list[Hit], slots: tuple[int, ...]) -> list[Hit]:
    """A question naming ［n］ is about reference n: its card or full text and the consensus
    passages citing it come first, in their fused order."""
    if not slots:
        return hits
    wanted = set(slots)

    def about(h: Hit) -> bool:
        p = h.passage
        return p.ref_slot in wanted if p.doc_kind != "consensus" else bool(wanted & set(p.cites))

    hits = sorted(hits, key=lambda h: not about(h))  # stable: fused order kept within each group
    for i, h in enumerate(hits, start=1):
        h.rank = i
    return hits
