"""The chat page: a thin Gradio layer over `Bot.answer()` (presentation only, no answer logic).

Every answer shown here is `Bot.answer(question, history, scope).answer`, streamed out in chunks.
Whatever comes from the user, the answer or the corpus is HTML-escaped before it enters any HTML
built here; the chat itself renders Markdown with Gradio's sanitiser on and raw tags off.
"""
from __future__ import annotations

import html
import ipaddress
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry, no version check

import gradio as gr  # noqa: E402

from bot.answer import DISCLAIMER, Bot, place_of  # noqa: E402
from bot.feedback import save_feedback  # noqa: E402
from bot.query import QuestionError  # noqa: E402
from bot.types import Answer  # noqa: E402
from indexer.settings import get_settings  # noqa: E402
from indexer.store import IndexError_  # noqa: E402

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
CHIP_PREVIEW_CHARS = 14  # characters of the quote shown on its citation chip
MAX_FILE_SIZE = "64kb"  # the page takes no uploads; keep the limit small anyway
QUEUE_MAX_SIZE = 64
THINKING = "正在检索共识原文并逐字核对……"
SOURCE_PLACEHOLDER = "点击回答下方的引用标签，这里会显示被引用的整段原文（引用处高亮）、章节位置和证据类型。"
MARKDOWN_SPECIALS = set("\\`*_{}[]()#+-.!|~>")


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors whose message is meant for the user (shown as text, never as a traceback)."""
    from indexer.build import BuildBusy
    from indexer.e5_model import ModelError

    return (QuestionError, IndexError_, ModelError, BuildBusy)


# --- escaping ----------------------------------------------------------------------------------
def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def user_text_markdown(question: str) -> str:
    """The user's words as the chat shows them: literally, neither HTML nor Markdown."""
    return "".join("\\" + c if c in MARKDOWN_SPECIALS else c for c in esc(question))


def answer_markdown(answer: str) -> str:
    """The answer's Markdown (bold labels, lists) with any HTML in the quoted text made inert."""
    return esc(answer)


def stream_prefixes(text: str, size: int = STREAM_CHUNK_CHARS) -> Iterator[str]:
    for end in range(size, len(text), size):
        yield text[:end]
    yield text


# --- pieces of HTML built from an answer ---------------------------------------------------------
def answer_record(bot: Bot, result: Answer, history: list[str], message_index: int) -> dict:
    """What the page keeps about one answer: enough to show its sources and to save feedback."""
    passages = passage_lookup(bot)
    quotes = []
    for q in result.quotes:
        p = passages.get(q.passage_id)
        quotes.append({
            "text": q.text, "doc_id": q.doc_id, "passage_id": q.passage_id, "section": q.section,
            "paragraph": q.paragraph, "start": q.start, "end": q.end, "kind": q.kind, "marker": q.marker,
            "page": q.page, "place": place_of(p) if p is not None else q.section,
        })
    vote = None
    if result.vote is not None:
        v = result.vote
        vote = {"number": v.number, "question": v.question, "options": [dict(o) for o in v.options]}
    return {
        "message_index": message_index, "question": result.question, "history": list(history),
        "answer": result.answer, "refused": result.refused, "refusal_reason": result.refusal_reason,
        "scope": result.scope, "quotes": quotes, "vote": vote,
        "total_ms": result.timing_ms.get("total"),
    }


def passage_lookup(bot: Bot) -> dict:
    index = bot._ensure_loaded()
    cached = getattr(bot, "_app_passages", None)
    if cached is None or cached[0] is not index:
        cached = (index, {p.passage_id: p for p in index.passages})
        bot._app_passages = cached
    return cached[1]


def chips_html(record: dict | None) -> str:
    if not record or not record["quotes"]:
        return ""
    chips = []
    for i, q in enumerate(record["quotes"]):
        preview = q["text"] if len(q["text"]) <= CHIP_PREVIEW_CHARS else q["text"][:CHIP_PREVIEW_CHARS] + "…"
        chips.append(
            f'<button type="button" class="gq-chip" data-quote="{i}" title="{esc(q["place"])}">'
            f'<span class="gq-chip-n">［{int(q["marker"])}］</span>{esc(q["kind"])} · 「{esc(preview)}」</button>'
        )
    return ('<div class="gq-chips-label">引用出处（点击查看原文段落）</div><div class="gq-chip-row">'
            + "".join(chips) + "</div>")


def source_html(bot: Bot, quote: dict) -> str:
    """The whole passage a quote came from, the quoted span in <mark>, with its section and kind."""
    p = passage_lookup(bot).get(quote["passage_id"])
    head = (f'<div class="gq-src-kind">{esc(quote["kind"])}</div>'
            f'<div class="gq-src-place">{esc(quote["place"])}</div>'
            f'<div class="gq-src-section"><b>章节：</b><span class="gq-src-path">{esc(quote["section"])}</span></div>')
    if p is None:
        return (f'<div class="gq-src">{head}<div class="gq-src-note">索引已更新，找不到这段原文；以下是引用本身：</div>'
                f'<blockquote class="gq-src-para"><mark>{esc(quote["text"])}</mark></blockquote></div>')
    doc_text = bot._ensure_loaded().documents[p.doc_id].text
    s, e = quote["start"], quote["end"]
    if p.start <= s <= e <= p.end and doc_text[s:e] == quote["text"]:
        para = (esc(doc_text[p.start:s]) + f'<mark>{esc(doc_text[s:e])}</mark>' + esc(doc_text[e:p.end]))
        note = ""
    else:  # offsets from an older build of the index: show the passage, unhighlighted
        para = esc(p.text)
        note = '<div class="gq-src-note">索引已更新，引用位置无法标出。</div>'
    doc = (f'<div class="gq-src-doc">{esc(p.doc_title)} · <code>{esc(p.passage_id)}</code>'
           + (f" · 第{int(p.page)}页" if p.page else "") + "</div>")
    return f'<div class="gq-src">{head}{doc}{note}<blockquote class="gq-src-para">{para}</blockquote></div>'


def vote_html(vote: dict | None) -> str:
    if not vote:
        return ""
    rows = []
    for o in vote["options"]:
        pct = max(0, min(100, int(o["percent"])))
        rows.append(
            f'<div class="gq-bar-row"><div class="gq-bar-label">{esc(o["text"])}</div>'
            f'<div class="gq-bar-track"><div class="gq-bar" style="width:{pct}%"></div></div>'
            f'<div class="gq-bar-pct">{pct}%</div></div>'
        )
    return (f'<div class="gq-vote"><div class="gq-vote-title">专家投票（表1 第{int(vote["number"])}项）</div>'
            f'<div class="gq-vote-q">{esc(vote["question"])}</div>{"".join(rows)}</div>')


def status_html(record: dict | None = None, error: str | None = None) -> str:
    if error is not None:
        return f'<div class="gq-status gq-status-error">⚠ {esc(error)}</div>'
    if record is None:
        return ""
    if record["refused"]:
        reason = record["refusal_reason"] or "共识中没有可引用的原文"
        return (f'<div class="gq-status gq-status-refused"><b>未覆盖 (not covered)</b>：{esc(reason)}。'
                "共识及文献卡片中没有可以逐字引用的回答。</div>")
    ms = record.get("total_ms")
    took = f"，用时 {ms / 1000:.1f} 秒" if isinstance(ms, (int, float)) else ""
    return (f'<div class="gq-status gq-status-ok">已核对：{len(record["quotes"])} 条逐字引用均与原文一致'
            f"{esc(took)}。</div>")


def chat_answer_text(record: dict) -> str:
    prefix = "**【未覆盖 (not covered)】**\n\n" if record["refused"] else ""
    return prefix + answer_markdown(record["answer"])


CHIPS_JS = """
element.addEventListener('click', (event) => {
  const chip = event.target.closest('button.gq-chip');
  if (!chip) return;
  element.querySelectorAll('button.gq-chip').forEach((b) => b.classList.toggle('gq-chip-active', b === chip));
  trigger('click', {quote: chip.dataset.quote});
});
"""
CHIPS_CSS = """
.gq-chips-label { font-size: 0.85em; color: var(--body-text-color-subdued); margin: 2px 0 6px; }
.gq-chip-row { display: flex; flex-wrap: wrap; gap: 6px; }
.gq-chip { border: 1px solid var(--color-accent); border-radius: 999px; padding: 3px 10px; font-size: 0.85em;
  background: var(--color-accent-soft); color: var(--body-text-color); cursor: pointer; }
.gq-chip:hover, .gq-chip-active { background: var(--color-accent); color: white; }
.gq-chip-n { font-weight: 600; }
"""
SOURCE_CSS = """
.gq-src-kind { display: inline-block; background: var(--color-accent); color: white; border-radius: 4px;
  padding: 1px 8px; font-size: 0.85em; margin-bottom: 4px; }
.gq-src-place { font-weight: 600; margin: 2px 0; }
.gq-src-section, .gq-src-doc, .gq-src-note { font-size: 0.85em; color: var(--body-text-color-subdued); margin: 2px 0; }
.gq-src-para { white-space: pre-wrap; line-height: 1.7; border-left: 3px solid var(--color-accent);
  margin: 8px 0 0; padding: 6px 10px; background: var(--block-background-fill); }
.gq-src-para mark { background: #ffe58a; color: #222; padding: 0 1px; }
.gq-placeholder { color: var(--body-text-color-subdued); font-size: 0.9em; }
"""
VOTE_CSS = """
.gq-vote-title { font-weight: 600; }
.gq-vote-q { font-size: 0.9em; margin: 4px 0 8px; }
.gq-bar-row { display: grid; grid-template-columns: minmax(6em, 40%) 1fr 3.5em; gap: 6px; align-items: center; margin: 4px 0; }
.gq-bar-label { font-size: 0.85em; }
.gq-bar-track { background: var(--block-background-fill); border: 1px solid var(--border-color-primary); height: 14px; border-radius: 3px; }
.gq-bar { background: var(--color-accent); height: 100%; border-radius: 3px; }
.gq-bar-pct { font-size: 0.85em; text-align: right; font-variant-numeric: tabular-nums; }
"""
STATUS_CSS = """
.gq-status { padding: 6px 10px; border-radius: 6px; font-size: 0.9em; }
.gq-status-ok { background: #e8f5e9; color: #1b5e20; }
.gq-status-refused { background: #fff3e0; color: #8a4b00; border: 1px solid #f0b060; }
.gq-status-error { background: #fdecea; color: #8a1c1c; }
"""
DISCLAIMER_CSS = """
.gq-disclaimer { background: #fff8e1; border: 1px solid #f0c36d; color: #5d4200; border-radius: 6px;
  padding: 6px 10px; font-size: 0.9em; }
"""


def page_theme() -> gr.themes.Base:
    """System CJK fonts after Gradio's bundled Latin font (nothing is fetched from the network)."""
    return gr.themes.Default(font=[gr.themes.LocalFont("Source Sans Pro"), "Noto Sans CJK SC", "PingFang SC",
                                   "Microsoft YaHei", "WenQuanYi Micro Hei", "sans-serif"])


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

    def respond(message, chat, questions, records, scope):
        question = message or ""
        chat = list(chat or [])
        questions = list(questions or [])
        records = list(records or [])
        if not question.strip():
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), \
                status_html(error="请输入问题 (please type a question)"), gr.skip()
            return
        chat.append({"role": "user", "content": user_text_markdown(question)})
        chat.append({"role": "assistant", "content": THINKING})
        yield chat, "", gr.skip(), gr.skip(), "", gr.skip(), gr.update(value="", visible=False), "", None
        try:
            result = answer(question, questions, scope)
        except user_errors as e:
            chat[-1] = {"role": "assistant", "content": "⚠ " + esc(e)}
            yield chat, gr.skip(), questions, records, "", gr.skip(), gr.skip(), status_html(error=str(e)), None
            return
        except Exception:  # a bug: the log gets the traceback, the user a plain sentence
            traceback.print_exc()
            message_zh = "内部错误，未能回答。请稍后重试或联系维护者 (internal error)."
            chat[-1] = {"role": "assistant", "content": "⚠ " + message_zh}
            yield chat, gr.skip(), questions, records, "", gr.skip(), gr.skip(), status_html(error=message_zh), None
            return
        record = answer_record(bot, result, questions, len(chat) - 1)
        shown = chat_answer_text(record)
        for prefix in stream_prefixes(shown):
            chat[-1] = {"role": "assistant", "content": prefix}
            yield chat, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            time.sleep(STREAM_DELAY_S)
        questions.append(question)
        records.append(record)
        yield (chat, gr.skip(), questions, records, chips_html(record), placeholder_html(),
               gr.update(value=vote_html(record["vote"]), visible=record["vote"] is not None),
               status_html(record), record)

    def show_source(shown: dict | None, evt: gr.EventData):
        i = getattr(evt, "_data", {}).get("quote") if evt is not None else None
        if not shown or i is None or not str(i).isdigit() or int(i) >= len(shown["quotes"]):
            return gr.skip()
        return source_html(bot, shown["quotes"][int(i)])

    def select_message(records: list[dict], evt: gr.SelectData):
        """Clicking an earlier answer shows its citation chips and vote again."""
        index = evt.index if isinstance(evt.index, int) else (evt.index[0] if evt.index else None)
        record = next((r for r in records or [] if index is not None and r["message_index"] in (index, index + 1)), None)
        if record is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (chips_html(record), placeholder_html(),
                gr.update(value=vote_html(record["vote"]), visible=record["vote"] is not None),
                status_html(record), record)

    def on_like(records: list[dict], comment: str, evt: gr.LikeData):
        index = evt.index if isinstance(evt.index, int) else (evt.index[0] if evt.index else None)
        record = next((r for r in records or [] if r["message_index"] == index), None)
        if record is None:
            return '<div class="gq-status">这条消息不是已完成的回答，未记录反馈。</div>', gr.skip()
        if evt.liked is True:
            rating = "up"
        elif evt.liked is False:
            rating = "down"
        else:
            return '<div class="gq-status">已取消评价（之前保存的记录保留）。</div>', gr.skip()
        try:
            save_feedback(feedback_path, record["question"], record["answer"], rating, comment or "")
        except OSError as e:
            return status_html(error=f"反馈未能保存：{e}"), gr.skip()
        word = "赞（有帮助）" if rating == "up" else "踩（没帮助）"
        return (f'<div class="gq-status gq-status-ok">已记录反馈：{word}'
                + ("（含评论）" if (comment or "").strip() else "") + "。谢谢！</div>"), ""

    def reset():
        return [], [], "", placeholder_html(), gr.update(value="", visible=False), "", None

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}\n只用共识原文（及其引用文献的卡片）**逐字引用**作答，每条引用都与原文核对过；"
                    "资料里没有的内容会明确说明“未覆盖”。")
        gr.HTML(f'<div class="gq-disclaimer">⚠ {esc(DISCLAIMER)}</div>', elem_id="gq-disclaimer",
                css_template=DISCLAIMER_CSS, js_on_load=None)
        questions = gr.State([])
        records = gr.State([])
        shown = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=380):
                scope = gr.Radio(SCOPES, value=settings.scope, label="检索范围", elem_id="gq-scope")
                chat = gr.Chatbot(
                    label="对话", elem_id="gq-chat", height=520, sanitize_html=True, render_markdown=True,
                    allow_tags=False, latex_delimiters=[], buttons=["copy", "copy_all"],
                    feedback_options=("Like", "Dislike"), layout="bubble",
                    placeholder="请就KIT exon 9突变GIST提问，例如辅助治疗剂量、复发处理、一线治疗方案。",
                )
                with gr.Row():
                    message = gr.Textbox(placeholder="输入问题，回车发送（可继续追问）", show_label=False, scale=5,
                                         max_lines=4, elem_id="gq-input", autofocus=True)
                    send = gr.Button("发送", variant="primary", scale=1, min_width=80, elem_id="gq-send")
                status = gr.HTML("", elem_id="gq-status", css_template=STATUS_CSS, js_on_load=None)
                chips = gr.HTML("", elem_id="gq-chips", css_template=CHIPS_CSS, js_on_load=CHIPS_JS)
                gr.Markdown("**示例问题**（点击即问）")
                with gr.Row():
                    example_buttons = [gr.Button(q, size="sm", variant="secondary", elem_classes=["gq-example"])
                                       for q in EXAMPLES]
                comment = gr.Textbox(label="评论（可选）：先写评论，再点回答下方的“赞”或“踩”图标", lines=1, max_lines=3,
                                     elem_id="gq-comment")
            with gr.Column(scale=2, min_width=320):
                gr.Markdown("### 原文出处")
                source = gr.HTML(placeholder_html(), elem_id="gq-source", css_template=SOURCE_CSS, js_on_load=None)
                vote = gr.HTML("", elem_id="gq-vote", css_template=VOTE_CSS, js_on_load=None, visible=False)

        outputs = [chat, message, questions, records, chips, source, vote, status, shown]
        inputs = [message, chat, questions, records, scope]
        gr.on([message.submit, send.click], respond, inputs, outputs, api_visibility="private",
              show_progress="hidden")
        for button, text in zip(example_buttons, EXAMPLES):
            button.click(lambda text=text: text, None, message, api_visibility="private", queue=False).then(
                respond, inputs, outputs, api_visibility="private", show_progress="hidden")
        chips.click(show_source, [shown], source, api_visibility="private", show_progress="hidden")
        chat.select(select_message, [records], [chips, source, vote, status, shown], api_visibility="private")
        chat.like(on_like, [records, comment], [status, comment], api_visibility="private")
        chat.clear(reset, None, [questions, records, chips, source, vote, status, shown], api_visibility="private")
        gr.api(ask, api_name="ask")
    demo.queue(default_concurrency_limit=settings.concurrency_limit, max_size=QUEUE_MAX_SIZE)
    return demo


def placeholder_html() -> str:
    return f'<div class="gq-placeholder">{esc(SOURCE_PLACEHOLDER)}</div>'


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
        server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE, theme=page_theme(),
        show_error=False, footer_links=["api"], run_history=False, quiet=True, prevent_thread_lock=True)
    print(f"聊天页面已就绪 (chat page ready): {local_url}", flush=True)
    if share_url:
        print(f"公共分享链接 (public share link): {share_url}", flush=True)
    demo.block_thread()
