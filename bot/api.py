"""`POST /api/ask`: the answer as JSON over HTTP, the same object `gistqa ask --json` prints.

Stateless: the request carries the question, the earlier questions (``history``), the scope and
``detail``; nothing is kept between requests, so any worker (or replica) can answer any request.
Every refusal of a request is a 4xx with one JSON shape, never a traceback:

    {"error": {"status": 400, "code": "missing_question", "message": "…"}}

Parsing is a plain function (`parse_ask`) so that each bad input is tested without a server.
"""
# No `from __future__ import annotations`: FastAPI reads the route's `Request` annotation at runtime.
import json
from collections.abc import Callable
from dataclasses import dataclass, field

# A question is at most a few thousand characters (settings.max_question_chars) and a history a
# few of those; anything far larger is not a question.
MAX_BODY_BYTES = 64 * 1024
MAX_HISTORY_ITEMS = 20
SCOPES = ("all", "consensus")


@dataclass(frozen=True)
class AskRequest:
    question: str
    history: list[str] = field(default_factory=list)
    scope: str | None = None
    detail: bool = False


@dataclass(frozen=True)
class ApiError(Exception):
    status: int
    code: str
    message: str

    def body(self) -> dict:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


def parse_ask(body: bytes, content_type: str | None) -> AskRequest:
    """The request, or an `ApiError` saying in Chinese and English what is wrong with it."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "wrong_content_type",
                       f"请求须为 JSON（Content-Type: application/json），收到的是 {media or '无'} "
                       "(the body must be JSON, sent as application/json)")
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"请求体超过 {MAX_BODY_BYTES // 1024} KB (the body is too large)")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "not_json", "请求体不是合法的 UTF-8 JSON (the body is not valid JSON)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "not_an_object", '请求体须是 JSON 对象，例如 {"question": "…"} (the body must be a JSON object)')
    question = data.get("question")
    if question is None:
        raise ApiError(400, "missing_question", '缺少 "question" 字段 (the "question" field is missing)')
    if not isinstance(question, str):
        raise ApiError(422, "question_not_text", '"question" 须是字符串 (the question must be a string)')
    if not question.strip():
        raise ApiError(400, "empty_question", "问题是空的，请输入问题 (the question is empty)")
    history = data.get("history", [])
    if history is None:
        history = []
    if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
        raise ApiError(422, "history_not_strings",
                       '"history" 须是字符串列表（之前的问题，按顺序）(history must be a list of strings: the earlier questions)')
    if len(history) > MAX_HISTORY_ITEMS:
        raise ApiError(422, "history_too_long", f'"history" 最多 {MAX_HISTORY_ITEMS} 条 (at most {MAX_HISTORY_ITEMS} earlier questions)')
    scope = data.get("scope")
    if scope is not None and scope not in SCOPES:
        raise ApiError(422, "bad_scope", '"scope" 只能是 "all" 或 "consensus" (scope must be "all" or "consensus")')
    detail = data.get("detail", False)
    if not isinstance(detail, bool):
        raise ApiError(422, "bad_detail", '"detail" 须是 true 或 false (detail must be a boolean)')
    return AskRequest(question=question, history=list(history), scope=scope, detail=detail)


def add_api_routes(app, answer: Callable[[AskRequest], dict], health: Callable[[], dict]) -> None:
    """Add ``POST /api/ask`` and ``GET /api/health`` to the FastAPI ``app``.

    ``answer`` returns `Answer.to_dict()` or raises `ApiError`; it runs in a thread, so a slow
    answer never blocks the page's event loop.
    """
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.post("/api/ask")
    async def api_ask(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return error(ApiError(413, "body_too_large", f"请求体超过 {MAX_BODY_BYTES // 1024} KB (the body is too large)"))
        body = b""
        async for chunk in request.stream():  # read no more than the limit, whatever the header says
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return error(ApiError(413, "body_too_large", f"请求体超过 {MAX_BODY_BYTES // 1024} KB (the body is too large)"))
        try:
            parsed = parse_ask(body, request.headers.get("content-type"))
            return JSONResponse(await run_in_threadpool(answer, parsed))
        except ApiError as e:
            return error(e)

    @app.get("/api/health")
    async def api_health():
        return JSONResponse(await run_in_threadpool(health))
