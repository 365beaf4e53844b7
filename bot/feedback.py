"""Thumbs up/down from the chat page: one JSON line per vote, appended, never rewritten.

`save_feedback` is called by the chat page; `summarise` is what `gistqa feedback` prints.
"""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

RATINGS = ("up", "down")
RECENT_DOWN_SHOWN = 5
MAX_COMMENT_CHARS = 2000  # a comment longer than this is cut (the line stays one readable record)

_write_lock = threading.Lock()


def save_feedback(path: str | Path, question: str, answer: str, rating: str, comment: str = "") -> dict:
    """Append one record {time, question, answer, rating, comment} to the JSON-lines file at `path`."""
    if rating not in RATINGS:
        raise ValueError(f"rating must be one of {RATINGS}, not {rating!r}")
    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "question": str(question),
        "answer": str(answer),
        "rating": rating,
        "comment": str(comment or "").strip()[:MAX_COMMENT_CHARS],
    }
    line = json.dumps(record, ensure_ascii=False) + "\n"  # json escapes newlines: one record, one line
    path = Path(path)
    with _write_lock:  # threads of one server; the file lock also covers other processes
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"), open(path, "a", encoding="utf-8") as f:
            if f.tell() > 0 and not _ends_with_newline(path):
                f.write("\n")  # an earlier writer died mid-line: keep its text, start ours on a new line
            f.write(line)
            f.flush()
    return record


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def read_feedback(path: str | Path) -> tuple[list[dict], int]:
    """The records in file order, and how many lines could not be read as a record."""
    records: list[dict] = []
    broken = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                broken += 1
                continue
            if not isinstance(rec, dict) or rec.get("rating") not in RATINGS:
                broken += 1
                continue
            records.append(rec)
    return records, broken


def summarise(path: str | Path) -> str:
    """A short report in Chinese and English: counts, share of thumbs up, the latest thumbs down."""
    path = Path(path)
    if not path.exists():
        return f"还没有反馈记录 (no feedback yet): {path} 不存在 (does not exist)。"
    records, broken = read_feedback(path)
    lines = [f"反馈文件 (feedback file): {path}"]
    if broken:
        lines.append(f"跳过 {broken} 行无法读取的记录 (skipped {broken} broken line{'s' if broken != 1 else ''})")
    total = len(records)
    up = sum(1 for r in records if r["rating"] == "up")
    down = total - up
    if total == 0:
        lines.append("没有可用的反馈记录 (no usable feedback records)。")
        return "\n".join(lines)
    lines.append(f"总数 (total): {total}")
    lines.append(f"👍 有帮助 (up): {up}")
    lines.append(f"👎 没帮助 (down): {down}")
    lines.append(f"好评占比 (share up): {up / total:.0%}")
    downs = [r for r in records if r["rating"] == "down"][-RECENT_DOWN_SHOWN:]
    if downs:
        lines.append(f"最近 {len(downs)} 条差评 (latest thumbs down):")
        for r in reversed(downs):
            comment = str(r.get("comment") or "").strip()
            lines.append(f"- [{r.get('time', '?')}] {_one_line(r.get('question', ''))}")
            lines.append(f"  评论 (comment): {_one_line(comment) if comment else '（无 / none）'}")
    return "\n".join(lines)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())
