"""Shared fixtures: the real model, the real index of the real corpus (built once per run)."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SEED = REPO.parent / "shared" / "seed" / "consensus_kit_exon9_raw.txt"


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(demo, **options) -> str:
    """Serve a built Gradio page on a free loopback port in this process; its URL (close with demo.close())."""
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **options)
    return url


@pytest.fixture(scope="session")
def settings():
    from indexer.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def built_index(settings):
    """The default index of the real corpus (a no-op when it is up to date)."""
    from bot.train import train
    from indexer.build import build_index

    build_index(settings)
    train(settings)  # the learned decisions, as `gistqa index` trains them (a no-op when current)
    return settings.index_dir


@pytest.fixture(scope="session")
def bot(built_index, settings):
    from bot.answer import Bot

    b = Bot(settings)
    b.warm_up()
    return b


@pytest.fixture(scope="session")
def stored_index(bot):
    return bot._ensure_loaded()


@pytest.fixture
def tmp_settings(tmp_path, settings):
    """Settings with a private corpus and index folder (the model cache is shared)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # The question bank is written for the real corpus: a private corpus is answered by the rules.
    return settings.model_copy(update={"corpus_dir": corpus, "index_dir": tmp_path / "index", "decisions": "rules"})


@pytest.fixture
def copy_of_index(tmp_path, built_index, settings):
    """A private copy of the built index, safe to damage."""
    target = tmp_path / "index"
    shutil.copytree(built_index, target, ignore=shutil.ignore_patterns(".build.lock"))
    return settings.model_copy(update={"index_dir": target})
