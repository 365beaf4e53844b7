"""`gistqa bench`: how fast, how big, how far it scales, and how it compares with the plain pipeline.

run_bench   settings, out_dir -> bench.json, bench.md, bench.png (returns what bench.json holds)
run_cli     the command: run, print the headline, exit code (1 when a phase failed)

Phases, each a function returning a plain dict (one key of bench.json each):

  cold_start   fresh `gistqa ask --json` processes: process start to first answer
  warm         `Bot.answer()` over the evaluation set: p50/p95/p99 per stage of `timing_ms`
  concurrency  1/4/16 clients against the chat page's HTTP API (`/ask`) on loopback
  memory       peak RSS after warm-up and after the load
  build        first build, no-op rebuild, one changed file, on a temporary copy of the corpus
  baseline     RecursiveCharacterTextSplitter 500/50 + LangChain FAISS + top-5 joined, same model
  scaling      synthetic corpora of 1k/10k/100k passages: build time, disk, memory, query latency,
               HNSW recall@10 against exact search

The synthetic corpora are not embedded (100k passages would take ~40 min on two cores): a synthetic
passage is 2-3 real sentences, perturbed, plus a filler sentence, and its vector is the mean of the
real vectors of the sentences it recombines plus small noise, L2-normalised. Its BM25 tokens are the
real tokenizer's output for each piece, concatenated. Each size is built and queried in a child
process (`python -m evals.bench --worker build|query JOB.json`) so its memory is measured alone.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from evals.metrics import Sources, forbidden_found, missing_groups, percentile, retrieval_rank, score_answer
from evals.schema import Item, load_set
from indexer.settings import REPO_ROOT, Settings

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
BENCH_PNG = "bench.png"
DEFAULT_SET = REPO_ROOT / "evals" / "questions.jsonl"
CONSENSUS_FILE = "consensus_kit_exon9.md"

# The stages of `Answer.timing_ms`, in pipeline order ("verify" is absent from refusals).
STAGES = ("load", "analyse", "embed_query", "dense_search", "lexical_search", "fusion", "select", "format",
          "verify", "total")
RETRIEVE_STAGES = ("dense_search", "lexical_search", "fusion")
HIT_K = 5  # the baseline returns 5 chunks; ours returns `passages_returned` (5) passages

# The plain pipeline a user would write first (shared/notes/baseline-findings.md, first row).
BASELINE_CHUNK_SIZE = 500
BASELINE_CHUNK_OVERLAP = 50
BASELINE_TOP_K = 5

# Bounds: every wait has a limit.
COLD_START_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 120
WORKER_TIMEOUT_S = {1_000: 900, 10_000: 1_800, 100_000: 5_400}
APP_START_TIMEOUT_S = 120

# Synthetic corpora.
SYNTHETIC_SEED = 20261124
NOISE_SIGMA = 0.005  # per dimension; |noise| ~ 0.1 against unit vectors (dim 384)
VARIANTS_PER_SENTENCE = 4  # the sentence itself and three perturbed copies
FILLER_POOL = 400
PASSAGES_PER_SYNTHETIC_DOC = 10
TOKENISE_SAMPLE = 200  # synthetic passages run through the real tokenizer to time it and check tokens
EF_SEARCH_GRID = (16, 32, 64, 128, 256)
RECALL_TARGET = 0.99
# The floor, not the target: HNSW recall@10 against exact search at the efSearch the index stores (what
# the bot searches with). Below it, HNSW loses more than one passage in ten that exact search finds,
# and the run is a failure (an error in bench.json, exit 1), whatever its latency.
MIN_RECALL_AT_STORED_EF = 0.9
CHANGED_FILE_TEXT = "\n本段为基准测试追加的一句话，用于测量只改动一个文件时的增量构建耗时。\n"


@dataclass(frozen=True)
class Plan:
    """How much of everything one run measures."""

    sizes: tuple[int, ...]
    concurrency: tuple[int, ...]
    questions: int | None  # None: the whole evaluation set
    cold_runs: int
    min_requests: int  # per concurrency level: max(min_requests, 4 x clients)
    answers_at_scale: int  # full `Bot.answer()` calls on each synthetic corpus
    build_subset: bool  # smoke: the two smallest corpus files, not the whole corpus

    def requests_for(self, clients: int) -> int:
        return max(self.min_requests, 4 * clients)


FULL = Plan(sizes=(1_000, 10_000, 100_000), concurrency=(1, 4, 16), questions=None, cold_runs=3, min_requests=24,
            answers_at_scale=40, build_subset=False)
SMOKE = Plan(sizes=(1_000,), concurrency=(1, 4), questions=10, cold_runs=1, min_requests=8, answers_at_scale=5,
             build_subset=True)


# --- small measures -----------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """The process's peak resident set since it started (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def current_rss_mb() -> float | None:
    return _status_mb("VmRSS")


def high_water_rss_mb() -> float | None:
    """Peak RSS of this process image. Unlike ru_maxrss, a child started by a big parent does not
    inherit the parent's size (ru_maxrss survives fork + exec on Linux), so the workers use this."""
    return _status_mb("VmHWM")


def machine_load() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"load_1min": round(one, 2), "load_5min": round(five, 2), "load_15min": round(fifteen, 2),
            "cpus": os.cpu_count()}


def spread(values: list[float]) -> dict:
    """p50/p95/p99 (the evaluation's percentile) and the mean of a list of milliseconds."""
    values = [v for v in values if v is not None]
    return {"n": len(values), "p50": percentile(values, 0.50), "p95": percentile(values, 0.95),
            "p99": percentile(values, 0.99), "mean": round(statistics.fmean(values), 2) if values else None}


def stage_spread(timings: list[dict]) -> dict[str, dict]:
    return {stage: spread([t[stage] for t in timings if stage in t]) for stage in STAGES}


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1000


def select_items(items: list[Item], n: int | None) -> list[Item]:
    """All items, or n spread evenly over the set (so a smoke run still sees every kind of question)."""
    if n is None or n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _settings_env(settings: Settings) -> dict[str, str]:
    """The settings as GISTQA_* variables, so a child process uses the same index, model and thresholds."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None or not isinstance(value, (str, int, float, bool, Path)):
            continue
        env[f"GISTQA_{name.upper()}"] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


def _child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **_settings_env(settings), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}


def _gistqa_command() -> list[str]:
    script = Path(sys.executable).parent / "gistqa"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bot.cli"]


# --- cold start ---------------------------------------------------------------------------------
def measure_cold_start(settings: Settings, question: str, runs: int) -> dict:
    """Wall time of fresh `gistqa ask --json` processes, split by the answer's own first-call timing."""
    env = _child_env(settings)
    rows = []
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run([*_gistqa_command(), "ask", question, "--json"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=COLD_START_TIMEOUT_S)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"`gistqa ask` exited {proc.returncode}: {proc.stderr[-1500:]}")
        timing = json.loads(proc.stdout)["timing_ms"]
        rows.append({
            "wall_s": round(wall, 3),
            "answer_total_ms": timing["total"],
            # First call: "load" reads and verifies the index; "embed_query" loads the model, then embeds.
            "index_load_ms": timing["load"],
            "model_load_and_first_embed_ms": timing["embed_query"],
            "startup_and_imports_s": round(wall - timing["total"] / 1000, 3),
        })
    return {
        "question": question,
        "runs": rows,
        "median": {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]},
        "method": "fresh `gistqa ask QUESTION --json` processes; wall = process start to exit after the first "
                  "answer; the inside split is the answer's own timing_ms of that first call.",
    }


# --- warm latency -------------------------------------------------------------------------------
def load_bot(settings: Settings):
    """A Bot with its index and model loaded, and how long each took in this process."""
    from bot.answer import Bot
    from indexer import embed

    bot = Bot(settings, auto_build=False)
    t = time.perf_counter()
    bot._ensure_loaded()
    index_ms = _ms_since(t)
    model_was_loaded = bool(embed._CACHE)
    t = time.perf_counter()
    bot.embedder()
    model_ms = _ms_since(t)
    t = time.perf_counter()
    bot.warm_up()
    return bot, {"index_load_ms": round(index_ms, 1), "model_load_ms": round(model_ms, 1),
                 "model_already_in_process": model_was_loaded, "warm_up_ms": round(_ms_since(t), 1)}


def answer_items(bot, items: list[Item]) -> tuple[list[dict], list]:
    """Answer every item, scored as the evaluation scores it (hit@5 on the returned passages)."""
    sources = Sources.from_index(bot._ensure_loaded())
    rows, answers = [], []
    for item in items:
        t = time.perf_counter()
        answer = bot.answer(item.question, history=item.history)
        wall_ms = _ms_since(t)
        score = score_answer(item, answer, sources, HIT_K)
        rows.append({"id": item.id, "wall_ms": round(wall_ms, 2), "timing_ms": answer.timing_ms,
                     "refused": answer.refused, "correct": score.correct, "has_gold": score.has_gold,
                     "rank": score.rank, "answer_chars": len(answer.answer)})
        answers.append(answer)
    return rows, answers


def quality(rows: list[dict]) -> dict:
    gold = [r for r in rows if r["has_gold"]]
    return {
        f"hit@{HIT_K}": round(sum(1 for r in gold if r["rank"] is not None and r["rank"] <= HIT_K) / len(gold), 4)
        if gold else None,
        "answer_accuracy": round(sum(r["correct"] for r in rows) / len(rows), 4) if rows else None,
        "median_answer_chars": statistics.median(r["answer_chars"] for r in rows) if rows else None,
        "questions": len(rows),
        "with_gold": len(gold),
    }


def measure_warm(bot, items: list[Item]) -> dict:
    """Every question once with no recent query vectors (each one embedded: the model's own time),
    then the same questions again, as a clicked follow-up or the next trainee's same question is
    answered (its vector kept: `Bot.query_vector`)."""
    from indexer.embed import encoder_threads

    bot.forget_query_vectors()
    rows, answers = answer_items(bot, items)
    again = [row["wall_ms"] for row in answer_items(bot, items)[0]]
    bot.forget_query_vectors()
    return {
        "questions": len(rows),
        "encoder_threads": encoder_threads(bot.settings),
        "stages_ms": stage_spread([r["timing_ms"] for r in rows]),
        "wall_ms": spread([r["wall_ms"] for r in rows]),
        "repeated_wall_ms": spread(again),
        "refused": sum(r["refused"] for r in rows),
        "quality": {**quality(rows), "strict_answer_accuracy": _strict_accuracy(items, answers,
                                                                                Sources.from_index(bot._ensure_loaded()))},
    }


# --- concurrency --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request_plan(items: list[Item], n: int) -> list[Item]:
    return [items[i % len(items)] for i in range(n)]


def _run_level(clients: int, requests: list[Item], call: Callable[[int, Item], float | None]) -> dict:
    """`clients` workers share a fixed list of requests; each worker owns its connection (index)."""
    latencies: list[float] = []
    server_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for item in requests[w::clients]:
            t = time.perf_counter()
            try:
                inside = call(w, item)
            except Exception as e:  # noqa: BLE001 - counted, the level goes on
                with lock:
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                continue
            elapsed = _ms_since(t)
            with lock:
                latencies.append(elapsed)
                if inside is not None:
                    server_ms.append(inside)

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - t
    return {"clients": clients, "requests": len(requests), "ok": len(latencies), "errors": len(errors),
            "error_samples": errors[:3], "wall_s": round(wall, 3),
            "throughput_rps": round(len(latencies) / wall, 2) if wall > 0 else None,
            "latency_ms": spread(latencies), "answer_total_ms": spread(server_ms)}


def _client(url: str):
    from gradio_client import Client

    # Offline: no telemetry, no downloads.
    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


def _start_app(bot):
    """The chat page on a free loopback port, or None and why not (then the bench uses threads)."""
    try:
        from bot.app import build_app
    except Exception as e:  # noqa: BLE001 - the page may be mid-rewrite; the bench falls back
        return None, None, f"bot.app could not be imported ({type(e).__name__}: {e})"
    demo = build_app(bot, feedback_path=Path(tempfile.gettempdir()) / f"gistqa-bench-feedback-{os.getpid()}.jsonl")
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    endpoints = _client(url).view_api(print_info=False, return_format="dict")
    if "/ask" not in (endpoints or {}).get("named_endpoints", {}):
        demo.close()
        return None, None, "the chat page has no API endpoint named 'ask'"
    return demo, url, None


def measure_concurrency(bot, items: list[Item], plan: Plan) -> dict:
    """Fixed request counts per level, through HTTP when the page has `/ask`, and directly from threads."""
    out: dict = {"levels_http": [], "levels_direct": []}

    def direct(_w: int, item: Item) -> float:
        return bot.answer(item.question, history=item.history).timing_ms["total"]

    for clients in plan.concurrency:
        bot.forget_query_vectors()  # requests repeat the questions: measure them embedded, not recalled
        out["levels_direct"].append(_run_level(clients, _request_plan(items, plan.requests_for(clients)), direct))

    demo, url, why_not = _start_app(bot)
    out["mode"] = "http" if demo is not None else "threads"
    out["fallback_reason"] = why_not
    if demo is None:
        out["levels_http"] = []
        return out
    try:
        for clients in plan.concurrency:
            connections = [_client(url) for _ in range(clients)]

            def over_http(w: int, item: Item, connections=connections) -> float | None:
                job = connections[w].submit(item.question, list(item.history), "all", api_name="/ask")
                _markdown, full = job.result(timeout=REQUEST_TIMEOUT_S)
                return (full or {}).get("timing_ms", {}).get("total")

            bot.forget_query_vectors()
            out["levels_http"].append(_run_level(clients, _request_plan(items, plan.requests_for(clients)), over_http))
    finally:
        demo.close()
    return out


# --- serving: `gistqa serve --workers N`, POST /api/ask ---------------------------------------------
SERVE_WORKERS = (1, 2)


def _proc_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _start_server(settings: Settings, workers: int) -> tuple[subprocess.Popen, str, dict]:
    port = _free_port()
    # No recent query vectors kept: the levels repeat the same questions, and every request should
    # cost what a new question costs (the load of many trainees asking different things).
    proc = subprocess.Popen([*_gistqa_command(), "serve", "--port", str(port), "--workers", str(workers)],
                            cwd=REPO_ROOT, env={**_child_env(settings), "GISTQA_QUERY_CACHE_SIZE": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + APP_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gistqa serve exited {proc.returncode}: {proc.stderr.read()[-1500:]}")
        try:
            import urllib.request

            with urllib.request.urlopen(url + "/api/health", timeout=5) as r:
                health = json.loads(r.read())
            if len(health.get("worker_pids", [])) == workers:
                return proc, url, health
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gistqa serve --workers {workers} did not start within {APP_START_TIMEOUT_S} s")


def measure_serving(settings: Settings, items: list[Item], plan: Plan) -> dict:
    """`gistqa serve --workers 1|2` as a real process; 1/4/16 clients POST /api/ask over keep-alive
    connections; the RSS of the front process and of each worker after warm-up and after the load."""
    import http.client

    out: dict = {"runs": []}
    for workers in SERVE_WORKERS:
        proc, url, health = _start_server(settings, workers)
        host, port = url.removeprefix("http://").split(":")
        pids = {"front": proc.pid, **{f"worker{i + 1}": pid for i, pid in enumerate(health["worker_pids"])
                                      if workers > 1}}
        try:
            warm = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT_S)
            for item in items[:5]:  # warm-up: first answers load lazily built structures
                warm.request("POST", "/api/ask", json.dumps({"question": item.question}), {"content-type": "application/json"})
                warm.getresponse().read()
            rss_warm = {name: _proc_rss_mb(pid) for name, pid in pids.items()}
            levels = []
            for clients in plan.concurrency:
                connections = [http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT_S)
                               for _ in range(clients)]

                def post(w: int, item: Item, connections=connections) -> float | None:
                    body = json.dumps({"question": item.question, "history": list(item.history)}, ensure_ascii=False)
                    connections[w].request("POST", "/api/ask", body.encode("utf-8"), {"content-type": "application/json"})
                    response = connections[w].getresponse()
                    data = json.loads(response.read())
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {str(data)[:200]}")
                    return data.get("timing_ms", {}).get("total")

                levels.append(_run_level(clients, _request_plan(items, plan.requests_for(clients)), post))
                for c in connections:
                    c.close()
            out["runs"].append({"workers": workers, "levels": levels, "rss_after_warm_up_mb": rss_warm,
                                "rss_after_load_mb": {name: _proc_rss_mb(pid) for name, pid in pids.items()}})
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    out["method"] = ("`gistqa serve --port P --workers N` in its own process; each client thread owns one keep-alive "
                     "http.client connection and POSTs {question, history} to /api/ask; fixed request counts per level. "
                     "workers=1 answers in the server process; workers=2 in two answer processes behind it.")
    return out


# --- the baseline as its own process: cold start and memory ---------------------------------------
def _worker_baseline(job: dict) -> dict:
    """The plain LangChain pipeline from a fresh process: import, load the model on torch, split and
    embed the consensus, answer one question. Wall time to the first answer and RSS after it."""
    t0 = time.perf_counter()
    baseline = plain_langchain_pipeline(Settings(**job["settings"]) if job.get("settings") else None)
    baseline["search"](job["question"])
    return {"cold_start_s": round(time.perf_counter() - t0, 3), "rss_mb": current_rss_mb(),
            "high_water_rss_mb": high_water_rss_mb()}


# --- index build --------------------------------------------------------------------------------
def _copy_corpus(settings: Settings, target: Path, subset: bool) -> Path:
    from indexer.load import corpus_files

    source = Path(settings.corpus_dir)
    if not subset:
        shutil.copytree(source, target)
        return target
    target.mkdir(parents=True)
    for path in sorted(corpus_files(source), key=lambda f: f.stat().st_size)[:2]:
        (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / path.relative_to(source))
    return target


def measure_build(settings: Settings, work: Path, plan: Plan) -> dict:
    """First build (embedding everything), a no-op rebuild, then one changed file, into a temporary index."""
    from indexer.build import build_index
    from indexer.embed import get_embedder
    from indexer.load import corpus_files
    from indexer.store import load_build

    corpus = _copy_corpus(settings, work / "corpus", plan.build_subset)
    tmp_settings = settings.model_copy(update={"corpus_dir": corpus, "index_dir": work / "index", "decisions": "rules"})
    first = build_index(tmp_settings)
    noop = build_index(tmp_settings)
    changed_file = corpus_files(corpus)[-1]
    with open(changed_file, "a", encoding="utf-8") as f:
        f.write(CHANGED_FILE_TEXT)
    one = build_index(tmp_settings)

    # Batched embedding of the passages alone (the model is already loaded: this is the model's rate).
    embedder = get_embedder(tmp_settings)
    texts = [p.text for p in load_build(work / "index").passages]
    t = time.perf_counter()
    embedder.encode_passages(texts)
    embed_s = time.perf_counter() - t
    return {
        "corpus": "the two smallest corpus files (smoke)" if plan.build_subset else "the whole corpus",
        "documents": first.documents, "passages": first.passages, "sentences": first.sentences,
        "first_build_s": round(first.seconds, 3),
        "first_build_embedded_texts": first.embedded,
        "first_build_embed_s": round(first.embed_seconds, 3),
        "first_build_texts_per_s": round(first.embed_rate, 1),
        "passages_per_s": round(len(texts) / embed_s, 1) if embed_s > 0 else None,
        "embed_batch_size": settings.embed_batch_size,
        "noop_s": round(noop.seconds, 3), "noop_was_noop": noop.noop,
        "one_file_s": round(one.seconds, 3), "one_file_embedded": one.embedded, "one_file_reused": one.reused,
        "one_file_changed": changed_file.relative_to(corpus).as_posix(),
        "index_bytes": dir_bytes(Path(one.build_dir)),
        "note": "The model was already loaded in this process (its load time is under warm)",
    }


# --- the plain LangChain baseline ---------------------------------------------------------------
def e5_embeddings(embedder):
    """Our embedder behind LangChain's Embeddings interface, with the e5 prefixes ("passage: ", "query: ")."""
    from langchain_core.embeddings import Embeddings

    class E5Embeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embedder.encode_passages(list(texts)).tolist()

        def embed_query(self, text: str) -> list[float]:
            return embedder.encode_queries([text])[0].tolist()

    return E5Embeddings()


def plain_langchain_pipeline(settings: Settings | None = None) -> dict:
    """What a developer writes with LangChain: RecursiveCharacterTextSplitter 500/50 over the
    consensus, the same e5 model through sentence-transformers on torch (LangChain's usual
    HuggingFaceEmbeddings path), FAISS.from_texts, top-5 chunks joined as the answer."""
    import warnings

    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from indexer.e5_model import ensure_default_model
    from indexer.embed import Embedder, encoder_threads
    from indexer.settings import get_settings

    settings = settings or get_settings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community announces its sunset
        from langchain_community.vectorstores import FAISS

    model_dir = ensure_default_model(settings)
    embedder = Embedder(model_dir, "baseline", settings.query_prefix, settings.passage_prefix)
    import torch

    # As many threads as ours get (`encoder_threads`), so the ratio compares pipelines, not cores.
    torch.set_num_threads(encoder_threads(settings))
    text = (Path(settings.corpus_dir) / CONSENSUS_FILE).read_text(encoding="utf-8")
    t = time.perf_counter()
    chunks = RecursiveCharacterTextSplitter(chunk_size=BASELINE_CHUNK_SIZE,
                                            chunk_overlap=BASELINE_CHUNK_OVERLAP).split_text(text)
    store = FAISS.from_texts(chunks, e5_embeddings(embedder))
    return {"search": lambda q: store.similarity_search(q, k=BASELINE_TOP_K), "chunks": chunks, "text": text,
            "build_s": round(time.perf_counter() - t, 3), "threads": torch.get_num_threads()}


# The latency ratio is measured with both pipelines in one process, in alternating blocks of this
# many questions: runs a few minutes apart on a shared machine differed by up to 40% (the baseline's
# p50 24.7 ms in one run, 34.0 ms in the next), more than the difference being measured.
PAIRED_BLOCK = 20


def paired_latency(bot, search, items: list[Item], block: int = PAIRED_BLOCK) -> dict:
    """Wall time of `Bot.answer` (each question embedded: no recalled vectors) and of the
    baseline's search, question for question, alternating in blocks so drift hits both alike."""
    ours: list[float] = []
    theirs: list[float] = []

    def run_ours(chunk: list[Item]) -> None:
        for item in chunk:
            t = time.perf_counter()
            bot.answer(item.question, history=item.history)
            ours.append(_ms_since(t))

    def run_theirs(chunk: list[Item]) -> None:
        for item in chunk:
            t = time.perf_counter()
            "\n\n".join(d.page_content for d in search(item.question))
            theirs.append(_ms_since(t))

    bot.forget_query_vectors()
    for n, start in enumerate(range(0, len(items), block)):
        chunk = items[start : start + block]
        # A B, then B A: whatever the switch between the two costs falls on each alike.
        for run in ((run_ours, run_theirs) if n % 2 == 0 else (run_theirs, run_ours)):
            run(chunk)
    bot.forget_query_vectors()
    return {"gistqa_ms": spread(ours), "baseline_ms": spread(theirs), "block": block,
            "method": f"one process, blocks of {block} questions alternating which pipeline goes first; wall time "
                      "of Bot.answer and of the baseline's similarity_search + join"}


def measure_baseline(settings: Settings, items: list[Item], sources, bot=None) -> dict:
    """The plain pipeline's latency and quality on the same questions (answers scored by the same
    rules), and, given our ``bot``, both latencies measured side by side (`paired_latency`)."""
    pipeline = plain_langchain_pipeline(settings)
    search = pipeline["search"]
    search("预热")
    rows, answers = [], []
    for item in items:
        t = time.perf_counter()
        docs = search(item.question)
        answer = "\n\n".join(d.page_content for d in docs)
        latency = _ms_since(t)
        rank = retrieval_rank([SimpleNamespace(text=d.page_content) for d in docs], item.gold, HIT_K) if item.gold else None
        if item.expect == "answer":
            correct = not missing_groups(answer, item.must_include_any) and not forbidden_found(answer, item.must_not_include)
        else:
            correct = False  # it never refuses
        rows.append({"wall_ms": latency, "has_gold": bool(item.gold), "rank": rank, "correct": correct,
                     "answer_chars": len(answer)})
        # As the scorer reads an answer: the text shown, no quote blocks, never refused.
        answers.append(SimpleNamespace(answer=answer, refused=False, refusal_reason="", quotes=[], dropped=[], timing_ms={},
                                       passages=[SimpleNamespace(text=d.page_content) for d in docs]))
    cold = _run_worker("baseline", {"size": "cold", "question": items[0].question,
                                    "settings": json.loads(settings.model_dump_json())},
                       Path(tempfile.mkdtemp(prefix="gistqa-bench-baseline-")), COLD_START_TIMEOUT_S, settings)
    return {
        "pipeline": f"RecursiveCharacterTextSplitter({BASELINE_CHUNK_SIZE}/{BASELINE_CHUNK_OVERLAP}) over "
                    f"{CONSENSUS_FILE}, the same e5 model on torch (sentence-transformers) behind langchain_core "
                    f"Embeddings, langchain_community FAISS.from_texts, similarity_search k={BASELINE_TOP_K}, "
                    "answer = chunks joined",
        "chunks": len(pipeline["chunks"]), "document_chars": len(pipeline["text"]), "build_s": pipeline["build_s"],
        "torch_threads": pipeline["threads"],
        "latency_ms": spread([r["wall_ms"] for r in rows]),
        "quality": {**quality(rows), "strict_answer_accuracy": _strict_accuracy(items, answers, sources)},
        "cold_start_s": cold["cold_start_s"], "rss_mb": cold["rss_mb"],
        "paired": paired_latency(bot, search, items) if bot is not None else None,
    }


def _strict_accuracy(items: list[Item], answers: list, sources) -> float | None:
    """The evaluation's strict answer accuracy (`evals.metrics.strict_metrics`) of these answers."""
    from evals.metrics import strict_metrics

    return strict_metrics([score_answer(i, a, sources, HIT_K) for i, a in zip(items, answers)])["strict_answer_accuracy"]


def compare(ours: dict, baseline: dict, cold: dict | None = None, serving: dict | None = None) -> dict:
    """Ours as ratios to the baseline (latency, memory, cold start: < 1 is better; quality: > 1 is better)."""
    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    ql, qb = ours["quality"], baseline["quality"]
    front_rss = None
    for run in (serving or {}).get("runs", []):
        if run["workers"] == 1:
            front_rss = (run.get("rss_after_load_mb") or {}).get("front")
    our_cold = ((cold or {}).get("median") or {}).get("wall_s")
    # Latency from the paired measurement when there is one (same minutes, same process), else
    # from the two phases (minutes apart).
    paired = baseline.get("paired")
    ours_ms, theirs_ms = ((paired["gistqa_ms"], paired["baseline_ms"]) if paired
                          else (ours["stages_ms"]["total"], baseline["latency_ms"]))
    return {
        "latency_p50_ratio": ratio(ours_ms["p50"], theirs_ms["p50"]),
        "latency_p95_ratio": ratio(ours_ms["p95"], theirs_ms["p95"]),
        "latency_measured": "paired" if paired else "separate phases",
        "latency_ms": {"gistqa": {"p50": ours_ms["p50"], "p95": ours_ms["p95"]},
                       "baseline": {"p50": theirs_ms["p50"], "p95": theirs_ms["p95"]}},
        "memory_ratio": ratio(front_rss, baseline.get("rss_mb")),
        "memory_mb": {"gistqa_serve": front_rss, "baseline": baseline.get("rss_mb")},
        "cold_start_ratio": ratio(our_cold, baseline.get("cold_start_s")),
        "cold_start_s": {"gistqa_ask": our_cold, "baseline": baseline.get("cold_start_s")},
        f"hit@{HIT_K}_ratio": ratio(ql[f"hit@{HIT_K}"], qb[f"hit@{HIT_K}"]),
        "answer_accuracy_ratio": ratio(ql["answer_accuracy"], qb["answer_accuracy"]),
        "strict_answer_accuracy": {"gistqa": ql.get("strict_answer_accuracy"), "baseline": qb.get("strict_answer_accuracy")},
        "strict_answer_accuracy_ratio": ratio(ql.get("strict_answer_accuracy"), qb.get("strict_answer_accuracy")),
        "median_answer_chars_ratio": ratio(ql["median_answer_chars"], qb["median_answer_chars"]),
    }


# --- synthetic corpora --------------------------------------------------------------------------
_HAN = re.compile(r"[\u4e00-\u9fff]{2,}")
_DIGITS = re.compile(r"\d+")


def _perturb(text: str, rng: np.random.Generator, bigrams: list[str]) -> str:
    """One or two small edits: another number, another bigram, two clauses swapped, a character dropped."""
    for _ in range(int(rng.integers(1, 3))):
        op = int(rng.integers(0, 4))
        if op == 0 and _DIGITS.search(text):
            text = _DIGITS.sub(lambda m: str(int(rng.integers(1, 1000))), text, count=1)
        elif op == 1 and len(text) > 4:
            i = int(rng.integers(0, len(text) - 2))
            text = text[:i] + bigrams[int(rng.integers(0, len(bigrams)))] + text[i + 2:]
        elif op == 2 and "，" in text[:-1]:
            body, end = (text[:-1], text[-1]) if text[-1] in "。；！？" else (text, "")
            parts = body.split("，")
            i, j = rng.choice(len(parts), size=2, replace=False)
            parts[i], parts[j] = parts[j], parts[i]
            text = "，".join(parts) + end
        elif len(text) > 8:
            i = int(rng.integers(0, len(text) - 1))
            text = text[:i] + text[i + 1:]
    return text


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def synthetic_corpus(real, lexicon, n_passages: int, seed: int = SYNTHETIC_SEED):
    """The real index's content plus synthetic passages up to `n_passages`, as one BuildContent.

    A synthetic passage is 2-3 real sentences (perturbed) and one filler sentence, in random order.
    Vectors: mean of the recombined sentences' real vectors + N(0, NOISE_SIGMA) noise, L2-normalised
    (a sentence: its source's vector + noise; a filler sentence: its passage's vector + noise).
    Tokens: the real tokenizer's output for each piece, concatenated (no embedding, no re-tokenising).
    """
    from indexer.store import BuildContent
    from indexer.tokenize import lexical_tokens
    from indexer.types import Document, Passage, Sentence

    rng = np.random.default_rng(seed)
    dim = real.passage_vectors.shape[1]
    sentences = real.sentences
    base_sv = real.sentence_vectors
    bigrams = sorted({run[i:i + 2] for s in sentences for run in _HAN.findall(s.text) for i in range(len(run) - 1)})

    # Pools, tokenised once by the real tokenizer.
    variants = []  # per real sentence: [(text, tokens, concepts)] * VARIANTS_PER_SENTENCE
    for s in sentences:
        texts = [s.text] + [_perturb(s.text, rng, bigrams) for _ in range(VARIANTS_PER_SENTENCE - 1)]
        variants.append([(t, lexical_tokens(t, lexicon), lexicon.concepts_in(t)) for t in texts])
    fillers = []
    for _ in range(FILLER_POOL):
        t = "".join(bigrams[int(i)] for i in rng.integers(0, len(bigrams), size=int(rng.integers(6, 15)))) + "。"
        fillers.append((t, lexical_tokens(t, lexicon), lexicon.concepts_in(t)))
    section = ("合成文献", "正文")
    section_tokens = lexical_tokens(" ".join(section), lexicon)

    documents = list(real.documents.values())
    passages = list(real.passages)
    all_sentences = list(sentences)
    concepts = [sorted(c) for c in real.passage_concepts]
    tokens = [lexical_tokens(" ".join(p.section_path) + " " + p.text, lexicon) for p in real.passages]
    n_syn = max(0, n_passages - len(passages))
    sources: list[np.ndarray] = []  # per synthetic passage: rows of the real sentences it recombines
    sentence_source: list[int] = []  # per synthetic sentence: real sentence row, or -1 for filler
    sentence_owner: list[int] = []  # per synthetic sentence: its synthetic passage number
    for d in range((n_syn + PASSAGES_PER_SYNTHETIC_DOC - 1) // PASSAGES_PER_SYNTHETIC_DOC):
        doc_id = f"syn-{d:06d}"
        title = f"合成文献 {d}"
        texts = []
        cursor = 0
        doc_passages = []
        for j in range(min(PASSAGES_PER_SYNTHETIC_DOC, n_syn - d * PASSAGES_PER_SYNTHETIC_DOC)):
            k = int(rng.integers(2, 4))
            src = rng.integers(0, len(sentences), size=k)
            pieces = [(variants[int(r)][int(rng.integers(0, VARIANTS_PER_SENTENCE))], int(r)) for r in src]
            pieces.insert(int(rng.integers(0, k + 1)), (fillers[int(rng.integers(0, FILLER_POOL))], -1))
            text = "".join(p[0][0] for p in pieces)
            pid = f"{doc_id}#p{j + 1}"
            number = len(sources)
            offset = cursor
            for i, ((piece, _, _), row) in enumerate(pieces):
                all_sentences.append(Sentence(pid, i, offset, offset + len(piece), piece))
                sentence_source.append(row)
                sentence_owner.append(number)
                offset += len(piece)
            doc_passages.append(Passage(pid, doc_id, "text", title, section, "text", j + 1, cursor, cursor + len(text), text))
            tokens.append(section_tokens + [t for (_, toks, _), _ in pieces for t in toks])
            concepts.append(sorted(set().union(*(c for (_, _, c), _ in pieces))))
            sources.append(src)
            texts.append(text)
            cursor += len(text) + 2
        body = "\n\n".join(texts)
        documents.append(Document(doc_id, f"synthetic/{doc_id}.md", "text", title, body,
                                  hashlib.sha256(body.encode("utf-8")).hexdigest(), {"synthetic": True}))
        passages.extend(doc_passages)

    syn_pv = np.zeros((n_syn, dim), dtype=np.float32)
    for k in (2, 3):  # the mean of k sentence vectors, for every passage made of k real sentences
        rows = [i for i, s in enumerate(sources) if len(s) == k]
        if rows:
            syn_pv[rows] = base_sv[np.stack([sources[i] for i in rows])].mean(axis=1)
    syn_pv = _unit_rows(syn_pv + NOISE_SIGMA * rng.standard_normal(syn_pv.shape, dtype=np.float32))
    src = np.asarray(sentence_source, dtype=np.int64)
    owner = np.asarray(sentence_owner, dtype=np.int64)
    syn_sv = np.empty((len(src), dim), dtype=np.float32)
    for lo in range(0, len(src), 50_000):  # in blocks: the noise of 400k x 384 at once is 600 MB
        s, o = src[lo:lo + 50_000], owner[lo:lo + 50_000]
        block = np.where((s >= 0)[:, None], base_sv[np.maximum(s, 0)], syn_pv[o])
        syn_sv[lo:lo + 50_000] = _unit_rows(block + NOISE_SIGMA * rng.standard_normal(block.shape, dtype=np.float32))
    pv = np.ascontiguousarray(np.vstack([real.passage_vectors, syn_pv]), dtype=np.float32)
    sv = np.ascontiguousarray(np.vstack([real.sentence_vectors, syn_sv]), dtype=np.float32)

    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # Same vector space as the real index (synthetic vectors are derived from its vectors).
        "model": real.manifest.get("model", {}),
        "corpus": {},
        "lexicon_sha256": real.manifest.get("lexicon_sha256"),
        "counts": {"documents": len(documents), "passages": len(passages), "sentences": len(all_sentences)},
        "problems": [],
        "versions": real.manifest.get("versions", {}),
        "synthetic": {"seed": seed, "real_passages": len(real.passages), "synthetic_passages": n_syn,
                      "noise_sigma": NOISE_SIGMA},
    }
    content = BuildContent(documents, passages, all_sentences, concepts, pv, sv, tokens, manifest)
    return content, {"real_passages": len(real.passages), "synthetic_passages": n_syn,
                     "sentences": len(all_sentences), "documents": len(documents)}


# --- workers (child processes, one per corpus size and job) --------------------------------------
def _worker_build(job: dict) -> dict:
    """Generate a synthetic corpus and write it with the real store; time the parts of write_build."""
    import bm25s

    import indexer.store as store
    from indexer.lexicon import Lexicon
    from indexer.tokenize import lexical_tokens

    rss_start = current_rss_mb()
    real = store.load_build(Path(job["real_index_dir"]))
    lexicon = Lexicon.load(Path(job["lexicon_path"]))
    t = time.perf_counter()
    content, counts = synthetic_corpus(real, lexicon, job["size"])
    generate_s = time.perf_counter() - t

    # The real tokenizer on a sample: its cost per passage (for a real build of this size) and
    # whether the concatenated per-piece tokens equal what it makes of the whole passage.
    sample = range(len(real.passages), min(len(content.passages), len(real.passages) + TOKENISE_SAMPLE))
    t = time.perf_counter()
    same = 0
    for i in sample:
        p = content.passages[i]
        whole = lexical_tokens(" ".join(p.section_path) + " " + p.text, lexicon)
        lexicon.concepts_in(" ".join(p.section_path) + " " + p.text)
        same += Counter(whole) == Counter(content.lexical_tokens[i])
    tokenise_ms = _ms_since(t) / len(sample) if sample else None

    timers: dict[str, float] = {}
    make_dense_index, bm25_index = store.make_dense_index, bm25s.BM25.index

    def timed_dense(*args, **kwargs):
        t0 = time.perf_counter()
        out = make_dense_index(*args, **kwargs)
        timers["dense_index_s"] = round(time.perf_counter() - t0, 3)
        return out

    def timed_bm25(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = bm25_index(self, *args, **kwargs)
        timers["lexical_index_s"] = round(time.perf_counter() - t0, 3)
        return out

    store.make_dense_index, bm25s.BM25.index = timed_dense, timed_bm25  # this child process only
    t = time.perf_counter()
    build_dir = store.write_build(Path(job["index_dir"]), content, job["exact_search_max"])
    write_s = time.perf_counter() - t
    files = store.read_manifest(build_dir)["files"]
    groups = Counter()
    for rel, info in files.items():
        groups[rel.split("/")[0] if "/" in rel else rel] += info["bytes"]
    return {
        **counts,
        "passages": len(content.passages),
        "dense_kind": "hnsw" if len(content.passages) > job["exact_search_max"] else "exact",
        "generate_s": round(generate_s, 3),
        "write_build_s": round(write_s, 3),
        **timers,
        "index_bytes": dir_bytes(build_dir),
        "file_bytes": dict(groups),
        "real_tokenise_ms_per_passage": round(tokenise_ms, 3) if tokenise_ms else None,
        "derived_tokens_equal_real_share": round(same / len(sample), 4) if sample else None,
        "rss_start_mb": rss_start,
        "peak_rss_mb": high_water_rss_mb(),
    }


def _search_ms(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    rows, times = [], []
    for q in queries:
        t = time.perf_counter()
        _, r = index.search(q.reshape(1, -1), k)
        times.append(_ms_since(t))
        rows.append(r[0])
    return np.stack(rows), times


def _recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth))
    return round(hits / (k * len(truth)), 4)


def _worker_query(job: dict) -> dict:
    """Load the synthetic build as the bot does, time bot.retrieve.retrieve, and HNSW against exact."""
    import faiss

    from bot.retrieve import retrieve
    from indexer.lexicon import Lexicon
    from indexer.store import load_build, make_dense_index

    rss_imports = current_rss_mb()
    t = time.perf_counter()
    index = load_build(Path(job["index_dir"]))  # verifies every checksum, as the bot's load does
    load_s = time.perf_counter() - t
    gc.collect()
    rss_loaded = current_rss_mb()
    lexicon = Lexicon.load(Path(job["lexicon_path"]))
    texts = json.loads(Path(job["queries_json"]).read_text(encoding="utf-8"))
    qvecs = np.load(job["queries_npy"], allow_pickle=False)
    k = job["dense_top_k"]

    def run_retrieve() -> dict:
        timings = []
        retrieve(index, lexicon, qvecs[0], texts[0], dense_k=k, lexical_k=job["lexical_top_k"],
                 rrf_k=job["rrf_k"], scope="all")  # warm-up
        for text, q in zip(texts, qvecs):
            timing: dict = {}
            t0 = time.perf_counter()
            retrieve(index, lexicon, q, text, dense_k=k, lexical_k=job["lexical_top_k"], rrf_k=job["rrf_k"],
                     scope="all", timing=timing)
            timing["retrieve_total"] = _ms_since(t0)
            timings.append(timing)
        return {stage: spread([t[stage] for t in timings]) for stage in (*RETRIEVE_STAGES, "retrieve_total")}

    retrieval = run_retrieve()
    # index.dense keeps owning the C++ object; a downcast view of it must not outlive it.
    stored = index.dense if hasattr(index.dense, "hnsw") else faiss.downcast_index(index.dense)
    stored_is_hnsw = hasattr(stored, "hnsw")
    exact = make_dense_index(index.passage_vectors, 1 << 62) if stored_is_hnsw else stored
    t = time.perf_counter()
    hnsw = stored if stored_is_hnsw else make_dense_index(index.passage_vectors, 0)  # typed already
    hnsw_build_s = None if stored_is_hnsw else round(time.perf_counter() - t, 3)
    stored_ef = int(hnsw.hnsw.efSearch)
    truth10, exact_times = _search_ms(exact, qvecs, 10)
    truth_k, exact_k_times = _search_ms(exact, qvecs, k)
    grid = []
    for ef in EF_SEARCH_GRID:
        hnsw.hnsw.efSearch = ef
        found, times = _search_ms(hnsw, qvecs, 10)
        grid.append({"ef_search": ef, "recall@10": _recall(found, truth10, 10), "p50_ms": spread(times)["p50"]})
    hnsw.hnsw.efSearch = stored_ef
    found_k, hnsw_k_times = _search_ms(hnsw, qvecs, k)  # as the bot asks: k = dense_top_k, stored efSearch
    recommended = next((g["ef_search"] for g in grid if g["recall@10"] >= RECALL_TARGET), EF_SEARCH_GRID[-1])
    out = {
        "passages": len(index.passages), "sentences": len(index.sentences), "queries": len(texts),
        "dense_kind": "hnsw" if stored_is_hnsw else "exact",
        "load_s": round(load_s, 3),
        "rss_after_imports_mb": rss_imports, "rss_after_load_mb": rss_loaded,
        "index_rss_mb": round(rss_loaded - rss_imports, 1) if rss_loaded and rss_imports else None,
        "retrieve_ms": retrieval,
        "exact_search_ms": {"k": k, "at_k": spread(exact_k_times), "at_10": spread(exact_times)},
        "hnsw": {
            "M": 32, "ef_construction": int(hnsw.hnsw.efConstruction), "stored_ef_search": stored_ef,
            "build_s": hnsw_build_s, "grid": grid,
            "as_bot_searches": {"k": k, "ef_search": stored_ef, "recall@10": _recall(found_k, truth10, 10),
                                "recall@k": _recall(found_k, truth_k, k), "p50_ms": spread(hnsw_k_times)["p50"]},
            "recommended_ef_search": recommended,
        },
    }
    if stored_is_hnsw:  # the same retrieval with the recommended efSearch
        stored.hnsw.efSearch = recommended
        out["retrieve_ms_at_recommended_ef"] = run_retrieve()
    out["peak_rss_mb"] = high_water_rss_mb()
    return out


WORKERS = {"build": _worker_build, "query": _worker_query, "baseline": _worker_baseline}


def _run_worker(kind: str, job: dict, work: Path, timeout_s: float, settings: Settings) -> dict:
    job_path = work / f"job-{kind}-{job['size']}.json"
    result_path = work / f"result-{kind}-{job['size']}.json"
    job_path.write_text(json.dumps({**job, "result_path": str(result_path)}, ensure_ascii=False), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "evals.bench", "--worker", kind, str(job_path)], cwd=REPO_ROOT,
                          env=_child_env(settings), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"{kind} worker for {job['size']} passages exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(result_path.read_text(encoding="utf-8"))


def _worker_main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "--worker" or argv[1] not in WORKERS:
        print("usage: python -m evals.bench --worker build|query JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[2]).read_text(encoding="utf-8"))
    result = WORKERS[argv[1]](job)
    Path(job["result_path"]).write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")
    return 0


# --- scaling ------------------------------------------------------------------------------------
def measure_scaling(settings: Settings, bot, items: list[Item], plan: Plan, work: Path) -> dict:
    """Each size: a build child, a query child, then the full Bot.answer() in this process."""
    from bot.answer import Bot
    from bot.query import analyse

    queries = [analyse(i.question, i.history, bot.lexicon, bot._corpus_norm, settings.max_question_chars)
               for i in items]
    texts = [q.retrieval_text for q in queries]
    (work / "queries.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    np.save(work / "queries.npy", bot.embedder().encode_queries(texts), allow_pickle=False)
    rows = []
    for size in plan.sizes:
        index_dir = work / f"synthetic-{size}"
        job = {"size": size, "index_dir": str(index_dir), "real_index_dir": str(settings.index_dir),
               "lexicon_path": str(settings.lexicon_path), "exact_search_max": settings.exact_search_max,
               "queries_json": str(work / "queries.json"), "queries_npy": str(work / "queries.npy"),
               "dense_top_k": settings.dense_top_k, "lexical_top_k": settings.lexical_top_k, "rrf_k": settings.rrf_k}
        timeout = WORKER_TIMEOUT_S.get(size, 5_400)
        row: dict = {"size": size, "load_before": machine_load()}
        row["build"] = _run_worker("build", job, work, timeout, settings)
        row["query"] = _run_worker("query", job, work, timeout, settings)
        # The whole answer at this size, in this process (the model is already loaded here).
        scaled = Bot(settings.model_copy(update={"index_dir": index_dir, "decisions": "rules"}))
        t = time.perf_counter()
        scaled._ensure_loaded()
        load_s = time.perf_counter() - t
        timings, refused = [], 0
        for item in items[: plan.answers_at_scale]:
            answer = scaled.answer(item.question, history=item.history)
            timings.append(answer.timing_ms)
            refused += answer.refused
        row["answer"] = {"bot_load_s": round(load_s, 3), "questions": len(timings), "refused": refused,
                         "stages_ms": stage_spread(timings)}
        del scaled
        gc.collect()
        shutil.rmtree(index_dir, ignore_errors=True)
        rows.append(row)
    hnsw_rows = [r for r in rows if r["query"]["hnsw"]["grid"]]
    recommended = hnsw_rows[-1]["query"]["hnsw"]["recommended_ef_search"] if hnsw_rows else None
    low_recall = [f"HNSW recall@10 {r['query']['hnsw']['as_bot_searches']['recall@10']:.3f} < {MIN_RECALL_AT_STORED_EF} "
                  f"at the stored efSearch {r['query']['hnsw']['stored_ef_search']} ({r['size']:,} passages)"
                  for r in hnsw_rows if r["query"]["hnsw"]["as_bot_searches"]["recall@10"] < MIN_RECALL_AT_STORED_EF]
    return {
        "sizes": rows,
        "recommended_ef_search": recommended,
        "min_recall_at_stored_ef": MIN_RECALL_AT_STORED_EF,
        "recall_failures": low_recall,
        "method": (
            "Synthetic corpora = the real index (99 passages) + synthetic passages, each 2-3 real sentences "
            "(perturbed: another number, another bigram, clauses swapped, a character dropped) plus one filler "
            "sentence of corpus bigrams. NOT embedded: a passage's vector is the mean of the real vectors of the "
            f"sentences it recombines + N(0, {NOISE_SIGMA}) noise per dimension, L2-normalised; BM25 tokens are the "
            "real tokenizer's output per piece, concatenated. Written by indexer.store.write_build (exact "
            f"IndexFlatIP up to {settings.exact_search_max} passages, HNSW above), loaded by load_build, queried by "
            "bot.retrieve.retrieve unchanged, with the evaluation questions' real query vectors."
        ),
    }


def estimate_real_build(build: dict, scaling: dict) -> list[dict]:
    """What a real (embedded) build of each synthetic size would cost at the measured rates."""
    rate = build.get("first_build_texts_per_s")
    out = []
    for row in scaling.get("sizes", []):
        b = row["build"]
        texts = b["passages"] + b["sentences"]
        embed_s = texts / rate if rate else None
        tok_s = b["passages"] * b["real_tokenise_ms_per_passage"] / 1000 if b.get("real_tokenise_ms_per_passage") else None
        out.append({"size": row["size"], "texts_to_embed": texts,
                    "embed_s": round(embed_s, 1) if embed_s else None,
                    "tokenise_s": round(tok_s, 1) if tok_s else None,
                    "write_s": b["write_build_s"]})
    return out


# --- the run ------------------------------------------------------------------------------------
def run_bench(settings: Settings, out_dir: Path, smoke: bool = False, set_file: Path | None = None) -> dict:
    """Measure everything the plan asks, write bench.json, bench.md and bench.png into out_dir."""
    from indexer.build import build_index

    plan = SMOKE if smoke else FULL
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t_run = time.perf_counter()
    items = select_items(load_set(set_file or DEFAULT_SET), plan.questions)
    result: dict = {
        "meta": {"started": started, "smoke": smoke, "plan": plan.__dict__, "questions": len(items),
                 "python": sys.version.split()[0], "pid": os.getpid(), "load_at_start": machine_load(),
                 "rss_at_start_mb": current_rss_mb(), "settings": {k: v for k, v in _settings_env(settings).items()}},
        "errors": [],
    }
    phases: dict[str, dict] = {}

    def phase(name: str, fn: Callable[[], dict]) -> dict:
        before = machine_load()
        t = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - one failed phase must not lose the others' numbers
            out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            result["errors"].append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
        out["phase_s"] = round(time.perf_counter() - t, 2)
        out["load_before"] = before
        out["load_after"] = machine_load()
        phases[name] = out
        return out

    build_index(settings)  # the real index, up to date (a no-op when it is)
    work = Path(tempfile.mkdtemp(prefix="gistqa-bench-"))
    try:
        phase("cold_start", lambda: measure_cold_start(settings, items[0].question, plan.cold_runs))
        loaded: dict = {}

        def warm() -> dict:
            bot, load_info = load_bot(settings)
            loaded["bot"] = bot
            loaded["rss_after_warm_up"] = {"peak_rss_mb": peak_rss_mb(), "current_rss_mb": current_rss_mb(),
                                           "high_water_rss_mb": high_water_rss_mb()}
            return {**load_info, **measure_warm(bot, items)}

        phase("warm", warm)
        bot = loaded.get("bot")
        if bot is not None:
            phase("concurrency", lambda: measure_concurrency(bot, items, plan))
        phases["memory"] = {
            "after_warm_up": loaded.get("rss_after_warm_up"),
            "after_load": {"peak_rss_mb": peak_rss_mb(), "current_rss_mb": current_rss_mb(),
                       "high_water_rss_mb": high_water_rss_mb()},
            "note": "ru_maxrss is the process's peak since it started (a test run's process holds more than the bot)",
        }
        phase("build", lambda: measure_build(settings, work / "build", plan))
        phase("serving", lambda: measure_serving(settings, items, plan))
        if bot is not None:
            phase("baseline", lambda: measure_baseline(settings, items, Sources.from_index(bot._ensure_loaded()), bot))
            if "error" not in phases["warm"] and "error" not in phases["baseline"]:
                phases["comparison"] = compare(phases["warm"], phases["baseline"], phases.get("cold_start"),
                                               phases.get("serving"))
            phase("scaling", lambda: measure_scaling(settings, bot, items, plan, work))
            result["errors"] += [f"scaling: {f}" for f in phases["scaling"].get("recall_failures", [])]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "error" not in phases.get("build", {"error": 1}) and "error" not in phases.get("scaling", {"error": 1}):
        phases["real_build_estimate"] = estimate_real_build(phases["build"], phases["scaling"])
    for name in ("cold_start", "warm", "concurrency", "serving", "memory", "build", "baseline", "comparison", "scaling"):
        result[name] = phases.get(name, {"error": "not run (an earlier phase failed)"})
    result["real_build_estimate"] = phases.get("real_build_estimate", [])
    result["meta"].update({"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "seconds": round(time.perf_counter() - t_run, 1), "load_at_end": machine_load()})
    result = json.loads(json.dumps(result))  # exactly what bench.json holds (tuples become lists)
    write_reports(result, out_dir)
    return result


# --- reports ------------------------------------------------------------------------------------
def _f(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def _mb(n_bytes) -> str:
    return "—" if n_bytes is None else f"{n_bytes / 2**20:,.1f} MB"


def render_markdown(r: dict) -> str:
    m = r["meta"]
    lines = [
        "# gistqa benchmark" + (" (smoke)" if m["smoke"] else ""),
        "",
        f"- {m['started']} → {m.get('finished')} · {m.get('seconds')} s · {m['questions']} questions · "
        f"Python {m['python']}",
        f"- machine: {m['load_at_start']['cpus']} CPUs; load average (1/5/15 min) at start "
        f"{m['load_at_start']['load_1min']}/{m['load_at_start']['load_5min']}/{m['load_at_start']['load_15min']}, "
        f"at end {m['load_at_end']['load_1min']}/{m['load_at_end']['load_5min']}/{m['load_at_end']['load_15min']} "
        "(other processes share these cores; every phase records its own load in bench.json)",
        "",
    ]
    if r["errors"]:
        lines += ["## Errors", ""] + [f"- {e}" for e in r["errors"]] + [""]

    c = r["cold_start"]
    lines += ["## Cold start (fresh `gistqa ask --json`)", ""]
    if "median" in c:
        md = c["median"]
        lines += ["| runs | wall | startup + imports | index load | model load + first embed | first answer total |",
                  "|---|---|---|---|---|---|",
                  f"| {len(c['runs'])} | {_f(md['wall_s'], 2, ' s')} | {_f(md['startup_and_imports_s'], 2, ' s')} | "
                  f"{_f(md['index_load_ms'], 0, ' ms')} | {_f(md['model_load_and_first_embed_ms'], 0, ' ms')} | "
                  f"{_f(md['answer_total_ms'], 0, ' ms')} |", ""]
    w = r["warm"]
    lines += ["## Warm answer latency (`Bot.answer`, one at a time)", ""]
    if "stages_ms" in w:
        lines += [f"In-process load: index {_f(w['index_load_ms'], 0, ' ms')}, model {_f(w['model_load_ms'], 0, ' ms')}"
                  + (" (already loaded in this process)" if w["model_already_in_process"] else "")
                  + f"; {w['questions']} questions, {w['refused']} refused; the question's embedding on "
                  f"{w.get('encoder_threads', '?')} thread(s). Each question embedded (no recent vectors kept).", "",
                  "| stage | p50 ms | p95 ms | p99 ms | mean ms |", "|---|---|---|---|---|"]
        for stage, s in w["stages_ms"].items():
            lines.append(f"| {stage} | {_f(s['p50'], 2)} | {_f(s['p95'], 2)} | {_f(s['p99'], 2)} | {_f(s['mean'], 2)} |")
        again = w.get("repeated_wall_ms")
        if again:
            lines += ["", f"The same questions asked again (a clicked follow-up, the next trainee's same question: "
                          f"the vector is recalled, `query_cache_size`): p50 {_f(again['p50'], 2)} ms, "
                          f"p95 {_f(again['p95'], 2)} ms."]
        lines.append("")
    cc = r["concurrency"]
    lines += ["## Concurrency", ""]
    if "levels_direct" in cc:
        if cc.get("mode") == "http":
            lines.append("Through the chat page's HTTP API (`/ask`, gradio_client, loopback), one connection per "
                         "client; and `Bot.answer` called directly from the same number of threads.")
        else:
            lines.append(f"**HTTP not measured** ({cc.get('fallback_reason')}): `Bot.answer` from threads only.")
        lines += ["", "| path | clients | requests | ok | throughput req/s | p50 ms | p95 ms | p99 ms | answer p50 ms |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for path, key in (("HTTP", "levels_http"), ("direct", "levels_direct")):
            for lv in cc.get(key, []):
                lines.append(f"| {path} | {lv['clients']} | {lv['requests']} | {lv['ok']} | {_f(lv['throughput_rps'], 2)} | "
                             f"{_f(lv['latency_ms']['p50'], 1)} | {_f(lv['latency_ms']['p95'], 1)} | "
                             f"{_f(lv['latency_ms']['p99'], 1)} | {_f(lv['answer_total_ms']['p50'], 1)} |")
        lines.append("")
    sv = r.get("serving") or {}
    lines += ["## Serving (`gistqa serve --workers N`, `POST /api/ask`)", ""]
    if "runs" in sv:
        lines += [sv["method"], "", "| workers | clients | requests | ok | throughput req/s | p50 ms | p95 ms | answer p50 ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for run in sv["runs"]:
            for lv in run["levels"]:
                lines.append(f"| {run['workers']} | {lv['clients']} | {lv['requests']} | {lv['ok']} | "
                             f"{_f(lv['throughput_rps'], 2)} | {_f(lv['latency_ms']['p50'], 1)} | "
                             f"{_f(lv['latency_ms']['p95'], 1)} | {_f(lv['answer_total_ms']['p50'], 1)} |")
        lines += ["", "Resident memory (MB) of each process: " + "; ".join(
            f"{run['workers']} worker(s): after warm-up {run['rss_after_warm_up_mb']}, after the load {run['rss_after_load_mb']}"
            for run in sv["runs"]), ""]
    elif "error" in sv:
        lines += [f"**Not measured**: {sv['error']}", ""]
    mem = r["memory"]
    lines += ["## Memory (this process)", "",
              f"- after warm-up: peak RSS {_f((mem.get('after_warm_up') or {}).get('peak_rss_mb'), 0, ' MB')} "
              f"(current {_f((mem.get('after_warm_up') or {}).get('current_rss_mb'), 0, ' MB')})",
              f"- after the concurrency load: peak RSS {_f(mem['after_load']['peak_rss_mb'], 0, ' MB')} "
              f"(current {_f(mem['after_load']['current_rss_mb'], 0, ' MB')})", f"- {mem['note']}", ""]
    b = r["build"]
    lines += ["## Index build (temporary copy of the corpus)", ""]
    if "first_build_s" in b:
        lines += [f"{b['corpus']}: {b['documents']} documents, {b['passages']} passages, {b['sentences']} sentences. "
                  f"{b['note']}.", "",
                  "| build | seconds | embedded | reused |", "|---|---|---|---|",
                  f"| first | {_f(b['first_build_s'], 2)} | {b['first_build_embedded_texts']} | 0 |",
                  f"| no-op rebuild | {_f(b['noop_s'], 2)} | 0 | — |",
                  f"| one changed file ({b['one_file_changed']}) | {_f(b['one_file_s'], 2)} | {b['one_file_embedded']} | "
                  f"{b['one_file_reused']} |", "",
                  f"Batched embedding (batch {b['embed_batch_size']}): {_f(b['first_build_texts_per_s'])} texts/s in the "
                  f"first build (passages and sentences), {_f(b['passages_per_s'])} passages/s for the passages alone. "
                  f"Index on disk: {_mb(b['index_bytes'])}.", ""]
    base, comp = r["baseline"], r["comparison"]
    lines += ["## Baseline (the plain LangChain pipeline, same model, same questions)", ""]
    if "latency_ms" in base and "stages_ms" in w:
        qo, qb = w["quality"], base["quality"]
        lines += [f"{base['pipeline']}: {base['chunks']} chunks of a {base['document_chars']}-character document "
                  f"(built in {_f(base['build_s'], 2)} s).", "",
                  f"| | latency p50 ms | p95 ms | hit@{HIT_K} | answer accuracy | median answer chars |",
                  "|---|---|---|---|---|---|",
                  f"| baseline | {_f(base['latency_ms']['p50'], 2)} | {_f(base['latency_ms']['p95'], 2)} | "
                  f"{_f(qb[f'hit@{HIT_K}'], 3)} | {_f(qb['answer_accuracy'], 3)} | {_f(qb['median_answer_chars'], 0)} |",
                  f"| gistqa | {_f(w['stages_ms']['total']['p50'], 2)} | {_f(w['stages_ms']['total']['p95'], 2)} | "
                  f"{_f(qo[f'hit@{HIT_K}'], 3)} | {_f(qo['answer_accuracy'], 3)} | {_f(qo['median_answer_chars'], 0)} |",
                  f"| gistqa / baseline | {_f(comp.get('latency_p50_ratio'), 2)} | {_f(comp.get('latency_p95_ratio'), 2)} | "
                  f"{_f(comp.get(f'hit@{HIT_K}_ratio'), 2)} | {_f(comp.get('answer_accuracy_ratio'), 2)} | "
                  f"{_f(comp.get('median_answer_chars_ratio'), 2)} |", ""]
        paired = base.get("paired")
        if paired:
            lines += [f"The latency ratios come from both measured side by side ({paired['method']}): gistqa p50 "
                      f"{_f(paired['gistqa_ms']['p50'], 2)} / p95 {_f(paired['gistqa_ms']['p95'], 2)} ms, baseline p50 "
                      f"{_f(paired['baseline_ms']['p50'], 2)} / p95 {_f(paired['baseline_ms']['p95'], 2)} ms; the rows "
                      "above are the two phases, minutes apart.", ""]
        lines += [
                  f"Memory: gistqa serve {_f(comp.get('memory_mb', {}).get('gistqa_serve'), 0, ' MB')} vs the baseline "
                  f"process {_f(comp.get('memory_mb', {}).get('baseline'), 0, ' MB')} (ratio {_f(comp.get('memory_ratio'), 2)}); "
                  f"cold start: `gistqa ask` {_f(comp.get('cold_start_s', {}).get('gistqa_ask'), 2, ' s')} vs "
                  f"{_f(comp.get('cold_start_s', {}).get('baseline'), 2, ' s')} (ratio {_f(comp.get('cold_start_ratio'), 2)}); "
                  f"strict answer accuracy {_f(comp.get('strict_answer_accuracy', {}).get('gistqa'), 3)} vs "
                  f"{_f(comp.get('strict_answer_accuracy', {}).get('baseline'), 3)} (ratio "
                  f"{_f(comp.get('strict_answer_accuracy_ratio'), 2)}; none when the baseline scores 0).", "",
                  "Answer accuracy uses the evaluation's rule (every must_include_any group, no must_not_include; "
                  "a refuse item is right only when refused: the baseline never refuses). hit@5: a gold substring, "
                  "whitespace-insensitive, in one of the 5 passages or chunks returned.", ""]
    s = r["scaling"]
    lines += ["## Scaling (synthetic corpora)", ""]
    if "sizes" in s:
        lines += [f"**Method.** {s['method']}", "",
                  "| passages | sentences | dense | write_build s | of which dense / BM25 s | on disk | index RSS | "
                  "load s | retrieve p50 / p95 ms | dense p50 | lexical p50 | fusion p50 | Bot load s | answer p50 / p95 ms |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in s["sizes"]:
            bb, q, a = row["build"], row["query"], row["answer"]
            rt = q["retrieve_ms"]
            lines.append(
                f"| {bb['passages']:,} | {bb['sentences']:,} | {bb['dense_kind']} | {_f(bb['write_build_s'], 1)} | "
                f"{_f(bb.get('dense_index_s'), 1)} / {_f(bb.get('lexical_index_s'), 1)} | {_mb(bb['index_bytes'])} | "
                f"{_f(q['index_rss_mb'], 0, ' MB')} | {_f(q['load_s'], 1)} | "
                f"{_f(rt['retrieve_total']['p50'], 2)} / {_f(rt['retrieve_total']['p95'], 2)} | "
                f"{_f(rt['dense_search']['p50'], 2)} | {_f(rt['lexical_search']['p50'], 2)} | {_f(rt['fusion']['p50'], 2)} | "
                f"{_f(a['bot_load_s'], 1)} | {_f(a['stages_ms']['total']['p50'], 1)} / {_f(a['stages_ms']['total']['p95'], 1)} |")
        lines += ["", "Full `Bot.answer` per stage at each size (p50 ms):", "",
                  "| passages | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
        for row in s["sizes"]:
            st = row["answer"]["stages_ms"]
            lines.append(f"| {row['build']['passages']:,} | " + " | ".join(_f(st[x]['p50'], 2) for x in STAGES) + " |")
        lines += ["", f"HNSW (M=32, efConstruction=80, as `make_dense_index` builds it) against exact search, "
                      f"recall@10 over the evaluation questions' vectors (target {RECALL_TARGET}):", "",
                  "| passages | stored efSearch | " + " | ".join(f"ef={ef}" for ef in EF_SEARCH_GRID)
                  + " | as the bot searches (k=dense_top_k, stored efSearch) | HNSW build s | exact p50 ms at that k |",
                  "|---|---|" + "---|" * len(EF_SEARCH_GRID) + "---|---|---|"]
        for row in s["sizes"]:
            h, q = row["query"]["hnsw"], row["query"]
            bot_like = h["as_bot_searches"]
            build_s = h["build_s"] if h["build_s"] is not None else row["build"].get("dense_index_s")
            cells = " | ".join(f"{g['recall@10']:.3f} ({_f(g['p50_ms'], 2)} ms)" for g in h["grid"])
            lines.append(f"| {row['build']['passages']:,} | {h['stored_ef_search']} | {cells} | "
                         f"{bot_like['recall@10']:.3f} ({_f(bot_like['p50_ms'], 2)} ms) | {_f(build_s, 1)} | "
                         f"{_f(q['exact_search_ms']['at_k']['p50'], 2)} |")
        lines += ["", f"Recommended efSearch: {s['recommended_ef_search']} (smallest in the grid reaching recall@10 ≥ "
                      f"{RECALL_TARGET} at the largest size).", ""]
        for row in s["sizes"]:
            if "retrieve_ms_at_recommended_ef" in row["query"]:
                rr = row["query"]["retrieve_ms_at_recommended_ef"]["retrieve_total"]
                lines.append(f"- {row['size']:,} passages, retrieve with efSearch={row['query']['hnsw']['recommended_ef_search']}: "
                             f"p50 {_f(rr['p50'], 2)} ms, p95 {_f(rr['p95'], 2)} ms")
        est = r.get("real_build_estimate") or []
        if est:
            lines += ["", "What a real build (embedded, really tokenised) of each size would cost at the rates measured "
                          "above (embedding at the first build's texts/s; tokenising from a timed sample of "
                          f"{TOKENISE_SAMPLE} synthetic passages):", "",
                      "| passages | texts to embed | embed s | tokenise + concepts s | write s (measured) |",
                      "|---|---|---|---|---|"]
            for e in est:
                lines.append(f"| {e['size']:,} | {e['texts_to_embed']:,} | {_f(e['embed_s'], 0)} | {_f(e['tokenise_s'], 0)} | "
                             f"{_f(e['write_s'], 1)} |")
            shares = [row["build"].get("derived_tokens_equal_real_share") for row in s["sizes"]]
            lines += ["", f"Derived BM25 tokens equal the real tokenizer's output for the whole passage in "
                          f"{', '.join(_f(x, 3) for x in shares)} of sampled passages (per size).", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_chart(r: dict, path: Path) -> None:
    """Three panels: latency against corpus size, memory and disk against size, throughput against clients."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.6))
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    sizes = r["scaling"].get("sizes", []) if isinstance(r.get("scaling"), dict) else []
    xs = [row["build"]["passages"] for row in sizes]
    if sizes:
        def series(get):
            return [get(row) for row in sizes]

        ax1.plot(xs, series(lambda w: w["query"]["retrieve_ms"]["retrieve_total"]["p50"]), "o-", label="retrieve p50")
        ax1.plot(xs, series(lambda w: w["query"]["retrieve_ms"]["retrieve_total"]["p95"]), "o--", label="retrieve p95")
        ax1.plot(xs, series(lambda w: w["query"]["retrieve_ms"]["dense_search"]["p50"]), "s:", label="dense p50")
        ax1.plot(xs, series(lambda w: w["query"]["retrieve_ms"]["lexical_search"]["p50"]), "^:", label="lexical p50")
        ax1.plot(xs, series(lambda w: w["answer"]["stages_ms"]["total"]["p50"]), "D-", label="whole answer p50")
        ax2.plot(xs, series(lambda w: w["query"]["index_rss_mb"]), "o-", label="index in RAM (MB)")
        ax2.plot(xs, series(lambda w: w["build"]["index_bytes"] / 2**20), "s--", label="index on disk (MB)")
        ax2.plot(xs, series(lambda w: w["build"]["peak_rss_mb"]), "^:", label="peak RSS while building (MB)")
    warm = r.get("warm", {})
    if "stages_ms" in warm:
        ax1.axhline(warm["stages_ms"]["total"]["p50"], color="grey", lw=0.8, ls="--", label="answer p50, real corpus")
    after = (r.get("memory") or {}).get("after_warm_up") or {}
    if after.get("peak_rss_mb"):
        ax2.axhline(after["peak_rss_mb"], color="grey", lw=0.8, ls="--", label="bot process after warm-up (MB)")
    for ax, title, ylabel in ((ax1, "latency against corpus size", "ms"),
                              (ax2, "memory against corpus size", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("passages")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    cc = r.get("concurrency", {})
    for key, label in (("levels_http", "HTTP /ask"), ("levels_direct", "Bot.answer threads")):
        levels = cc.get(key) or []
        if levels:
            ax3.plot([lv["clients"] for lv in levels], [lv["throughput_rps"] or 0 for lv in levels], "o-", label=label)
    ax3.set_xscale("log", base=2)
    ax3.set_xlabel("concurrent clients")
    ax3.set_ylabel("answers per second")
    ax3.set_title("throughput (real corpus)", fontsize="medium")
    ax3.grid(alpha=0.3)
    if ax3.get_legend_handles_labels()[0]:
        ax3.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def write_reports(result: dict, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"json": out_dir / BENCH_JSON, "md": out_dir / BENCH_MD, "png": out_dir / BENCH_PNG}
    try:
        markdown = render_markdown(result)
    except Exception as e:  # noqa: BLE001 - a partial result must still leave a readable report
        result["errors"].append(f"report: {type(e).__name__}: {e}")
        markdown = (f"# gistqa benchmark\n\nThe report could not be rendered: {type(e).__name__}: {e}. "
                    f"The numbers are in {BENCH_JSON}.\n")
    paths["json"].write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown, encoding="utf-8")
    write_chart(result, paths["png"])
    return paths


def headline(r: dict) -> list[str]:
    out = []
    w = r.get("warm", {})
    if "stages_ms" in w:
        t = w["stages_ms"]["total"]
        out.append(f"warm answer p50/p95/p99: {t['p50']} / {t['p95']} / {t['p99']} ms")
    c = r.get("cold_start", {})
    if "median" in c:
        out.append(f"cold start (process to first answer): {c['median']['wall_s']} s")
    comp = r.get("comparison") or {}
    if comp:
        out.append(f"vs LangChain baseline: latency p50 x{comp.get('latency_p50_ratio')}, "
                   f"hit@{HIT_K} x{comp.get(f'hit@{HIT_K}_ratio')}")
    for row in (r.get("scaling") or {}).get("sizes", []):
        out.append(f"{row['size']:,} passages: retrieve p50 {row['query']['retrieve_ms']['retrieve_total']['p50']} ms, "
                   f"index RSS {row['query']['index_rss_mb']} MB")
    return out


def run_cli(out_dir: Path = Path(".gistqa/bench"), smoke: bool = False) -> int:
    """`gistqa bench [--smoke] [--out DIR]`: 0 when every phase ran, 1 when one failed."""
    from indexer.settings import get_settings

    result = run_bench(get_settings(), Path(out_dir), smoke=smoke)
    for line in headline(result):
        print(line)
    for error in result["errors"]:
        print(f"错误 (error): {error}", file=sys.stderr)
    out = Path(out_dir)
    print(f"报告 (reports): {out / BENCH_MD} · {out / BENCH_JSON} · {out / BENCH_PNG}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
