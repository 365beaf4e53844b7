"""The deliberate bugs of the mutation check (scripts/mutation_check.py): one or more per promise.

Each mutation names the promise it breaks, the exact text it replaces (in one or more files) and the
tests that guard the promise: pytest node ids (a file, or file::test) and, where the evaluation set is a
guard, the command `gistqa eval`. It is caught when at least one guard fails on the mutated copy.

To add one: append a `Mutation(...)`. `old` must occur exactly once in its file; when it is no longer
found (the code was rewritten), the check reports the mutation as "not applied" and fails, so the list
cannot rot silently: update `old` to the new code.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Edit:
    file: str  # relative to the repository root
    old: str  # exact text, found exactly once
    new: str


@dataclass(frozen=True)
class Mutation:
    name: str
    promise: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # pytest node ids guarding the promise
    commands: tuple[tuple[str, ...], ...] = field(default=())  # e.g. the evaluation gate; non-zero exit = failed


EVAL_GATE = ("gistqa", "eval")  # the evaluation gate, run as the copy's .venv/bin/gistqa (reports in a temp dir)

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "quote-not-compared", "quote verbatim",
        (Edit("bot/verify.py",
              '    if doc.text[start:end] != text:\n        return "text differs from the source at these offsets"\n',
              '    if False:\n        return "text differs from the source at these offsets"\n'),),
        ("tests/robustness/test_properties.py::test_verifier_accepts_a_quote_only_verbatim_at_its_own_offsets",
         "tests/bot/test_llm_writer.py::test_fabricated_quote_and_quote_from_another_passage_are_removed"),
    ),
    Mutation(
        "extractive-numbers-unchecked", "numbers sourced (extractive writer)",
        (Edit("bot/verify.py",
              "    return [n for n in numbers_in(body) if n not in source_numbers]\n",
              "    return []\n"),),
        ("tests/bot/test_answer.py::test_a_stray_number_in_an_extractive_line_is_dropped_and_reported",
         "tests/bot/test_answer.py::test_an_answer_whose_only_line_has_a_stray_number_is_refused"),
    ),
    Mutation(
        "number-extractor-blind", "numbers sourced (the checks measure something)",
        (Edit("bot/verify.py",
              "def numbers_in(text: str) -> list[str]:\n    return _NUMBER.findall(text)\n",
              "def numbers_in(text: str) -> list[str]:\n    return []\n"),),
        ("tests/bot/test_answer.py::test_a_stray_number_in_an_extractive_line_is_dropped_and_reported",
         "tests/bot/test_llm_writer.py::test_wrong_dose_beside_a_true_quote_removes_the_sentence"),
        (EVAL_GATE,),
    ),
    Mutation(
        "llm-numbers-unchecked", "numbers sourced (LLM writer)",
        (Edit("bot/llm_writer.py",
              "    bad = [x for x in numbers_in(prose) if x not in pool]\n",
              "    bad = []\n"),),
        ("tests/bot/test_llm_writer.py::test_wrong_dose_beside_a_true_quote_removes_the_sentence",),
    ),
    Mutation(
        "unknown-drug-answered", "refusal fires",
        (Edit("bot/compose.py", "    if unknown:\n", "    if False and unknown:\n"),),
        ("tests/bot/test_answer.py::test_refusal_quotes_nothing_and_says_so",
         "tests/bot/test_llm_writer.py::test_uncovered_question_is_refused_without_calling_the_model"),
        (EVAL_GATE,),  # 54 items that must be refused
    ),
    Mutation(
        "scope-ignored", "scope respected",
        (Edit("bot/retrieve.py",
              '    return scope == "all" or passage.doc_kind == "consensus"\n',
              "    return True\n"),),
        ("tests/bot/test_answer.py::test_scope_consensus_quotes_only_the_consensus",),
    ),
    Mutation(
        "history-ignored", "history used",
        (Edit("bot/query.py", "    if followup:\n        last = history[-1]\n", "    if False:\n        last = history[-1]\n"),),
        ("tests/bot/test_cli.py::test_ask_with_history",
         "tests/evals/test_runner.py::test_history_only_items_need_their_history"),
        (EVAL_GATE,),
    ),
    Mutation(
        "checksums-skipped-on-load", "checksums verified on load",
        (Edit("indexer/store.py",
              "    if verify:\n        bad = verify_files(build_dir, manifest, full=False)\n",
              "    if False:\n        bad = verify_files(build_dir, manifest, full=False)\n"),),
        ("tests/indexer/test_build.py::test_a_tampered_file_that_still_reads_is_refused_on_load",),
    ),
    Mutation(
        "markup-not-escaped", "markup escaped (chat page)",
        (Edit("bot/app.py", "    return html.escape(str(text), quote=True)\n", "    return str(text)\n"),),
        ("tests/bot/test_page_hostile.py",),
    ),
    Mutation(
        "ratchet-never-worse", "ratchet compares",
        (Edit("evals/runner.py",
              "    return value > floor if name in LOWER_IS_BETTER else value < floor\n",
              "    return False\n"),),
        ("tests/evals/test_runner.py::test_ratchet_rules",
         "tests/evals/test_runner.py::test_retrieval_ranks_are_gated",
         "tests/evals/test_runner.py::test_float_noise_below_the_compared_places_is_not_a_change"),
    ),
    Mutation(
        "ratchet-skips-unmeasured", "ratchet compares (an unmeasured metric fails)",
        (Edit("evals/runner.py",
              "        if metrics.get(name) is None:\n            # Measured when",
              "        if False:\n            # Measured when"),
         Edit("evals/runner.py",
              "    if value is None:\n        return True",
              "    if value is None:\n        return False")),
        ("tests/evals/test_runner.py::test_a_baselined_metric_that_comes_out_unmeasured_fails",
         "tests/evals/test_runner.py::test_an_unmeasured_metric_fails_the_command"),
    ),
    Mutation(
        "build-reembeds-everything", "incremental build reuses",
        (Edit("indexer/build.py",
              "    cache = {} if rebuild else _previous_vectors(index_dir, fingerprint)\n",
              "    cache = {}\n"),),
        ("tests/indexer/test_build.py::test_unchanged_corpus_does_no_work_and_changed_file_embeds_only_itself",),
    ),
    Mutation(
        "llm-negation-cut", "LLM negation kept",
        (Edit("bot/llm_writer.py", "        if _NEGATION.search(clause_head):\n", "        if False:\n"),),
        ("tests/bot/test_llm_writer.py::test_quote_that_cuts_off_a_negation_is_removed",),
    ),
    Mutation(
        "plan-ignores-setting", "setting never crossed",
        (Edit("bot/plan.py",
              "    settings = reading.setting.settings\n    plan.literature",
              "    settings = ()\n    plan.literature"),),
        ("tests/bot/test_plan.py::test_first_line_dose_comes_from_first_line_only",
         "tests/bot/test_plan.py::test_recurrence_during_adjuvant_quotes_the_recommendation_whole",
         "tests/bot/test_plan.py::test_patient_details_never_cause_a_refusal"),
    ),
    Mutation(
        "other-setting-allowed", "setting never crossed",
        (Edit("bot/plan.py",
              "    if topic is None or not settings:\n        return True\n    return _in_settings(topic.settings, settings)\n",
              "    return True\n"),),
        ("tests/bot/test_plan.py::test_first_line_dose_comes_from_first_line_only",
         "tests/bot/test_plan.py::test_recurrence_during_adjuvant_quotes_the_recommendation_whole",
         "tests/bot/test_plan.py::test_patient_details_never_cause_a_refusal"),
        (EVAL_GATE,),  # must_not_include holds the other settings' text
    ),
    Mutation(
        "retrieved-vote-shown", "vote only when cited",
        # The vote panel filled from the best vote item retrieved when the answer quotes none.
        (Edit("bot/answer.py",
              "    references = reference_notes(index, quotes, scope, plan.slots) if plan.literature else []\n",
              "    for h in hits:\n"
              "        if vote is None and h.passage.vote is not None:\n"
              "            vote = VoteResult(h.passage.vote.number, h.passage.vote.question, h.passage.passage_id,\n"
              "                              [{\"text\": o.text, \"percent\": o.percent} for o in h.passage.vote.options])\n"
              "    references = reference_notes(index, quotes, scope, plan.slots) if plan.literature else []\n"),
         Edit("bot/answer.py",
              "    if vote is not None and not any(q.passage_id == vote.passage_id and q.text == vote.question for q in shown):\n",
              "    if False:\n")),
        ("tests/bot/test_answer.py::test_no_vote_when_no_vote_item_is_quoted_though_one_is_retrieved",
         "tests/bot/test_answer.py::test_the_vote_is_shown_only_when_its_item_is_quoted"),
    ),
    Mutation(
        "dropped-vote-shown", "vote only when cited",
        # A vote line removed by verification, its vote still in the panel.
        (Edit("bot/answer.py",
              "    if vote is not None and not any(q.passage_id == vote.passage_id and q.text == vote.question for q in shown):\n",
              "    if False:\n"),),
        ("tests/bot/test_answer.py::test_a_vote_item_dropped_by_verification_is_not_shown",),
    ),
    Mutation(
        "marker-names-next-source", "inline markers match sources",
        (Edit("bot/app.py",
              '                if qi < len(quotes) and quotes[qi]["text"] == quote:\n                    source = quotes[qi]["source"]\n',
              '                if qi < len(quotes) and quotes[qi]["text"] == quote:\n                    source = quotes[min(qi + 1, len(quotes) - 1)]["source"]\n'),),
        ("tests/bot/test_page_html.py::test_each_marker_opens_the_source_that_holds_its_quote",
         "tests/bot/test_page_html.py::test_markers_are_circled_one_per_source_in_answer_order"),
    ),
    Mutation(
        "encoder-mismatch-allowed", "index searched only with its own encoder",
        (Edit("bot/answer.py",
              "        want = index.manifest.get(\"model\", {}).get(\"fingerprint\")\n        if want != have:\n",
              "        want = index.manifest.get(\"model\", {}).get(\"fingerprint\")\n        if False:\n"),),
        ("tests/indexer/test_onnx_encoder.py::test_the_index_is_never_searched_with_another_encoder",),
    ),
    Mutation(
        "encoder-checksum-skipped", "encoder files verified on load",
        (Edit("indexer/onnx_encoder.py",
              "            if sha256_file(path) != want.get(\"sha256\"):\n",
              "            if False:\n"),),
        ("tests/indexer/test_onnx_encoder.py::test_a_file_of_the_same_size_from_another_model_is_refused",
         "tests/indexer/test_onnx_encoder.py::test_a_changed_file_is_hashed_again_even_with_a_stale_stamp"),
    ),
    Mutation(
        "prefilter-trusts-lower", "the lexicon finds what its regexes find",
        # The substring prefilter trusted for texts whose letters re.IGNORECASE equates otherwise ("ſ", "İ").
        (Edit("indexer/lexicon.py",
              "    return text.isascii() or all(ch.isascii() or ch.lower() == ch.upper() for ch in text)\n",
              "    return True\n"),),
        ("tests/indexer/test_lexicon.py::test_the_substring_prefilter_finds_what_every_regex_finds",),
    ),
    Mutation(
        "q4-not-checked", "4-bit weights are the model's own",
        # Any matrix written as 4-bit blocks, whether or not they hold its values.
        (Edit("indexer/onnx_encoder.py",
              "    if not np.array_equal((q.astype(np.float32) - 8) * scale[..., None], blocks):\n",
              "    if False:\n"),),
        ("tests/indexer/test_onnx_encoder.py::test_4bit_blocks_refuse_a_matrix_they_cannot_hold_exactly",),
    ),
    Mutation(
        "api-history-unchecked", "bad API input gets a 4xx, never a traceback",
        (Edit("bot/api.py",
              "    if not isinstance(history, list) or not all(isinstance(h, str) for h in history):\n",
              "    if False:\n"),),
        ("tests/bot/test_serve.py",),
    ),
)
