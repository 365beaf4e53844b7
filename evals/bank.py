"""The labelled question bank (`evals/bank/<author>.jsonl`): questions written by independent
authors, each labelled with what a right answer is. The learned decisions are trained on it
(`bot/train.py`) and judged on authors they were not trained on (`evals/by_author.py`).

One item per line. Beside the fields of an evaluation item (`evals/schema.py`) a bank item says
*why* it is what it is, which is what the models learn:
- `settings`: the clinical settings its story implies (first_line, adjuvant, recur_during,
  recur_after, recurrence = either, background, unspecified = a management question naming none,
  none), `facets`: what it asks (what_to_do, dose, why, vote, who, evidence, guideline, compare,
  prognosis, epidemiology, reference, scope);
- `refusal_reason` for a refusal: not_covered (on the subject, not stated), off_topic,
  unsupported_language;
- `parts`: a message with two or more questions, each part labelled on its own.
Units are named by exact substrings of one sentence, vote item or byline (whitespace aside).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evals.schema import EvalSetError, Item, jsonl_objects

SETTINGS = ("first_line", "adjuvant", "recur_during", "recur_after", "recurrence", "background", "unspecified", "none")
FACETS = ("what_to_do", "dose", "why", "vote", "who", "evidence", "guideline", "compare", "prognosis",
          "epidemiology", "reference", "scope")
REASONS = ("not_covered", "off_topic", "unsupported_language")
# The clinical settings whose text the setting guard keeps apart (the rest place nothing).
CLINICAL = ("first_line", "adjuvant", "recur_during", "recur_after")

SettingName = Literal["first_line", "adjuvant", "recur_during", "recur_after", "recurrence", "background",
                      "unspecified", "none"]
FacetName = Literal["what_to_do", "dose", "why", "vote", "who", "evidence", "guideline", "compare", "prognosis",
                    "epidemiology", "reference", "scope"]


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str = Field(min_length=1)
    expect: Literal["answer", "refuse"]
    settings: list[SettingName] = Field(default_factory=list)
    facets: list[FacetName] = Field(default_factory=list)
    answer_units: list[str] = Field(default_factory=list)
    acceptable_units: list[str] = Field(default_factory=list)
    must_include_any: list[list[str]] = Field(default_factory=list)
    refusal_reason: str = ""


class BankItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    author: str = ""  # the file's stem; set by the loader
    question: str = Field(min_length=1)
    history: list[str] = Field(default_factory=list)
    expect: Literal["answer", "refuse"]
    refusal_reason: Literal["", "not_covered", "off_topic", "unsupported_language"] = ""
    settings: list[SettingName] = Field(default_factory=list)
    facets: list[FacetName] = Field(default_factory=list)
    answer_units: list[str] = Field(default_factory=list)
    acceptable_units: list[str] = Field(default_factory=list)
    must_include_any: list[list[str]] = Field(default_factory=list)
    parts: list[Part] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    note: str = ""

    @property
    def clinical_settings(self) -> set[str]:
        """The settings whose text may answer: 'recurrence' is both recurrence settings."""
        out = {s for s in self.settings if s in CLINICAL}
        if "recurrence" in self.settings:
            out |= {"recur_during", "recur_after"}
        return out

    def to_item(self) -> Item:
        """The evaluation item the strict scoring reads (`evals/metrics.py`)."""
        clinical = sorted(self.clinical_settings)
        setting = ("compare" if len({"recurrence" if s.startswith("recur") else s for s in clinical}) > 1
                   else "recurrence" if clinical and all(s.startswith("recur") for s in clinical) and len(clinical) > 1
                   else clinical[0] if clinical else "unspecified" if "unspecified" in self.settings
                   else "background" if "background" in self.settings else "none")
        tags = [f"author:{self.author}", *self.tags, *(f"facet:{f}" for f in self.facets),
                f"expect:{self.expect}"] + ([f"reason:{self.refusal_reason}"] if self.refusal_reason else [])
        return Item(id=self.id, question=self.question, history=list(self.history), expect=self.expect,
                    must_include_any=[list(g) for g in self.must_include_any] if self.expect == "answer" else [],
                    answer_units=list(self.answer_units) if self.expect == "answer" else [],
                    acceptable_units=list(self.acceptable_units) if self.expect == "answer" else [],
                    setting=setting, tags=list(dict.fromkeys(tags)))


def load_bank_file(path: Path) -> list[BankItem]:
    """One author's file; raises EvalSetError naming every bad line."""
    path = Path(path)
    items, seen = [], set()
    objects, problems = jsonl_objects(path, "the question bank")
    for _number, where, data in objects:
        try:
            item = BankItem.model_validate({**data, "author": path.stem})
        except ValidationError as e:
            problems += [f"{where}: field '{'.'.join(map(str, err['loc']))}': {err['msg']}" for err in e.errors()]
            continue
        if item.expect == "answer" and not (item.answer_units and item.must_include_any):
            problems.append(f"{where}: an 'answer' item needs answer_units and must_include_any")
        if item.expect == "refuse" and (item.answer_units or item.must_include_any or not item.refusal_reason):
            problems.append(f"{where}: a 'refuse' item quotes nothing and names its refusal_reason")
        if item.id in seen:
            problems.append(f"{where}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if problems:
        raise EvalSetError(problems)
    return items


def bank_files(bank_dir: Path) -> list[Path]:
    return sorted(Path(bank_dir).glob("*.jsonl"))


def load_bank(bank_dir: Path) -> list[BankItem]:
    """Every author's items, authors in file-name order. Raises EvalSetError listing every problem."""
    items, problems = [], []
    for path in bank_files(bank_dir):
        try:
            items += load_bank_file(path)
        except EvalSetError as e:
            problems += e.problems
    if problems:
        raise EvalSetError(problems)
    ids = [i.id for i in items]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise EvalSetError([f"{bank_dir}: ids used by two authors: {', '.join(dupes[:10])}"])
    return items
