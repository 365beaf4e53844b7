"""A local stand-in for an OpenAI-compatible chat server, scripted per test.

    server = FakeLLMServer().start()          # 127.0.0.1, a free port, a daemon thread
    server.script(Reply("「……」[1]。"))        # one behaviour per request, in order
    settings.llm_base_url = server.url + "/v1"
    ...
    server.requests                           # what the client sent (JSON bodies, parsed)
    server.close()

POST /v1/chat/completions answers as the real API does: one JSON object, or when the request
says ``"stream": true`` server-sent events (``data: {chunk}\\n\\n`` ... ``data: [DONE]``) in an
HTTP/1.1 chunked body. A behaviour can also be a callable ``(request_json) -> Reply``.

Misbehaviours a `Reply` can script: a delay before the first byte, a body that trickles out a
few bytes at a time (so no single read ever times out), an HTTP error status, a body that is not
JSON, and a stream that stops after some chunks and closes the socket without finishing.
Every wait listens to the server's stop event, so `close()` never waits for a slow reply.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Reply:
    text: str = ""
    delay_s: float = 0.0  # before the status line
    status: int = 200
    malformed: bool = False  # a 200 whose body is not JSON
    trickle_s: float = 0.0  # spread the body over this many seconds, a few bytes at a time
    cut_after_chunks: int | None = None  # streamed: stop after this many chunks, close the socket
    finish: bool = True  # streamed: send the final chunk with finish_reason and [DONE]
    chunk_chars: int = 4  # streamed: characters per content chunk


Behaviour = Reply | Callable[[dict], Reply]


class FakeLLMServer:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-llm-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def script(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._script.extend(behaviours)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()

    def _next(self, body: dict) -> Reply:
        with self._lock:
            self.requests.append(body)
            behaviour = self._script.popleft() if self._script else Reply(status=500, text="no scripted reply")
        return behaviour(body) if callable(behaviour) else behaviour

    def prompt_text(self, k: int = -1) -> str:
        """All message contents of request k, joined (to assert on what the model was shown)."""
        return "\n".join(str(m.get("content", "")) for m in self.requests[k].get("messages", []))


def _completion(text: str, model: str) -> dict:
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode("utf-8")


def _make_handler(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - quiet test output
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                body = {"unparsed": raw.decode("utf-8", "replace")}
            body["_path"] = self.path
            reply = server._next(body)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                reply = Reply(status=404, text="not found")
            if reply.delay_s and server.stop.wait(reply.delay_s):
                return
            try:
                if reply.status != 200:
                    self._send_whole(reply.status, json.dumps({"error": {"message": reply.text or "server error"}}).encode())
                elif body.get("stream"):
                    self._send_stream(reply, body.get("model", "fake"))
                elif reply.malformed:
                    self._send_whole(200, b'{"id": "chatcmpl-fake", "choices": [{"message": {"content": "unterminated',
                                     reply.trickle_s)
                else:
                    data = json.dumps(_completion(reply.text, body.get("model", "fake")), ensure_ascii=False).encode()
                    self._send_whole(200, data, reply.trickle_s)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass  # the client gave up: that is what some tests are about
            self.close_connection = True

        def _send_whole(self, status: int, data: bytes, trickle_s: float = 0.0) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if trickle_s <= 0:
                self.wfile.write(data)
                return
            pieces = [data[i : i + 8] for i in range(0, len(data), 8)]
            for piece in pieces:
                self.wfile.write(piece)
                self.wfile.flush()
                if server.stop.wait(trickle_s / len(pieces)):
                    return

        def _write_chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _send_stream(self, reply: Reply, model: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            pieces = [reply.text[i : i + reply.chunk_chars] for i in range(0, len(reply.text), reply.chunk_chars)]
            events = [_chunk(model, {"role": "assistant", "content": ""})] + [_chunk(model, {"content": p}) for p in pieces]
            pause = reply.trickle_s / max(1, len(events))
            for k, event in enumerate(events):
                if reply.cut_after_chunks is not None and k >= reply.cut_after_chunks:
                    # Die mid-stream: no final chunk, no [DONE], no terminating zero-length chunk.
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._write_chunk(event)
                if pause and server.stop.wait(pause):
                    return
            if reply.finish:
                self._write_chunk(_chunk(model, {}, "stop"))
                self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler
