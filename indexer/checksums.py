"""Checksums of files we load, and a stamp that spares re-hashing files that have not changed.

A folder we verify (an index build, the ONNX encoder) records each file's sha256 in its manifest.
Hashing everything on every start costs ~0.5 s for the encoder and ~2 s for a 100k-passage index,
so after a file's sha256 matched, its size and mtime go into a stamp (``.verified.json``); a later
check hashes only the files whose size or mtime differ from the stamp. Any write changes a file's
mtime, so damage is still hashed and found.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

STAMP_NAME = ".verified.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _stat_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def read_stamp(folder: Path) -> dict:
    try:
        stamp = json.loads((Path(folder) / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def unchanged_since_stamp(stamp: dict, folder: Path, rel: str) -> bool:
    """The file has the size and mtime it had when its sha256 last matched."""
    return stamp.get(rel) == _stat_key(Path(folder) / rel)


def write_stamp(folder: Path, names: Iterable[str]) -> None:
    try:
        (Path(folder) / STAMP_NAME).write_text(
            json.dumps({rel: _stat_key(Path(folder) / rel) for rel in names}), encoding="utf-8")
    except OSError:
        pass  # a read-only folder is hashed in full on every check instead
