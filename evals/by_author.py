"""Judging the learned decisions on authors they were not trained on.

`gistqa eval --by-author`: for each author of the bank in turn, train on all the others, answer
that author's questions, score them by the strict rules (evals/metrics.py, plus the bank's own
checks: each part of a two-question message answered, no other setting's text); then the figures
per author and pooled. `gistqa eval --bank-set FILE`: one set (a new author's) answered by the
stored model, first run. `gistqa eval --compare A B`: which items changed verdict between two runs.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from evals.bank import BankItem, load_bank, load_bank_file
from evals.metrics import MAX_ANSWER_CHARS, QuestionScore, Sources, quote_blocks, score_answer, score_error, unit_in

# What the pooled leave-one-author-out figures must reach (the targets), and the CI gate's
# committed floors (evals/bank_baseline.json) beside them.
FIGURES = ("answerable_right", "first_quote_answers", "refusals_right", "false_refusal_rate", "wrong_setting")
LOWER_IS_BETTER = {"false_refusal_rate", "wrong_setting"}


@dataclass
class BankScore:
    item: BankItem
    score: QuestionScore
    wrong_setting: list[str] = field(default_factory=list)
    answered_parts: int = 0
    mode: str = ""

    @property
    def right(self) -> bool:
        return self.score.strict_correct and not self.wrong_setting

    def to_dict(self) -> dict:
        s = self.score
        return {"id": self.item.id, "author": self.item.author, "question": self.item.question,
                "history": self.item.history, "expect": self.item.expect, "tags": s.tags, "right": self.right,
                "refused": s.refused, "lead": s.lead, "gold_quoted": s.gold_quoted, "wrong_setting": self.wrong_setting,
                "problems": s.problems() + [f"another setting's text: 「{w}」" for w in self.wrong_setting]}


def _quote_settings(q, dm, index) -> tuple[str, ...]:
    row = dm.row_of.get(q.passage_id)
    if row is None:
        return ()
    if index.passages[row].vote is not None:
        return tuple(dm.vote_settings.get(row, ()))
    topic = dm.topic_of_row.get(row)
    return tuple(topic.settings) if topic else ()


def score_bank(item: BankItem, answer, sources: Sources, dm, index, k: int = 10) -> BankScore:
    base = item.to_item()
    s = score_answer(base, answer, sources, k)
    out = BankScore(item, s)
    if item.expect != "answer" or answer.refused:
        return out
    blocks = quote_blocks(answer.answer)
    answerable = [p for p in item.parts if p.expect == "answer"]
    if len(answerable) > 1:
        # Every answerable part must be answered: a unit of each part quoted somewhere.
        done = [any(unit_in(b, p.answer_units) for b in blocks) for p in answerable]
        out.answered_parts = sum(done)
        s.gold_quoted = all(done)
        s.lead = bool(blocks) and unit_in(blocks[0], answerable[0].answer_units + answerable[1].answer_units)
        s.strict_correct = (s.gold_quoted and not s.missing_groups and not s.forbidden_found
                            and s.chars <= MAX_ANSWER_CHARS * len(answerable))
    wanted = item.clinical_settings | {p for part in item.parts for p in part.settings}
    if wanted & {"recurrence"}:
        wanted |= {"recur_during", "recur_after"}
    clinical = wanted & {"first_line", "adjuvant", "recur_during", "recur_after"}
    if clinical and "unspecified" not in item.settings:
        fine = list(item.answer_units) + list(item.acceptable_units) + [u for p in item.parts for u in p.answer_units + p.acceptable_units]
        for q in answer.quotes:
            own = _quote_settings(q, dm, index)
            if own and not set(own) & clinical and not unit_in(q.text, fine) and not any(unit_in(u, [q.text]) for u in fine):
                out.wrong_setting.append(q.text[:40])
    return out


def figures(scores: list[BankScore]) -> dict:
    answerable = [b for b in scores if b.item.expect == "answer"]
    refuse = [b for b in scores if b.item.expect == "refuse"]
    answered = [b for b in answerable if not b.score.refused and not b.score.error]

    def rate(n, d):
        return None if not d else round(n / d, 4)

    return {
        "questions": len(scores), "answerable": len(answerable), "refuse": len(refuse),
        "answerable_right": rate(sum(b.right for b in answerable), len(answerable)),
        "first_quote_answers": rate(sum(b.score.lead for b in answerable), len(answerable)),
        "refusals_right": rate(sum(b.score.strict_correct for b in refuse), len(refuse)),
        "false_refusals": sum(b.score.refused for b in answerable),
        "false_refusal_rate": rate(sum(b.score.refused for b in answerable), len(answerable)),
        "wrong_setting": sum(1 for b in answered if b.wrong_setting),
        "strict_overall": rate(sum(b.right for b in scores), len(scores)),
    }


def answer_items(bot, items: list[BankItem], progress=None) -> list[BankScore]:
    from bot.plan import document_map

    index = bot._ensure_loaded()
    sources, dm = Sources.from_index(index), document_map(index)
    out = []
    for item in items:
        try:
            answer = bot.answer(item.question, history=list(item.history))
            out.append(score_bank(item, answer, sources, dm, index))
        except Exception as e:  # noqa: BLE001 - one bad question must not end the run
            out.append(BankScore(item, score_error(item.to_item(), f"{type(e).__name__}: {e}")))
        if progress:
            progress()
    return out


def leave_one_author_out(settings, mode: str = "combined", bank_dir: Path | None = None,
                         authors: list[str] | None = None, say=print) -> dict:
    """Train on every author but one, answer that one's items; each author in turn."""
    from bot.answer import Bot
    from bot.train import examples_of, feature_table, fit

    items = load_bank(bank_dir or settings.bank_dir)
    bot = Bot(settings.model_copy(update={"decisions": mode}), auto_build=True)
    bot._ensure_loaded()
    t0 = time.perf_counter()
    table = None
    if mode != "rules":
        examples = examples_of(items)
        table = feature_table(bot, examples)
        say(f"features of {len(examples)} examples: {time.perf_counter() - t0:.1f} s")
    names = authors or sorted({i.author for i in items})
    per_author, scores = {}, []
    for a in names:
        t = time.perf_counter()
        if table is not None:
            rows = [i for i, e in enumerate(table.examples) if e.author != a]
            bot.use_model(fit(table, rows, with_rules=(mode == "combined")))
        held = [i for i in items if i.author == a]
        got = answer_items(bot, held)
        for g in got:
            g.mode = mode
        scores += got
        per_author[a] = figures(got)
        say(f"{a}: {len(held)} items · right {per_author[a]['answerable_right']} · lead {per_author[a]['first_quote_answers']}"
            f" · refusals {per_author[a]['refusals_right']} · false refusals {per_author[a]['false_refusals']}"
            f" · wrong setting {per_author[a]['wrong_setting']} · {time.perf_counter() - t:.1f} s")
    bot.use_model(None)
    return {"mode": mode, "pooled": figures(scores), "per_author": per_author,
            "items": [s.to_dict() for s in scores], "seconds": round(time.perf_counter() - t0, 1)}


def run_set(settings, path: Path) -> dict:
    """One set answered by the stored model (trained on the whole bank): a new author's first run."""
    from bot.answer import Bot

    items = load_bank_file(path)
    bot = Bot(settings, auto_build=True)
    bot.warm_up()
    scores = answer_items(bot, items)
    return {"mode": settings.decisions, "set": str(path), "pooled": figures(scores), "items": [s.to_dict() for s in scores]}


def compare_runs(a: dict, b: dict) -> dict:
    """Items whose verdict changed from run A to run B, and the per-tag change of the right share."""
    before = {i["id"]: i for i in a["items"]}
    after = {i["id"]: i for i in b["items"]}
    common = [k for k in after if k in before]
    fixed = [after[k] for k in common if after[k]["right"] and not before[k]["right"]]
    broken = [after[k] for k in common if before[k]["right"] and not after[k]["right"]]
    tags = Counter(t for k in common for t in after[k]["tags"])
    deltas = {}
    for t, n in tags.items():
        was = sum(before[k]["right"] for k in common if t in after[k]["tags"])
        now = sum(after[k]["right"] for k in common if t in after[k]["tags"])
        if was != now:
            deltas[t] = {"n": n, "before": round(was / n, 4), "after": round(now / n, 4), "delta": round((now - was) / n, 4)}
    return {"common": len(common), "fixed": fixed, "broken": broken,
            "only_in_a": sorted(set(before) - set(after)), "only_in_b": sorted(set(after) - set(before)),
            "per_tag": dict(sorted(deltas.items(), key=lambda kv: kv[1]["delta"]))}


def gate_failures(pooled: dict, floors: dict) -> list[str]:
    out = []
    for name, floor in floors.items():
        value = pooled.get(name)
        if value is None:
            out.append(f"{name}: not measured (floor {floor})")
        elif (value > floor) if name in LOWER_IS_BETTER else (value < floor):
            out.append(f"{name} = {value} {'above' if name in LOWER_IS_BETTER else 'below'} {floor}")
    return out


def write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _table(title: str, rows: dict[str, dict]) -> str:
    cols = ("questions", "answerable_right", "first_quote_answers", "refusals_right", "false_refusals", "false_refusal_rate", "wrong_setting")
    lines = [f"### {title}", "", "| set | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, f in rows.items():
        lines.append(f"| {name} | " + " | ".join("—" if f.get(c) is None else str(f.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def run_cli(by_author: bool, mode: str, bank_set: Path | None, compare: tuple[Path, Path] | None,
            gate: Path | None, out_dir: Path) -> int:
    """0: done (and at or above the gate's floors); 1: below a floor; 2: unusable input."""
    import sys

    from evals.schema import EvalSetError
    from indexer.settings import get_settings

    def say(msg: str) -> None:
        sys.stdout.write(msg + "\n")
        sys.stdout.flush()

    if mode not in ("combined", "learned", "rules"):
        say("错误 (error): --mode 只能是 combined / learned / rules")
        return 2
    if compare:
        try:
            a, b = (json.loads(Path(p).read_text(encoding="utf-8")) for p in compare)
            diff = compare_runs(a, b)
        except (OSError, ValueError, KeyError, TypeError) as e:
            say(f"错误 (error): 无法比较 (cannot compare): {type(e).__name__}: {e}")
            return 2
        say(f"共同问题 (common items): {diff['common']} · 变对 (fixed): {len(diff['fixed'])} · 变错 (broken): {len(diff['broken'])}")
        for kind in ("broken", "fixed"):
            for it in diff[kind]:
                say(f"  {'✗' if kind == 'broken' else '✓'} {it['id']} {it['question'][:60]} — {'; '.join(it['problems'][:2])}")
        for tag, d in diff["per_tag"].items():
            say(f"  {tag}: {d['before']} → {d['after']} ({d['delta']:+}) n={d['n']}")
        write_json(diff, Path(out_dir) / "compare.json")
        return 0
    settings = get_settings().model_copy(update={"decisions": mode})
    try:
        if bank_set:
            result = run_set(settings, Path(bank_set))
            name = Path(bank_set).stem
            say(_table(f"first run on {bank_set} ({mode})", {name: result["pooled"]}))
            write_json(result, Path(out_dir) / f"set-{name}-{mode}.json")
            return 0
        result = leave_one_author_out(settings, mode, say=say)
    except EvalSetError as e:
        say(f"错误 (error): 问题库有误 (the question bank has errors):\n{e}")
        return 2
    say(_table(f"leave-one-author-out ({mode})", {**result["per_author"], "pooled": result["pooled"]}))
    path = Path(out_dir) / f"by-author-{mode}.json"
    write_json(result, path)
    say(f"结果 (results): {path}")
    if gate is None:
        return 0
    try:
        floors = json.loads(Path(gate).read_text(encoding="utf-8"))["pooled"]
    except (OSError, ValueError, KeyError) as e:
        say(f"错误 (error): 下限文件不可用 (gate file unusable): {gate}: {e}")
        return 2
    failures = gate_failures(result["pooled"], floors)
    for f in failures:
        say(f"未达标 (below the floor): {f}")
    if not failures:
        say("通过 (pass): 留一作者评测不低于下限 (leave-one-author-out at or above the floors)")
    return 1 if failures else 0
