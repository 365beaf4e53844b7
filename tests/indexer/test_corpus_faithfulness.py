"""The curated consensus says exactly what the PDF says: only extraction damage was repaired."""
from __future__ import annotations

import re

from indexer.load import load_document, parse_front_matter
from indexer.structure import split_passages
from tests.conftest import REPO, SEED

CURATED = REPO / "corpus" / "consensus_kit_exon9.md"
TABLE_START = "表1 问卷及投票结果"


def _no_ws(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _seed() -> str:
    return SEED.read_text(encoding="utf-8")


def _curated_body_without_markup() -> str:
    text = CURATED.read_text(encoding="utf-8")
    _, body = parse_front_matter(text)
    lines = []
    for line in text[body:].split("\n"):
        if line.startswith("|"):
            continue  # the table is checked cell by cell below
        line = re.sub(r"^#{1,6}\s+", "", line)
        line = re.sub(r"^>\s?", "", line)
        lines.append(line)
    return "\n".join(lines)


def test_body_text_equals_seed_text_in_order():
    seed = _seed()
    seed_prose = seed[: seed.index(TABLE_START) + len(TABLE_START)]
    assert _no_ws(_curated_body_without_markup()) == _no_ws(seed_prose)


def test_vote_table_cells_match_seed_in_order():
    seed_table = _no_ws(_seed()[_seed().index(TABLE_START):])
    doc = load_document(CURATED, REPO / "corpus")
    votes = [p.vote for p in split_passages(doc) if p.vote]
    assert [len(v.options) for v in votes] == [3, 4, 3, 4, 4]
    # Wording of items and options appears in the seed's table region in the same order.
    pos = 0
    for v in votes:
        for cell in [v.question] + [o.text for o in v.options]:
            found = seed_table.find(_no_ws(cell), pos)
            assert found >= 0, f"cell not found in order in the seed: {cell}"
            pos = found + len(_no_ws(cell))
    # The percentages: the seed lists them as one column after "赞同率（%）", in the same order.
    column = _seed()[_seed().index("赞同率"):]
    seed_numbers = [int(n) for n in re.findall(r"\d+", column)]
    assert seed_numbers == [o.percent for v in votes for o in v.options]
    # The published percentages are rounded shares of one panel: every item's figures must be
    # round(100*k/n) for whole vote counts k that add up to the same n (item 5 prints 21+64+0+14=99
    # because of that rounding, so "sums to 100" would be false of the source).
    panel_sizes = []
    for v in votes:
        total = sum(o.percent for o in v.options)
        assert 98 <= total <= 102, v.question
        fits = [n for n in range(5, 40)
                if all(any(round(100 * k / n) == o.percent for k in range(n + 1)) for o in v.options)
                and _counts_add_up(v, n)]
        panel_sizes.append(set(fits))
    assert 14 in set.intersection(*panel_sizes)


def _counts_add_up(vote, n: int) -> bool:
    counts = []
    for o in vote.options:
        ks = [k for k in range(n + 1) if round(100 * k / n) == o.percent]
        counts.append(ks)
    from itertools import product

    return any(sum(c) == n for c in product(*counts))


def test_structure_three_topics_with_their_parts():
    doc = load_document(CURATED, REPO / "corpus")
    passages = split_passages(doc)
    topics = {p.section_path[0] for p in passages if p.evidence_kind in ("guideline", "evidence", "panel")}
    assert len(topics) == 3
    for topic in topics:
        kinds = {p.evidence_kind for p in passages if p.section_path[0] == topic}
        assert kinds == {"guideline", "evidence", "panel", "authors"}, topic
    intro = [p for p in passages if p.evidence_kind == "intro"]
    assert len(intro) == 3 and intro[0].text.startswith("导语：")


def test_each_topic_byline_is_one_quotable_authors_passage():
    """Who wrote a part, where they work and their e-mail are quotable (作者信息), one passage per
    topic, and adding them does not renumber the text's paragraphs (第n段 stays where it was)."""
    text = CURATED.read_text(encoding="utf-8")
    meta, _ = parse_front_matter(text)
    emails = [s["email"] for s in meta["sections"] if "email" in s]
    assert emails == ["zhangbo7310@126.com", "zhangpengwh@hust.edu.cn", "wuxj@sysucc.org.cn"]
    passages = split_passages(load_document(CURATED, REPO / "corpus"))
    bylines = [p for p in passages if p.evidence_kind == "authors"]
    assert [e for p in bylines for e in emails if e in p.text] == emails
    assert all(p.section_path[-1] == "作者信息" and not p.text.startswith(">") for p in bylines)
    assert not any("@" in p.text for p in passages if p.evidence_kind != "authors")
    first_parts = [p for p in passages if p.evidence_kind == "guideline"]
    assert all(p.paragraph == 1 for p in first_parts)
