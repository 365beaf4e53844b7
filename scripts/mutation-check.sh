#!/usr/bin/env bash
# The mutation check (scripts/mutation_check.py): each deliberate bug of scripts/mutations.py applied to
# a temporary copy and run against the tests that guard it. Needs the venv and a built index
# (./scripts/setup.sh, `gistqa index`). Arguments pass through: --list, --only NAME, --no-control.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
exec .venv/bin/python scripts/mutation_check.py "$@"
