"""The chat page, end to end: the real Bot on the real index, served by the real app.

Through the HTTP API (gradio_client) the page must answer exactly as `gistqa ask --json` and
`Bot.answer()` do, also for eight users at once. In headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright) a person's path must work: ask, see quotes stream in, click a citation chip,
read the highlighted passage, vote with a thumb, and see HTML typed into the box shown as text.
(The page's own features, at a laptop's and a phone's size, are in test_page.py.)
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import launch

REPO = Path(__file__).resolve().parents[2]
GISTQA = REPO / ".venv" / "bin" / "gistqa"
SCREENSHOTS = REPO / "test-output"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

Q_DOSE = "KIT exon 9突变患者辅助治疗用多大剂量？"
Q_RELAPSE = "辅助治疗期间复发应该怎么办？"
Q_NOT_COVERED = "肺癌患者的化疗方案是什么？"
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
ANSWER_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def cli_runs():
    """`gistqa ask --json` in separate processes, started first so that they run while the app warms up."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    runs = {q: subprocess.Popen([str(GISTQA), "ask", q, "--json"], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for q in (Q_DOSE, Q_NOT_COVERED)}
    yield runs
    for proc in runs.values():
        if proc.poll() is None:
            proc.kill()


def _cli_answer(cli_runs, question) -> dict:
    out, err = cli_runs[question].communicate(timeout=180)
    assert cli_runs[question].returncode == 0, err[-2000:]
    return json.loads(out)


@pytest.fixture(scope="module")
def feedback_file(tmp_path_factory):
    return tmp_path_factory.mktemp("feedback") / "feedback.jsonl"


@pytest.fixture(scope="module")
def app_url(cli_runs, bot, feedback_file):
    from bot.app import build_app, page_mount_options

    demo = build_app(bot, feedback_path=feedback_file)
    yield launch(demo, **page_mount_options())
    demo.close()


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


# --- the HTTP API -----------------------------------------------------------------------------
def test_api_answer_is_the_cli_answer(app_url, cli_runs):
    markdown, full = _client(app_url).predict(Q_DOSE, [], "all", api_name="/ask")
    cli = _cli_answer(cli_runs, Q_DOSE)
    assert not cli["refused"]
    assert markdown == cli["answer"]
    assert full["answer"] == cli["answer"]
    assert [q["text"] for q in full["quotes"]] == [q["text"] for q in cli["quotes"]]
    assert "「" in markdown and full["vote"] is not None


def test_api_refusal_is_the_cli_refusal(app_url, cli_runs):
    markdown, full = _client(app_url).predict(Q_NOT_COVERED, [], "all", api_name="/ask")
    cli = _cli_answer(cli_runs, Q_NOT_COVERED)
    assert cli["refused"] and full["refused"]
    assert markdown == cli["answer"]
    assert full["quotes"] == []


def test_api_follow_up_and_scope_are_passed_to_the_bot(app_url, bot):
    client = _client(app_url)
    follow_up = "那一线治疗呢？"
    markdown, _ = client.predict(follow_up, [Q_DOSE], "all", api_name="/ask")
    assert markdown == bot.answer(follow_up, history=[Q_DOSE], scope="all").answer
    markdown, full = client.predict(Q_RELAPSE, [], "consensus", api_name="/ask")
    assert full["scope"] == "consensus"
    assert markdown == bot.answer(Q_RELAPSE, history=[], scope="consensus").answer
    assert all(q["doc_id"] == "consensus" for q in full["quotes"])


def test_api_user_error_is_a_message_not_a_traceback(app_url):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        _client(app_url).predict("   ", [], "all", api_name="/ask")
    assert "问题为空" in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_eight_users_at_once_each_get_an_answer(app_url):
    questions = [Q_DOSE, Q_RELAPSE, Q_NOT_COVERED, "为什么KIT exon 9突变对标准剂量伊马替尼不敏感？",
                 "What first-line imatinib dose is recommended for exon 9 GIST?", "瑞派替尼的剂量是多少？",
                 "KIT exon 9突变转移性GIST一线治疗推荐什么剂量？", "伊马替尼耐药后二线治疗用什么？"]

    def one_user(question):
        job = _client(app_url).submit(question, [], "all", api_name="/ask")
        return question, job.result(timeout=90)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(questions)) as pool:
        results = list(pool.map(one_user, questions))
    elapsed = time.perf_counter() - started
    assert len(results) == 8
    for question, (markdown, full) in results:
        assert full["question"].strip() and markdown.strip(), question
        assert full["refused"] or "「" in markdown, question
    assert elapsed < 90


def test_only_loopback_hosts_count_as_local():
    from bot.app import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "example.org"))


# --- in the browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page(app_url):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `GISTQA_WITH_TEST=1 bash scripts/setup.sh` "
                    "(it installs Debian's chromium and fonts-noto-cjk) before the browser tests.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
        pg.goto(app_url)
        pg.locator("#gq-input textarea").wait_for(timeout=ANSWER_TIMEOUT_MS)
        yield pg
        browser.close()


def _ask(page, question):
    """Type a question, press Enter, wait until the page shows the whole answer and its status line."""
    before = _bot_messages(page).count()
    page.locator("#gq-input textarea").fill(question)
    page.locator("#gq-input textarea").press("Enter")
    page.wait_for_function(
        """(before) => {
            const log = document.querySelector('#gq-chat .gq-log');
            return log.dataset.busy === '0' && log.querySelectorAll('.message.bot').length === before + 1
                && document.querySelector('#gq-status .gq-status') !== null;
        }""",
        arg=before, timeout=ANSWER_TIMEOUT_MS)


def _bot_messages(page):
    return page.locator("#gq-chat .message.bot")


@pytest.mark.browser
def test_browser_answer_quotes_markers_and_sources(page, bot):
    expected = bot.answer(Q_DOSE, history=[], scope="all")
    # Watch the answer grow: every text length the last bot message has shown.
    page.evaluate("""() => {
        window.__lengths = [];
        const chat = document.querySelector('#gq-chat');
        new MutationObserver(() => {
            const bots = chat.querySelectorAll('.message.bot');
            if (bots.length) window.__lengths.push(bots[bots.length - 1].innerText.length);
        }).observe(chat, {subtree: true, childList: true, characterData: true});
    }""")
    _ask(page, Q_DOSE)
    answer = _bot_messages(page).last
    answer_text = answer.locator(".gq-answer").inner_text()
    assert "「" in answer_text and "」" in answer_text
    assert expected.quotes[0].text in answer_text
    assert len(set(page.evaluate("window.__lengths"))) >= 3, "the answer should appear in several steps"
    assert "已核对" in page.locator("#gq-status").inner_text()
    assert page.locator("#gq-disclaimer").is_visible()

    markers = answer.locator(".gq-answer .gq-mk")
    assert markers.count() == answer.locator(".gq-src").count() >= 2
    markers.first.click()
    mark = page.locator("#gq-reader mark.gq-hl")
    mark.first.wait_for(timeout=10_000)
    quote = expected.quotes[0]
    assert "".join(m.inner_text() for m in mark.all()) == quote.text
    # The source entry under the answer: the whole passage, the quote highlighted, kind and place once.
    entry = answer.locator(".gq-src").first
    passage = next(p for p in bot._ensure_loaded().passages if p.passage_id == quote.passage_id)
    assert " ".join(entry.locator(".gq-src-para").text_content().split()) == " ".join(passage.text.split())
    assert entry.locator(".gq-src-para mark").text_content() == quote.text
    assert entry.locator(".gq-src-kind").text_content() == quote.kind

    # The vote of 表1 as a bar chart with every option (in the table's order).
    vote = answer.locator(".gq-vote")
    assert vote.is_visible()
    bars = vote.locator(".gq-bar-row")
    assert bars.count() == len(expected.vote.options)
    for row, option in zip(bars.all(), expected.vote.options):
        assert row.locator(".gq-bar-label").inner_text().replace("多数", "").strip() == option["text"]
        assert row.locator(".gq-bar-pct").inner_text() == f"{option['percent']}%"

    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat.png"), full_page=True)


@pytest.mark.browser
def test_browser_thumbs_down_with_comment_is_saved(page, feedback_file):
    if _bot_messages(page).count() == 0:
        _ask(page, Q_DOSE)
    before = feedback_file.read_text(encoding="utf-8").splitlines() if feedback_file.exists() else []
    page.locator("#gq-comment textarea").fill("希望给出更多剂量细节")
    page.locator("#gq-chat button[aria-label='踩']").last.click()  # the thumbs down (Chinese labels)
    page.wait_for_function("() => document.querySelector('#gq-status').innerText.includes('已记录反馈')",
                           timeout=10_000)
    lines = feedback_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(before) + 1
    record = json.loads(lines[-1])
    assert record["rating"] == "down"
    assert record["comment"] == "希望给出更多剂量细节"
    assert record["question"] == Q_DOSE and "「" in record["answer"]
    assert page.locator("#gq-comment textarea").input_value() == ""  # the comment went with the vote
    assert page.locator("#gq-chat button[aria-label='踩']").last.get_attribute("aria-pressed") == "true"


@pytest.mark.browser
def test_browser_follow_up_question_uses_the_earlier_questions(page, bot):
    _ask(page, "停药后复发，专家投票结果如何？")
    asked = [m.inner_text() for m in page.locator("#gq-chat .message.user .gq-user-text").all()]
    follow_up = "那辅助期间复发呢？"  # the vote of the other setting: only the history says "vote"
    with_history = bot.answer(follow_up, history=asked, scope="all")
    alone = bot.answer(follow_up, history=[], scope="all")
    telling = [q.text for q in with_history.quotes if f"「{q.text}」" in with_history.answer and q.text not in alone.answer]
    assert telling, "the earlier question should change this answer"
    _ask(page, follow_up)
    shown = " ".join(_bot_messages(page).last.locator(".gq-answer").inner_text().split())
    for text in telling:
        assert " ".join(text.split()) in shown


@pytest.mark.browser
def test_browser_not_covered_is_said_plainly(page):
    _ask(page, Q_NOT_COVERED)
    last = _bot_messages(page).last
    assert "未覆盖" in last.inner_text()
    assert "未覆盖" in page.locator("#gq-status").inner_text()
    assert last.locator(".gq-mk").count() == 0
    assert last.locator(".gq-vote").count() == 0
    # An earlier answer keeps its own markers and sources: they still open the reader.
    first = _bot_messages(page).first
    first.locator(".gq-mk").first.click()
    page.locator("#gq-reader mark.gq-hl").first.wait_for(timeout=10_000)


@pytest.mark.browser
def test_browser_html_in_a_question_is_text(page):
    _ask(page, XSS)
    user_text = page.locator("#gq-chat .message.user .gq-user-text").last.inner_text()
    assert user_text == XSS
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("#gq-chat img[src='x']").count() == 0
    assert page.locator("#gq-chat script").count() == 0
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-html-question.png"), full_page=True)
