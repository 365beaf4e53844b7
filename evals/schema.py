"""One evaluation item, and `load_set()`, which reads a JSONL set and names every bad line.

An item says what a right answer looks like without fixing its wording: `must_include_any` is a list
of groups, and the answer must contain one string of every group; `must_not_include` lists strings
that must not appear; `gold` lists substrings of the passage(s) retrieval should find.

Strict scoring (what a specialist would accept) reads three more fields. A *unit* is one sentence,
one vote item or one author line of the corpus, named by an exact substring of it (whitespace aside):
- `answer_units`: the units that answer; a right answer quotes at least one, and its first quote
  block should be one of them (the lead);
- `acceptable_units`: units that may also be quoted without being off-topic (context a specialist
  would tolerate: the guideline sentence beside the panel's, the setting's own vote item);
- `setting`: the clinical setting the question is about, for per-setting figures.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class EvalSetError(ValueError):
    """The evaluation set cannot be used; the message names the file, line and field of each problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    history: list[str] = Field(default_factory=list)  # earlier questions of the conversation, oldest first
    expect: Literal["answer", "refuse"]
    must_include_any: list[list[str]] = Field(default_factory=list)
    must_not_include: list[str] = Field(default_factory=list)
    gold: list[str] = Field(default_factory=list)
    answer_units: list[str] = Field(default_factory=list)
    acceptable_units: list[str] = Field(default_factory=list)
    setting: Literal["first_line", "adjuvant", "recur_during", "recur_after", "recurrence", "background",
                     "compare", "unspecified", "literature", "authors", "none"] = "none"
    tags: list[str] = Field(default_factory=list)


def _field_name(loc: tuple) -> str:
    """('must_include_any', 0, 1) -> 'must_include_any[0][1]'."""
    name = str(loc[0]) if loc else "(item)"
    return name + "".join(f"[{part}]" for part in loc[1:])


def consistency_problems(item: Item) -> list[tuple[str, str]]:
    """(field, message) for what the types allow but the scoring cannot use."""
    problems: list[tuple[str, str]] = []
    if item.expect == "answer" and not item.must_include_any:
        problems.append(("must_include_any", "an 'answer' item needs at least one group (else any answer passes)"))
    if item.expect == "refuse" and (item.answer_units or item.acceptable_units):
        problems.append(("answer_units", "a 'refuse' item quotes nothing; remove its units"))
    if item.expect == "refuse" and item.must_include_any:
        problems.append(("must_include_any", "a 'refuse' item is not checked against must_include_any; remove it"))
    for i, group in enumerate(item.must_include_any):
        if not group:
            problems.append((f"must_include_any[{i}]", "empty group (can never be matched)"))
        for j, s in enumerate(group):
            if not "".join(s.split()):
                problems.append((f"must_include_any[{i}][{j}]", "blank string (matches every answer)"))
    for name in ("must_not_include", "gold", "answer_units", "acceptable_units"):
        for j, s in enumerate(getattr(item, name)):
            if not "".join(s.split()):
                problems.append((f"{name}[{j}]", "blank string"))
    return problems


def jsonl_objects(path: Path, what: str) -> tuple[list[tuple[int, str, dict]], list[str]]:
    """(line number, "FILE line N", object) of each non-blank line, and a problem per line that is
    not a JSON object. An unreadable file raises EvalSetError."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EvalSetError([f"{path}: cannot read {what}: {e}"]) from e
    objects, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: invalid JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(data, dict):
            problems.append(f"{where}: expected a JSON object, got {type(data).__name__}")
            continue
        objects.append((number, where, data))
    return objects, problems


def load_set(path: str | Path) -> list[Item]:
    """Read a JSONL evaluation set (blank lines are skipped). Raises EvalSetError listing every problem."""
    path = Path(path)
    items: list[Item] = []
    first_line_of: dict[str, int] = {}
    objects, problems = jsonl_objects(path, "the evaluation set")
    for number, where, data in objects:
        try:
            item = Item.model_validate(data)
        except ValidationError as e:
            for err in e.errors():
                got = f" (got {err['input']!r})" if err["type"] not in ("missing", "extra_forbidden") else ""
                problems.append(f"{where}: field '{_field_name(err['loc'])}': {err['msg']}{got}")
            continue
        for field, message in consistency_problems(item):
            problems.append(f"{where}: field '{field}': {message}")
        if item.id in first_line_of:
            problems.append(f"{where}: field 'id': duplicate id {item.id!r} (first on line {first_line_of[item.id]})")
            continue
        first_line_of[item.id] = number
        items.append(item)
    if not items and not problems:
        problems.append(f"{path}: the evaluation set is empty")
    if problems:
        raise EvalSetError(problems)
    return items
