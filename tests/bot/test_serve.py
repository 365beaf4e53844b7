"""`gistqa serve`: `POST /api/ask` beside the page, with answer workers, over real HTTP.

The server runs as a real `gistqa serve --workers 2` process on the real index. The API must give
exactly what `gistqa ask --json` gives; every bad request a 4xx in one JSON shape; a worker killed
under load is replaced and every request still answered.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bot.api import MAX_BODY_BYTES, ApiError, parse_ask
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
GISTQA = REPO / ".venv" / "bin" / "gistqa"
Q_DOSE = "KIT exon 9突变患者辅助治疗用多大剂量？"
Q_FOLLOW = "这部分是谁写的？"  # only the history says which part
START_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def server(built_index):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([str(GISTQA), "serve", "--port", str(port), "--workers", "2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        try:
            health = _get(url + "/api/health")
            if len(health["worker_pids"]) == 2:
                break
        except OSError:
            pass
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("gistqa serve did not start")
    yield url
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: bytes, content_type: str | None = "application/json") -> tuple[int, dict]:
    headers = {"content-type": content_type} if content_type else {}
    request = urllib.request.Request(url + "/api/ask", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _ask(url: str, **fields) -> tuple[int, dict]:
    return _post(url, json.dumps(fields, ensure_ascii=False).encode("utf-8"))


def _cli(*args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([str(GISTQA), "ask", *args, "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _same_answer(api: dict, cli: dict) -> None:
    for key in ("question", "answer", "refused", "refusal_reason", "quotes", "vote", "references", "dropped"):
        assert api[key] == cli[key], key


# --- the answer ------------------------------------------------------------------------------------
def test_two_workers_share_the_cores_out(server):
    """`--workers 2` reaches the processes' settings: each embeds on its share of the cores."""
    from indexer.embed import usable_cores

    health = _get(server + "/api/health")
    assert health["workers"] == 2
    assert health["encoder_threads"] == max(1, usable_cores() // 2)


def test_api_answer_is_the_cli_answer(server):
    status, body = _ask(server, question=Q_DOSE)
    assert status == 200
    assert body["quotes"] and not body["refused"]
    _same_answer(body, _cli(Q_DOSE))


def test_api_history_scope_and_detail_are_the_clis(server):
    status, body = _ask(server, question=Q_FOLLOW, history=[Q_DOSE], scope="consensus", detail=True)
    assert status == 200
    _same_answer(body, _cli(Q_FOLLOW, "--history", Q_DOSE, "--scope", "consensus", "--detail"))
    status_alone, alone = _ask(server, question=Q_FOLLOW, scope="consensus", detail=True)
    assert status_alone == 200 and alone["answer"] != body["answer"], "the history must change the answer"


def test_the_page_is_served_beside_the_api(server):
    with urllib.request.urlopen(server + "/", timeout=30) as r:
        page = r.read().decode("utf-8")
    assert r.status == 200 and "gradio" in page.lower()


def _own_addresses() -> set[str]:
    """This machine's IPv4 addresses other than loopback (from the kernel's interface list)."""
    import fcntl
    import struct

    found = set()
    for _index, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
        address = socket.inet_ntoa(packed[20:24])
        if not address.startswith("127."):
            found.add(address)
    return found


def test_the_server_listens_on_loopback_only_by_default(server):
    port = int(server.rsplit(":", 1)[1])
    addresses = _own_addresses()
    assert addresses, "this machine has no non-loopback address to try"
    for address in addresses:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, port)) != 0, f"reachable on {address}"


# --- bad requests ------------------------------------------------------------------------------------
BAD_REQUESTS = [
    (b'{"history": []}', "application/json", 400, "missing_question"),
    (b'{"question": "   "}', "application/json", 400, "empty_question"),
    (b'{"question": 42}', "application/json", 422, "question_not_text"),
    (b"question=abc", "application/json", 400, "not_json"),
    (b"\xff\xfe{}", "application/json", 400, "not_json"),
    (b'["a question"]', "application/json", 400, "not_an_object"),
    (b'{"question": "a"}', "text/plain", 415, "wrong_content_type"),
    (b'{"question": "a"}', None, 415, "wrong_content_type"),
    (b'{"question": "a", "history": "earlier"}', "application/json", 422, "history_not_strings"),
    (b'{"question": "a", "history": [1, 2]}', "application/json", 422, "history_not_strings"),
    (b'{"question": "a", "scope": "everything"}', "application/json", 422, "bad_scope"),
    (b'{"question": "a", "detail": "yes"}', "application/json", 422, "bad_detail"),
]


@pytest.mark.parametrize("body,content_type,status,code", BAD_REQUESTS)
def test_a_bad_request_gets_a_clear_4xx_in_one_shape(server, body, content_type, status, code):
    got_status, got = _post(server, body, content_type)
    assert got_status == status
    assert set(got) == {"error"} and set(got["error"]) == {"status", "code", "message"}
    assert got["error"]["status"] == status and got["error"]["code"] == code
    assert got["error"]["message"] and "Traceback" not in got["error"]["message"]


def test_an_oversized_body_is_refused_before_it_is_read_whole(server):
    status, body = _post(server, b'{"question": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}')
    assert status == 413 and body["error"]["code"] == "body_too_large"


def test_a_question_over_the_length_limit_gets_the_bots_own_message(server, settings):
    status, body = _ask(server, question="伊" * (settings.max_question_chars + 1))
    assert status == 422 and body["error"]["code"] == "bad_question"
    assert str(settings.max_question_chars) in body["error"]["message"]


def test_parse_ask_reads_every_field():
    request = parse_ask('{"question": "问", "history": ["一", "二"], "scope": "consensus", "detail": true}'.encode(),
                        "application/json; charset=utf-8")
    assert (request.question, request.history, request.scope, request.detail) == ("问", ["一", "二"], "consensus", True)
    with pytest.raises(ApiError):
        parse_ask(b'{"question": "a", "history": ["x"] }', "application/xml")


# --- workers -------------------------------------------------------------------------------------------
def test_a_worker_killed_under_load_is_replaced_and_no_request_fails(server):
    before = _get(server + "/api/health")
    assert len(before["worker_pids"]) == 2
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()
    killed = threading.Event()
    questions = [Q_DOSE, "KIT exon 9突变患者辅助治疗用多大剂量？", "辅助治疗期间复发了怎么办？",
                 "转移性GIST一线治疗首选什么？", "exon 9突变为什么对伊马替尼不敏感？"]

    def client(n: int) -> None:
        # Load before the kill and after it: each client stops 5 requests after the kill.
        after_kill, i = 0, 0
        while after_kill < 5 and i < 400:
            status, body = _ask(server, question=questions[(n + i) % len(questions)])
            i += 1
            with lock:
                results.append((status, bool(body.get("quotes"))))
            after_kill += killed.is_set()

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 60
    while len(results) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(before["worker_pids"][0], signal.SIGKILL)
    killed.set()
    for c in clients:
        c.join(timeout=180)
    assert not any(c.is_alive() for c in clients), "a request hung"
    assert len(results) >= 8 + 20 and all(r == (200, True) for r in results), results
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = _get(server + "/api/health")
        if len(after["worker_pids"]) == 2 and before["worker_pids"][0] not in after["worker_pids"]:
            break
        time.sleep(0.3)
    assert after["replaced"] >= 1 and len(after["worker_pids"]) == 2, after
    assert before["worker_pids"][0] not in after["worker_pids"]


class _FakeWorkerConn:
    """A worker's end of the pipe that records what it was sent and answers when released."""

    def __init__(self):
        self.sent: list[dict] = []
        self.release = threading.Event()

    def send_bytes(self, payload: bytes) -> None:
        self.sent.append(json.loads(payload))

    def poll(self, timeout=None) -> bool:
        return self.release.wait(timeout)

    def recv_bytes(self) -> bytes:
        return json.dumps({"ok": {"answer": "ok"}}).encode("utf-8")

    def close(self) -> None:
        pass


def test_a_request_is_marked_alone_only_while_no_other_is_being_answered():
    """The worker may use every core only when no other worker is busy (`OnnxEncoder.use_solo`)."""
    from bot.api import AskRequest
    from bot.serve import AnswerPool, _Worker

    pool = AnswerPool(0)
    first, second = _FakeWorkerConn(), _FakeWorkerConn()
    pool._add(_Worker(None, first))
    pool._add(_Worker(None, second))
    waiting = threading.Thread(target=pool.ask, args=(AskRequest("问题一"),))
    waiting.start()
    deadline = time.monotonic() + 10
    while not first.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    second.release.set()
    assert pool.ask(AskRequest("问题二")) == {"answer": "ok"}  # sent while the first is still answered
    first.release.set()
    waiting.join(timeout=10)
    assert [m["alone"] for m in first.sent] == [True]
    assert [m["alone"] for m in second.sent] == [False]
    assert first.sent[0]["ask"]["question"] == "问题一" and second.sent[0]["ask"]["question"] == "问题二"
    pool.ask(AskRequest("问题三"))  # nothing else in flight now
    (third,) = [m for m in first.sent + second.sent if m["ask"]["question"] == "问题三"]
    assert third["alone"] is True
