"""`gistqa eval`: ask every question of the set through `Bot.answer()`, score, report, ratchet.

run_eval   items -> answers -> scores -> EvalResult           (no printing, no files)
write_reports  EvalResult -> results.json, report.md, per_tag.png
run_cli    the command: load, run, write, print, compare with the baseline -> exit code
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from bot.types import Answer
from evals.metrics import (
    LOWER_IS_BETTER,
    QuestionScore,
    Sources,
    aggregate,
    aggregate_by_tag,
    score_answer,
    score_error,
)
from evals.schema import EvalSetError, Item, load_set
from indexer.settings import REPO_ROOT, get_settings

DEFAULT_SET = REPO_ROOT / "evals" / "questions.jsonl"
DEFAULT_BASELINE = REPO_ROOT / "evals" / "baseline.json"
# These must be perfect whatever the baseline says: a quote that is not verbatim, or a number that is
# in no source, is the failure this tool exists to prevent.
MUST_BE_PERFECT = ("quote_verbatim_rate", "numeric_faithfulness")
# The metrics a baseline may hold (shown in this order).
RATCHET_METRICS = ("strict_accuracy", "strict_answer_accuracy", "strict_gold_quoted", "strict_lead", "strict_precision",
                   "strict_off_topic_rate", "strict_false_refusals", "strict_refusal_recall", "answer_chars_p50",
                   "answer_chars_p95", "strict_over_600_rate",
                   "answer_accuracy", "hit@1", "hit@3", "hit@5", "mrr@10", "refusal_recall", "false_refusal_rate",
                   "quote_verbatim_rate", "numeric_faithfulness", "citation_accuracy", "latency_p50_ms", "latency_p95_ms")
# Latency depends on the machine and its load: reported, never baselined. Every other metric of the
# list must stand in the shipped baseline (tests/evals/test_runner.py checks it), so none is ungated.
MACHINE_METRICS = ("latency_p50_ms", "latency_p95_ms")
GATED_METRICS = tuple(m for m in RATCHET_METRICS if m not in MACHINE_METRICS)
# Float noise: aggregate() stores every rate rounded to RATCHET_PLACES decimals, and the ratchet compares
# value and baseline rounded to the same places, with no further slack. The extractive pipeline is
# deterministic (same corpus, index and model -> same answers), so the only run-to-run noise is in
# float sums past the 4th decimal; one question of the ~280 moves a rate by ~0.0036, far above 0.0001,
# so a real change is never rounded away.
RATCHET_PLACES = 4
TABLE_METRICS = ("strict_answer_accuracy", "strict_lead", "strict_precision", "strict_off_topic_rate",
                 "strict_refusal_recall", "answer_chars_p50", "answer_accuracy", "hit@1", "hit@5", "mrr@10", "refusal_recall", "false_refusal_rate",
                 "quote_verbatim_rate", "numeric_faithfulness", "citation_accuracy")

RESULTS_JSON = "results.json"
REPORT_MD = "report.md"
CHART_PNG = "per_tag.png"


@dataclass
class EvalResult:
    items: list[Item]
    answers: list[Answer | None]
    scores: list[QuestionScore]
    overall: dict
    per_tag: dict[str, dict]
    k: int
    scope: str
    writer: str
    index_build: str = ""
    warm_up_ms: float = 0.0
    seconds: float = 0.0
    set_file: str = ""
    finished: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def failing(self) -> list[tuple[Item, QuestionScore]]:
        return [(i, s) for i, s in zip(self.items, self.scores) if s.problems()]

    def to_dict(self) -> dict:
        return {
            "set": self.set_file,
            "finished": self.finished,
            "seconds": round(self.seconds, 2),
            "warm_up_ms": round(self.warm_up_ms, 1),
            "k": self.k,
            "scope": self.scope,
            "writer": self.writer,
            "index_build": self.index_build,
            "overall": self.overall,
            "per_tag": self.per_tag,
            "questions": [
                {
                    "id": item.id,
                    "question": item.question,
                    "history": item.history,
                    "expect": item.expect,
                    "tags": item.tags,
                    "passed": not score.problems(),
                    "problems": score.problems(),
                    "scores": score.to_dict(),
                    "answer": answer.to_dict() if answer is not None else None,
                }
                for item, answer, score in zip(self.items, self.answers, self.scores)
            ],
        }


def run_eval(items: list[Item], bot, k: int = 10, scope: str | None = None, progress: bool = True) -> EvalResult:
    """Answer and score every item. A question that raises is scored as a failure with its error."""
    t0 = time.perf_counter()
    bot.warm_up()  # loads the index and the model, so per-question latency is the answer's own
    warm_up_ms = (time.perf_counter() - t0) * 1000
    index = bot._ensure_loaded()  # the very index the answers are verified against
    sources = Sources.from_index(index)
    answers: list[Answer | None] = []
    scores: list[QuestionScore] = []
    for item in tqdm(items, desc="eval", unit="q", disable=not progress, file=sys.stderr):
        answer = None
        try:
            answer = bot.answer(item.question, history=item.history, scope=scope)
            score = score_answer(item, answer, sources, k)
        except Exception as e:  # noqa: BLE001 - one bad question must not end the run
            frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
            score = score_error(item, f"{type(e).__name__}: {e}{where}")
        answers.append(answer)
        scores.append(score)
    return EvalResult(
        items=items, answers=answers, scores=scores, overall=aggregate(scores), per_tag=aggregate_by_tag(scores),
        k=k, scope=scope or bot.settings.scope, writer=bot.settings.writer, index_build=index.build_dir.name,
        warm_up_ms=warm_up_ms, seconds=time.perf_counter() - t0,
    )


# --- reports ----------------------------------------------------------------------------------
def _fmt(value, name: str = "") -> str:
    """Rates with 4 places (the precision they are stored and compared at), milliseconds with 1."""
    if value is None:
        return "—"
    if name.startswith("latency") or name.startswith("answer_chars"):
        return f"{value:.1f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_report(result: EvalResult) -> str:
    o = result.overall
    lines = [
        "# gistqa 评测报告 (evaluation report)",
        "",
        f"- set: `{result.set_file}` · {o['questions']} questions ({o['counts']['expect_answer']} answer, "
        f"{o['counts']['expect_refuse']} refuse, {o['counts']['with_gold']} with gold)",
        f"- k = {result.k} · scope = {result.scope} · writer = {result.writer} · index build `{result.index_build}`",
        f"- {result.finished} · {result.seconds:.1f} s (warm-up {result.warm_up_ms / 1000:.1f} s) · "
        f"errors: {o['counts']['errors']}",
        "",
        "## 总体 (overall)",
        "",
        "| metric | value | detail |",
        "|---|---|---|",
    ]
    c = o["counts"]
    detail = {
        "quote_verbatim_rate": f"{c['citations']} quotes at their offsets + {c['quote_checks'] - c['citations']} 「」 spans shown",
        "numeric_faithfulness": f"{c['numbers_supported']}/{c['numbers']} numbers",
        "citation_accuracy": f"{c['citations']} quotes",
    }
    for name in RATCHET_METRICS:
        lines.append(f"| {name} | {_fmt(o[name], name)} | {detail.get(name, '')} |")
    lines += ["", "## 按标签 (per tag)", "", "| tag | n | " + " | ".join(TABLE_METRICS) + " |",
              "|---|---|" + "---|" * len(TABLE_METRICS)]
    for tag, m in result.per_tag.items():
        lines.append(f"| {tag} | {m['questions']} | " + " | ".join(_fmt(m[name]) for name in TABLE_METRICS) + " |")
    failing = result.failing()
    lines += ["", f"## 未通过的问题 (failing questions): {len(failing)}", ""]
    if not failing:
        lines.append("None: every question passed every check.")
    for item, score in failing:
        verdict = "answer wrong" if not score.correct else "answer right, other checks failed"
        lines.append(f"### {item.id} · {verdict} · {', '.join(item.tags)}")
        lines.append("")
        lines.append(f"> {item.question}" + (f"  \n> (history: {' / '.join(item.history)})" if item.history else ""))
        lines.append("")
        lines += [f"- {p}" for p in score.problems()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_chart(per_tag: dict[str, dict], path: Path) -> None:
    """Horizontal bars per tag: answer accuracy and hit@5 (a tag without gold has no hit@5 bar)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tags = list(per_tag)
    acc = [per_tag[t]["answer_accuracy"] or 0.0 for t in tags]
    hit = [per_tag[t]["hit@5"] if per_tag[t]["hit@5"] is not None else float("nan") for t in tags]
    fig = Figure(figsize=(8, 0.38 * len(tags) + 1.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = list(range(len(tags)))
    height = 0.38
    ax.barh([y - height / 2 for y in ys], acc, height=height, label="answer accuracy", color="#3b75af")
    ax.barh([y + height / 2 for y in ys], hit, height=height, label="hit@5", color="#ef8636")
    ax.set_yticks(ys, [f"{t} (n={per_tag[t]['questions']})" for t in tags])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("share of questions")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)


def write_reports(result: EvalResult, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": out_dir / RESULTS_JSON, "report": out_dir / REPORT_MD, "chart": out_dir / CHART_PNG}
    paths["results"].write_text(json.dumps(result.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    paths["report"].write_text(render_report(result), encoding="utf-8")
    write_chart(result.per_tag, paths["chart"])
    return paths


# --- baseline ---------------------------------------------------------------------------------
def _resolve_set(name: str | Path) -> Path:
    p = Path(name)
    return (p if p.is_absolute() else REPO_ROOT / p).resolve()


def _display_set(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path.resolve())


def read_baseline(path: Path) -> dict:
    """{"set": ..., "metrics": {name: value}}; raises EvalSetError when unusable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EvalSetError([f"{path}: cannot read the baseline: {e}"]) from e
    problems = []
    if not isinstance(data, dict) or not isinstance(data.get("set"), str) or not isinstance(data.get("metrics"), dict):
        raise EvalSetError([f"{path}: a baseline is {{\"set\": \"evals/questions.jsonl\", \"metrics\": {{...}}}}"])
    for name, value in data["metrics"].items():
        if name not in RATCHET_METRICS:
            problems.append(f"{path}: field 'metrics.{name}': unknown metric (known: {', '.join(RATCHET_METRICS)})")
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{path}: field 'metrics.{name}': expected a number, got {value!r}")
    if problems:
        raise EvalSetError(problems)
    return data


def _worse(name: str, value: float | None, floor: float | None) -> bool:
    if floor is None:
        return False  # no baseline for it: nothing to compare
    if value is None:
        return True  # baselined but not measured: the check stopped working (see ratchet_failures)
    value, floor = round(value, RATCHET_PLACES), round(floor, RATCHET_PLACES)
    return value > floor if name in LOWER_IS_BETTER else value < floor


def _imperfect(name: str, value: float | None) -> bool:
    return name in MUST_BE_PERFECT and value is not None and value < 1.0


def ratchet_failures(metrics: dict, baseline_metrics: dict | None) -> list[str]:
    """Why the run fails: a baselined metric worse than its baseline (at RATCHET_PLACES decimals) or not
    measured at all, or a must-be-perfect metric below 1."""
    failures = []
    for name, floor in (baseline_metrics or {}).items():
        if metrics.get(name) is None:
            # Measured when the baseline was taken, not now (no number found, no gold item scored):
            # an unmeasured metric must not pass as "nothing to compare".
            failures.append(f"{name} = — not measured (baseline {_fmt(floor, name)}): the check measured nothing")
        elif _worse(name, metrics.get(name), floor):
            side = "above" if name in LOWER_IS_BETTER else "below"
            failures.append(f"{name} = {_fmt(metrics[name], name)} {side} baseline {_fmt(floor, name)}")
    for name in MUST_BE_PERFECT:
        if _imperfect(name, metrics.get(name)):
            failures.append(f"{name} = {_fmt(metrics[name])} < 1.0 (must be perfect whatever the baseline)")
    return failures


# --- the command ------------------------------------------------------------------------------
def _summary_table(result: EvalResult, baseline_metrics: dict | None) -> Table:
    table = Table(title=f"gistqa eval · {result.overall['questions']} questions · {result.seconds:.1f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("baseline", justify="right")
    for name in RATCHET_METRICS:
        value, floor = result.overall[name], (baseline_metrics or {}).get(name)
        shown = _fmt(value, name)
        bad = _worse(name, value, floor) or _imperfect(name, value)
        table.add_row(name, f"[red]{shown}[/]" if bad else shown, _fmt(floor, name))
    return table


TAG_COLUMNS = {"strict_answer_accuracy": "strict", "strict_lead": "lead", "strict_off_topic_rate": "off-topic", "answer_accuracy": "accuracy", "hit@5": "hit@5", "refusal_recall": "refusal rec.",
               "false_refusal_rate": "false ref."}


def _tag_table(result: EvalResult) -> Table:
    table = Table(title="per tag")
    table.add_column("tag")
    table.add_column("n", justify="right")
    for header in TAG_COLUMNS.values():
        table.add_column(header, justify="right")
    for tag, m in result.per_tag.items():
        table.add_row(tag, str(m["questions"]), *(_fmt(m[name]) for name in TAG_COLUMNS))
    return table


def run_cli(set_file: Path | None = None, out_dir: Path = Path(".gistqa/eval"), k: int = 10,
            baseline: Path | None = None, scope: str | None = None, writer: str | None = None) -> int:
    """0: at or above the baseline; 1: below it (or a must-be-perfect metric below 1); 2: unusable input."""
    from bot.answer import Bot

    out = Console()
    err = Console(stderr=True)

    def say(console: Console, message: str) -> None:
        console.print(message, highlight=False, soft_wrap=True)  # paths must not be wrapped

    def fail(message: str) -> int:
        say(err, f"[bold red]错误 (error):[/] {message}")
        return 2

    if scope not in (None, "all", "consensus"):
        return fail("--scope 只能是 all 或 consensus")
    if writer not in (None, "extractive", "llm"):
        return fail("--writer 只能是 extractive 或 llm")
    if k < 1:
        return fail("--k 必须 ≥ 1")
    set_path = Path(set_file) if set_file is not None else DEFAULT_SET
    baseline_path = Path(baseline) if baseline is not None else DEFAULT_BASELINE
    if baseline is not None and not baseline_path.exists():
        # Named but absent is a typo, not "no baseline yet": a silent pass would switch the ratchet off.
        return fail(f"基线文件不存在 (baseline not found): {baseline_path}")
    try:
        items = load_set(set_path)
        base = read_baseline(baseline_path) if baseline_path.exists() else None
    except EvalSetError as e:
        return fail(f"评测集或基线有误 (bad evaluation input):\n{e}")

    settings = get_settings()
    if writer:
        settings = settings.model_copy(update={"writer": writer})
    if k > settings.passages_returned:
        say(err, f"[yellow]注意 (note):[/] k={k} > passages_returned={settings.passages_returned}: "
                 f"retrieval metrics see only the {settings.passages_returned} passages an answer returns.")
    bot = Bot(settings, auto_build=True)
    result = run_eval(items, bot, k=k, scope=scope, progress=sys.stderr.isatty())
    result.set_file = _display_set(set_path)
    paths = write_reports(result, Path(out_dir))

    applies = base is not None and _resolve_set(base["set"]) == set_path.resolve()
    floors = base["metrics"] if applies else None
    out.print(_summary_table(result, floors))
    out.print(_tag_table(result))
    say(out, f"未通过的问题 (failing questions): {len(result.failing())} / {len(result.items)} · "
             f"errors: {result.overall['counts']['errors']}")
    say(out, f"报告 (reports): {paths['report']} · {paths['results']} · {paths['chart']}")
    if base is None:
        say(out, f"[yellow]还没有基线 (no baseline yet):[/] {baseline_path}; only the must-be-perfect checks apply.")
    elif not applies:
        say(out, f"[yellow]基线不适用 (no baseline applies):[/] {baseline_path} is for {base['set']}, this run used "
                 f"{result.set_file}; only the must-be-perfect checks apply.")
    failures = ratchet_failures(result.overall, floors)
    for f in failures:
        say(out, f"[bold red]未达标 (below the bar):[/] {f}")
    if failures:
        return 1
    say(out, "[green]通过 (pass)[/]" + ("：不低于基线 (at or above the baseline)" if applies else ""))
    return 0
