"""`gistqa`: the command line. Presentation only: every answer comes from `Bot.answer()`."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from indexer.settings import get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="gistqa: 逐字引用KIT exon 9 GIST专家共识作答（离线）")
err = Console(stderr=True)
out = Console()


def _user_errors():
    """The exception types whose message is meant for the user (printed without a traceback)."""
    from bot.answer import user_error_types

    return user_error_types()


def _internal_error(err: Exception) -> None:
    """An unexpected error: a short message for the user, the details in a log file for maintainers."""
    import traceback

    log = get_settings().index_dir.parent / "error.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(traceback.format_exc() + "\n")
        where = f"; 详情已记录在 {log}"
    except OSError:
        where = ""
    _fail(f"内部错误 ({type(err).__name__}){where} (internal error; please report it)", code=3)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]错误 (error):[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


@app.command()
def index(
    rebuild: bool = typer.Option(False, "--rebuild", help="从头重建（不复用已有向量）"),
    verify: bool = typer.Option(False, "--verify", help="只校验索引文件（不加载模型）"),
) -> None:
    """建立或更新索引 (build or update the index)."""
    settings = get_settings()
    if verify:
        from indexer.store import current_build_dir, read_manifest, verify_files

        build = current_build_dir(Path(settings.index_dir))
        if build is None:
            _fail(f"还没有索引: {settings.index_dir}. 运行 `gistqa index` (no index yet)")
        try:
            bad = verify_files(build, read_manifest(build))
        except _user_errors() as e:
            _fail(str(e))
        if bad:
            _fail(f"索引文件损坏: {', '.join(bad)}. 运行 `gistqa index --rebuild`")
        out.print(f"索引完好 (index intact): {build}")
        if settings.decisions != "rules":
            from bot.learn import read_learned_manifest, verify_learned
            from bot.train import bank_checksum, learned_dir

            folder = learned_dir(settings, build.name, bank_checksum(settings.bank_dir), settings.decisions == "combined")
            try:
                bad = verify_learned(folder, read_learned_manifest(folder), full=True)
            except _user_errors() as e:
                _fail(str(e))
            if bad:
                _fail(f"学习模型文件损坏: {', '.join(bad)}. 运行 `gistqa index` 重新训练")
            out.print(f"学习模型完好 (learned model intact): {folder}")
        return
    from indexer.build import build_index

    try:
        report = build_index(settings, rebuild=rebuild, progress=sys.stderr.isatty())
    except _user_errors() as e:
        _fail(str(e))
    for p in report.problems:
        err.print(f"[yellow]跳过文件 (skipped):[/] {p}", highlight=False)
    if report.noop:
        out.print(f"索引已是最新，无需更新 (up to date): {report.passages} 段落, {report.sentences} 句 ({report.seconds:.2f} s)")
    else:
        out.print(
            f"索引已建立 (built): {report.documents} 文档, {report.passages} 段落, {report.sentences} 句; "
            f"新嵌入 {report.embedded}, 复用 {report.reused}; {report.seconds:.1f} s"
            + (f"; {report.embed_rate:.0f} 条/秒" if report.embedded else "")
        )
    _train(settings, force=rebuild)


def _train(settings, force: bool = False) -> None:
    from bot.train import train as train_models
    from evals.schema import EvalSetError

    try:
        report = train_models(settings, force=force)
    except EvalSetError as e:
        _fail(f"问题库有误 (the question bank has errors):\n{e}")
    except _user_errors() as e:
        _fail(str(e))
    if report is None:
        out.print("学习模型：未启用（decisions = rules）或问题库为空 (learned decisions off)")
    elif report.noop:
        out.print(f"学习模型已是最新 (learned model up to date): {report.folder}")
    else:
        out.print(f"学习模型已训练 (trained): {report.examples} 例, {report.authors} 位作者, {report.units} 个引用单元; "
                  f"{report.seconds:.1f} s → {report.folder}")


@app.command()
def train(force: bool = typer.Option(False, "--force", help="即使已是最新也重新训练")) -> None:
    """用问题库训练问题理解模型（`gistqa index` 会自动调用）(train the learned decisions on the bank)."""
    _train(get_settings(), force=force)


@app.command()
def ask(
    question: str = typer.Argument(..., help="问题"),
    history: Optional[list[str]] = typer.Option(None, "--history", help="之前的问题（可多次给出，按顺序）"),
    as_json: bool = typer.Option(False, "--json", help="输出 JSON"),
    scope: Optional[str] = typer.Option(None, "--scope", help="all（默认，含文献卡片）或 consensus（仅共识原文）"),
    explain: bool = typer.Option(False, "--explain", help="说明判断过程：临床情境、所问方面、候选句及取舍原因"),
    detail: bool = typer.Option(False, "--detail", help="详细模式：最多引用 6 段（默认 3 段）"),
) -> None:
    """回答一个问题 (answer one question)."""
    from bot.answer import DISCLAIMER, Bot

    if scope not in (None, "all", "consensus"):
        _fail("--scope 只能是 all 或 consensus")
    settings = get_settings()
    try:
        bot = Bot(settings, auto_build=True)
        result = bot.answer(question, history=history or [], scope=scope, detail=detail)
    except _user_errors() as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 - no traceback for a user, ever
        _internal_error(e)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False, indent=1) + "\n")
        return
    # Plain write: a console library would hard-wrap long lines, breaking quotes in the middle.
    sys.stdout.write(result.answer + "\n\n" + DISCLAIMER + "\n")
    if explain:
        sys.stdout.write("\n--- explain ---\n" + "\n".join(f"· {n}" for n in result.notes) + "\n")
        if result.explain:
            sys.stdout.write("候选句 (candidates: score, setting of its topic, kept in the asked setting):\n")
            for c in result.explain.get("candidates", []):
                sys.stdout.write(f"  {c['score']:.3f} {'✓' if c['in_setting'] else '✗'} [{'/'.join(c['topic_settings']) or '-'}] "
                                 f"{c['sentence']}… 〔{c['place']}〕\n")
            for b in result.explain.get("blocks", []):
                sys.stdout.write(f"引用 (quoted): {b['role']} {b['place']} — {b['why']}\n")
            _explain_learned(result.explain)


def _explain_learned(explain: dict) -> None:
    """The learned decisions with their probabilities, and the nearest bank questions with their labels."""
    for part in explain.get("parts", []):
        sys.stdout.write(f"— 分问 (part): {part.get('question', '')}\n")
        _explain_learned(part)
    learned = explain.get("learned")
    if not learned:
        return
    sys.stdout.write(f"学习判断 (learned): p(refuse) {learned['p_refuse']} (reason {learned['reason']}) · settings "
                     + ", ".join(f"{k} {v}" for k, v in learned["settings"].items())
                     + " · facet " + ", ".join(f"{k} {v}" for k, v in learned["facet_p"].items()) + "\n")
    for u in learned.get("units", []):
        sys.stdout.write(f"  lead unit {u['p']}: {u['unit']}…\n")
    sys.stdout.write("最相近的问题库问题 (nearest bank questions):\n")
    for n in learned.get("neighbours", []):
        sys.stdout.write(f"  {n['cosine']} [{n['id']}] {n['expect']} · {'/'.join(n['settings']) or '-'} · {n['facet']} · {n['question']}\n")


@app.command()
def config() -> None:
    """打印生效的设置 (print the effective settings)."""
    from indexer.embed import encoder_threads, usable_cores

    settings = get_settings()
    # Settings that say "decide for me" (0) next to what was decided on this machine.
    resolved = {"encoder_threads": encoder_threads(settings), "usable_cores": usable_cores()}
    sys.stdout.write(json.dumps({**settings.public_dict(), "resolved": resolved}, ensure_ascii=False, indent=1) + "\n")


@app.command("eval")
def evaluate(
    set_file: Optional[Path] = typer.Option(None, "--set", help="评测集 JSONL（默认 evals/questions.jsonl）"),
    out_dir: Path = typer.Option(Path(".gistqa/eval"), "--out", help="报告输出目录"),
    k: int = typer.Option(10, "--k", help="检索评测的截断位置"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="基线文件（默认 evals/baseline.json）"),
    scope: Optional[str] = typer.Option(None, "--scope", help="all 或 consensus"),
    writer: Optional[str] = typer.Option(None, "--writer", help="extractive 或 llm"),
    by_author: bool = typer.Option(False, "--by-author", help="问题库按作者留一评测：用其余作者训练，在该作者上测"),
    mode: str = typer.Option("combined", "--mode", help="--by-author 的判断方式：combined / learned / rules"),
    bank_set: Optional[Path] = typer.Option(None, "--bank-set", help="用已训练的模型首次评测一个新作者的问题集（问题库格式）"),
    compare: Optional[tuple[Path, Path]] = typer.Option(None, "--compare", help="比较两次评测结果 JSON：列出结论改变的问题"),
    gate: Optional[Path] = typer.Option(None, "--gate", help="--by-author 的下限文件（如 evals/bank_baseline.json）"),
) -> None:
    """运行评测集并与基线比较 (run the evaluation set; non-zero exit below the baseline)."""
    from evals.runner import run_cli

    if by_author or bank_set or compare:
        from evals.by_author import run_cli as run_bank_eval

        try:
            code = run_bank_eval(by_author, mode, bank_set, compare, gate, out_dir)
        except _user_errors() as e:
            _fail(str(e))
        raise typer.Exit(code)

    try:
        code = run_cli(set_file, out_dir, k, baseline, scope, writer)
    except _user_errors() as e:
        _fail(str(e))
    raise typer.Exit(code)


@app.command()
def bench(
    smoke: bool = typer.Option(False, "--smoke", help="小规模快速模式（CI 用）"),
    out_dir: Path = typer.Option(Path(".gistqa/bench"), "--out", help="报告输出目录"),
) -> None:
    """性能基准：延迟、吞吐、内存、规模曲线、与 LangChain 基线对比 (benchmark)."""
    from evals.bench import run_cli as run_bench_cli

    try:
        code = run_bench_cli(out_dir, smoke)
    except _user_errors() as e:
        _fail(str(e))
    raise typer.Exit(code)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, "--host"),
    port: Optional[int] = typer.Option(None, "--port"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, max=64,
                                          help="回答 POST /api/ask 的进程数（默认 1：在服务进程内回答）"),
    share: bool = typer.Option(False, "--share", help="生成公共分享链接（默认关闭；只启动页面，不含 /api/ask）"),
) -> None:
    """启动聊天页面和 JSON 接口 POST /api/ask (start the chat page and the JSON API)."""
    try:
        if share or get_settings().share:
            from bot.app import launch  # Gradio's own server makes the share link

            launch(host=host, port=port, share=True)
        else:
            from bot.serve import run

            run(host=host, port=port, workers=workers)
    except _user_errors() as e:
        _fail(str(e))


@app.command()
def feedback() -> None:
    """汇总聊天页面中的点赞/点踩 (summarise saved feedback)."""
    from bot.feedback import summarise

    sys.stdout.write(summarise(get_settings().feedback_path) + "\n")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
