"""`gistqa serve`: the chat page and `POST /api/ask` on one HTTP server, with N answer workers.

One front process runs the HTTP server (uvicorn): the Gradio page at ``/`` and the JSON API at
``/api/ask`` / ``/api/health``. Why not N uvicorn processes on one socket: the page's Gradio
session (queue join, then a stream of events, over separate connections) must reach the process
that holds it, and a shared socket sends connections to any process (gradio-app/gradio#10487).

- ``workers=1``: the front answers in-process (no extra hop).
- ``workers=N>1``: N worker processes answer the API, each with its own `Bot` over the same
  read-only index folder and the same memory-mapped embedding table (the operating system's page
  cache holds one copy). A request goes to an idle worker; a worker that dies or hangs is
  replaced and its request retried once on another, so no request hangs. The page keeps
  answering in the front process, next to its session.

Past one machine: replicas of this server behind a load balancer (sticky sessions for the page,
any replica for the API), the index a versioned read-only artifact (docs/scaling.md).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from queue import Empty, Queue

from bot.api import ApiError, AskRequest

# A worker answers in ~10-30 ms; one that has not answered in this long is stuck, not slow.
WORKER_TIMEOUT_S = 30.0
# Starting a worker (imports, index, encoder) takes ~1-2 s on 2 cores; more means it failed.
WORKER_START_TIMEOUT_S = 120.0
# A request waits this long for a free worker before a 503 (all busy or being replaced).
QUEUE_WAIT_S = 60.0


def answer_request(bot, request: AskRequest) -> dict:
    """One API answer from ``bot``, or an `ApiError` (the user's error as 4xx/503, a bug as 500)."""
    from bot.answer import user_error_types
    from bot.query import QuestionError

    try:
        return bot.answer(request.question, history=request.history, scope=request.scope,
                          detail=request.detail).to_dict()
    except QuestionError as e:
        raise ApiError(422, "bad_question", str(e)) from None
    except user_error_types() as e:
        raise ApiError(503, "not_ready", str(e)) from None
    except Exception:  # a bug: the log gets the traceback, the client one plain sentence
        traceback.print_exc()
        raise ApiError(500, "internal_error", "内部错误，未能回答 (internal error; please report it)") from None


# --- the worker processes ----------------------------------------------------------------------
def _worker_main(conn) -> None:
    """A worker: load the bot, say ready, then answer JSON requests until the pipe closes."""
    from bot.answer import Bot
    from indexer.embed import usable_cores

    try:
        bot = Bot(auto_build=False)
        bot.warm_up()
        encoder = bot.embedder()
        # A question that comes while every other worker is idle may use every core.
        solo = hasattr(encoder, "prepare_solo") and encoder.prepare_solo(usable_cores())
        if solo:
            encoder.use_solo(True)
            encoder.encode_queries(["预热"])  # the second session's first run, not a user's
            encoder.use_solo(False)
    except Exception as e:  # noqa: BLE001 - reported to the front, which names it
        conn.send_bytes(json.dumps({"failed": f"{type(e).__name__}: {e}"}).encode("utf-8"))
        return
    conn.send_bytes(json.dumps({"ready": os.getpid()}).encode("utf-8"))
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            message = json.loads(raw)
            if solo:
                encoder.use_solo(message.get("alone", False))
            reply = {"ok": answer_request(bot, AskRequest(**message["ask"]))}
        except ApiError as e:
            reply = {"error": asdict(e)}
        conn.send_bytes(json.dumps(reply, ensure_ascii=False).encode("utf-8"))


class _Worker:
    def __init__(self, process, conn):
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def stop(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


class AnswerPool:
    """N answer processes; `ask` blocks the calling thread until one has answered."""

    def __init__(self, workers: int, timeout_s: float = WORKER_TIMEOUT_S):
        self.size = workers
        self.timeout_s = timeout_s
        self.replaced = 0
        self._ctx = multiprocessing.get_context("spawn")  # the front has threads: never fork it
        self._idle: Queue[_Worker] = Queue()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._in_flight = 0  # requests sent to a worker and not yet answered
        self._closed = False
        starting = [self._spawn() for _ in range(workers)]
        for process, conn in starting:
            self._add(self._await_ready(process, conn))

    def _spawn(self):
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child,), daemon=True, name="gistqa-answer")
        process.start()
        child.close()
        return process, parent

    def _await_ready(self, process, conn) -> _Worker:
        if not conn.poll(WORKER_START_TIMEOUT_S):
            process.kill()
            raise RuntimeError(f"an answer worker did not start within {WORKER_START_TIMEOUT_S:.0f} s")
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            raise RuntimeError(f"an answer worker exited while starting (exit code {process.exitcode})") from None
        if "failed" in message:
            process.join(timeout=5)
            raise RuntimeError(f"an answer worker could not load: {message['failed']}")
        return _Worker(process, conn)

    def _add(self, worker: _Worker) -> None:
        with self._lock:
            self._workers.append(worker)
        self._idle.put(worker)

    def _replace(self, worker: _Worker) -> None:
        """Stop ``worker`` and start another in the background (the request retries elsewhere)."""
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            self.replaced += 1
        worker.stop()

        def start() -> None:
            while not self._closed:
                try:
                    self._add(self._await_ready(*self._spawn()))
                    return
                except RuntimeError:
                    traceback.print_exc()
                    time.sleep(1.0)

        threading.Thread(target=start, daemon=True, name="gistqa-respawn").start()

    def ask(self, request: AskRequest) -> dict:
        for attempt in (1, 2):
            try:
                worker = self._idle.get(timeout=QUEUE_WAIT_S)
            except Empty:
                raise ApiError(503, "busy", "所有回答进程都在忙，请稍后重试 (all answer workers are busy; retry shortly)") from None
            with self._lock:
                alone = self._in_flight == 0  # no other worker busy: this one may use every core
                self._in_flight += 1
            payload = json.dumps({"ask": asdict(request), "alone": alone}, ensure_ascii=False).encode("utf-8")
            try:
                worker.conn.send_bytes(payload)
                if not worker.conn.poll(self.timeout_s):
                    raise TimeoutError
                reply = json.loads(worker.conn.recv_bytes())
            except (EOFError, OSError, TimeoutError, ValueError):
                self._replace(worker)  # died or hung: a new one starts; this request tries another
                if attempt == 2:
                    raise ApiError(503, "worker_failed", "回答进程意外退出，请重试 (an answer worker failed; retry)") from None
                continue
            finally:
                with self._lock:
                    self._in_flight -= 1
            self._idle.put(worker)
            if "error" in reply:
                raise ApiError(**reply["error"])
            return reply["ok"]
        raise AssertionError("unreachable")

    def pids(self) -> list[int]:
        """The live workers' pids (a dead one is left out until its replacement has started)."""
        with self._lock:
            return [w.pid for w in self._workers if w.pid is not None and w.process.is_alive()]

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()


# --- the app -------------------------------------------------------------------------------------
def create_app(bot, pool: AnswerPool | None = None, feedback_path: str | Path | None = None):
    """The FastAPI app: ``/api/ask`` (through ``pool`` when given) and the page at ``/``."""
    import gradio as gr
    from fastapi import FastAPI

    from bot import app as page
    from bot.api import add_api_routes

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    started = time.time()

    def answer(request: AskRequest) -> dict:
        return pool.ask(request) if pool is not None else answer_request(bot, request)

    def health() -> dict:
        from indexer.embed import encoder_threads

        return {"status": "ok", "workers": pool.size if pool else 1, "worker_pids": pool.pids() if pool else [os.getpid()],
                "replaced": pool.replaced if pool else 0, "uptime_s": round(time.time() - started, 1),
                "encoder_threads": encoder_threads(bot.settings)}

    add_api_routes(app, answer, health)
    return gr.mount_gradio_app(app, page.build_app(bot, feedback_path=feedback_path), path="/", **page_options())


def page_options() -> dict:
    """What the page needs from the server it is mounted on (theme, no API footer, limits)."""
    from bot import app as page

    options = {"theme": page.page_theme(), "footer_links": [], "show_error": False, "run_history": False,
               "max_file_size": page.MAX_FILE_SIZE}
    options.update(getattr(page, "page_mount_options", dict)())
    return options


def run(host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    """`gistqa serve`: load (or build) the index, warm the model, start the workers, serve."""
    import uvicorn

    from bot.answer import Bot
    from bot.app import is_loopback
    from indexer.settings import get_settings

    settings = get_settings()
    host = host or settings.host
    port = port or settings.port
    workers = max(1, int(workers or settings.workers))
    if workers != settings.workers:
        # The workers (spawned: they read the environment) and this process share the cores
        # out by this number (`indexer.embed.encoder_threads`).
        os.environ["GISTQA_WORKERS"] = str(workers)
        get_settings.cache_clear()
        settings = get_settings()
    print("正在加载索引和嵌入模型…… (loading the index and the model)", file=sys.stderr, flush=True)
    bot = Bot(settings, auto_build=True)
    bot.warm_up()  # builds the index if missing, before any worker loads it
    pool = AnswerPool(workers) if workers > 1 else None
    if not is_loopback(host):
        print(f"警告：服务绑定在 {host}，本机以外的机器也可能访问它 (warning: bound to {host}, not loopback; "
              "the page and the API are reachable from other machines)", file=sys.stderr, flush=True)
    app = create_app(bot, pool)
    print(f"聊天页面已就绪 (chat page ready): http://{host}:{port}/ · API: POST http://{host}:{port}/api/ask"
          f" · {workers} 个回答进程 (answer workers)", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        if pool is not None:
            pool.close()
