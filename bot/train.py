"""Training the learned decisions (`bot/learn.py`) on the question bank: part of `gistqa index`.

bank items -> examples (a message of two questions is two examples, one per part) -> what the
rules read and the e5 vector of each (through the Bot itself, so the features are exactly those
answering computes) -> five logistic-regression heads (scikit-learn, deterministic solvers) ->
plain files beside the index, keyed by the index build and the bank's checksum: a changed bank or
corpus retrains, an unchanged one is reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.learn import (FACET_CLASSES, KNN_DIM, REASON_CLASSES, SETTING_CLASSES, Analysis, Head, LearnedArtefactError,
                       LearnedModel, Unit, Vocabulary, dense_part, label_matrix, neighbour_vote, question_grams,
                       save_model)
from evals.bank import BankItem, bank_files, load_bank

TRAIN_VERSION = "3"
MIN_DF = 2  # an n-gram seen in one bank question only teaches that question
# Inverse regularisation strength of each head (scikit-learn's C), chosen by leave-one-author-out
# figures (evals/by_author.py), never on a held-out author's items.
C_REFUSE, C_REASON, C_SETTING, C_FACET, C_UNIT = 4.0, 2.0, 4.0, 4.0, 8.0
MIN_UNIT_POSITIVES = 1
FITS_PER_PROCESS = 16  # fewer unit fits than this per process are not worth a worker's start


@dataclass
class Example:
    item_id: str
    author: str
    question: str
    history: list[str]
    refuse: bool
    reason: str
    settings: set[str]
    facet: str
    unit_texts: list[str]


def planner_facet(facets: list[str]) -> str:
    """The planner's facet a bank label asks for, most specific first."""
    if "vote" in facets:
        return "vote"
    if "who" in facets:
        return "authors"
    if "why" in facets:
        return "why"
    if "what_to_do" in facets or "dose" in facets:
        return "management"
    return "other"


def _clinical(settings) -> set[str]:
    out = {s for s in settings if s in SETTING_CLASSES}
    if "recurrence" in settings:
        out |= {"recur_during", "recur_after"}
    return out


def examples_of(items: list[BankItem]) -> list[Example]:
    out = []
    for it in items:
        if it.parts:
            for k, p in enumerate(it.parts):
                reason = p.refusal_reason or it.refusal_reason or "not_covered"
                out.append(Example(f"{it.id}#{k + 1}", it.author, p.question, list(it.history), p.expect == "refuse",
                                   reason, _clinical(p.settings), planner_facet(p.facets), list(p.answer_units)))
        else:
            out.append(Example(it.id, it.author, it.question, list(it.history), it.expect == "refuse",
                               it.refusal_reason or "not_covered", _clinical(it.settings), planner_facet(it.facets),
                               list(it.answer_units)))
    return out


# --- units of the index --------------------------------------------------------------------------
def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def unit_table(index) -> list[Unit]:
    """Every quotable unit of the consensus: sentences (not of the table), vote items, bylines;
    then the reference cards' sentences."""
    units: list[Unit] = []
    for row, p in enumerate(index.passages):
        if p.doc_kind == "consensus" and p.vote is not None:
            units.append(Unit("vote", row, p.vote.question))
        elif p.doc_kind == "consensus" and p.evidence_kind == "authors":
            units.append(Unit("authors", row, p.text))
    for r, s in enumerate(index.sentences):
        p = index.passage_by_id[s.passage_id]
        if p.vote is None and p.evidence_kind != "authors":
            units.append(Unit("sentence", r, s.text))
    return units


def match_units(texts: list[str], units: list[Unit]) -> list[int]:
    """Unit numbers named by the texts (a text names the first unit holding it, consensus first)."""
    squeezed = [_squeeze(u.text) for u in units]
    found = []
    for t in texts:
        key = _squeeze(t)
        for i, s in enumerate(squeezed):
            if key and key in s:
                found.append(i)
                break
    return list(dict.fromkeys(found))


# --- features through the bot --------------------------------------------------------------------
@dataclass
class Table:
    """Every example's features, computed once (leave-one-author-out refits reuse them)."""

    examples: list[Example]
    dense: np.ndarray  # (n, dim) e5 vectors
    rules: np.ndarray  # (n, rule dim)
    grams: list[list[str]]
    unit_ids: list[list[int]]
    units: list[Unit]
    analyses: list[Analysis]
    attribute_ids: list[str]
    concept_ids: list[str]


def feature_table(bot, examples: list[Example]) -> Table:
    """What answering computes for each example: the lexicon's analysis, the rules' reading, the
    query vector."""
    views, analyses, vecs = [], [], []
    analysed = [bot.analyse(e.question, e.history) for e in examples]
    bot.prefill_query_vectors([q.retrieval_text for q in analysed])
    for q in analysed:
        analysis, view, qvec = bot.rule_view(q)
        analyses.append(analysis)
        views.append(view.vector())
        vecs.append(qvec)
    index = bot._ensure_loaded()
    units = unit_table(index)
    return Table(examples, np.stack(vecs).astype(np.float32), np.stack(views), [question_grams(e.question, e.history) for e in examples],
                 [match_units(e.unit_texts, units) for e in examples], units, analyses,
                 sorted(bot.lexicon.attributes), sorted(bot.lexicon.concepts))


# --- fitting ----------------------------------------------------------------------------------------
def _vocabulary(grams: list[list[str]]) -> Vocabulary:
    df: dict[str, int] = {}
    for gs in grams:
        for g in set(gs):
            df[g] = df.get(g, 0) + 1
    kept = sorted(g for g, n in df.items() if n >= MIN_DF)
    n = len(grams)
    idf = np.asarray([np.log((1 + n) / (1 + df[g])) + 1.0 for g in kept], dtype=np.float32)
    return Vocabulary({g: i for i, g in enumerate(kept)}, idf)


def _labels(table: Table, rows: list[int]) -> list[dict]:
    return [{"id": table.examples[i].item_id, "question": table.examples[i].question[:80],
             "expect": "refuse" if table.examples[i].refuse else "answer", "settings": sorted(table.examples[i].settings),
             "facet": table.examples[i].facet} for i in rows]


def _knn_features(table: Table, rows: list[int]) -> np.ndarray:
    """Each training question's neighbour vote, its neighbours taken from other authors only."""
    vecs = table.dense[rows]
    sims = vecs @ vecs.T
    authors = np.asarray([table.examples[i].author for i in rows])
    labels = label_matrix(_labels(table, rows))
    out = np.zeros((len(rows), KNN_DIM), np.float32)
    for k in range(len(rows)):
        other = authors != authors[k]
        out[k] = neighbour_vote(sims[k][other], labels[other])
    return out


def _design(table: Table, rows: list[int], vocab: Vocabulary, with_rules: bool):
    from scipy.sparse import csr_matrix, hstack

    knn = _knn_features(table, rows)
    dense = np.stack([dense_part(table.dense[i], table.analyses[i].vector(table.attribute_ids, table.concept_ids), None,
                                 knn[k]) for k, i in enumerate(rows)])
    if with_rules:
        dense = np.hstack([dense, table.rules[rows]])
    data, indices, indptr = [], [], [0]
    for i in rows:
        cols, vals = vocab.transform(table.grams[i])
        order = np.argsort(cols)
        indices.extend(cols[order].tolist())
        data.extend(vals[order].tolist())
        indptr.append(len(indices))
    sparse = csr_matrix((np.asarray(data, np.float32), np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
                        shape=(len(rows), len(vocab.index)))
    return hstack([csr_matrix(dense), sparse]).tocsr(), dense.shape[1]


def _binary(X, y: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """Weights and bias of one sigmoid; a label with one class only gets a constant."""
    from sklearn.linear_model import LogisticRegression

    if y.min() == y.max():
        return np.zeros(X.shape[1], np.float32), (8.0 if y[0] else -8.0)
    m = LogisticRegression(C=C, solver="liblinear", random_state=0, max_iter=200)
    m.fit(X, y)
    return m.coef_[0].astype(np.float32), float(m.intercept_[0])


def _binaries(X, targets: list[np.ndarray], C: float) -> list[tuple[np.ndarray, float]]:
    """One sigmoid per target, fitted in a process per core (each fit is independent and seeded,
    so the weights are the same however they are spread; liblinear's own state is per process)."""
    from joblib import Parallel, delayed

    from indexer.embed import usable_cores

    jobs = min(usable_cores(), max(1, len(targets) // FITS_PER_PROCESS))
    if jobs <= 1:
        return [_binary(X, y, C) for y in targets]
    return Parallel(n_jobs=jobs, backend="loky")(delayed(_binary)(X, y, C) for y in targets)


def _softmax(X, y: list[str], classes: tuple[str, ...], C: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    present = sorted(set(y), key=classes.index)
    W = np.zeros((X.shape[1], len(classes)), np.float32)
    b = np.full(len(classes), -8.0, np.float32)
    if len(present) == 1:
        b[classes.index(present[0])] = 8.0
        return W, b
    m = LogisticRegression(C=C, solver="lbfgs", max_iter=500)
    m.fit(X, y)
    coef = m.coef_ if len(present) > 2 else np.vstack([-m.coef_[0], m.coef_[0]])
    inter = m.intercept_ if len(present) > 2 else np.asarray([-m.intercept_[0], m.intercept_[0]])
    for k, c in enumerate(m.classes_):
        W[:, classes.index(c)] = coef[k]
        b[classes.index(c)] = inter[k]
    return W, b


def _head(classes, W: np.ndarray, b: np.ndarray, dense_dim: int, softmax: bool = False) -> Head:
    return Head(tuple(classes), np.ascontiguousarray(W[:dense_dim]), np.ascontiguousarray(W[dense_dim:]),
                np.asarray(b, np.float32), softmax)


def fit(table: Table, rows: list[int], with_rules: bool = True) -> LearnedModel:
    """The five heads, trained on the examples at `rows` of the table."""
    vocab = _vocabulary([table.grams[i] for i in rows])
    X, dense_dim = _design(table, rows, vocab, with_rules)
    ex = [table.examples[i] for i in rows]
    heads: dict[str, Head] = {}

    w, b0 = _binary(X, np.asarray([e.refuse for e in ex], dtype=int), C_REFUSE)
    heads["refuse"] = _head(("refuse",), w[:, None], np.asarray([b0]), dense_dim)

    refusing = [k for k, e in enumerate(ex) if e.refuse]
    if refusing:
        W, b = _softmax(X[refusing], [ex[k].reason for k in refusing], REASON_CLASSES, C_REASON)
    else:
        W, b = np.zeros((X.shape[1], len(REASON_CLASSES)), np.float32), np.zeros(len(REASON_CLASSES), np.float32)
    heads["reason"] = _head(REASON_CLASSES, W, b, dense_dim, softmax=True)

    cols, biases = [], []
    for s in SETTING_CLASSES:
        w, b0 = _binary(X, np.asarray([s in e.settings for e in ex], dtype=int), C_SETTING)
        cols.append(w)
        biases.append(b0)
    heads["setting"] = _head(SETTING_CLASSES, np.stack(cols, 1), np.asarray(biases), dense_dim)

    answering = [k for k, e in enumerate(ex) if not e.refuse]
    W, b = _softmax(X[answering], [ex[k].facet for k in answering], FACET_CLASSES, C_FACET)
    heads["facet"] = _head(FACET_CLASSES, W, b, dense_dim, softmax=True)

    # Units: one sigmoid per unit some answerable example names; trained on answerable examples.
    positives: dict[int, int] = {}
    for k in answering:
        for u in table.unit_ids[rows[k]]:
            positives[u] = positives.get(u, 0) + 1
    kept = sorted(u for u, n in positives.items() if n >= MIN_UNIT_POSITIVES)
    Xa = X[answering]
    targets = [np.asarray([u in table.unit_ids[rows[k]] for k in answering], dtype=int) for u in kept]
    fitted = _binaries(Xa, targets, C_UNIT)
    cols, biases = [w for w, _ in fitted], [b0 for _, b0 in fitted]
    Wu = np.stack(cols, 1) if cols else np.zeros((X.shape[1], 0), np.float32)
    heads["unit"] = _head(tuple(str(u) for u in kept), Wu, np.asarray(biases, np.float32), dense_dim)

    labels = _labels(table, rows)
    return LearnedModel(heads, vocab, [table.units[u] for u in kept], with_rules,
                        table.dense[rows].astype(np.float16), labels, attribute_ids=list(table.attribute_ids),
                        concept_ids=list(table.concept_ids))


# --- the artefact beside the index ------------------------------------------------------------------
def bank_checksum(bank_dir: Path) -> str:
    h = hashlib.sha256()
    for path in bank_files(bank_dir):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def learned_key(build_name: str, bank_sha: str, with_rules: bool) -> str:
    raw = json.dumps([build_name, bank_sha, with_rules, TRAIN_VERSION])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def learned_dir(settings, build_name: str, bank_sha: str, with_rules: bool) -> Path:
    return Path(settings.index_dir) / "learned" / learned_key(build_name, bank_sha, with_rules)


@dataclass
class TrainReport:
    noop: bool
    folder: str
    examples: int = 0
    authors: int = 0
    units: int = 0
    seconds: float = 0.0


def train(settings, bot=None, force: bool = False, lock_timeout_s: float = 600.0) -> TrainReport | None:
    """Train on the bank for the current index build (no-op when that model exists). None when the
    settings ask for the rules alone or the bank is empty."""
    from indexer.store import current_build_dir

    if settings.decisions == "rules" or not bank_files(settings.bank_dir):
        return None
    t0 = time.perf_counter()
    build = current_build_dir(Path(settings.index_dir))
    if build is None:
        raise LearnedArtefactError("还没有索引，无法训练 (no index to train for): 运行 `gistqa index`")
    with_rules = settings.decisions == "combined"
    bank_sha = bank_checksum(settings.bank_dir)
    folder = learned_dir(settings, build.name, bank_sha, with_rules)
    if folder.is_dir() and (folder / "manifest.json").is_file() and not force:
        return TrainReport(True, str(folder), seconds=time.perf_counter() - t0)
    from filelock import FileLock, Timeout

    from indexer.build import BuildBusy

    lock = FileLock(str(Path(settings.index_dir) / ".build.lock"))
    try:
        lock.acquire(timeout=lock_timeout_s)
    except Timeout:
        raise BuildBusy(f"另一个索引构建正在进行 ({settings.index_dir}); 请稍后再试 (another build is running)") from None
    try:
        if folder.is_dir() and (folder / "manifest.json").is_file() and not force:
            return TrainReport(True, str(folder), seconds=time.perf_counter() - t0)  # trained while we waited
        return _train_locked(settings, bot, build, folder, bank_sha, with_rules, t0)
    finally:
        lock.release()


def _train_locked(settings, bot, build, folder: Path, bank_sha: str, with_rules: bool, t0: float) -> TrainReport:
    from bot.answer import Bot

    items = load_bank(settings.bank_dir)
    bot = bot or Bot(settings.model_copy(update={"decisions": "rules"}))
    examples = examples_of(items)
    table = feature_table(bot, examples)
    model = fit(table, list(range(len(examples))), with_rules)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, {"build": build.name, "bank_sha256": bank_sha, "with_rules": with_rules,
                            "train_version": TRAIN_VERSION, "examples": len(examples),
                            "authors": sorted({e.author for e in examples}),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for old in folder.parent.iterdir():  # models of older builds or banks
        if old != folder and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return TrainReport(False, str(folder), len(examples), len({e.author for e in examples}), len(model.units),
                       time.perf_counter() - t0)
