#!/usr/bin/env bash
# One command from a fresh clone to the chat page: set up, then serve on http://127.0.0.1:7860.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gistqa serve "$@"
