"""Tokens for the lexical (BM25) index: Chinese character bigrams, Latin words, numbers, concepts.

Character bigrams beat jieba words on this corpus (jieba splits 伊马替尼 into 伊马 / 替尼). Every
lexicon concept found in the text adds one token "§<concept id>", so "imatinib", "格列卫" and
"伊马替尼" meet in the index whatever the question's language or wording.
"""
from __future__ import annotations

import re

from indexer.lexicon import Lexicon, normalize_for_match

_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_LATIN_OR_NUMBER = re.compile(r"[a-z][a-z0-9\-]*[a-z0-9]|[a-z]|\d+(?:\.\d+)?")


def lexical_tokens(text: str, lexicon: Lexicon) -> list[str]:
    norm = normalize_for_match(text)
    tokens: list[str] = []
    for run in _HAN_RUN.findall(norm):
        if len(run) == 1:
            tokens.append(run)
        else:
            tokens.extend(run[i : i + 2] for i in range(len(run) - 1))
    tokens.extend(_LATIN_OR_NUMBER.findall(norm))
    tokens.extend("§" + m.id for m in lexicon.concept_matches(text))
    return tokens
