"""`gistqa bench --smoke`: the whole benchmark, small, on the real model and index.

It must finish, every phase must run, and it must leave its three reports with the numbers a reader
looks for. Timings are not asserted: this machine is shared, and a benchmark is not a speed test.
"""
from __future__ import annotations

import json

import pytest

from evals.bench import BENCH_JSON, BENCH_MD, BENCH_PNG, MIN_RECALL_AT_STORED_EF, STAGES, run_bench

TOP_KEYS = {"meta", "errors", "cold_start", "warm", "concurrency", "serving", "memory", "build", "baseline",
            "comparison", "scaling", "real_build_estimate"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, settings, built_index):
    out = tmp_path_factory.mktemp("bench")
    return out, run_bench(settings, out, smoke=True)


def test_every_phase_runs_and_the_three_reports_are_written(smoke_run):
    out, result = smoke_run
    assert result["errors"] == []
    assert (out / BENCH_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / BENCH_JSON).read_text(encoding="utf-8")) == result
    assert TOP_KEYS <= set(result)
    assert result["meta"]["smoke"] is True
    assert set(result["meta"]["load_at_start"]) >= {"load_1min", "cpus"}


def test_cold_start_and_warm_latency_are_split_by_stage(smoke_run):
    _, r = smoke_run
    assert set(r["cold_start"]["median"]) == {"wall_s", "answer_total_ms", "index_load_ms",
                                              "model_load_and_first_embed_ms", "startup_and_imports_s"}
    assert r["warm"]["questions"] == 10
    assert set(r["warm"]["stages_ms"]) == set(STAGES)
    assert set(r["warm"]["stages_ms"]["total"]) == {"n", "p50", "p95", "p99", "mean"}
    assert r["warm"]["stages_ms"]["total"]["n"] == 10
    assert r["memory"]["after_warm_up"]["peak_rss_mb"] > 0
    assert r["memory"]["after_load"]["peak_rss_mb"] >= r["memory"]["after_warm_up"]["peak_rss_mb"]


def test_concurrency_is_bounded_and_every_request_is_answered(smoke_run):
    _, r = smoke_run
    c = r["concurrency"]
    levels = c["levels_http"] if c["mode"] == "http" else c["levels_direct"]
    assert [lv["clients"] for lv in levels] == [1, 4]
    assert [lv["clients"] for lv in c["levels_direct"]] == [1, 4]
    for lv in levels + c["levels_direct"]:
        assert lv["ok"] == lv["requests"] and lv["errors"] == 0
        assert lv["throughput_rps"] > 0


def test_build_reports_first_noop_and_one_changed_file(smoke_run):
    b = smoke_run[1]["build"]
    assert b["first_build_embedded_texts"] > 0 and b["passages_per_s"] > 0
    assert b["noop_was_noop"] is True
    # One changed file re-embeds only its new text; the rest comes from the previous build.
    assert 0 < b["one_file_embedded"] < b["first_build_embedded_texts"]
    assert b["one_file_reused"] > 0


def test_baseline_runs_on_the_same_questions_and_is_compared(smoke_run):
    _, r = smoke_run
    base = r["baseline"]
    assert base["chunks"] > 0
    assert base["quality"]["questions"] == r["warm"]["quality"]["questions"] == 10
    assert set(base["latency_ms"]) >= {"p50", "p95"}
    assert {"latency_p50_ratio", "latency_p95_ratio", "hit@5_ratio", "memory_ratio", "cold_start_ratio",
            "strict_answer_accuracy_ratio"} <= set(r["comparison"])
    assert base["cold_start_s"] > 0 and base["rss_mb"] > 0
    # The latency ratio compares the two measured side by side, question for question.
    paired = base["paired"]
    assert paired["gistqa_ms"]["n"] == paired["baseline_ms"]["n"] == 10
    assert r["comparison"]["latency_measured"] == "paired"
    assert r["comparison"]["latency_p50_ratio"] == round(paired["gistqa_ms"]["p50"] / paired["baseline_ms"]["p50"], 3)
    assert r["comparison"]["memory_ratio"] > 0 and r["comparison"]["cold_start_ratio"] > 0
    # The plain pipeline quotes nothing, so the strict rules give it nothing.
    assert base["quality"]["strict_answer_accuracy"] == 0.0 < r["warm"]["quality"]["strict_answer_accuracy"]


def test_serving_runs_one_and_two_workers_and_answers_every_request(smoke_run):
    _, r = smoke_run
    runs = r["serving"]["runs"]
    assert [run["workers"] for run in runs] == [1, 2]
    for run in runs:
        assert [lv["clients"] for lv in run["levels"]] == [1, 4]
        for lv in run["levels"]:
            assert lv["ok"] == lv["requests"] > 0 and lv["errors"] == 0
        assert run["rss_after_load_mb"]["front"] > 0
    assert set(runs[1]["rss_after_load_mb"]) == {"front", "worker1", "worker2"}


def test_scaling_smoke_is_1k_only_with_hnsw_recall_and_real_store_files(smoke_run):
    _, r = smoke_run
    (row,) = r["scaling"]["sizes"]
    assert row["size"] == 1_000 and row["build"]["passages"] == 1_000
    assert {"dense.faiss", "lexical", "passage_vectors.npy", "passages.jsonl"} <= set(row["build"]["file_bytes"])
    assert set(row["query"]["retrieve_ms"]) == {"dense_search", "lexical_search", "fusion", "retrieve_total"}
    grid = row["query"]["hnsw"]["grid"]
    assert [g["ef_search"] for g in grid] == [16, 32, 64, 128, 256]
    assert all(0.0 <= g["recall@10"] <= 1.0 for g in grid)
    # HNSW must find what exact search finds at the efSearch the index stores (what the bot uses).
    hnsw = row["query"]["hnsw"]
    assert hnsw["as_bot_searches"]["ef_search"] == hnsw["stored_ef_search"]
    assert hnsw["as_bot_searches"]["recall@10"] >= MIN_RECALL_AT_STORED_EF, hnsw["as_bot_searches"]
    assert r["scaling"]["recall_failures"] == [] and r["errors"] == []
    assert row["query"]["index_rss_mb"] is not None
    assert row["answer"]["questions"] == 5
    assert "NOT embedded" in r["scaling"]["method"]


def test_markdown_report_names_every_section(smoke_run):
    out, _ = smoke_run
    text = (out / BENCH_MD).read_text(encoding="utf-8")
    for heading in ("## Cold start", "## Warm answer latency", "## Concurrency", "## Memory", "## Index build",
                    "## Baseline", "## Scaling", "## Serving", "recall@10", "load average"):
        assert heading in text
