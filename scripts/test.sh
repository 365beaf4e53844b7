#!/usr/bin/env bash
# Run the whole test suite on this machine: sets up what the tests need first (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
GISTQA_WITH_TEST=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
.venv/bin/python -m pytest "$@"
# The fixed evaluation set, gated by the committed baseline (a ratchet).
.venv/bin/gistqa eval --out test-output/eval
# The learned decisions judged on authors they were not trained on: each author of the question
# bank in turn is held out, the models are trained on the others (evals/by_author.py); the pooled
# figures must stay at or above the committed floors.
.venv/bin/gistqa eval --by-author --gate evals/bank_baseline.json --out test-output/by-author
