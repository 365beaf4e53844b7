"""Sentence embeddings with the prefixes the model was trained with (e5: "query: " / "passage: ")."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Nothing may reach a model hub: these machines are offline by design.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class Embedder:
    def __init__(self, model_dir: Path, fingerprint: str, query_prefix: str, passage_prefix: str, batch_size: int = 32):
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar on every start

        # One thread per query: on a 2-core machine serving several users (or busy with anything
        # else), intra-op threads contend and a query took 0.5 s instead of 0.2 s (measured under
        # load). Index builds raise it for their batches (see `batch_threads`).
        torch.set_num_threads(1)
        self.model_dir = Path(model_dir)
        self.fingerprint = fingerprint
        self.model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        self.dim = int(self.model.get_embedding_dimension())
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.batch_size = batch_size

    def _encode(self, texts: list[str], prefix: str, progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            [prefix + t for t in texts],
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_passages(self, texts: list[str], progress: bool = False) -> np.ndarray:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # batches use every core
        try:
            return self._encode(texts, self.passage_prefix, progress)
        finally:
            torch.set_num_threads(before)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.query_prefix, False)


_CACHE: dict[tuple, Embedder] = {}


def get_embedder(settings) -> Embedder:
    """One loaded model per (folder, prefixes) in a process: loading takes seconds."""
    from indexer.e5_model import ensure_default_model, model_fingerprint

    model_dir = ensure_default_model(settings)
    key = (str(model_dir), settings.query_prefix, settings.passage_prefix)
    if key not in _CACHE:
        _CACHE[key] = Embedder(model_dir, model_fingerprint(model_dir), settings.query_prefix,
                               settings.passage_prefix, settings.embed_batch_size)
    return _CACHE[key]
