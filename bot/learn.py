"""The question side, learned: what a question asks, decided by models trained on the question
bank (`evals/bank/`, written by independent authors) instead of by patterns that fit our own phrasing.

Five decisions, each a logistic-regression head over the same features:
- `refuse`: is what is asked stated in the corpus (answer) or not (refuse);
- `reason`: why a refusal (not_covered / off_topic / unsupported_language);
- `setting`: which clinical settings the story implies (one sigmoid per setting: none, one or two);
- `facet`: what the planner should build (management / why / vote / authors / other);
- `unit`: which sentence, vote item or byline a specialist quotes first (one sigmoid per unit).

Features (`Features`): the question's e5 vector (the one retrieval already computed, so deciding
costs no second embedding), character 1-3-grams and Latin words of the question, the last history
question's bigrams (a follow-up's setting often comes only from there), and, in the combined mode,
what the rules read (their settings, facet, coverage verdict) as a few more columns: the rules are
features and guards, not the only path.

Weights live in plain files beside the index (`learned/<name>/`: heads.npz, vocab.json,
units.json, bank.npz, manifest.json with checksums), written by `bot/train.py`. Nothing is pickled.
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.checksums import read_stamp, sha256_file, unchanged_since_stamp, write_stamp
from indexer.lexicon import to_simplified
from indexer.store import IndexError_

FORMAT_VERSION = 2
SETTING_CLASSES = ("first_line", "adjuvant", "recur_during", "recur_after")
FACET_CLASSES = ("management", "why", "vote", "authors", "other")
REASON_CLASSES = ("not_covered", "off_topic", "unsupported_language")
RULE_FACETS = ("management", "why", "value", "vote", "authors", "general")
NGRAM_RANGE = (1, 3)
HISTORY_NGRAM = 2
# The rule columns are few against thousands of n-grams; scaled so the regularised fit can use them.
RULE_FEATURE_SCALE = 1.0
DENSE_SCALE = 1.0
ANALYSIS_SCALE = 1.0
NEIGHBOURS = 5  # bank questions shown by --explain
# The labels of the K nearest bank questions, averaged, are features too (a vote of the bank).
# In training, a question's neighbours are taken from other authors only, as at answer time the
# asker is someone the bank has never seen: an author's near-copies of their own question would
# make the vote look more reliable than it is.
KNN_K = 10
KNN_DIM = 1 + len(SETTING_CLASSES) + len(FACET_CLASSES)

LEARNED_HINT = "运行 `gistqa index` 重新训练 (run `gistqa index` to retrain)"


class LearnedArtefactError(IndexError_):
    """A learned artefact is missing, damaged or made for another index: never silently ignored."""


# --- cleaning the noise a phone adds ----------------------------------------------------------
_FULLWIDTH_ALNUM = {c: c - 0xFEE0 for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]}
_PUNCT = "!?！？。，,.~～、…"
_PUNCT_RUN = re.compile(f"([{_PUNCT}])[{_PUNCT}]+")
_EMOJI_JOINERS = "\ufe0f\ufe0e\u200d\u20e3"


def _is_pictograph(ch: str) -> bool:
    return unicodedata.category(ch) in ("So", "Sk") or ch in _EMOJI_JOINERS or 0x1F3FB <= ord(ch) <= 0x1F3FF


# A lab value pasted into a vignette ("Hb 95g/L", "肌酐110", "ALT：40 U/L"): context, never the ask.
# Only a named test followed by its number is removed; a bare number (a dose) always stays.
_LAB = re.compile(
    r"(?:(?<![A-Za-z])(?:hb|hgb|wbc|plt|anc|neu|alt|ast|ggt|alp|tbil|dbil|alb|cr|scr|bun|egfr|crp|cea|ca\s?19-9|ca125|ldh|k|na)"
    r"|血红蛋白|白细胞|血小板|中性粒细胞?|肌酐|转氨酶|谷丙转氨酶|谷草转氨酶|白蛋白|胆红素|尿素氮|血钾|血钠)"
    r"\s*[:：=]?\s*[↑↓]?\s*\d+(?:\.\d+)?\s*(?:g/l|g/dl|u/l|iu/l|μmol/l|umol/l|mmol/l|mg/l|mg/dl|ml/min|×10\^?9/l|x10\^?9/l|%)?\s*[↑↓]?",
    re.I)


_LAB_WITH_SEPARATOR = re.compile(r"\s*[，,、;；]?\s*(?:" + _LAB.pattern + ")", re.I)


def denoise(text: str) -> str:
    """Emoji and pictographs out (leaving no gap: "rel🙏apse" is "relapse"), a run of punctuation
    as its first mark ("？？？" -> "？", "?！！" -> "?"), full-width digits and Latin letters as ASCII:
    the same question with or without them reads the same. Chinese punctuation stays (the
    sentence splitter and the rules read it)."""
    text = "".join(ch for ch in text if not _is_pictograph(ch)).translate(_FULLWIDTH_ALNUM)
    # A value goes with the separator before it ("A，Hb 95，B" -> "A，B"), or after it at the start.
    text = _LAB_WITH_SEPARATOR.sub(lambda m: "" if re.match(r"\s*[，,、;；]", m.group(0)) else " ", text)
    text = re.sub(r"^\s*[，,、;；]\s*", "", text)
    text = _PUNCT_RUN.sub(r"\1", text)
    text = re.sub(r"\s*[…~～.。!！]+\s*$", "", text)  # a trailing sigh or exclamation asks nothing
    return re.sub(r"\s+", " ", text).strip()


def reading_text(text: str) -> str:
    """The question as every step reads it: denoised, in simplified characters (the corpus's script)."""
    return to_simplified(denoise(text))


# --- language ----------------------------------------------------------------------------------
_KANA_HANGUL_OTHER = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af\u1100-\u11ff\u0400-\u04ff\u0600-\u06ff\u0e00-\u0e7f]")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_LATIN_WORD = re.compile(r"[A-Za-zÀ-ÿ]+")
ENGLISH_WORDS = frozenset(
    "a an the is are was were be been do does did what which who whom why how when where should would could can "
    "will of for in on at to with and or not no yes dose doses dosing patient patients after before during if "
    "this that these those it its any there than then me my we our you your tell give list explain about from by "
    "vs versus per day daily mg treatment therapy recommend recommended recommendation panel vote voted experts "
    "guideline guidelines first line adjuvant metastatic advanced relapse recurrence recurred progression".split())
_FOREIGN_LATIN = frozenset(
    "le la les des du est une pour avec quelle quel dosis der die das und ist für mit welche wie el los las para "
    "qué cuál con por es una como il della per che sono".split())


def unsupported_language(text: str) -> bool:
    """Japanese, Korean, Cyrillic, Arabic or Thai script, or a Latin-script question with no English
    word but words of another European language: the bank covers Chinese and English only."""
    if _KANA_HANGUL_OTHER.search(text):
        return True
    if _HAN.search(text):
        return False
    words = [w.lower() for w in _LATIN_WORD.findall(text)]
    if len(words) < 3:
        return False
    english = sum(w in ENGLISH_WORDS for w in words)
    foreign = sum(w in _FOREIGN_LATIN for w in words)
    return foreign >= 2 and foreign > english


# --- features ------------------------------------------------------------------------------------
def feature_text(text: str) -> str:
    return to_simplified(denoise(text)).lower()


def ngrams(text: str, prefix: str = "", lo: int = NGRAM_RANGE[0], hi: int = NGRAM_RANGE[1]) -> list[str]:
    """Character n-grams of each run of Han characters and digits, and whole Latin words."""
    grams: list[str] = []
    t = feature_text(text)
    for run in re.findall(r"[\u4e00-\u9fff0-9%~]+", t):
        for n in range(lo, hi + 1):
            grams.extend(prefix + run[i:i + n] for i in range(len(run) - n + 1))
    grams.extend(prefix + "w:" + w for w in re.findall(r"[a-z][a-z0-9\-]*", t))
    return grams


def question_grams(question: str, history: list[str]) -> list[str]:
    grams = ngrams(question)
    if history:
        grams += ngrams(history[-1], "h:", HISTORY_NGRAM, HISTORY_NGRAM)
    return grams


@dataclass(frozen=True)
class RuleView:
    """What the rules read of a question: columns of the combined model's features."""

    settings: tuple[str, ...] = ()
    facet: str = "general"
    refused: bool = False
    unknown_entities: bool = False
    followup: bool = False
    setting_from_history: bool = False

    def vector(self) -> np.ndarray:
        v = [1.0 if s in self.settings else 0.0 for s in SETTING_CLASSES]
        v += [1.0 if self.facet == f else 0.0 for f in RULE_FACETS]
        v += [float(self.refused), float(self.unknown_entities), float(self.followup), float(self.setting_from_history)]
        return np.asarray(v, dtype=np.float32) * RULE_FEATURE_SCALE


RULE_DIM = len(RuleView().vector())


@dataclass(frozen=True)
class Analysis:
    """What the lexicon finds in a question, as features of every mode: the attributes asked
    (duration, schedule, dose, vote, ...) and the concepts named (drugs, genes, settings, trials),
    across languages and synonyms; whether it names something the corpus lacks. Not a decision:
    the models learn what each means for answering."""

    attributes: tuple[str, ...] = ()
    concepts: tuple[str, ...] = ()
    context_concepts: tuple[str, ...] = ()  # carried from the history
    absent: bool = False  # a concept the corpus (in the searched scope) never mentions
    unknown: bool = False  # an entity-looking word the corpus never uses

    def vector(self, attribute_ids: list[str], concept_ids: list[str]) -> np.ndarray:
        a, c, h = set(self.attributes), set(self.concepts), set(self.context_concepts)
        v = [1.0 if x in a else 0.0 for x in attribute_ids] + [1.0 if x in c else 0.0 for x in concept_ids]
        v += [0.5 if x in h else 0.0 for x in concept_ids]
        v += [float(self.absent), float(self.unknown)]
        return np.asarray(v, dtype=np.float32) * ANALYSIS_SCALE

    def to_dict(self) -> dict:
        return {"attributes": list(self.attributes), "concepts": list(self.concepts),
                "context_concepts": list(self.context_concepts), "absent": self.absent, "unknown": self.unknown}


@dataclass
class Vocabulary:
    """n-gram -> column, with its idf (learned on the bank)."""

    index: dict[str, int]
    idf: np.ndarray

    def transform(self, grams: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values): sublinear tf x idf, L2-normalised; unknown n-grams are dropped."""
        counts: dict[int, int] = {}
        for g in grams:
            j = self.index.get(g)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        vals = np.fromiter(((1.0 + math.log(c)) for c in counts.values()), dtype=np.float32, count=len(counts))
        vals *= self.idf[cols]
        vals /= max(float(np.linalg.norm(vals)), 1e-9)
        return cols, vals


@dataclass
class Features:
    dense: np.ndarray  # e5 vector (+ rule columns in the combined mode)
    cols: np.ndarray
    vals: np.ndarray


def label_matrix(labels: list[dict]) -> np.ndarray:
    """One row per bank question: refuse, its settings, its facet (what the neighbour vote averages)."""
    m = np.zeros((len(labels), KNN_DIM), dtype=np.float32)
    for i, lab in enumerate(labels):
        m[i, 0] = lab["expect"] == "refuse"
        for s in lab["settings"]:
            if s in SETTING_CLASSES:
                m[i, 1 + SETTING_CLASSES.index(s)] = 1.0
        if lab["expect"] == "answer" and lab["facet"] in FACET_CLASSES:
            m[i, 1 + len(SETTING_CLASSES) + FACET_CLASSES.index(lab["facet"])] = 1.0
    return m


def neighbour_vote(sims: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """The K most similar questions' labels, weighted by their cosine."""
    if len(sims) == 0:
        return np.zeros(labels.shape[1] if labels.ndim == 2 else KNN_DIM, dtype=np.float32)
    k = min(k, len(sims))
    top = np.argpartition(-sims, k - 1)[:k]
    w = np.maximum(sims[top], 0.0)
    w = w / max(float(w.sum()), 1e-9)
    return (w[:, None] * labels[top]).sum(0).astype(np.float32)


def dense_part(qvec: np.ndarray, analysis: np.ndarray | None, rules: RuleView | None,
               knn: np.ndarray | None = None) -> np.ndarray:
    parts = [np.asarray(qvec, dtype=np.float32) * DENSE_SCALE]
    if knn is not None:
        parts.append(knn)
    if analysis is not None:
        parts.append(analysis)
    if rules is not None:
        parts.append(rules.vector())
    return np.concatenate(parts)


# --- heads ----------------------------------------------------------------------------------------
@dataclass
class Head:
    """A logistic-regression layer: sigmoid per class (`multi=False`: softmax over the classes)."""

    classes: tuple[str, ...]
    w_dense: np.ndarray  # (dense dim, classes)
    w_sparse: np.ndarray  # (vocabulary, classes)
    bias: np.ndarray  # (classes,)
    softmax: bool = False

    def scores(self, f: Features) -> np.ndarray:
        z = f.dense @ self.w_dense + self.bias
        if len(f.cols):
            z = z + f.vals @ self.w_sparse[f.cols]
        return z

    def proba(self, f: Features) -> np.ndarray:
        z = self.scores(f)
        if self.softmax:
            z = np.exp(z - z.max())
            return z / z.sum()
        return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Decision:
    """The learned reading of one question, with each decision's probability (for --explain)."""

    p_refuse: float
    reason: str
    reason_p: dict[str, float]
    settings: dict[str, float]
    facet: str
    facet_p: dict[str, float]
    units: list[tuple[int, float]]  # (unit number, probability), best first
    neighbours: list[dict] = field(default_factory=list)
    refused: bool = False  # the combined verdict (bot/decide.refuses), set when applied

    def to_dict(self, unit_names: list[str] | None = None) -> dict:
        r = lambda x: round(float(x), 3)  # noqa: E731
        return {
            "p_refuse": r(self.p_refuse), "refused": self.refused, "reason": self.reason, "reason_p": {k: r(v) for k, v in self.reason_p.items()},
            "settings": {k: r(v) for k, v in self.settings.items()}, "facet": self.facet,
            "facet_p": {k: r(v) for k, v in self.facet_p.items()},
            "units": [{"unit": unit_names[u] if unit_names else u, "p": r(p)} for u, p in self.units[:5]],
            "neighbours": self.neighbours,
        }


@dataclass
class Unit:
    """A quotable unit the unit head scores: a sentence row, a vote passage or a byline passage."""

    kind: str  # "sentence" | "vote" | "authors"
    row: int  # sentence row for a sentence, passage row otherwise
    text: str


@dataclass
class LearnedModel:
    heads: dict[str, Head]
    vocab: Vocabulary
    units: list[Unit]
    with_rules: bool
    bank_vectors: np.ndarray | None = None  # (n, dim) float16, for the nearest bank questions
    bank_labels: list[dict] = field(default_factory=list)
    name: str = ""
    attribute_ids: list[str] = field(default_factory=list)
    concept_ids: list[str] = field(default_factory=list)
    _label_matrix: np.ndarray | None = field(default=None, repr=False)
    _bank32: np.ndarray | None = field(default=None, repr=False)

    def features(self, question: str, history: list[str], qvec: np.ndarray, analysis: Analysis,
                 rules: RuleView | None) -> Features:
        cols, vals = self.vocab.transform(question_grams(question, history))
        knn = None
        if self.bank_vectors is not None:
            if self._label_matrix is None:
                self._label_matrix = label_matrix(self.bank_labels)
                self._bank32 = self.bank_vectors.astype(np.float32)
            knn = neighbour_vote(self._bank32 @ np.asarray(qvec, dtype=np.float32), self._label_matrix)
        return Features(dense_part(qvec, analysis.vector(self.attribute_ids, self.concept_ids),
                                   rules if self.with_rules else None, knn), cols, vals)

    def decide(self, question: str, history: list[str], qvec: np.ndarray, analysis: Analysis, rules: RuleView | None,
               neighbours: bool = False) -> Decision:
        f = self.features(question, history, qvec, analysis, rules)
        p_refuse = float(self.heads["refuse"].proba(f)[0])
        rp = self.heads["reason"].proba(f)
        reasons = dict(zip(self.heads["reason"].classes, map(float, rp)))
        sp = self.heads["setting"].proba(f)
        fp = self.heads["facet"].proba(f)
        facets = dict(zip(self.heads["facet"].classes, map(float, fp)))
        up = self.heads["unit"].proba(f)
        order = np.argsort(-up)[:10]
        d = Decision(p_refuse, max(reasons, key=reasons.get), reasons, dict(zip(SETTING_CLASSES, map(float, sp))),
                     max(facets, key=facets.get), facets, [(int(i), float(up[i])) for i in order])
        if neighbours:
            d.neighbours = self.nearest(qvec)
        return d

    def nearest(self, qvec: np.ndarray, k: int = NEIGHBOURS) -> list[dict]:
        if self.bank_vectors is None or not len(self.bank_vectors):
            return []
        if self._bank32 is None:
            self._bank32 = self.bank_vectors.astype(np.float32)
        sims = self._bank32 @ np.asarray(qvec, dtype=np.float32)
        top = np.argsort(-sims)[:k]
        return [{**self.bank_labels[i], "cosine": round(float(sims[i]), 3)} for i in top]


# --- files ------------------------------------------------------------------------------------------
HEADS_FILE, VOCAB_FILE, UNITS_FILE, BANK_FILE, MANIFEST_FILE = "heads.npz", "vocab.json", "units.json", "bank.npz", "manifest.json"


def save_model(model: LearnedModel, folder: Path, manifest: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, h in model.heads.items():
        arrays[f"{name}.w_dense"] = h.w_dense.astype(np.float32)
        arrays[f"{name}.w_sparse"] = h.w_sparse.astype(np.float32)
        arrays[f"{name}.bias"] = h.bias.astype(np.float32)
    np.savez(folder / HEADS_FILE, **arrays)
    vocab = sorted(model.vocab.index, key=model.vocab.index.get)
    (folder / VOCAB_FILE).write_text(json.dumps({"ngrams": vocab, "idf": [round(float(x), 6) for x in model.vocab.idf]},
                                                ensure_ascii=False), encoding="utf-8")
    (folder / UNITS_FILE).write_text(json.dumps({
        "units": [{"kind": u.kind, "row": u.row, "text": u.text} for u in model.units],
        "heads": {name: {"classes": list(h.classes), "softmax": h.softmax} for name, h in model.heads.items()},
        "with_rules": model.with_rules, "bank_labels": model.bank_labels, "attribute_ids": model.attribute_ids,
        "concept_ids": model.concept_ids}, ensure_ascii=False), encoding="utf-8")
    np.savez(folder / BANK_FILE, vectors=(model.bank_vectors if model.bank_vectors is not None
                                         else np.zeros((0, 1), np.float16)).astype(np.float16))
    files = {}
    for rel in (HEADS_FILE, VOCAB_FILE, UNITS_FILE, BANK_FILE):
        files[rel] = {"sha256": sha256_file(folder / rel), "bytes": (folder / rel).stat().st_size}
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION, "files": files},
                                                   ensure_ascii=False, indent=1), encoding="utf-8")
    write_stamp(folder, files)


def read_learned_manifest(folder: Path) -> dict:
    try:
        m = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LearnedArtefactError(f"学习模型清单缺失或损坏: {folder / MANIFEST_FILE} ({e}). {LEARNED_HINT}") from None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
        raise LearnedArtefactError(f"学习模型清单格式不对: {folder / MANIFEST_FILE}. {LEARNED_HINT}")
    return m


def verify_learned(folder: Path, manifest: dict, full: bool = False) -> list[str]:
    """Names of damaged or missing files (empty: intact)."""
    bad, stamp = [], ({} if full else read_stamp(folder))
    for rel, info in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            bad.append(f"{rel} (missing)")
        elif path.stat().st_size != info.get("bytes"):
            bad.append(f"{rel} (size differs)")
        elif unchanged_since_stamp(stamp, folder, rel):
            continue
        elif sha256_file(path) != info.get("sha256"):
            bad.append(f"{rel} (checksum differs)")
    if not bad and not full:
        write_stamp(folder, manifest["files"])
    return bad


def load_model(folder: Path) -> LearnedModel:
    """Read a trained model; any missing or damaged file raises LearnedArtefactError."""
    manifest = read_learned_manifest(folder)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise LearnedArtefactError(f"学习模型版本不符: {folder}. {LEARNED_HINT}")
    bad = verify_learned(folder, manifest)
    if bad:
        raise LearnedArtefactError(f"学习模型文件损坏: {', '.join(bad)} ({folder}). {LEARNED_HINT}")
    try:
        meta = json.loads((folder / UNITS_FILE).read_text(encoding="utf-8"))
        vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
        with np.load(folder / HEADS_FILE, allow_pickle=False) as arrays:
            heads = {name: Head(tuple(info["classes"]), arrays[f"{name}.w_dense"], arrays[f"{name}.w_sparse"],
                                arrays[f"{name}.bias"], bool(info["softmax"])) for name, info in meta["heads"].items()}
        with np.load(folder / BANK_FILE, allow_pickle=False) as bank:
            vectors = bank["vectors"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LearnedArtefactError(f"学习模型无法读取: {folder} ({type(e).__name__}: {e}). {LEARNED_HINT}") from None
    return LearnedModel(heads, Vocabulary({g: i for i, g in enumerate(vocab["ngrams"])}, np.asarray(vocab["idf"], np.float32)),
                        [Unit(u["kind"], int(u["row"]), u["text"]) for u in meta["units"]], bool(meta["with_rules"]),
                        vectors if vectors.ndim == 2 and vectors.shape[1] > 1 else None, list(meta.get("bank_labels", [])),
                        name=folder.name, attribute_ids=list(meta["attribute_ids"]), concept_ids=list(meta["concept_ids"]))
