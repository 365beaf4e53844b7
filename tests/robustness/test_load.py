"""Fifty people asking at once through the chat page's API, and questions over the size limit (issue 8).

All fifty are answered, none fails; the latencies are printed (p50/p95), not asserted, because the
machine is shared. A question over `max_question_chars` gets the limit message and the page goes on.
"""
from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from tests.conftest import launch

REQUESTS = 50
TOTAL_TIMEOUT_S = 300  # for all fifty together: a bound on the test, not a performance claim
QUESTIONS = [
    "KIT exon 9突变患者辅助治疗用多大剂量？",
    "辅助治疗期间复发应该怎么办？",
    "为什么KIT exon 9突变对标准剂量伊马替尼不敏感？",
    "What first-line imatinib dose is recommended for exon 9 GIST?",
    "瑞派替尼的剂量是多少？",
    "KIT exon 9突变转移性GIST一线治疗推荐什么剂量？",
    "伊马替尼耐药后二线治疗用什么？",
    "肺癌患者的化疗方案是什么？",
    "专家对800 mg伊马替尼辅助治疗的投票结果如何？",
    "KIT exon 9突变在小肠GIST中有多常见？",
]


@pytest.fixture(scope="module")
def app_url(bot, tmp_path_factory):
    from bot.app import build_app

    demo = build_app(bot, feedback_path=tmp_path_factory.mktemp("feedback") / "feedback.jsonl")
    yield launch(demo)
    demo.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def test_fifty_concurrent_requests_are_all_answered(app_url, bot, say):
    import httpx
    from gradio_client import Client

    # Fifty users who have the page open (their clients set up one after another), then all ask at once.
    # A client waits up to 60 s per HTTP call: gradio_client's own default is 5 s, which a 2-core
    # machine busy answering fifty questions does not always meet (see the page-load figure printed).
    clients = [Client(app_url, verbose=False, httpx_kwargs={"timeout": 60}) for _ in range(REQUESTS)]
    barrier = threading.Barrier(REQUESTS + 1)

    def one_user(i: int):
        question = QUESTIONS[i % len(QUESTIONS)]
        barrier.wait(timeout=TOTAL_TIMEOUT_S)
        started = time.perf_counter()
        markdown, full = clients[i].submit(question, [], "all", api_name="/ask").result(timeout=TOTAL_TIMEOUT_S)
        return question, markdown, full, time.perf_counter() - started

    pool = ThreadPoolExecutor(max_workers=REQUESTS)
    try:
        futures = [pool.submit(one_user, i) for i in range(REQUESTS)]
        barrier.wait(timeout=TOTAL_TIMEOUT_S)
        started = time.perf_counter()
        time.sleep(1.0)  # the burst is under way: how long does loading the page take now?
        page_started = time.perf_counter()
        page = httpx.get(app_url, timeout=TOTAL_TIMEOUT_S)
        page_load = time.perf_counter() - page_started
        done, not_done = wait(futures, timeout=TOTAL_TIMEOUT_S)
        wall = time.perf_counter() - started
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for client in clients:
            client.close()
    assert page.status_code == 200
    assert not not_done, f"{len(not_done)} of {REQUESTS} requests unanswered after {TOTAL_TIMEOUT_S} s"
    results = [f.result() for f in futures]  # re-raises the first failed request

    expected = {q: bot.answer(q).answer for q in QUESTIONS}
    for question, markdown, full, _ in results:
        assert markdown == full["answer"] == expected[question], question
        assert full["refused"] or (full["quotes"] and all(q["verified"] for q in full["quotes"]))
    latencies = [r[3] for r in results]
    say(f"load: {len(results)}/{REQUESTS} concurrent requests served in {wall:.1f} s; "
        f"latency p50 {statistics.median(latencies):.2f} s, p95 {_percentile(latencies, 0.95):.2f} s, "
        f"max {max(latencies):.2f} s; the page itself loaded in {page_load:.2f} s during the burst")


def test_question_over_the_size_limit_gets_the_limit_message(app_url, bot):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    limit = bot.settings.max_question_chars
    client = Client(app_url, verbose=False, httpx_kwargs={"timeout": 60})
    for size in (limit + 1, 1_000_000):
        with pytest.raises(AppError) as caught:
            client.predict("伊" * size, [], "all", api_name="/ask")
        message = str(caught.value)
        assert "问题太长" in message and f"上限为 {limit}" in message and f"{size} 个字符" in message
        assert "Traceback" not in message
    # A history entry over the limit is refused the same way, not a crash.
    with pytest.raises(AppError, match="问题太长"):
        client.predict("那一线治疗呢？", ["伊" * (limit + 1)], "all", api_name="/ask")
    # At the limit the question is read, and the page goes on answering.
    markdown, full = client.predict(("伊马替尼剂量？" * limit)[:limit], [], "all", api_name="/ask")
    assert markdown == full["answer"] and markdown.strip()
    markdown, full = client.predict(QUESTIONS[0], [], "all", api_name="/ask")
    assert not full["refused"] and "「" in markdown
