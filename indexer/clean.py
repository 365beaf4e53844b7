"""Repair what PDF text extraction does to Chinese prose, and nothing else.

PDF extraction breaks lines in the middle of sentences (often before a digit or a Latin word),
puts blank lines between every printed line, and inserts stray spaces between Chinese characters.
Bilingual spacing written by the authors ("KIT exon 9 基因", "600 mg/d") is part of the text and
is kept. Used for user-supplied TXT/PDF files and to draft the curated consensus.
"""
from __future__ import annotations

import re
import unicodedata

# Characters that make a run "Chinese" for spacing decisions: CJK ideographs, full-width forms and
# CJK punctuation. Latin letters and digits are not in this class.
_CJK = r"\u2e80-\u2fff\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\u2018-\u201f\u2160-\u217f"
_CJK_RE = re.compile(f"[{_CJK}]")
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}])[ \\t\u00a0\u3000]+(?=[{_CJK}])")
_SENTENCE_END = tuple("。！？；：!?")
# Control characters other than tab/newline, and zero-width characters PDFs leave behind.
_CONTROL = re.compile("[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200d\u2060\ufeff]")


def is_cjk(ch: str) -> bool:
    return bool(_CJK_RE.match(ch))


def remove_control_chars(text: str) -> str:
    return _CONTROL.sub("", text)


def remove_spaces_between_cjk(text: str) -> str:
    """"的 敏感性" -> "的敏感性"; "exon 9 基因" is left alone (one side is not Chinese)."""
    return _SPACE_BETWEEN_CJK.sub("", text)


def join_pair(left: str, right: str) -> str:
    """Join two pieces of a sentence that a line break separated.

    A hyphen at a line end between Latin letters is a break hyphen; two Latin/digit ends get one
    space (English words); anything touching Chinese joins with nothing, as Chinese has no spaces.
    An e-mail address broken at a line end is joined without a space.
    """
    left = left.rstrip()
    right = right.lstrip()
    if not left or not right:
        return left + right
    a, b = left[-1], right[0]
    if a == "-" and len(left) > 1 and left[-2].isascii() and left[-2].isalpha() and b.isascii() and b.islower():
        return left[:-1] + right
    if a.isascii() and a.isalnum() and b.isascii() and b.isalnum():
        if re.search(r"[\w.]+@?[\w.]*$", left) and "@" in (left.split()[-1] + right.split()[0]):
            return left + right  # e-mail address split by the line break
        return left + " " + right
    return left + right


def split_paragraphs(raw: str) -> list[str]:
    """Rebuild paragraphs from extracted lines.

    A line ends its paragraph when it ends a sentence and is clearly shorter than the page's full
    line width (the last line of a paragraph), or when the next line is indented. Blank lines alone
    mean nothing: extraction puts one after every printed line.
    """
    lines = [ln for ln in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    printed = [ln for ln in lines if ln.strip()]
    if not printed:
        return []
    widths = sorted(len(ln.strip()) for ln in printed)
    full_width = widths[int(len(widths) * 0.75)] if widths else 0
    paragraphs: list[str] = []
    current = ""
    for i, line in enumerate(printed):
        body = line.strip()
        indented = line.startswith((" ", "\t", "\u3000")) and i > 0
        if indented and current and current.endswith(_SENTENCE_END):
            paragraphs.append(current)
            current = ""
        current = join_pair(current, body) if current else body
        ends_sentence = body.endswith(_SENTENCE_END)
        short = len(body) < 0.8 * full_width
        if ends_sentence and short:
            paragraphs.append(current)
            current = ""
    if current:
        paragraphs.append(current)
    return paragraphs


def clean_extracted_text(raw: str) -> str:
    """Full repair for TXT/PDF input: paragraphs separated by one blank line."""
    # Line breaks first: CR is a control character, and removing it would glue words together.
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", remove_control_chars(text))
    paragraphs = [remove_spaces_between_cjk(p) for p in split_paragraphs(text)]
    return "\n\n".join(p for p in paragraphs if p) + "\n"
