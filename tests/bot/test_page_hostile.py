"""Hostile markup from a user-added reference file, the corpus and error messages, in every panel.

A private corpus (a copy of ours) gets a full text for slot 16 whose title, section name and body
carry markup, and a vote option of 表1 carrying an <img onerror>; an error message and a follow-up
carry markup too. In Chromium every panel (answer, marker popup, sources, reader, vote chart,
status, follow-ups) must show it as text, and nothing may run. Each payload sets `window.__xss`,
so anything that executes is caught, and each must be found literally in the panel's text, so a
builder that drops it instead of escaping it is caught as well. Removing `escape_html` from any
panel builder in bot/app.py makes these tests fail.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.bot.test_page import CHROMIUM, CHROMIUM_ARGS, SHOTS
from tests.conftest import launch

pytestmark = pytest.mark.browser

TITLE_MARKUP = "全文<script>window.__xss='title-script'</script><img src=x onerror=\"window.__xss='title-img'\">"
HEADING_MARKUP = "\"><svg onload=\"window.__xss='h1'\">Vincenzi 全文"
SECTION_MARKUP = "结果<img src=x onerror=\"window.__xss='section'\">"
BODY_MARKUP = ("欧洲多中心回顾性研究<script>window.__xss='body'</script>发现，800 mg伊马替尼辅助治疗"
               "\"><svg onload=\"window.__xss='body-svg'\">在无复发生存方面并不优于400 mg。")
VOTE_MARKUP = "不确定<img src=x onerror=\"window.__xss='vote'\">"
ERROR_MARKUP = "<img src=x onerror=\"window.__xss='error'\">索引损坏"
FOLLOWUP_MARKUP = "\"><svg onload=\"window.__xss='followup'\">接着问"
NOTE_TITLE = "笔记\" onmouseover=\"window.__xss='nav'\"><img src=x onerror=\"window.__xss='nav-img'\">"
ERROR_TRIGGER = "触发一个错误"
Q_FULLTEXT = "文献16讲了什么？"
Q_VOTE = "术后辅助治疗，专家投票结果如何？"
PANELS = "#gq-chat, #gq-reader, #gq-status, #gq-pop, #gq-examples"


@pytest.fixture(scope="module")
def hostile_bot(settings, built_index, tmp_path_factory):
    from bot.answer import Bot
    from bot.query import QuestionError
    from indexer.build import build_index

    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(settings.corpus_dir, root / "corpus")
    consensus = root / "corpus" / "consensus_kit_exon9.md"
    text = consensus.read_text(encoding="utf-8")
    assert text.count("| | 不确定 | 14 |") == 1
    consensus.write_text(text.replace("| | 不确定 | 14 |", f"| | {VOTE_MARKUP} | 14 |"), encoding="utf-8")
    (root / "corpus" / "references" / "fulltext16.md").write_text(
        f"---\nslot: 16\ntitle: {TITLE_MARKUP}\n---\n# {HEADING_MARKUP}\n\n## {SECTION_MARKUP}\n\n{BODY_MARKUP}\n",
        encoding="utf-8")
    # A user's own note (no slot: a plain document), titled with markup that breaks out of attributes.
    (root / "corpus" / "note.md").write_text(
        "---\ntitle: '" + NOTE_TITLE.replace("'", "''") + "'\n---\n伊马替尼辅助治疗的学习笔记。\n", encoding="utf-8")
    # Start from the built index, so that only the changed files are embedded.
    shutil.copytree(built_index, root / "index", ignore=shutil.ignore_patterns(".build.lock"))
    # An altered corpus: the question bank is written for the real one, so the rules read it.
    hostile = settings.model_copy(update={"corpus_dir": root / "corpus", "index_dir": root / "index", "decisions": "rules"})
    report = build_index(hostile)
    assert report.problems == []

    class HostileErrorBot(Bot):
        def answer(self, question, *args, **kwargs):
            if question.startswith(ERROR_TRIGGER):
                raise QuestionError(ERROR_MARKUP)  # a user error whose message carries markup
            return super().answer(question, *args, **kwargs)

    b = HostileErrorBot(hostile)
    b.warm_up()
    return b


@pytest.fixture(scope="module")
def hostile_page(hostile_bot, tmp_path_factory):
    import bot.app as app
    from playwright.sync_api import sync_playwright

    mp = pytest.MonkeyPatch()
    # Follow-ups are built from templates; to test their panel, one carries markup.
    mp.setattr(app, "suggest_followups", lambda *a, **k: [FOLLOWUP_MARKUP])
    demo = app.build_app(hostile_bot, feedback_path=tmp_path_factory.mktemp("fb") / "f.jsonl")
    url = launch(demo, **app.page_mount_options())
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 900}, locale="zh-CN")
        pg.on("dialog", lambda d: d.dismiss())
        pg.goto(url)
        pg.locator("#gq-input textarea").wait_for()
        pg.locator("#gq-reader .gq-docs").wait_for(state="attached")
        yield pg
        browser.close()
    demo.close()
    mp.undo()


def ask(pg, question: str) -> None:
    before = pg.locator("#gq-chat .message.bot").count()
    pg.locator("#gq-input textarea").fill(question)
    pg.locator("#gq-input textarea").press("Enter")
    pg.wait_for_function(
        """(n) => { const log = document.querySelector('#gq-chat .gq-log');
                    return log.dataset.busy === '0' && log.querySelectorAll('.message.bot').length === n
                      && document.querySelector('#gq-status .gq-status') !== null; }""", arg=before + 1, timeout=30_000)


def assert_inert(pg) -> None:
    """Nothing ran, and no element the payloads would create exists in any panel."""
    assert pg.evaluate("typeof window.__xss") == "undefined", pg.evaluate("window.__xss")
    for selector in ("img[src='x']", "svg[onload]", "script", "[onerror]", "[onload]"):
        found = pg.evaluate(f"""() => [...document.querySelectorAll('{PANELS.replace("'", "")}')]
            .reduce((n, panel) => n + panel.querySelectorAll("{selector}").length, 0)""")
        assert found == 0, f"{selector} in a panel"


def panel_text(pg, selector: str) -> str:
    return pg.locator(selector).evaluate("(e) => e.textContent")


def test_markup_from_a_reference_file_is_text_in_the_answer_sources_popup_and_reader(hostile_page, hostile_bot):
    pg = hostile_page
    ask(pg, Q_FULLTEXT)
    answer = pg.locator("#gq-chat .message.bot").last
    shown = answer.locator(".gq-answer").evaluate("(e) => e.textContent")
    assert BODY_MARKUP in shown and SECTION_MARKUP in shown
    # the source entry of the full-text quote: its place (the section name) and its passage
    entries = answer.locator(".gq-src")
    texts = [e.evaluate("(d) => d.textContent") for e in entries.all()]
    assert any(BODY_MARKUP in t and SECTION_MARKUP in t for t in texts)
    # the copy text carries it as plain text
    assert BODY_MARKUP in answer.locator(".gq-copy").get_attribute("data-copy")
    # the marker's popup (hover) and the reader (click) for the full-text quote
    full = next(i for i, t in enumerate(texts) if BODY_MARKUP in t)
    marker = answer.locator(".gq-answer .gq-mk").nth(full)
    marker.hover()
    pg.locator("#gq-pop").wait_for(state="visible")
    assert BODY_MARKUP in panel_text(pg, "#gq-pop")
    marker.click()
    pg.locator("#gq-reader mark.gq-hl").first.wait_for()
    reader = panel_text(pg, "#gq-reader .gq-doc:not([hidden])")
    assert BODY_MARKUP in reader and TITLE_MARKUP in reader and SECTION_MARKUP in reader
    assert "".join(m.text_content() for m in pg.locator("#gq-reader mark.gq-hl").all()) == BODY_MARKUP
    # the reader's document bar names the user's note by its title, as text
    note = pg.locator("#gq-reader .gq-docbtn[data-doc='note']")
    assert note.get_attribute("title") == NOTE_TITLE and note.get_attribute("aria-label") == NOTE_TITLE
    note.click()
    assert NOTE_TITLE in panel_text(pg, "#gq-reader .gq-doc[data-doc='note']")
    assert_inert(pg)
    pg.screenshot(path=str(SHOTS / "desktop-hostile-reference.png"))


def test_markup_in_a_vote_option_is_text_in_the_chart_and_the_table(hostile_page):
    pg = hostile_page
    ask(pg, Q_VOTE)
    answer = pg.locator("#gq-chat .message.bot").last
    labels = [r.evaluate("(e) => e.textContent") for r in answer.locator(".gq-vote .gq-bar-label").all()]
    assert any(VOTE_MARKUP in label for label in labels)
    assert VOTE_MARKUP in answer.locator(".gq-src").first.evaluate("(e) => e.textContent")
    assert VOTE_MARKUP in answer.locator(".gq-answer").evaluate("(e) => e.textContent")
    assert VOTE_MARKUP in panel_text(pg, "#gq-reader .gq-doc[data-doc='consensus'] table")
    assert_inert(pg)


def test_markup_in_follow_ups_and_errors_is_text(hostile_page):
    pg = hostile_page
    ask(pg, Q_VOTE)
    followup = pg.locator("#gq-chat .message.bot").last.locator(".gq-fu")
    assert followup.count() == 1 and followup.text_content() == FOLLOWUP_MARKUP
    assert followup.get_attribute("data-q") == FOLLOWUP_MARKUP
    ask(pg, ERROR_TRIGGER)
    assert ERROR_MARKUP in panel_text(pg, "#gq-status")
    assert ERROR_MARKUP in pg.locator("#gq-chat .gq-error").last.text_content()
    # a question carrying markup is shown as typed
    ask(pg, ERROR_TRIGGER + TITLE_MARKUP)
    assert pg.locator("#gq-chat .message.user .gq-user-text").last.text_content() == ERROR_TRIGGER + TITLE_MARKUP
    assert_inert(pg)
    pg.screenshot(path=str(SHOTS / "desktop-hostile-error-followup.png"))
