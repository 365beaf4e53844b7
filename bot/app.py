"""The chat page: a thin Gradio layer over `Bot.answer()` (presentation only, no answer logic).

Every answer shown here is `Bot.answer(question, history, scope)`, rendered from its Markdown and
its quotes: each quote gets an inline source marker (①②…, never the document's own ［n］), each
marker a source entry under the answer (the passage with the quoted span highlighted), and every
source opens the document reader (原文) at the span. The conversation is one HTML panel built
here, so that every label is Chinese and every string is escaped by one helper.

Escaping: whatever comes from the user, the answer, the corpus or an error passes through
`escape_html` before it enters any HTML built here (the panel builders are `transcript_html`,
`answer_html`, `source_entry_html`, `vote_chart_html`, `followups_html`, `reader_html`,
`status_html`, `examples_html`). The browser code only moves nodes built here (cloneNode) and
sets text with `textContent`: it never turns a string into markup.
"""
from __future__ import annotations

import html
import ipaddress
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry, no version check

import gradio as gr  # noqa: E402

from bot.answer import DISCLAIMER, Bot, place_of, user_error_types  # noqa: E402
from bot.feedback import save_feedback  # noqa: E402
from bot.followups import suggest_followups  # noqa: E402
from bot.plan import document_map  # noqa: E402
from bot.types import Answer  # noqa: E402
from indexer.settings import get_settings  # noqa: E402
from indexer.types import EVIDENCE_LABELS, Passage  # noqa: E402

TITLE = "gistqa · KIT exon 9 突变GIST专家共识问答"
EXAMPLES = [
    "KIT exon 9突变患者辅助治疗用多大剂量？",
    "辅助治疗期间复发应该怎么办？",
    "为什么KIT exon 9突变对标准剂量伊马替尼不敏感？",
    "What first-line imatinib dose is recommended for exon 9 GIST?",
    "瑞派替尼的剂量是多少？",
]
SCOPES = [("全部：共识＋文献卡片", "all"), ("仅共识原文", "consensus")]
STREAM_CHUNK_CHARS = 24  # the answer appears this many characters at a time
STREAM_DELAY_S = 0.015
MAX_FILE_SIZE = "64kb"  # the page takes no uploads; keep the limit small anyway
QUEUE_MAX_SIZE = 64
PHONE_MAX_WIDTH_PX = 760  # below this the page is laid out for a phone (one column, sources under answers)
THINKING = "正在检索共识原文并逐字核对……"
INPUT_PLACEHOLDER = "输入问题，回车发送"
WELCOME = ("请就KIT exon 9突变GIST提问，例如辅助治疗剂量、复发处理、一线治疗方案。"
           "回答只摘录原文；点引用后的圆圈编号（①②…）可看原文出处。")
READER_LOADING = "正在载入原文……"
INTERNAL_ERROR = "内部错误，未能回答。请稍后重试或联系维护者。"
NOT_COVERED = "未覆盖"
COPY_FOOTER = "（摘自 gistqa · KIT exon 9 突变GIST专家共识问答；仅供医学教育参考）"
MARKER_CIRCLED_MAX = 20  # ①…⑳ exist as single characters; past that the marker reads (21)
UNIT_RE = re.compile(r"\d+(?:\.\d+)?\s*(?:~\s*\d+\s*)?(?:mg/d|mg|%|周|个月|年)")
QUOTE_OR_LABEL_RE = re.compile(r"\*\*(.+?)\*\*|「(.*?)」|〔(.*?)〕", re.S)
ENGLISH_TAIL_RE = re.compile(r"\s*\((?=[^()]*[A-Za-z])[^()\u4e00-\u9fff]*\)\s*$")  # "… (the question is empty)"


# --- escaping: the one door into HTML ----------------------------------------------------------
def escape_html(text: object) -> str:
    """Text from anywhere (user, answer, corpus, error) as inert HTML text or attribute value."""
    return html.escape(str(text), quote=True)


def chinese_message(message: object) -> str:
    """A user-facing error without its English gloss: "问题为空 (the question is empty)" -> "问题为空"."""
    text = str(message).strip()
    stripped = ENGLISH_TAIL_RE.sub("", text)
    return stripped or text


def marker_label(n: int) -> str:
    """The inline source marker: circled digits, which the document itself never uses (it cites ［n］)."""
    return chr(0x2460 + n - 1) if 1 <= n <= MARKER_CIRCLED_MAX else f"({n})"


def units_whole(escaped: str) -> str:
    """Keep "600 mg/d", "86%" on one line (input already escaped; digits and units are plain)."""
    return UNIT_RE.sub(lambda m: f'<span class="gq-nw">{m.group(0)}</span>', escaped)


def stream_prefixes(text: str, size: int = STREAM_CHUNK_CHARS) -> Iterator[str]:
    for end in range(size, len(text), size):
        yield text[:end]
    yield text


# --- what the page keeps about an answer -------------------------------------------------------
def index_build_id(bot: Bot) -> str:
    return bot._ensure_loaded().build_dir.name


def passage_lookup(bot: Bot) -> dict:
    index = bot._ensure_loaded()
    cached = getattr(bot, "_app_passages", None)
    if cached is None or cached[0] is not index:
        cached = (index, {p.passage_id: p for p in index.passages})
        bot._app_passages = cached
    return cached[1]


def answer_record(bot: Bot, result: Answer, history: list[str], message_index: int) -> dict:
    """What the page keeps about one answer: its quotes grouped into sources (a vote item's wording
    and its options are one source, the table row group), enough to draw it again and to save
    feedback."""
    passages = passage_lookup(bot)
    dm = document_map(bot._ensure_loaded())
    quotes, sources = [], []
    for q in result.quotes:
        p = passages.get(q.passage_id)
        quote = {"text": q.text, "doc_id": q.doc_id, "passage_id": q.passage_id, "section": q.section,
                 "paragraph": q.paragraph, "start": q.start, "end": q.end, "kind": q.kind,
                 "evidence_kind": q.evidence_kind, "page": q.page,
                 "place": place_of(p, dm) if p is not None else q.section}
        if p is not None and p.vote is not None and sources and sources[-1]["passage_id"] == q.passage_id:
            quote["source"] = sources[-1]["n"]  # an option of the vote item just opened
            sources[-1]["quotes"].append(len(quotes))
        else:
            vote = p is not None and p.vote is not None
            sources.append({"n": len(sources) + 1, "passage_id": q.passage_id, "doc_id": q.doc_id,
                            "kind": q.kind, "place": quote["place"], "text": q.text,
                            "start": p.start if vote else q.start, "end": p.end if vote else q.end,
                            "vote": vote, "quotes": [len(quotes)]})
            quote["source"] = sources[-1]["n"]
        quotes.append(quote)
    votes = []
    for s in sources:
        p = passages.get(s["passage_id"])
        if s["vote"] and p is not None:
            item = p.vote
            votes.append({"number": item.number, "question": item.question, "source": s["n"],
                          "options": [{"text": o.text, "percent": o.percent} for o in item.options]})
    return {
        "message_index": message_index, "question": result.question, "history": list(history),
        "answer": result.answer, "refused": result.refused, "refusal_reason": result.refusal_reason,
        "scope": result.scope, "quotes": quotes, "sources": sources, "votes": votes,
        "build": index_build_id(bot), "followups": [],
    }


# --- the answer's text with its markers -------------------------------------------------------
def answer_segments(record: dict) -> list[tuple[int, list[tuple]]]:
    """The answer's Markdown read into lines of segments: (indent, [(kind, text, source)]).
    Kinds: text, bold, quote (with its source number), place (〔…〕, with the source it closes).
    Quotes are matched to the record's quotes in order, so a marker always names its own source."""
    quotes = record.get("quotes", [])
    qi = 0
    lines = []
    # Quotes the answer text does not show in 「」 (the reference records, named by a 〔［n］…〕 chip).
    shown_texts = record["answer"]
    for raw in record["answer"].split("\n"):
        indent = len(raw) - len(raw.lstrip(" "))
        body = raw.strip()
        bullet = body.startswith("- ")
        if bullet:
            body = body[2:]
        segs: list[tuple] = []
        pos = 0
        last_source = None
        for m in QUOTE_OR_LABEL_RE.finditer(body):
            if m.start() > pos:
                segs.append(("text", body[pos:m.start()], None))
            bold, quote, place = m.groups()
            if bold is not None:
                segs.append(("bold", bold, None))
            elif quote is not None:
                source = None
                while qi < len(quotes) and f"「{quotes[qi]['text']}」" not in shown_texts:
                    qi += 1  # a record-only quote: it belongs to a chip, handled below
                if qi < len(quotes) and quotes[qi]["text"] == quote:
                    source = quotes[qi]["source"]
                    qi += 1
                segs.append(("quote", quote, source))
                last_source = source
            else:
                source = last_source
                if source is None:  # a chip such as 〔［16］Vincenzi B 等 · 置信度较确定〕: the next record quote
                    while qi < len(quotes) and f"「{quotes[qi]['text']}」" in shown_texts:
                        qi += 1
                    if qi < len(quotes):
                        source = quotes[qi]["source"]
                        qi += 1
                    segs.append(("chip", place, source))
                else:
                    segs.append(("place", place, source))
                last_source = None
            pos = m.end()
        if pos < len(body):
            segs.append(("text", body[pos:], None))
        lines.append((indent + (1 if bullet else 0), segs, bullet))
    return lines


def _segments_html(record: dict, segs: list[tuple], budget: list[int], marked: set[int]) -> str:
    """One line's segments as HTML, at most budget[0] characters of text. A source's marker is
    shown once per answer: after its quote's place 〔…〕, or after the quote itself when it has
    none (a vote item's options belong to the item's marker and get none of their own)."""
    turn = record["message_index"]
    out = []

    def marker(source):
        if source is not None and source not in marked:
            marked.add(source)
            out.append(_marker_html(turn, source))

    for i, (kind, text, source) in enumerate(segs):
        if budget[0] <= 0:
            break
        shown = text[: budget[0]]
        budget[0] -= len(shown)
        complete = len(shown) == len(text)
        t = units_whole(escape_html(shown))
        if kind == "bold":
            out.append(f"<b>{t}</b>")
        elif kind == "quote":
            out.append(f'<span class="gq-q">「{t}{"」" if complete else ""}</span>')
            placed = i + 1 < len(segs) and segs[i + 1][0] == "place"
            if complete and not placed:
                marker(source)
        elif kind == "place":
            if complete:
                marker(source)
            out.append(f'<span class="gq-place">〔{t}{"〕" if complete else ""}</span>')
        elif kind == "chip":
            out.append(f'<span class="gq-chip-ref">〔{t}{"〕" if complete else ""}</span>')
            if complete:
                marker(source)
        else:
            out.append(t)
    return "".join(out)


def _marker_html(turn: int, source: int) -> str:
    return (f'<button type="button" class="gq-mk" data-src="gq-src-{int(turn)}-{int(source)}" '
            f'aria-label="出处{int(source)}（查看原文）">{marker_label(int(source))}</button>')


def answer_html(record: dict, budget: int | None = None) -> str:
    """The answer as HTML: its lines, bold labels, quotes each followed by its source marker.
    `budget` shows only the first so many characters (the answer streams in)."""
    left = [budget if budget is not None else 10 ** 9]
    marked: set[int] = set()
    blocks, items = [], []

    def flush():
        if items:
            blocks.append('<ul class="gq-list">' + "".join(items) + "</ul>")
            items.clear()

    for level, segs, bullet in answer_segments(record):
        if left[0] <= 0:
            break
        if not segs:
            continue
        inner = _segments_html(record, segs, left, marked)
        if bullet:
            items.append(f'<li class="gq-li gq-lv{min(level // 4, 2)}">{inner}</li>')
        else:
            flush()
            blocks.append(f"<p>{inner}</p>")
    flush()
    return "".join(blocks)


def answer_plain_text(record: dict) -> str:
    """What 复制 puts on the clipboard: the question, the answer as plain text with its markers,
    and the sources, each with its place and quote."""
    lines = []
    for level, segs, bullet in answer_segments(record):
        parts = []
        for kind, text, source in segs:
            if kind == "quote":
                parts.append(f"「{text}」")
            elif kind == "place":
                parts.append((marker_label(source) if source else "") + f"〔{text}〕")
            elif kind == "chip":
                parts.append(f"〔{text}〕" + (marker_label(source) if source else ""))
            else:
                parts.append(text)
        if parts:
            lines.append(("  " * (level // 4)) + ("· " if bullet else "") + "".join(parts))
    out = [f"问：{record['question']}", "", "答：" + "\n".join(lines).strip()]
    if record.get("sources"):
        out += ["", "出处："]
        for s in record["sources"]:
            out.append(f"{marker_label(s['n'])} {s['kind']} · {s['place']}：「{s['text']}」")
    out += ["", COPY_FOOTER]
    return "\n".join(out)


# --- sources: the passage with the quoted span highlighted ----------------------------------------
def _doc_text(bot: Bot, p: Passage) -> str:
    return bot._ensure_loaded().documents[p.doc_id].text


def _passage_body_html(doc_text: str, p: Passage, spans: list[tuple[int, int]]) -> str:
    """The passage's text with the given document spans in <mark> (spans inside the passage only)."""
    out, pos = [], p.start
    for s, e in sorted(spans):
        if s < pos or e > p.end or s >= e:
            continue
        out.append(escape_html(doc_text[pos:s]))
        out.append(f"<mark>{escape_html(doc_text[s:e])}</mark>")
        pos = e
    out.append(escape_html(doc_text[pos:p.end]))
    return "".join(out)


def vote_table_html(doc_text: str, passages: list[Passage], highlight: set[str] = frozenset(),
                    header: list[str] | None = None) -> str:
    """Vote items as the table the consensus prints (表1): item wording, option, 赞同率. Every cell
    carries its document offsets so the reader can find a span in it."""
    head = ""
    if header:
        head = "<thead><tr>" + "".join(f'<th scope="col">{escape_html(h)}</th>' for h in header) + "</tr></thead>"
    rows = []
    for p in passages:
        item = p.vote
        lit = " gq-hl-row" if p.passage_id in highlight else ""
        n = max(1, len(item.options))
        for i, o in enumerate(item.options):
            first = (f'<th scope="rowgroup" rowspan="{n}" class="gq-cell" data-s="{item.start}" data-e="{item.end}">'
                     f"{escape_html(item.question)}</th>") if i == 0 else ""
            rows.append(
                f'<tr class="gq-vote-tr{lit}" data-pid="{escape_html(p.passage_id)}">{first}'
                f'<td class="gq-cell" data-s="{o.start}" data-e="{o.end}">{escape_html(doc_text[o.start:o.end])}</td>'
                f'<td class="gq-cell gq-num" data-s="{o.percent_start}" data-e="{o.percent_end}">'
                f"{escape_html(doc_text[o.percent_start:o.percent_end])}</td></tr>")
    return f'<table class="gq-table">{head}<tbody>{"".join(rows)}</tbody></table>'


def vote_header(doc_text: str, first_vote: Passage) -> list[str]:
    """The table's own header row (诊治策略 | 选项 | 赞同率（%）), read from the document."""
    before = doc_text[: first_vote.start].rstrip("\n").split("\n")
    for line in reversed(before):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.strip().startswith("|") and not all(set(c) <= set("-: ") for c in cells):
            return cells
    return []


def source_entry_html(bot: Bot, record: dict, source: dict) -> str:
    """One source under an answer: marker, kind, place (once), and the passage with the quoted
    span highlighted; a vote item as its table rows. A passage gone from the index (an old answer
    after a rebuild) says so and shows the quote alone."""
    turn = int(record["message_index"])
    n = int(source["n"])
    p = passage_lookup(bot).get(source["passage_id"])
    attrs = (f'id="gq-src-{turn}-{n}" data-doc="{escape_html(source["doc_id"])}" '
             f'data-pid="{escape_html(source["passage_id"])}" data-s="{int(source["start"])}" '
             f'data-e="{int(source["end"])}" data-text="{escape_html(source["text"])}" '
             f'data-build="{escape_html(record.get("build", ""))}"')
    head = (f'<summary class="gq-src-head"><span class="gq-src-n">{marker_label(n)}</span>'
            f'<span class="gq-src-kind">{escape_html(source["kind"])}</span>'
            f'<span class="gq-src-place">{escape_html(source["place"])}</span></summary>')
    if p is None:
        body = ('<div class="gq-src-note" role="note">索引已更新，这段原文已不在当前索引中；以下是当时引用的原话：</div>'
                f'<blockquote class="gq-src-para"><mark>{escape_html(source["text"])}</mark></blockquote>')
    else:
        doc_text = _doc_text(bot, p)
        if p.vote is not None:
            header = vote_header(doc_text, p)
            body = ('<div class="gq-src-para gq-src-table">'
                    + vote_table_html(doc_text, [p], {p.passage_id}, header) + "</div>")
        else:
            spans = [(record["quotes"][i]["start"], record["quotes"][i]["end"]) for i in source["quotes"]]
            ok = all(p.start <= s <= e <= p.end for s, e in spans) and all(
                doc_text[record["quotes"][i]["start"]:record["quotes"][i]["end"]] == record["quotes"][i]["text"]
                for i in source["quotes"])
            if ok:
                body = f'<blockquote class="gq-src-para">{_passage_body_html(doc_text, p, spans)}</blockquote>'
            else:  # offsets from an older build of the index: the passage, unhighlighted
                body = ('<div class="gq-src-note" role="note">索引已更新，引用位置无法标出。</div>'
                        f'<blockquote class="gq-src-para">{escape_html(p.text)}</blockquote>')
    tools = ('<div class="gq-src-tools"><button type="button" class="gq-open-reader">在原文中查看上下文</button></div>'
             if p is not None else "")
    return f'<li class="gq-src-item"><details class="gq-src" {attrs}>{head}<div class="gq-src-body">{body}</div>{tools}</details></li>'


def sources_html(bot: Bot, record: dict) -> str:
    if not record.get("sources"):
        return ""
    entries = "".join(source_entry_html(bot, record, s) for s in record["sources"])
    return (f'<details class="gq-srclist"><summary>出处（{len(record["sources"])} 条，点编号查看原文）</summary>'
            f'<ol class="gq-srcs">{entries}</ol></details>')


def vote_chart_html(record: dict) -> str:
    """The vote items the answer cites, each with every option in the table's order, the
    majority marked, and only the percentages 表1 states."""
    out = []
    for v in record.get("votes", []):
        top = max((o["percent"] for o in v["options"]), default=None)
        rows = []
        for o in v["options"]:
            pct = int(o["percent"])
            width = max(0, min(100, pct))
            major = pct == top
            badge = '<span class="gq-major-badge">多数</span>' if major else ""
            rows.append(
                f'<div class="gq-bar-row{" gq-major" if major else ""}">'
                f'<div class="gq-bar-label">{units_whole(escape_html(o["text"]))}{badge}</div>'
                f'<div class="gq-bar-track" aria-hidden="true"><div class="gq-bar" style="width:{width}%"></div></div>'
                f'<div class="gq-bar-pct">{pct}%</div></div>')
        out.append(
            f'<figure class="gq-vote" data-item="{int(v["number"])}">'
            f'<figcaption><span class="gq-vote-title">专家投票（表1 第{int(v["number"])}项）</span>'
            f'{_marker_html(record["message_index"], v["source"])}'
            f'<span class="gq-vote-q">{units_whole(escape_html(v["question"]))}</span></figcaption>'
            f'{"".join(rows)}</figure>')
    return "".join(out)


def followups_html(record: dict) -> str:
    if not record.get("followups"):
        return ""
    buttons = "".join(f'<button type="button" class="gq-fu" data-q="{escape_html(q)}">{escape_html(q)}</button>'
                      for q in record["followups"])
    return f'<div class="gq-fus" role="group" aria-label="接着可以问"><span class="gq-fus-label">接着可以问：</span>{buttons}</div>'


def _actions_html(record: dict) -> str:
    turn = int(record["message_index"])
    return (f'<div class="gq-actions" data-turn="{turn}">'
            f'<button type="button" class="gq-copy" title="复制问题、回答和出处（纯文本）" '
            f'data-copy="{escape_html(answer_plain_text(record))}">复制</button>'
            f'<button type="button" class="gq-thumb" data-rating="up" aria-label="赞" title="赞：有帮助" aria-pressed="false">赞</button>'
            f'<button type="button" class="gq-thumb" data-rating="down" aria-label="踩" title="踩：没帮助" aria-pressed="false">踩</button>'
            "</div>")


def bot_message_html(bot: Bot, record: dict, budget: int | None = None) -> str:
    """One answer: its text with markers, then (once it is whole) vote chart, sources, follow-ups."""
    turn = int(record["message_index"])
    streaming = budget is not None
    prefix = f'<p class="gq-refused"><b>{NOT_COVERED}</b></p>' if record["refused"] else ""
    parts = [f'<div class="message bot" data-turn="{turn}"{" data-streaming=1" if streaming else ""}>',
             '<div class="gq-who" aria-hidden="true">答</div><div class="gq-body">',
             f'<div class="gq-answer">{prefix}{answer_html(record, budget)}</div>']
    if not streaming:
        parts += [vote_chart_html(record), sources_html(bot, record), followups_html(record), _actions_html(record)]
    parts.append("</div></div>")
    return "".join(parts)


def user_message_html(question: str) -> str:
    return (f'<div class="message user"><div class="gq-who" aria-hidden="true">问</div>'
            f'<div class="gq-body gq-user-text">{escape_html(question)}</div></div>')


def transcript_html(bot: Bot, turns: list[dict]) -> str:
    """The whole conversation. A turn is {"question", "record"} (a finished or streaming answer,
    with "budget" while it streams) or {"question", "pending"} or {"question", "error"}."""
    if not turns:
        return f'<div class="gq-log" data-busy="0"><p class="gq-welcome">{escape_html(WELCOME)}</p></div>'
    out = []
    busy = False
    for i, t in enumerate(turns):
        out.append(f'<section class="gq-turn" data-turn="{i}" aria-label="第{i + 1}问">')
        out.append(user_message_html(t["question"]))
        if "record" in t:
            out.append(bot_message_html(bot, t["record"], t.get("budget")))
            busy = busy or t.get("budget") is not None
        elif "error" in t:
            out.append(f'<div class="message bot gq-error" data-turn="{i}"><div class="gq-who" aria-hidden="true">答</div>'
                       f'<div class="gq-body">⚠ {escape_html(t["error"])}</div></div>')
        else:
            busy = True
            out.append(f'<div class="message bot" data-turn="{i}" data-streaming=1><div class="gq-who" aria-hidden="true">答</div>'
                       f'<div class="gq-body gq-thinking" role="status">{escape_html(THINKING)}</div></div>')
        out.append("</section>")
    return f'<div class="gq-log" data-busy="{1 if busy else 0}">{"".join(out)}</div>'


def status_html(record: dict | None = None, error: str | None = None) -> str:
    if error is not None:
        return f'<div class="gq-status gq-status-error" role="alert">⚠ {escape_html(chinese_message(error))}</div>'
    if record is None:
        return ""
    if record["refused"]:
        reason = record["refusal_reason"]
        if not reason or not re.search(r"[\u4e00-\u9fff]", reason):
            reason = "共识中没有可以逐字引用并核对通过的原文"
        return (f'<div class="gq-status gq-status-refused" role="status"><b>{NOT_COVERED}</b>：{escape_html(reason)}。'
                "共识及文献卡片中没有可以逐字引用的回答。</div>")
    return (f'<div class="gq-status gq-status-ok" role="status">已核对：{len(record["quotes"])} 条逐字引用均与原文一致'
            f'（{len(record["sources"])} 处出处）。</div>')


def examples_html() -> str:
    buttons = "".join(f'<li><button type="button" class="gq-fu gq-example" data-q="{escape_html(q)}">{escape_html(q)}</button></li>'
                      for q in EXAMPLES)
    return f'<details class="gq-examples"><summary>示例问题（点击即问）</summary><ul>{buttons}</ul></details>'


# --- the reader: the whole consensus and the reference cards ----------------------------------------
# How the reader names a document: in full (headings, tooltips) and short (its document bar).
_READER_LABELS = {
    "consensus": ("共识原文", "共识原文"),
    "reference_card": ("文献卡片［{slot}］", "卡{slot}"),
    "reference_fulltext": ("文献［{slot}］全文", "全文{slot}"),
}


def reader_doc_label(doc) -> str:
    labels = _READER_LABELS.get(doc.kind)
    return labels[0].format(slot=doc.meta.get("slot")) if labels else str(doc.title)


def reader_nav_label(doc) -> str:
    """The short name on the reader's document bar: 共识, then 卡1…卡16 (全文3 for a full text)."""
    labels = _READER_LABELS.get(doc.kind)
    return labels[1].format(slot=doc.meta.get("slot")) if labels else str(doc.title)[:12]


def _reader_order(doc) -> tuple:
    kinds = {"consensus": 0, "reference_card": 1, "reference_fulltext": 2}
    slot = doc.meta.get("slot") if isinstance(doc.meta.get("slot"), int) else 999
    return (kinds.get(doc.kind, 3), slot, doc.doc_id)


def document_html(bot: Bot, doc_id: str) -> str:
    """One document as the reader shows it: its sections as headings, the parts' labels in bold,
    author lines, the vote table as a table. Every paragraph and cell carries its offsets into
    the document (data-s/data-e), so a citation can be found and highlighted in it."""
    index = bot._ensure_loaded()
    doc = index.documents.get(doc_id)
    if doc is None:
        return (f'<article class="gq-doc gq-doc-missing" data-doc="{escape_html(doc_id)}">'
                f'<p class="gq-src-note" role="alert">找不到文档“{escape_html(doc_id)}”（索引可能已更新）。</p></article>')
    passages = [p for p in index.passages if p.doc_id == doc_id]
    out = [f'<article class="gq-doc" data-doc="{escape_html(doc_id)}" aria-label="{escape_html(reader_doc_label(doc))}">',
           f'<h3 class="gq-doc-title">{escape_html(doc.title)}</h3>']
    if doc.kind != "consensus":
        out.append('<p class="gq-doc-caveat">文献卡片整理的是候选文献，并非经确认的原文献。</p>'
                   if doc.kind == "reference_card" else "")
    heading: tuple = ()
    i = 0
    while i < len(passages):
        p = passages[i]
        section = p.section_path[:1] if doc.kind == "consensus" else p.section_path
        if p.vote is None and p.evidence_kind != "authors" and doc.kind != "consensus":
            section = p.section_path
        if section != heading and section and section[0] != doc.title and not doc.text[p.start:p.end].startswith(section[0] + "："):
            out.append(f'<h4 class="gq-doc-h">{escape_html(" › ".join(section))}</h4>')
        heading = section
        if p.vote is not None:
            group = []
            while i < len(passages) and passages[i].vote is not None:
                group.append(passages[i])
                i += 1
            out.append(vote_table_html(doc.text, group, header=vote_header(doc.text, group[0])))
            continue
        cls = "gq-byline" if p.evidence_kind == "authors" else "gq-para"
        text = doc.text[p.start:p.end]
        label = re.match(r"^(导语|目前指南推荐|存在争议及相关证据|我们推荐)[：:]", text) if doc.kind == "consensus" else None
        body = (f"<b>{escape_html(label.group(0))}</b>{escape_html(text[label.end():])}" if label
                else escape_html(text))
        page = f' data-page="{int(p.page)}"' if p.page else ""
        out.append(f'<p class="{cls} gq-cell" data-pid="{escape_html(p.passage_id)}" data-s="{p.start}" '
                   f'data-e="{p.end}"{page}>{body}</p>')
        i += 1
    out.append("</article>")
    return "".join(out)


def reader_html(bot: Bot) -> str:
    """Every document of the index, the consensus first, each one an <article> the reader shows
    one at a time; a bar to pick one. Built once per page load from the Bot's loaded index."""
    try:
        index = bot._ensure_loaded()
    except Exception as e:  # no index, wrong model: the reader says so instead of staying blank
        return (f'<div class="gq-reader" data-build=""><div class="gq-reader-note" role="alert">原文无法载入：'
                f'{escape_html(chinese_message(e))}</div></div>')
    docs = sorted(index.documents.values(), key=_reader_order)
    nav = "".join(
        f'<button type="button" class="gq-docbtn" data-doc="{escape_html(d.doc_id)}" '
        f'aria-label="{escape_html(reader_doc_label(d))}" title="{escape_html(reader_doc_label(d))}" '
        f'aria-pressed="{"true" if i == 0 else "false"}">{escape_html(reader_nav_label(d))}</button>'
        for i, d in enumerate(docs))
    articles = "".join(document_html(bot, d.doc_id) for d in docs)
    return (f'<div class="gq-reader" data-build="{escape_html(index.build_dir.name)}">'
            '<div class="gq-reader-bar"><h2 class="gq-reader-title">原文</h2>'
            '<button type="button" class="gq-reader-close">返回对话</button>'
            '<div class="gq-reader-src"></div></div>'
            '<div class="gq-reader-note" role="status" aria-live="polite"></div>'
            f'<nav class="gq-docnav" aria-label="选择文档">{nav}</nav>'
            f'<div class="gq-docs" tabindex="0" aria-label="原文内容">{articles}</div></div>')


# --- styles and browser code ---------------------------------------------------------------------
TEXT = "#1f2937"  # body text: 14.7:1 on white
SUBDUED = "#4b5563"  # secondary text: 7.6:1 on white (the theme's default grey was 2.5:1)
ACCENT = "#c2410c"  # orange-700: 5.2:1 on white, white on it 5.2:1
PAGE_CSS = f"""
.gradio-container {{ max-width: 1440px !important; }}
#gq-header h1 {{ font-size: 1.35em; margin: 0 0 4px; }}
#gq-header p {{ margin: 2px 0; color: {SUBDUED}; }}
.gq-disclaimer {{ background: #fff8e1; border: 1px solid #f0c36d; color: #5d4200; border-radius: 6px;
  padding: 6px 10px; font-size: 0.9em; margin-top: 6px; }}
.gq-open-reader-top {{ border: 1px solid {ACCENT}; color: {ACCENT}; background: #fff; border-radius: 6px;
  padding: 2px 10px; cursor: pointer; margin-top: 6px; }}
#gq-input textarea {{ font-size: 16px; }}  /* 16px: phones do not zoom into the box */
#gq-side {{ position: sticky; top: 8px; align-self: flex-start; }}
.gq-pop {{ position: fixed; z-index: 1000; max-width: min(440px, 92vw); max-height: 50vh; overflow: auto;
  background: #fff; color: {TEXT}; border: 1px solid #9ca3af; border-radius: 8px; padding: 8px 10px;
  box-shadow: 0 6px 24px rgba(0,0,0,.18); font-size: 0.9em; line-height: 1.6; }}
.gq-pop mark, .gq-hl {{ background: #ffe58a; color: #111; }}
.gq-pop .gq-src-head {{ display: flex; gap: 6px; flex-wrap: wrap; font-weight: 600; margin-bottom: 4px; list-style: none; }}
.gq-pop .gq-src-para {{ margin: 0; white-space: pre-wrap; }}
.gq-pop .gq-src-kind {{ background: #7c2d12; color: #fff; border-radius: 4px; padding: 0 6px; font-size: 0.85em; }}
.gq-pop .gq-src-n {{ color: {ACCENT}; }}
.gq-pop table {{ border-collapse: collapse; }} .gq-pop td, .gq-pop th {{ border: 1px solid #9ca3af; padding: 2px 4px; }}
.gq-queue-note {{ position: fixed; left: 50%; bottom: 16px; transform: translateX(-50%); z-index: 1001;
  background: #1f2937; color: #fff; padding: 8px 14px; border-radius: 8px; font-size: 0.9em; max-width: 92vw; }}
@media (max-width: {PHONE_MAX_WIDTH_PX}px) {{
  .gradio-container {{ padding: 6px !important; }}
  #gq-input-row {{ flex-wrap: wrap !important; gap: 6px !important; }}
  #gq-input {{ min-width: 0 !important; flex: 1 1 100% !important; }}  /* the whole width for the question */
  #gq-send {{ flex: 1 1 100% !important; }}
  #gq-side {{ display: none; }}
  #gq-chat .gq-who {{ display: none; }}
  #gq-scope .wrap {{ flex-direction: row !important; }}
  body.gq-reader-open #gq-side {{ display: block !important; position: fixed !important; top: 0 !important;
    left: 0 !important; width: 100vw !important; height: 100vh !important; max-height: 100vh !important;
    z-index: 900; overflow-y: auto !important; background: #fff; padding: 8px; margin: 0; box-sizing: border-box; }}
}}
"""
CHAT_CSS = f"""
.gq-log {{ display: flex; flex-direction: column; gap: 10px; }}
@media (min-width: {PHONE_MAX_WIDTH_PX + 1}px) {{
  .gq-log {{ max-height: calc(100vh - 300px); min-height: 360px; overflow-y: auto; padding-right: 4px; }}
}}
.gq-welcome {{ color: {SUBDUED}; padding: 12px; border: 1px dashed #9ca3af; border-radius: 8px; }}
.gq-turn {{ display: flex; flex-direction: column; gap: 6px; scroll-margin-top: 8px; }}
.message {{ display: flex; gap: 8px; align-items: flex-start; overflow-wrap: anywhere; }}
.gq-who {{ flex: 0 0 auto; width: 1.8em; height: 1.8em; border-radius: 50%; display: flex; align-items: center;
  justify-content: center; font-size: 0.85em; font-weight: 600; }}
.message.user .gq-who {{ background: #e0e7ff; color: #1e3a8a; }}
.message.bot .gq-who {{ background: #ffedd5; color: #7c2d12; }}
.gq-body {{ min-width: 0; flex: 1 1 auto; line-height: 1.75; color: {TEXT}; }}
.gq-user-text {{ white-space: pre-wrap; background: #eef2ff; border-radius: 8px; padding: 6px 10px; }}
.message.bot .gq-body {{ background: #fff; border: 1px solid #d1d5db; border-radius: 8px; padding: 8px 12px; }}
.gq-thinking {{ color: {SUBDUED}; }}
.gq-answer p {{ margin: 0 0 6px; }}
.gq-list {{ margin: 0 0 4px 1.1em; padding: 0; }}
.gq-li {{ margin: 4px 0; }}
.gq-lv1 {{ margin-left: 1.2em; list-style: circle; }}
.gq-refused {{ color: #8a4b00; }}
.gq-place, .gq-chip-ref {{ color: {SUBDUED}; font-size: 0.86em; }}
.gq-nw {{ white-space: nowrap; }}
.gq-mk {{ display: inline-block; min-width: 1.6em; padding: 0 3px; margin: 0 2px; border: 1px solid {ACCENT};
  border-radius: 999px; background: #fff7ed; color: {ACCENT}; font-weight: 700; line-height: 1.4; cursor: pointer;
  font-size: 0.95em; vertical-align: baseline; }}
.gq-mk:hover, .gq-mk:focus-visible, .gq-mk.gq-active {{ background: {ACCENT}; color: #fff; }}
.gq-vote {{ margin: 8px 0 4px; padding: 8px; border: 1px solid #d1d5db; border-radius: 8px; }}
.gq-vote figcaption {{ margin-bottom: 6px; }}
.gq-vote-title {{ font-weight: 600; margin-right: 4px; }}
.gq-vote-q {{ display: block; font-size: 0.9em; color: {TEXT}; }}
.gq-bar-row {{ display: grid; grid-template-columns: minmax(7em, 45%) 1fr 3.2em; gap: 6px; align-items: center; margin: 3px 0; }}
.gq-bar-label {{ font-size: 0.88em; }}
.gq-bar-track {{ background: #f3f4f6; border: 1px solid #9ca3af; height: 14px; border-radius: 3px; }}
.gq-bar {{ background: #fb923c; height: 100%; border-radius: 2px; }}
.gq-major .gq-bar {{ background: {ACCENT}; }}
.gq-major .gq-bar-label, .gq-major .gq-bar-pct {{ font-weight: 700; }}
.gq-major-badge {{ margin-left: 4px; font-size: 0.8em; background: {ACCENT}; color: #fff; border-radius: 4px; padding: 0 4px; white-space: nowrap; }}
.gq-bar-pct {{ font-size: 0.88em; text-align: right; font-variant-numeric: tabular-nums; }}
.gq-srclist {{ margin-top: 6px; font-size: 0.92em; }}
.gq-srclist > summary {{ cursor: pointer; color: {SUBDUED}; }}
.gq-srcs {{ margin: 4px 0 0; padding-left: 0; list-style: none; }}
.gq-src-item {{ margin: 4px 0; }}
.gq-src {{ border: 1px solid #d1d5db; border-radius: 6px; padding: 4px 8px; }}
.gq-src.gq-active {{ border-color: {ACCENT}; box-shadow: 0 0 0 2px #fed7aa; }}
.gq-src-head {{ cursor: pointer; display: flex; gap: 6px; flex-wrap: wrap; align-items: baseline; }}
.gq-src-n {{ color: {ACCENT}; font-weight: 700; }}
.gq-src-kind {{ background: #7c2d12; color: #fff; border-radius: 4px; padding: 0 6px; font-size: 0.85em; }}
.gq-src-place {{ color: {TEXT}; font-weight: 600; }}
.gq-src-note {{ color: #8a1c1c; font-size: 0.9em; }}
.gq-src-para {{ white-space: pre-wrap; line-height: 1.7; border-left: 3px solid {ACCENT}; margin: 6px 0 0; padding: 4px 8px; }}
.gq-src-para mark, .gq-hl-row td, .gq-hl-row th {{ background: #ffe58a; color: #111; }}
.gq-src-tools {{ margin: 4px 0; }}
.gq-open-reader, .gq-copy, .gq-thumb, .gq-fu {{ border: 1px solid #9ca3af; background: #fff; color: {TEXT};
  border-radius: 6px; padding: 2px 8px; cursor: pointer; font-size: 0.9em; }}
.gq-thumb[aria-pressed="true"] {{ background: #ffedd5; border-color: {ACCENT}; }}
.gq-fus {{ margin-top: 8px; display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }}
.gq-fus-label {{ color: {SUBDUED}; font-size: 0.9em; }}
.gq-fu {{ text-align: left; border-color: {ACCENT}; color: #7c2d12; }}
.gq-actions {{ margin-top: 6px; display: flex; gap: 6px; }}
.gq-table {{ border-collapse: collapse; width: 100%; font-size: 0.9em; }}
.gq-table th, .gq-table td {{ border: 1px solid #9ca3af; padding: 3px 6px; text-align: left; vertical-align: top; }}
.gq-table .gq-num {{ text-align: right; white-space: nowrap; }}
.gq-error .gq-body {{ color: #8a1c1c; }}
"""
READER_CSS = f"""
.gq-reader {{ border: 1px solid #d1d5db; border-radius: 8px; padding: 8px; background: #fff; color: {TEXT}; }}
.gq-reader-bar {{ display: flex; flex-wrap: wrap; justify-content: space-between; align-items: center; }}
.gq-reader-bar .gq-reader-src {{ flex: 1 1 100%; }}
.gq-reader-title {{ font-size: 1.1em; margin: 0; }}
.gq-reader-close {{ border: 1px solid #9ca3af; border-radius: 6px; background: #fff; color: {TEXT}; padding: 2px 8px; }}
@media (min-width: {PHONE_MAX_WIDTH_PX + 1}px) {{ .gq-reader-close {{ display: none; }} }}
@media (max-width: {PHONE_MAX_WIDTH_PX}px) {{  /* the phone's overlay: the way back stays on screen */
  .gq-reader-bar {{ position: sticky; top: -8px; background: #fff; z-index: 2; padding: 6px 0; }}
  .gq-reader-close {{ padding: 6px 14px; font-size: 1em; }}
}}
.gq-reader-note:empty {{ display: none; }}
.gq-reader-note {{ color: #8a1c1c; background: #fdecea; border-radius: 6px; padding: 4px 8px; margin: 4px 0; }}
.gq-reader-src:empty {{ display: none; }}
.gq-reader-src {{ margin: 6px 0; padding: 4px 8px; background: #fff7ed; border-radius: 6px; font-size: 0.9em; }}
.gq-reader-src .gq-src-head {{ display: flex; gap: 6px; flex-wrap: wrap; list-style: none; }}
.gq-src-n {{ color: {ACCENT}; font-weight: 700; }}
.gq-src-kind {{ background: #7c2d12; color: #fff; border-radius: 4px; padding: 0 6px; font-size: 0.85em; }}
.gq-src-place {{ font-weight: 600; }}
.gq-docnav {{ display: flex; flex-wrap: wrap; gap: 4px; margin: 6px 0; }}
.gq-docbtn {{ border: 1px solid #9ca3af; border-radius: 4px; background: #fff; color: {TEXT}; padding: 1px 6px; font-size: 0.8em; cursor: pointer; }}
.gq-docbtn[aria-pressed="true"] {{ background: {ACCENT}; border-color: {ACCENT}; color: #fff; }}
.gq-docs {{ line-height: 1.8; overflow-y: auto; }}
@media (min-width: {PHONE_MAX_WIDTH_PX + 1}px) {{ .gq-docs {{ max-height: calc(100vh - 190px); }} }}
.gq-doc[hidden] {{ display: none; }}
.gq-doc-title {{ font-size: 1.05em; margin: 4px 0; }}
.gq-doc-h {{ font-size: 1em; margin: 12px 0 4px; color: #7c2d12; }}
.gq-doc-caveat {{ color: #8a4b00; font-size: 0.9em; }}
.gq-para {{ white-space: pre-wrap; margin: 0 0 8px; }}
.gq-byline {{ color: {SUBDUED}; font-size: 0.9em; margin: 0 0 6px; }}
.gq-hl {{ background: #ffe58a; color: #111; outline: 2px solid {ACCENT}; }}
.gq-hl-row td, .gq-hl-row th, td.gq-hl, th.gq-hl {{ background: #ffe58a; color: #111; }}
.gq-table {{ border-collapse: collapse; width: 100%; font-size: 0.9em; }}
.gq-table th, .gq-table td {{ border: 1px solid #9ca3af; padding: 3px 6px; text-align: left; vertical-align: top; }}
.gq-table .gq-num {{ text-align: right; white-space: nowrap; }}
"""
STATUS_CSS = """
.gq-status { padding: 6px 10px; border-radius: 6px; font-size: 0.9em; }
.gq-status-ok { background: #e8f5e9; color: #1b5e20; }
.gq-status-refused { background: #fff3e0; color: #7a4100; border: 1px solid #f0b060; }
.gq-status-error { background: #fdecea; color: #8a1c1c; }
"""
EXAMPLES_CSS = f"""
.gq-examples > summary {{ cursor: pointer; color: {TEXT}; font-weight: 600; }}
.gq-examples ul {{ list-style: none; padding: 0; margin: 6px 0; display: flex; flex-wrap: wrap; gap: 6px; }}
.gq-fu {{ border: 1px solid {ACCENT}; background: #fff; color: #7c2d12; border-radius: 6px; padding: 2px 8px; cursor: pointer; text-align: left; }}
"""

# The chat panel's browser code. It runs once (js_on_load); the panel's HTML is re-rendered by
# Gradio as answers stream, so every handler is delegated from the panel or the document.
CHAT_JS = r"""
document.documentElement.lang = 'zh-CN';
const PHONE = window.matchMedia('(max-width: %(phone)dpx)');
const HOVER = window.matchMedia('(hover: hover) and (pointer: fine)');
if (!document.getElementById('gq-global-css')) {
  const style = document.createElement('style');
  style.id = 'gq-global-css';
  style.textContent = %(global_css)s;
  document.head.appendChild(style);
}
const readerRoot = () => document.querySelector('#gq-reader .gq-reader');
const pop = document.createElement('div');
pop.className = 'gq-pop'; pop.hidden = true; pop.setAttribute('role', 'tooltip'); pop.id = 'gq-pop';
document.body.appendChild(pop);
let popFor = null, hideTimer = null;

function entryOf(marker) { return document.getElementById(marker.dataset.src); }
function showPop(marker) {
  const entry = entryOf(marker);
  if (!entry) return;
  clearTimeout(hideTimer);
  pop.replaceChildren();
  const head = entry.querySelector('.gq-src-head').cloneNode(true);
  const headDiv = document.createElement('div');
  headDiv.className = 'gq-src-head';
  headDiv.append(...head.childNodes);
  pop.append(headDiv, entry.querySelector('.gq-src-body').cloneNode(true));
  pop.hidden = false;
  const r = marker.getBoundingClientRect();
  const w = Math.min(440, window.innerWidth * 0.92);
  pop.style.left = Math.max(8, Math.min(r.left, window.innerWidth - w - 8)) + 'px';
  const below = r.bottom + 6, h = pop.offsetHeight;
  pop.style.top = (below + h < window.innerHeight ? below : Math.max(8, r.top - h - 6)) + 'px';
  marker.setAttribute('aria-describedby', 'gq-pop');
  popFor = marker;
}
function hidePop() { pop.hidden = true; if (popFor) popFor.removeAttribute('aria-describedby'); popFor = null; }
pop.addEventListener('mouseenter', () => clearTimeout(hideTimer));
pop.addEventListener('mouseleave', () => { hideTimer = setTimeout(hidePop, 200); });

function clearHighlights(root) {
  root.querySelectorAll('mark.gq-hl').forEach((m) => m.replaceWith(document.createTextNode(m.textContent)));
  root.querySelectorAll('.gq-hl').forEach((n) => n.classList.remove('gq-hl'));
  root.querySelectorAll('.gq-cell').forEach((n) => n.normalize());
}
// Wrap [s, e) of a cell's text (document offsets; the cell starts at data-s) in <mark class=gq-hl>.
function markRange(cell, s, e) {
  const base = Number(cell.dataset.s);
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  let pos = base, started = false, node;
  while ((node = walker.nextNode())) {
    const len = node.textContent.length;
    if (!started && s >= pos && s <= pos + len) { range.setStart(node, s - pos); started = true; }
    if (started && e <= pos + len) { range.setEnd(node, e - pos); break; }
    pos += len;
  }
  if (!started) return null;
  const mark = document.createElement('mark');
  mark.className = 'gq-hl';
  mark.appendChild(range.extractContents());
  range.insertNode(mark);
  return mark;
}
function findSpan(article, s, e, text) {
  const marks = [];
  for (const cell of article.querySelectorAll('.gq-cell')) {
    const cs = Number(cell.dataset.s), ce = Number(cell.dataset.e);
    if (ce <= s || cs >= e) continue;
    const a = Math.max(s, cs), b = Math.min(e, ce);
    if (cell.textContent.slice(a - cs, b - cs) !== text.slice(a - s, a - s + (b - a)) && (a === s && b === e)) return null;
    const m = markRange(cell, a, b);
    if (m) marks.push(m);
  }
  return marks.length ? marks : null;
}
function findText(article, text) {  // the quote by its words (offsets from another build of the index)
  for (const cell of article.querySelectorAll('.gq-cell')) {
    const at = cell.textContent.indexOf(text);
    if (at >= 0) { const s = Number(cell.dataset.s) + at; return findSpan(article, s, s + text.length, text); }
  }
  return null;
}
function showDoc(root, docId) {
  let found = null;
  root.querySelectorAll('.gq-doc').forEach((a) => { const on = a.dataset.doc === docId; a.hidden = !on; if (on) found = a; });
  root.querySelectorAll('.gq-docbtn').forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.doc === docId)));
  return found;
}
function scrollIntoBox(box, target) {
  // On a phone the reader is an overlay that scrolls as a whole: let the browser find the scroller.
  if (PHONE.matches) { target.scrollIntoView({block: 'center', behavior: 'instant'}); return; }
  // On a laptop only the reader's own box scrolls, so the chat beside it stays where it was.
  const b = box.getBoundingClientRect(), t = target.getBoundingClientRect();
  if (box.scrollHeight > box.clientHeight + 1) {
    box.scrollTop += (t.top - b.top) - (box.clientHeight - t.height) / 2;
  }
  const t2 = target.getBoundingClientRect();
  if (t2.top < 0 || t2.bottom > window.innerHeight) {
    window.scrollBy({top: t2.top - window.innerHeight / 3, behavior: 'instant'});
  }
}
function openReader(entry, clickedAt) {
  const root = readerRoot();
  if (!root) return;
  const note = root.querySelector('.gq-reader-note');
  const srcBox = root.querySelector('.gq-reader-src');
  note.textContent = '';
  srcBox.replaceChildren();
  if (entry) {
    const head = entry.querySelector('.gq-src-head').cloneNode(true);
    const div = document.createElement('div');
    div.className = 'gq-src-head';
    div.append(...head.childNodes);
    srcBox.appendChild(div);
  }
  if (PHONE.matches) document.body.classList.add('gq-reader-open');
  clearHighlights(root);
  const docId = entry ? entry.dataset.doc : 'consensus';
  const article = showDoc(root, docId);
  const box = root.querySelector('.gq-docs');
  if (!article) {
    note.textContent = '找不到文档“' + docId + '”（索引可能已更新，请重新提问）。';
    return null;
  }
  if (!entry) { box.scrollTop = 0; return null; }
  const s = Number(entry.dataset.s), e = Number(entry.dataset.e), text = entry.dataset.text || '';
  let marks = null;
  if (entry.dataset.build === root.dataset.build) marks = findSpan(article, s, e, text);
  if (!marks && text) marks = findText(article, text);
  if (!marks) {
    note.textContent = '这处引用在当前原文中已找不到（索引已重建），无法定位。引用原话：「' + text + '」';
    box.scrollTop = 0;
    return null;
  }
  scrollIntoBox(box, marks[0]);
  requestAnimationFrame(() => {
    window.__gqLastHighlight = {ms: performance.now() - (clickedAt || performance.now()), doc: docId};
  });
  return marks;
}
function activate(marker, clickedAt) {
  const entry = entryOf(marker);
  document.querySelectorAll('.gq-mk.gq-active, .gq-src.gq-active').forEach((n) => n.classList.remove('gq-active'));
  marker.classList.add('gq-active');
  if (!entry) return;
  entry.classList.add('gq-active');
  hidePop();
  if (PHONE.matches) {  // on a phone the source opens under its answer
    const list = entry.closest('.gq-srclist');
    if (list) list.open = true;
    entry.open = true;
    entry.scrollIntoView({block: 'nearest', behavior: 'instant'});
    window.__gqLastHighlight = {ms: performance.now() - clickedAt, doc: entry.dataset.doc, under: true};
  } else {
    openReader(entry, clickedAt);
  }
}
function copyText(text, button) {
  const done = () => { button.textContent = '已复制'; setTimeout(() => { button.textContent = '复制'; }, 2000); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => legacyCopy(text) && done());
  } else if (legacyCopy(text)) done();
}
function legacyCopy(text) {
  const ta = document.createElement('textarea');
  ta.value = text; ta.setAttribute('readonly', ''); ta.style.position = 'fixed'; ta.style.opacity = '0';
  document.body.appendChild(ta); ta.select();
  let ok = false;
  try { ok = document.execCommand('copy'); } catch (err) { ok = false; }
  ta.remove();
  return ok;
}

document.addEventListener('click', (event) => {
  const marker = event.target.closest('.gq-mk');
  if (marker) { event.preventDefault(); activate(marker, event.timeStamp); return; }
  const open = event.target.closest('.gq-open-reader');
  if (open) { openReader(open.closest('.gq-src'), event.timeStamp); return; }
  const top = event.target.closest('.gq-open-reader-top');
  if (top) { openReader(null); return; }
  const close = event.target.closest('.gq-reader-close');
  if (close) { document.body.classList.remove('gq-reader-open'); return; }
  const docbtn = event.target.closest('.gq-docbtn');
  if (docbtn) {
    const root = readerRoot();
    root.querySelector('.gq-reader-note').textContent = '';
    if (!showDoc(root, docbtn.dataset.doc)) root.querySelector('.gq-reader-note').textContent = '找不到这份文档。';
    root.querySelector('.gq-docs').scrollTop = 0;
    return;
  }
  const copy = event.target.closest('.gq-copy');
  if (copy) { copyText(copy.dataset.copy, copy); return; }
  if (!event.target.closest('.gq-pop')) hidePop();
});
document.addEventListener('mouseover', (event) => {
  const marker = event.target.closest && event.target.closest('.gq-mk');
  if (marker && HOVER.matches) showPop(marker);
});
document.addEventListener('mouseout', (event) => {
  const marker = event.target.closest && event.target.closest('.gq-mk');
  if (marker && HOVER.matches) { hideTimer = setTimeout(hidePop, 250); }
});
document.addEventListener('focusin', (event) => {
  const marker = event.target.closest && event.target.closest('.gq-mk');
  if (marker) showPop(marker); else if (!event.target.closest('.gq-pop')) hidePop();
});
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape') { hidePop(); document.body.classList.remove('gq-reader-open'); }
  const box = event.target.closest && event.target.closest('#gq-input textarea');
  if (box && event.key === 'Enter' && !event.shiftKey) queuedNote(box.value);
});
document.addEventListener('click', (event) => {
  if (event.target.closest('#gq-send')) {
    const box = document.querySelector('#gq-input textarea');
    queuedNote(box ? box.value : '');
  }
}, true);
// A question sent while an answer streams waits for it (the event is queued, "always_last"): say so.
let noteTimer = null;
function queuedNote(text) {
  const log = element.querySelector('.gq-log');
  if (!log || log.dataset.busy !== '1' || !text.trim()) return;
  let note = document.getElementById('gq-queue-note');
  if (!note) {
    note = document.createElement('div'); note.id = 'gq-queue-note'; note.className = 'gq-queue-note';
    note.setAttribute('role', 'status'); document.body.appendChild(note);
  }
  note.textContent = '上一条回答完成后将接着回答：' + text.trim().slice(0, 40);
  note.hidden = false;
  clearInterval(noteTimer);
  noteTimer = setInterval(() => {
    const l = element.querySelector('.gq-log');
    if (!l || l.dataset.busy !== '1') { note.hidden = true; clearInterval(noteTimer); }
  }, 200);
}

// Follow-ups and thumbs go to the server; everything else above stays in the page.
element.addEventListener('click', (event) => {
  const fu = event.target.closest('.gq-fu');
  if (fu) { trigger('submit', {question: fu.dataset.q}); return; }
  const thumb = event.target.closest('.gq-thumb');
  if (thumb) {
    const actions = thumb.closest('.gq-actions');
    actions.querySelectorAll('.gq-thumb').forEach((b) => b.setAttribute('aria-pressed', String(b === thumb)));
    trigger('click', {turn: Number(actions.dataset.turn), rating: thumb.dataset.rating});
  }
});
// Scroll to the start of a new answer (its question at the top) and hold it there while it
// streams; never follow the stream down to the reference list.
let doneTurn = -1;
function onRender() {
  const turns = element.querySelectorAll('.gq-turn');
  if (!turns.length) { doneTurn = -1; return; }
  const last = turns[turns.length - 1];
  const n = Number(last.dataset.turn);
  if (n === doneTurn) return;
  if (!last.querySelector('[data-streaming]')) doneTurn = n;
  const log = element.querySelector('.gq-log');
  if (!PHONE.matches) {  // a laptop: the conversation box scrolls, the page (and the reader) stay put
    if (log.scrollHeight > log.clientHeight + 1) {
      log.scrollTop += last.getBoundingClientRect().top - log.getBoundingClientRect().top;
    }
    return;
  }
  const r = last.getBoundingClientRect();
  if (r.top < 0 || r.top > window.innerHeight * 0.5) window.scrollBy({top: r.top - 8, behavior: 'instant'});
}
watch('value', onRender);
"""
EXAMPLES_JS = r"""
const details = element.querySelector('.gq-examples');
if (details && !window.matchMedia('(max-width: %(phone)dpx)').matches) details.open = true;
element.addEventListener('click', (event) => {
  const fu = event.target.closest('.gq-fu');
  if (fu) trigger('submit', {question: fu.dataset.q});
});
"""


def _chat_js() -> str:
    import json

    return CHAT_JS % {"phone": PHONE_MAX_WIDTH_PX, "global_css": json.dumps(PAGE_CSS)}


def page_theme() -> gr.themes.Base:
    """System CJK fonts after Gradio's bundled Latin font (nothing is fetched from the network);
    greys dark enough for 4.5:1 contrast on white."""
    return gr.themes.Default(
        primary_hue="orange",
        font=[gr.themes.LocalFont("Source Sans Pro"), "Noto Sans CJK SC", "PingFang SC",
              "Microsoft YaHei", "WenQuanYi Micro Hei", "sans-serif"],
    ).set(body_text_color=TEXT, body_text_color_subdued=SUBDUED, block_label_text_color=SUBDUED,
          block_info_text_color=SUBDUED, input_placeholder_color="#6b7280", block_title_text_color=TEXT,
          button_primary_background_fill=ACCENT, button_primary_background_fill_hover="#9a3412",
          button_primary_text_color="#ffffff", checkbox_label_text_color=TEXT)


PAGE_HEAD = ('<script>document.documentElement.lang = "zh-CN";</script>'
             '<meta name="description" content="KIT exon 9 突变GIST专家共识问答">'
             f'<style id="gq-global-css">{PAGE_CSS}</style>')


def page_mount_options() -> dict:
    """Options for serving the page, valid for both `gr.mount_gradio_app(app, build_app(bot), path=...,
    **page_mount_options())` and `build_app(bot).launch(**page_mount_options(), ...)`: the theme,
    the <head> (lang="zh-CN", the page-level CSS), no footer links (no "通过 API 使用"), the upload
    limit, no tracebacks. The page CSS goes in <head>, not `css=`: Gradio prefixes `css=` rules
    with `.gradio-container … .contain`, which can never match `body.gq-reader-open` (the phone's
    reader overlay). Without these options the page still works: the chat panel injects the same
    CSS and sets lang itself."""
    return {"theme": page_theme(), "head": PAGE_HEAD, "footer_links": [],
            "max_file_size": MAX_FILE_SIZE, "show_error": False}


# --- the page ----------------------------------------------------------------------------------
def build_app(bot: Bot, feedback_path: str | Path | None = None) -> gr.Blocks:
    """The chat page over `bot`; thumbs are saved to `feedback_path` (default: the settings' path)."""
    settings = bot.settings
    feedback_path = Path(feedback_path or settings.feedback_path)
    user_errors = user_error_types()

    def answer(question: str, history: list[str], scope: str) -> Answer:
        return bot.answer(question, history=history, scope=scope if scope in ("all", "consensus") else None)

    def ask(question: str, history: list[str] | None = None, scope: str = "all") -> tuple[str, dict]:
        """Answer one question: the verified answer Markdown and the full answer as JSON (as `gistqa ask --json`)."""
        try:
            result = answer(question, list(history or []), scope)
        except user_errors as e:
            raise gr.Error(str(e), print_exception=False) from None
        return result.answer, result.to_dict()

    def respond(message, turns, questions, scope):
        question = message or ""
        turns = list(turns or [])
        questions = list(questions or [])
        if not question.strip():
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), status_html(error="请输入问题。")
            return
        turns.append({"question": question, "pending": True})
        yield transcript_html(bot, turns), "", turns, gr.skip(), ""
        try:
            result = answer(question, questions, scope)
        except user_errors as e:
            turns[-1] = {"question": question, "error": chinese_message(e)}
            yield transcript_html(bot, turns), gr.skip(), turns, gr.skip(), status_html(error=str(e))
            return
        except Exception:  # a bug: the log gets the traceback, the user a plain sentence
            traceback.print_exc()
            turns[-1] = {"question": question, "error": INTERNAL_ERROR}
            yield transcript_html(bot, turns), gr.skip(), turns, gr.skip(), status_html(error=INTERNAL_ERROR)
            return
        record = answer_record(bot, result, questions, len(turns) - 1)
        total = len(record["answer"])
        for prefix in stream_prefixes(record["answer"]):
            turns[-1] = {"question": question, "record": record, "budget": len(prefix) if len(prefix) < total else total}
            yield transcript_html(bot, turns), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            time.sleep(STREAM_DELAY_S)
        asked = questions + [question]
        try:
            record["followups"] = suggest_followups(
                record, document_map(bot._ensure_loaded()), lambda q: answer(q, asked, scope), asked)
        except Exception:  # suggestions are a courtesy: never lose the answer over them
            traceback.print_exc()
        turns[-1] = {"question": question, "record": record}
        yield transcript_html(bot, turns), gr.skip(), turns, asked, status_html(record)

    def take_question(evt: gr.EventData):
        q = (getattr(evt, "_data", None) or {}).get("question") if evt is not None else None
        return q if isinstance(q, str) and q.strip() else gr.skip()

    def on_feedback(turns: list[dict], comment: str, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        turn, rating = data.get("turn"), data.get("rating")
        record = None
        if isinstance(turn, int) and 0 <= turn < len(turns or []):
            record = (turns[turn] or {}).get("record")
        if record is None or "budget" in turns[turn] or rating not in ("up", "down"):
            return '<div class="gq-status" role="status">这条消息不是已完成的回答，未记录反馈。</div>', gr.skip()
        try:
            save_feedback(feedback_path, record["question"], record["answer"], rating, comment or "")
        except OSError as e:
            return status_html(error=f"反馈未能保存：{e}"), gr.skip()
        word = "赞（有帮助）" if rating == "up" else "踩（没帮助）"
        return (f'<div class="gq-status gq-status-ok" role="status">已记录反馈：{word}'
                + ("（含评论）" if (comment or "").strip() else "") + "。谢谢！</div>"), ""

    def clear():
        return transcript_html(bot, []), [], [], ""

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.HTML(f'<div id="gq-header"><h1>{escape_html(TITLE)}</h1>'
                "<p>只用共识原文（及其引用文献的卡片）<b>逐字引用</b>作答，每条引用都与原文核对过；"
                "资料里没有的内容会明确说明“未覆盖”。</p>"
                f'<div class="gq-disclaimer" id="gq-disclaimer-text">⚠ {escape_html(DISCLAIMER)}</div>'
                '<button type="button" class="gq-open-reader-top">阅读共识原文</button></div>',
                elem_id="gq-disclaimer", js_on_load=None)
        turns = gr.State([])
        questions = gr.State([])
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=320):
                scope = gr.Radio(SCOPES, value=settings.scope, label="检索范围", elem_id="gq-scope")
                chat = gr.HTML(transcript_html(bot, []), elem_id="gq-chat", css_template=CHAT_CSS,
                               js_on_load=_chat_js())
                with gr.Row(elem_id="gq-input-row", equal_height=True):
                    message = gr.Textbox(placeholder=INPUT_PLACEHOLDER, show_label=False, label="问题", scale=5,
                                         max_lines=4, elem_id="gq-input", autofocus=False, min_width=120,
                                         container=False)
                    send = gr.Button("发送", variant="primary", scale=1, min_width=56, elem_id="gq-send")
                status = gr.HTML("", elem_id="gq-status", css_template=STATUS_CSS, js_on_load=None)
                examples = gr.HTML(examples_html(), elem_id="gq-examples", css_template=EXAMPLES_CSS,
                                   js_on_load=EXAMPLES_JS % {"phone": PHONE_MAX_WIDTH_PX})
                with gr.Row():
                    comment = gr.Textbox(label="评论（可选）：先写评论，再点回答下方的“赞”或“踩”", lines=1, max_lines=3,
                                         elem_id="gq-comment", scale=4)
                    new_chat = gr.Button("清空对话", variant="secondary", size="sm", scale=1, elem_id="gq-clear")
            with gr.Column(scale=2, min_width=320, elem_id="gq-side"):
                reader = gr.HTML(f'<div class="gq-reader"><p role="status">{escape_html(READER_LOADING)}</p></div>',
                                 elem_id="gq-reader", css_template=READER_CSS, js_on_load=None)

        outputs = [chat, message, turns, questions, status]
        inputs = [message, turns, questions, scope]
        gr.on([message.submit, send.click], respond, inputs, outputs, api_visibility="private",
              show_progress="hidden", trigger_mode="always_last")
        for source in (chat, examples):
            source.submit(take_question, None, message, api_visibility="private", queue=False).then(
                respond, inputs, outputs, api_visibility="private", show_progress="hidden")
        chat.click(on_feedback, [turns, comment], [status, comment], api_visibility="private", show_progress="hidden")
        new_chat.click(clear, None, [chat, turns, questions, status], api_visibility="private")
        demo.load(lambda: reader_html(bot), None, reader, api_visibility="private", show_progress="hidden")
        gr.api(ask, api_name="ask")
    demo.queue(default_concurrency_limit=settings.concurrency_limit, max_size=QUEUE_MAX_SIZE)
    return demo


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def launch(host: str | None = None, port: int | None = None, share: bool = False) -> None:
    """`gistqa serve`: load (or build) the index and warm the model, then serve the page."""
    settings = get_settings()
    host = host or settings.host
    port = port or settings.port
    print("正在加载索引和嵌入模型…… (loading the index and the model)", file=sys.stderr, flush=True)
    bot = Bot(settings, auto_build=True)
    bot.warm_up()
    if not is_loopback(host):
        print(f"警告：聊天页面绑定在 {host}，本机以外的机器也可能访问它 (warning: bound to {host}, not loopback; "
              "the page is reachable from other machines)", file=sys.stderr, flush=True)
    share = bool(share or settings.share)
    if share:
        print("警告：已开启公共分享链接 (warning: a public share link is on)", file=sys.stderr, flush=True)
    demo = build_app(bot)
    _, local_url, share_url = demo.launch(
        server_name=host, server_port=port, share=share, run_history=False, quiet=True, prevent_thread_lock=True,
        **page_mount_options())
    print(f"聊天页面已就绪 (chat page ready): {local_url}", flush=True)
    if share_url:
        print(f"公共分享链接 (public share link): {share_url}", flush=True)
    demo.block_thread()
