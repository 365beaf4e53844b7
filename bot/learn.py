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

FORMAT_VERSION = 1
SETTING_CLASSES = ("first_line", "adjuvant", "recur_during", "recur_after")
FACET_CLASSES = ("management", "why", "vote", "authors", "other")
REASON_CLASSES = ("not_covered", "off_topic", "unsupported_language")
RULE_FACETS = ("management", "why", "value", "vote", "authors", "general")
NGRAM_RANGE = (1, 3)
HISTORY_NGRAM = 2
# The rule columns are few against thousands of n-grams; scaled so the regularised fit can use them.
RULE_FEATURE_SCALE = 1.0
DENSE_SCALE = 1.0
NEIGHBOURS = 5  # bank questions shown by --explain

LEARNED_HINT = "运行 `gistqa index` 重新训练 (run `gistqa index` to retrain)"


class LearnedArtefactError(IndexError_):
    """A learned artefact is missing, damaged or made for another index: never silently ignored."""


# --- cleaning the noise a phone adds ----------------------------------------------------------
_FULLWIDTH_ALNUM = {c: c - 0xFEE0 for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]}
_REPEATED_PUNCT = re.compile(r"([!?！？。，,.~～、…])\1+")
_MIXED_PUNCT_RUN = re.compile(r"[!?！？]{2,}")


def denoise(text: str) -> str:
    """Emoji and pictographs out, repeated punctuation once, full-width digits and Latin letters
    as ASCII: the same question with or without them reads the same. Chinese punctuation stays
    (the sentence splitter and the rules read it)."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "So" or cat == "Sk" or cat == "Cs" or ch in "\ufe0f\u200d\u20e3":
            out.append(" ")
        else:
            out.append(ch)
    text = "".join(out).translate(_FULLWIDTH_ALNUM)
    text = _MIXED_PUNCT_RUN.sub(lambda m: "？" if any(c in "?？" for c in m.group(0)) else "！", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    text = re.sub(r"\.{2,}|…+", "…", text)
    return re.sub(r"\s+", " ", text).strip()


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


def dense_part(qvec: np.ndarray, rules: RuleView | None) -> np.ndarray:
    v = np.asarray(qvec, dtype=np.float32) * DENSE_SCALE
    return v if rules is None else np.concatenate([v, rules.vector()])


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

    def features(self, question: str, history: list[str], qvec: np.ndarray, rules: RuleView | None) -> Features:
        cols, vals = self.vocab.transform(question_grams(question, history))
        return Features(dense_part(qvec, rules if self.with_rules else None), cols, vals)

    def decide(self, question: str, history: list[str], qvec: np.ndarray, rules: RuleView | None,
               neighbours: bool = False) -> Decision:
        f = self.features(question, history, qvec, rules)
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
        sims = self.bank_vectors.astype(np.float32) @ np.asarray(qvec, dtype=np.float32)
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
        "with_rules": model.with_rules, "bank_labels": model.bank_labels}, ensure_ascii=False), encoding="utf-8")
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
                        name=folder.name)
