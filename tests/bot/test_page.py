"""The chat page as a trainee uses it, in headless Chromium at a laptop's size and a phone's.

One served app (the real Bot on the real index, with the page's own mount options) and one browser
for the module; a fresh page per test and size. Screenshots go to test-output/screenshots/ with
names saying what they show (desktop-… at 1440x900, phone-… at 390x844).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import launch

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-output" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SIZES = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}
ANSWER_TIMEOUT_MS = 30_000
HIGHLIGHT_BUDGET_MS = 1_000  # click on a citation -> highlighted span visible, at most

Q_ADJUVANT = "KIT exon 9突变患者辅助治疗用多大剂量？"
Q_FIRST_LINE = "晚期exon 9 GIST一线伊马替尼用多少？"
Q_VOTE_AFTER = "停药后复发，专家多数选什么？"
Q_REFERENCE = "文献16讲了什么？"
Q_NOT_COVERED = "肺癌患者的化疗方案是什么？"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page_url(bot, tmp_path_factory):
    from bot.app import build_app, page_mount_options

    demo = build_app(bot, feedback_path=tmp_path_factory.mktemp("fb") / "feedback.jsonl")
    yield launch(demo, **page_mount_options())
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `GISTQA_WITH_TEST=1 bash scripts/setup.sh` first.")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, url, size: str):
    phone = size == "phone"
    ctx = browser.new_context(viewport=SIZES[size], locale="zh-CN", is_mobile=phone, has_touch=phone,
                              permissions=["clipboard-read", "clipboard-write"])
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    pg.locator("#gq-input textarea").wait_for(timeout=ANSWER_TIMEOUT_MS)
    pg.locator("#gq-reader .gq-docs").wait_for(state="attached", timeout=ANSWER_TIMEOUT_MS)
    pg.js_errors = errors
    return pg


@pytest.fixture(params=list(SIZES))
def page(request, browser, page_url):
    pg = open_page(browser, page_url, request.param)
    pg.size = request.param
    yield pg
    assert pg.js_errors == [], pg.js_errors
    pg.context.close()


def ask(pg, question: str) -> None:
    """Send a question and wait for the whole answer (the panel is no longer busy) and its status."""
    before = pg.locator("#gq-chat .message.bot").count()
    pg.locator("#gq-input textarea").fill(question)
    pg.locator("#gq-input textarea").press("Enter")
    wait_answers(pg, before + 1)


def wait_answers(pg, n: int) -> None:
    pg.wait_for_function(
        """(n) => { const log = document.querySelector('#gq-chat .gq-log');
                    return log && log.dataset.busy === '0' && log.querySelectorAll('.message.bot').length === n
                      && document.querySelector('#gq-status .gq-status') !== null; }""",
        arg=n, timeout=ANSWER_TIMEOUT_MS)


def last_answer(pg):
    return pg.locator("#gq-chat .message.bot").last


def shot(pg, name: str, full_page: bool = False) -> None:
    pg.screenshot(path=str(SHOTS / f"{pg.size}-{name}.png"), full_page=full_page)


def in_viewport(pg, locator) -> bool:
    return pg.evaluate("""(el) => { const r = el.getBoundingClientRect();
        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight && r.left >= 0 && r.right <= window.innerWidth; }""",
                       locator.element_handle())


# --- 1. sources beside the answer ------------------------------------------------------------------
def test_markers_match_the_sources_and_cannot_be_read_as_reference_numbers(page, bot):
    expected = bot.answer(Q_ADJUVANT, history=[], scope="all")
    ask(page, Q_ADJUVANT)
    answer = last_answer(page)
    markers = answer.locator(".gq-answer .gq-mk")
    entries = answer.locator(".gq-src")
    assert markers.count() >= 2 and markers.count() == entries.count()
    for i, m in enumerate(markers.all(), start=1):
        label = m.inner_text()
        assert label == chr(0x2460 + i - 1)  # ①②③: never ［n］, which the quotes themselves carry
        assert "［" not in label and "[" not in label
        target = m.get_attribute("data-src")
        assert answer.locator(f"#{target}").count() == 1
    assert "［1］" in answer.locator(".gq-answer").inner_text()  # the document's own marker is still there
    for q in expected.quotes:
        assert " ".join(q.text.split()) in " ".join(answer.inner_text().split())
    shot(page, "answer-markers")


def test_hover_or_tap_shows_the_passage_with_the_span_highlighted(page, bot):
    expected = bot.answer(Q_ADJUVANT, history=[], scope="all")
    ask(page, Q_ADJUVANT)
    marker = last_answer(page).locator(".gq-answer .gq-mk").first
    quote = expected.quotes[0].text
    if page.size == "desktop":
        marker.hover()
        pop = page.locator("#gq-pop")
        pop.wait_for(state="visible", timeout=5_000)
        assert pop.locator("mark").inner_text() == quote
        assert in_viewport(page, pop)
        shot(page, "marker-popup")
    else:
        marker.tap()
        entry = last_answer(page).locator(".gq-src").first
        page.wait_for_function("(e) => e.open", arg=entry.element_handle(), timeout=5_000)
        assert entry.locator("mark").inner_text() == quote
        assert in_viewport(page, entry.locator("mark"))
        # it opened under its own answer
        assert entry.evaluate("(e) => e.closest('.message.bot') !== null")
        shot(page, "source-under-answer")


def test_a_citation_opens_the_reader_at_the_span_highlighted_and_visible(page, bot):
    expected = bot.answer(Q_ADJUVANT, history=[], scope="all")
    ask(page, Q_ADJUVANT)
    marker = last_answer(page).locator(".gq-answer .gq-mk").first
    if page.size == "desktop":
        started = time.perf_counter()
        marker.click()
    else:  # on a phone the source opens under the answer first; its button opens the reader
        marker.tap()
        button = last_answer(page).locator(".gq-src").first.locator(".gq-open-reader")
        button.wait_for(state="visible")
        started = time.perf_counter()
        button.tap()
    hl = page.locator("#gq-reader mark.gq-hl")
    hl.first.wait_for(state="visible", timeout=5_000)
    page.wait_for_function(
        """() => { const m = document.querySelector('#gq-reader mark.gq-hl'); const r = m.getBoundingClientRect();
                   return r.top >= 0 && r.bottom <= window.innerHeight; }""", timeout=5_000)
    wall_ms = (time.perf_counter() - started) * 1000
    in_page = page.evaluate("window.__gqLastHighlight")
    print(f"\n[{page.size}] click on a citation -> highlighted span visible: {in_page['ms']:.1f} ms in the page, "
          f"{wall_ms:.0f} ms wall clock (Playwright)")
    assert in_page["ms"] < HIGHLIGHT_BUDGET_MS and wall_ms < HIGHLIGHT_BUDGET_MS * 3
    assert "".join(m.inner_text() for m in hl.all()) == expected.quotes[0].text
    # The reader holds the whole document: its other sections are there for context.
    reader_text = page.locator("#gq-reader .gq-doc[data-doc='consensus']").inner_text()
    assert "我们推荐" in reader_text and "表1" in reader_text
    assert page.locator("#gq-reader .gq-reader-src").inner_text().startswith("①")
    shot(page, "reader")
    if page.size == "phone":
        page.locator("#gq-reader .gq-reader-close").tap()
        assert not page.locator("#gq-reader .gq-docs").is_visible()


def test_reader_shows_sections_authors_the_vote_table_and_the_cards(page, bot):
    root = page.locator("#gq-reader")
    if page.size == "phone":
        page.locator(".gq-open-reader-top").tap()
    doc = root.locator(".gq-doc[data-doc='consensus']")
    doc.wait_for(state="visible")
    index = bot._ensure_loaded()
    votes = [p for p in index.passages if p.vote is not None]
    assert doc.locator("table.gq-table tbody tr").count() == sum(len(p.vote.options) for p in votes)
    assert doc.locator("table.gq-table th[scope=col]").count() == 3
    assert "|" not in doc.locator("table.gq-table").inner_text()
    bylines = [p for p in index.passages if p.doc_id == "consensus" and p.evidence_kind == "authors"]
    assert doc.locator(".gq-byline").count() == len(bylines)
    assert doc.locator("h4.gq-doc-h").count() >= 4
    root.locator(".gq-docbtn[data-doc='ref-16']").click()
    card = root.locator(".gq-doc[data-doc='ref-16']")
    card.wait_for(state="visible")
    assert "Vincenzi" in card.inner_text() and "候选文献" in card.inner_text()
    assert not doc.is_visible()
    shot(page, "reader-card")


# --- 3. the vote chart ------------------------------------------------------------------------
def test_vote_chart_only_for_a_cited_vote_item_with_every_option_and_the_majority(page, bot):
    ask(page, Q_FIRST_LINE)
    assert last_answer(page).locator(".gq-vote").count() == 0  # no vote cited, no chart
    ask(page, Q_VOTE_AFTER)
    index = bot._ensure_loaded()
    item = next(p.vote for p in index.passages if p.vote is not None and p.vote.number == 5)
    chart = last_answer(page).locator(".gq-vote")
    assert chart.count() == 1
    rows = chart.locator(".gq-bar-row")
    assert [r.locator(".gq-bar-label").inner_text().replace("多数", "").strip() for r in rows.all()] == [
        o.text for o in item.options]
    assert [r.locator(".gq-bar-pct").inner_text() for r in rows.all()] == [f"{o.percent}%" for o in item.options]
    top = max(o.percent for o in item.options)
    majors = chart.locator(".gq-bar-row.gq-major")
    assert majors.count() == sum(o.percent == top for o in item.options)
    assert "多数" in majors.first.inner_text()
    # Only the table's own figures: every number in the chart is in the item's table rows.
    stated = set(re.findall(r"\d+", index.documents["consensus"].text[
        next(p for p in index.passages if p.vote is item).start:next(p for p in index.passages if p.vote is item).end]))
    figures = " ".join(r.inner_text() for r in rows.all())
    assert set(re.findall(r"\d+", figures)) <= stated
    # "600 mg/d" is never split over two lines.
    for unit in chart.locator(".gq-bar-label .gq-nw").all():
        assert unit.evaluate("(e) => e.getClientRects().length") == 1
    # The vote source is a rendered table, not Markdown pipes.
    entry = last_answer(page).locator(".gq-src").first
    assert entry.locator("table.gq-table").count() == 1
    assert "|" not in entry.inner_text()
    chart.scroll_into_view_if_needed()
    shot(page, "vote")


# --- 4. follow-ups ----------------------------------------------------------------------------
def test_follow_ups_are_offered_and_each_is_answered(page):
    ask(page, Q_ADJUVANT)
    buttons = last_answer(page).locator(".gq-fu")
    assert 2 <= buttons.count() <= 3
    offered = buttons.first.inner_text()
    last_answer(page).locator(".gq-fus").scroll_into_view_if_needed()
    shot(page, "follow-ups")
    buttons.first.click()
    wait_answers(page, 2)
    assert page.locator("#gq-chat .message.user .gq-user-text").last.inner_text() == offered
    assert "未覆盖" not in last_answer(page).inner_text()
    assert last_answer(page).locator(".gq-mk").count() >= 1


# --- 5. reading comfort -----------------------------------------------------------------------------
ALLOWED_LATIN = {"gistqa", "kit", "exon", "gist", "csco", "mg", "d", "nccn", "esmo", "what", "first", "line",
                 "imatinib", "dose", "is", "recommended", "for", "scf", "email", "et", "al"}


def test_everything_is_in_chinese_with_no_api_footer_ids_or_fake_timing(page):
    ask(page, Q_ADJUVANT)
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    labels = page.evaluate("""() => [...document.querySelectorAll('[title],[aria-label],button,[placeholder]')]
        .filter((e) => e.offsetParent !== null || e.closest('#gq-chat'))
        .flatMap((e) => [e.getAttribute('title'), e.getAttribute('aria-label'), e.getAttribute('placeholder'),
                         e.tagName === 'BUTTON' ? e.innerText : null]).filter(Boolean)""")
    for label in labels:
        words = {w.lower() for w in re.findall(r"[A-Za-z]{2,}", label)}
        assert words <= ALLOWED_LATIN, f"an English label: {label!r}"
    body = page.locator("body").inner_text()
    assert "API" not in body and "Gradio" not in body
    assert "not covered" not in body
    assert not re.search(r"\w+#p\d+", body), "an internal passage id is shown"
    assert not re.search(r"用时\s*[\d.]+\s*秒", body), "a timing that is not real"
    # The place of a quote is printed once in its source entry.
    entry = last_answer(page).locator(".gq-src").first
    place = entry.locator(".gq-src-place").inner_text()
    assert entry.inner_text().count(place) == 1


def test_a_new_answer_is_shown_from_its_start(page):
    for q in (Q_ADJUVANT, Q_VOTE_AFTER, "辅助治疗期间复发应该怎么办？"):
        ask(page, q)
    turn = page.locator("#gq-chat .gq-turn").last
    question = turn.locator(".message.user")
    lead = turn.locator(".gq-answer p").first
    assert in_viewport(page, question) and in_viewport(page, lead), "the reader should first see the question and the lead"
    if page.size == "desktop":  # the conversation box shows the new turn at its top
        box = page.locator("#gq-chat .gq-log").bounding_box()
        assert question.bounding_box()["y"] - box["y"] < 40
    shot(page, "new-answer-start")


def test_a_question_sent_while_streaming_is_queued_visibly_and_answered(page):
    # The second question must be sent while the first answer is still on its way; an answer can
    # be whole within a few frames, so a run where it was (busy already cleared when the second
    # question went) did not test the queue and is done again on a fresh page.
    for attempt in range(3):
        if attempt:
            page.reload()
            page.wait_for_selector("#gq-input textarea")
        box = page.locator("#gq-input textarea")
        # Record every text the queue note shows (the first answer may finish within a few frames).
        page.evaluate("""() => { window.__notes = []; new MutationObserver(() => {
            const n = document.getElementById('gq-queue-note');
            if (n && !n.hidden) window.__notes.push(n.textContent); })
          .observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true}); }""")
        box.fill(Q_ADJUVANT)
        box.press("Enter")
        page.wait_for_function("() => document.querySelector('#gq-chat .gq-log').dataset.busy === '1'", timeout=10_000)
        box.fill(Q_FIRST_LINE)
        sent_while_busy = page.evaluate("() => document.querySelector('#gq-chat .gq-log').dataset.busy === '1'")
        box.press("Enter")
        wait_answers(page, 2)
        if sent_while_busy:
            break
    else:
        pytest.fail("the first answer was always whole before the second question could be sent")
    asked = [t.inner_text() for t in page.locator("#gq-chat .message.user .gq-user-text").all()]
    assert asked == [Q_ADJUVANT, Q_FIRST_LINE]
    notes = page.evaluate("window.__notes")
    assert any("上一条回答完成后将接着回答" in n and Q_FIRST_LINE[:10] in n for n in notes), notes
    page.wait_for_function("() => document.getElementById('gq-queue-note').hidden", timeout=5_000)


def test_copy_gives_plain_text_with_the_question_and_the_citations(page, bot):
    ask(page, Q_ADJUVANT)
    button = last_answer(page).locator(".gq-copy")
    button.scroll_into_view_if_needed()
    button.click()
    page.wait_for_function("(b) => b.innerText === '已复制'", arg=button.element_handle(), timeout=5_000)
    text = page.evaluate("navigator.clipboard.readText()")
    expected = bot.answer(Q_ADJUVANT, history=[], scope="all")
    assert text.startswith(f"问：{Q_ADJUVANT}")
    assert "**" not in text and "<" not in text
    assert "出处：" in text
    for q in expected.quotes:
        assert q.text in text
    assert "①" in text


def test_a_reference_question_names_the_candidate_paper_with_its_caveat(page):
    ask(page, Q_REFERENCE)
    shown = last_answer(page).locator(".gq-answer").inner_text()
    assert "Adjuvant imatinib in patients with GIST harboring exon 9 KIT mutations" in shown
    assert "候选" in shown and "未经确认" in shown


# --- 6. phone layout ------------------------------------------------------------------------------
def test_phone_layout(browser, page_url):
    pg = open_page(browser, page_url, "phone")
    pg.size = "phone"
    try:
        time.sleep(0.5)
        assert pg.evaluate("window.scrollY") == 0, "nothing should scroll the page on load"
        assert in_viewport(pg, pg.locator("#gq-header h1"))
        assert in_viewport(pg, pg.locator("#gq-disclaimer-text"))
        assert pg.evaluate("document.activeElement.tagName") != "TEXTAREA"
        box = pg.locator("#gq-input textarea")
        width = box.bounding_box()["width"]
        assert width >= 0.65 * SIZES["phone"]["width"], f"input only {width}px wide"
        assert pg.evaluate("""(t) => { const c = document.createElement('canvas').getContext('2d');
            const s = getComputedStyle(t); c.font = s.fontSize + ' ' + s.fontFamily;
            return c.measureText(t.placeholder).width <= t.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight); }""",
                           box.element_handle()), "the placeholder is clipped"
        assert pg.evaluate("document.querySelector('.gq-examples').open") is False
        assert not pg.locator("#gq-reader .gq-docs").is_visible()
        assert pg.evaluate("document.documentElement.scrollWidth") <= SIZES["phone"]["width"]
        shot(pg, "load")
        ask(pg, Q_ADJUVANT)
        assert pg.evaluate("document.documentElement.scrollWidth") <= SIZES["phone"]["width"]
        shot(pg, "answer", full_page=True)
    finally:
        pg.context.close()


# --- bad input and faults ---------------------------------------------------------------------------
def _reader_note_for_altered_source(page, alter: str) -> str:
    """Answer, change the first source's data with the script ``alter``, open it in the reader:
    the reader's note."""
    ask(page, Q_ADJUVANT)
    entry = last_answer(page).locator(".gq-src").first
    entry.evaluate(alter)
    last_answer(page).locator(".gq-srclist").evaluate("(d) => d.open = true")
    entry.evaluate("(d) => d.open = true")
    entry.locator(".gq-open-reader").click()
    note = page.locator("#gq-reader .gq-reader-note")
    note.wait_for(state="visible", timeout=5_000)
    return note.inner_text()


def test_a_citation_whose_passage_is_gone_says_so(page):
    # An old chat after a rebuild: the passage and offsets it names no longer exist.
    note = _reader_note_for_altered_source(page, """(e) => {
        e.dataset.pid = 'consensus#p999'; e.dataset.s = '999990'; e.dataset.e = '999999';
        e.dataset.build = 'old-build'; e.dataset.text = '这句话已不在原文中'; }""")
    assert "已找不到" in note and "这句话已不在原文中" in note
    assert page.locator("#gq-reader mark.gq-hl").count() == 0
    shot(page, "stale-citation")


def test_a_reader_request_for_an_unknown_document_says_so(page):
    note = _reader_note_for_altered_source(page, "(e) => { e.dataset.doc = 'ref-99'; }")
    assert "找不到文档" in note and "ref-99" in note


def test_a_very_long_question_ends_in_a_clear_message(page, bot):
    long_question = "KIT exon 9突变辅助治疗剂量" * 200  # past the settings' max_question_chars
    assert len(long_question) > bot.settings.max_question_chars
    page.locator("#gq-input textarea").fill(long_question)
    page.locator("#gq-input textarea").press("Enter")
    page.locator("#gq-status .gq-status-error").wait_for(timeout=ANSWER_TIMEOUT_MS)
    assert page.locator("#gq-chat .gq-log").get_attribute("data-busy") == "0"
    assert page.locator("#gq-chat .gq-error").count() == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= SIZES[page.size]["width"]
    shot(page, "long-question")


def test_reloading_while_an_answer_streams_leaves_a_clear_page(page):
    page.locator("#gq-input textarea").fill(Q_VOTE_AFTER)
    page.locator("#gq-input textarea").press("Enter")
    page.wait_for_function("() => document.querySelector('#gq-chat .gq-log').dataset.busy === '1'", timeout=10_000)
    page.reload()
    page.locator("#gq-input textarea").wait_for()
    assert page.locator("#gq-chat .gq-welcome").is_visible()
    assert page.locator("#gq-chat .gq-log").get_attribute("data-busy") == "0"
    ask(page, Q_FIRST_LINE)
    assert last_answer(page).locator(".gq-mk").count() >= 1


# --- 7. accessibility -----------------------------------------------------------------------------
def test_axe_core_finds_no_serious_or_critical_violation(page):
    from axe_playwright_python.sync_playwright import Axe

    ask(page, Q_ADJUVANT)
    marker = last_answer(page).locator(".gq-answer .gq-mk").first
    marker.click() if page.size == "desktop" else marker.tap()
    time.sleep(0.3)
    results = Axe().run(page)
    violations = results.response["violations"]
    by_impact: dict[str, list[str]] = {}
    for v in violations:
        by_impact.setdefault(v["impact"] or "none", []).append(f"{v['id']} ({len(v['nodes'])})")
    (SHOTS.parent / f"axe-{page.size}.json").write_text(json.dumps(violations, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"\n[{page.size}] axe-core {results.response['testEngine']['version']}: violations by impact: "
          + (json.dumps(by_impact, ensure_ascii=False) if by_impact else "none"))
    assert not by_impact.get("serious") and not by_impact.get("critical"), by_impact
