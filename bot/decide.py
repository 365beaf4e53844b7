"""Applying the learned decisions (bot/learn.py) to a question the rules have read.

The rules' reading (bot/setting.py, bot/query.py) is a feature of the combined model, and the
setting guard (bot/plan.allowed) still keeps another setting's text out; what the models decide
replaces the rules' verdict where they are confident:
- answer or refuse (and why);
- the settings the story implies; the facet the planner builds;
- which block leads: the block holding the unit a specialist would quote first, and, when the
  planner did not pick that unit at all, the unit itself, within the asked setting.
Every threshold is named here; every change is written to the plan's explanation.
"""
from __future__ import annotations

from dataclasses import replace

from bot.learn import Analysis, Decision, LearnedModel, RuleView
from bot.plan import Block, DocumentMap, Plan, _complete_clause, allowed, recommendation_block
from bot.setting import AUTHORS, GENERAL, MANAGEMENT, RECURRENCE, VALUE, VOTE, WHY, Intent, SettingRead

# Where the rules and the models disagree, the models win only when confident. Chosen among three
# policies by leave-one-author-out figures (the bank) and evals/questions.jsonl (our own set),
# 2026-12-02, answerable right / refusals right / false refusals on the bank, strict on ours:
#   follow the models at 0.5 everywhere      0.685 / 0.79 / 9.6% · 0.912 (ten false refusals)
#   overrides at 0.8 only                    0.675 / 0.72 / 9.8% · 0.958
#   these values                             0.687 / 0.77 / 9.1% · 0.937
T_REFUSE_OVER_RULES = 0.65  # P(refuse) at which a question the rules would answer is refused
T_ANSWER_OVER_RULES = 0.35  # P(refuse) at or below which a question the rules refuse is answered
T_UNIT_SUPPORT = 0.6  # P(best unit) at which the models' own refusal of a question the rules answer is dropped
T_SETTING = 0.5  # P(setting) at which a setting is read where the rules read none
T_SETTING_OVER_RULES = 0.8  # ... at which the learned settings replace the rules' own
T_FACET = 0.8  # P(facet) at which the learned facet replaces the rules'
T_UNIT_INSERT = 0.4  # P(unit) at which a unit the planner left out becomes the lead
LEAD_MARGIN = 0.15  # a block leads over the planner's lead when its unit is this much more probable
LEAD_DOUBT = 0.5  # ... and only when the planner's lead is less probable than this
FACET_OF = {"management": MANAGEMENT, "why": WHY, "vote": VOTE, "authors": AUTHORS}

REASON_TEXT = {
    "not_covered": "本知识库没有给出这个问题所问的内容",
    "off_topic": "问题与本知识库的主题（KIT突变胃肠间质瘤的伊马替尼治疗）无关",
    "unsupported_language": "本工具只回答中文或英文的问题 (gistqa answers questions in Chinese or English)",
}


def refusal_text(reason: str, query) -> str:
    """Why the models refuse, as specific as the question allows: the value it asks for, named."""
    from bot.compose import ATTRIBUTE_NAMES
    from bot.query import VALUE_ATTRIBUTES

    if reason == "not_covered":
        asked = sorted(a for a in query.attributes & VALUE_ATTRIBUTES if a in ATTRIBUTE_NAMES and a != "vote")
        if asked:
            return f"本知识库没有给出这个问题所问的{ATTRIBUTE_NAMES[asked[0]]}"
    return REASON_TEXT[reason]


def analysis_of(query, scope_concepts: set[str]) -> Analysis:
    return Analysis(tuple(sorted(query.attributes)), tuple(sorted(query.concepts)), tuple(sorted(query.context_concepts)),
                    bool(query.asked - scope_concepts), bool(query.unknown_entities))


def rule_view(query, coverage) -> RuleView:
    r = query.reading
    return RuleView(tuple(r.setting.settings) if r else (), r.intent.facet if r else GENERAL, bool(coverage.refused),
                    bool(query.unknown_entities), bool(query.is_followup), bool(r and r.setting_from_history))


def refuses(decision: Decision, rules_refused: bool) -> bool:
    """The combined verdict on answering: the models' where they are confident, else the rules'.
    A question the rules answer is not refused while the unit head is confident of a sentence
    that answers it (a vignette's detail can make it look like a near miss it is not)."""
    if rules_refused:
        return decision.p_refuse > T_ANSWER_OVER_RULES
    top_unit = decision.units[0][1] if decision.units else 0.0
    return decision.p_refuse >= T_REFUSE_OVER_RULES and top_unit < T_UNIT_SUPPORT


def apply_reading(query, decision: Decision) -> bool:
    """Settings and facet from the models; True when the settings changed."""
    r = query.reading
    learned = tuple(s for s, p in decision.settings.items() if p >= T_SETTING)
    if r.setting.settings and not learned:
        # The bank labels questions about the document itself (who wrote a part, which reference)
        # with no setting; the planner still needs the part the rules placed them in.
        learned = tuple(r.setting.settings)
    if r.setting.settings and learned != tuple(r.setting.settings):
        confident = all(decision.settings[s] >= T_SETTING_OVER_RULES for s in learned) and all(
            decision.settings[s] < 1 - T_SETTING_OVER_RULES for s in r.setting.settings if s not in learned)
        if not confident:
            learned = tuple(r.setting.settings)
    changed = learned != tuple(r.setting.settings)
    if changed:
        groups = {"recurrence" if s in RECURRENCE else s for s in learned}
        r.setting = SettingRead(learned, len(groups) > 1, r.setting.cues, r.setting.failure and set(learned) <= set(RECURRENCE))
        r.notes.append("setting (learned): " + (", ".join(f"{s} {decision.settings[s]:.2f}" for s in learned) or "none"))
    p = decision.facet_p[decision.facet]
    if p >= T_FACET:
        facet = FACET_OF.get(decision.facet)
        if facet is None:
            # "other" (a value, the evidence, a guideline, a comparison): the rules' finer reading
            # stands, unless they read a vote, a byline or a mechanism the models do not see.
            facet = GENERAL if r.intent.facet in (VOTE, AUTHORS, WHY) else r.intent.facet
        if facet != r.intent.facet:
            r.notes.append(f"facet (learned): {facet} {p:.2f} (rules: {r.intent.facet})")
            r.intent = Intent(facet, r.intent.cue if facet == r.intent.facet else f"learned {decision.facet}")
    return changed


def _unit_block(index, model: LearnedModel, unit_no: int, lexicon) -> Block | None:
    u = model.units[unit_no]
    if u.kind == "vote":
        return Block(u.row, [], "vote", why="learned lead unit")
    if u.kind == "authors":  # a byline is quoted as its sentences, like the planner's own
        return Block(u.row, list(index.passage_sentences[u.row]), "authors", why="learned lead unit") if index.passage_sentences[u.row] else None
    if not (0 <= u.row < len(index.sentences)) or index.sentences[u.row].text != u.text:
        return None  # the model was trained on another build (load checks this; a guard here too)
    prow = index.sentence_passage[u.row].item()
    p = index.passages[prow]
    rows = [u.row]
    if p.evidence_kind == "panel":
        rec = recommendation_block(index, prow, lexicon)
        if u.row in rec:
            rows = rec  # the panel's recommendation whole, through the sentence naming drug and dose
    return Block(prow, _complete_clause(index, rows), "lead", why="learned lead unit")


def _unit_allowed(model: LearnedModel, unit_no: int, index, dm: DocumentMap, plan: Plan) -> bool:
    """May this unit answer in the plan's settings (the setting guard, bot/plan.allowed)?"""
    u = model.units[unit_no]
    prow = u.row if u.kind != "sentence" else index.sentence_passage[u.row].item()
    return allowed(prow, index.passages[prow], dm, plan.reading.setting.settings, cards=plan.literature)


def _block_units(index, b: Block) -> set[tuple[str, int]]:
    p = index.passages[b.row]
    if p.vote is not None:
        return {("vote", b.row)}
    if p.evidence_kind == "authors":
        return {("authors", b.row)}
    return {("sentence", r) for r in b.sentences}


def _demoted(b: Block) -> Block:
    """The planner's lead, once another block leads, is context (what --explain says of it)."""
    return replace(b, role="context") if b.role == "lead" else b


def relead(plan: Plan, decision: Decision, model: LearnedModel, index, dm: DocumentMap, lexicon,
           max_blocks: int) -> None:
    """Put first the block holding the unit the model rates most likely to answer."""
    prob = {}
    for unit_no, p in decision.units:
        u = model.units[unit_no]
        prob[(u.kind, u.row)] = max(p, prob.get((u.kind, u.row), 0.0))

    def block_p(b: Block) -> float:
        return max((prob.get(k, 0.0) for k in _block_units(index, b)), default=0.0)

    if any(b.role == "setting" for b in plan.blocks):
        return  # one labelled line per setting: its order is the settings', not a ranking
    if any(b.pinned for b in plan.blocks):
        return  # chosen for what the question names outright
    if plan.blocks and block_p(plan.blocks[0]) >= LEAD_DOUBT:
        return  # the models agree that the planner's lead answers: keep its order
    top = next(((n, p) for n, p in decision.units if _unit_allowed(model, n, index, dm, plan)), None)
    if top is not None and top[1] >= T_UNIT_INSERT:
        u = model.units[top[0]]
        if not any((u.kind, u.row) in _block_units(index, b) for b in plan.blocks):
            block = _unit_block(index, model, top[0], lexicon)
            if block is not None:
                if u.kind == "vote":  # one vote item answers a vote question: the learned one
                    plan.blocks = [b for b in plan.blocks if index.passages[b.row].vote is None]
                plan.blocks = [_demoted(b) for b in plan.blocks]
                plan.blocks.insert(0, block)
                plan.explain.append(f"lead (learned): unit {top[0]} p={top[1]:.2f} 「{u.text[:30]}」 was not planned; it leads")
    if len(plan.blocks) > 1:
        best = max(range(len(plan.blocks)), key=lambda i: block_p(plan.blocks[i]))
        if best != 0 and block_p(plan.blocks[best]) >= block_p(plan.blocks[0]) + LEAD_MARGIN:
            b = plan.blocks.pop(best)
            plan.blocks = [_demoted(x) for x in plan.blocks]
            plan.blocks.insert(0, replace(b, role="lead"))
            plan.explain.append(f"lead (learned): block {best + 1} p={block_p(b):.2f} moved first")
    plan.blocks = plan.blocks[:max_blocks]


def fallback_blocks(plan: Plan, decision: Decision, model: LearnedModel, index, dm: DocumentMap, lexicon) -> list[Block]:
    """The models say the question is answered but the planner found nothing: the most probable
    unit of the asked setting, alone."""
    for unit_no, p in decision.units:
        if p < T_UNIT_INSERT:
            break
        if _unit_allowed(model, unit_no, index, dm, plan):
            b = _unit_block(index, model, unit_no, lexicon)
            if b is not None:
                plan.explain.append(f"answered (learned): unit {unit_no} p={p:.2f} where the planner found nothing")
                return [b]
    return []
