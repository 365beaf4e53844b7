#!/usr/bin/env bash
# Set up gistqa on a fresh machine: venv, pinned dependencies, the embedded model, the index.
# Safe to run again: every step is skipped when already done. Nothing is downloaded from a model hub.
#   GISTQA_WITH_TEST=1  also installs the test tools and Debian's chromium (for browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "gistqa needs Python 3.11"' \
  || { echo "gistqa needs Python 3.11 (found $("$PY" --version 2>&1))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.gistqa-deps
want="$(sha256sum constraints.txt pyproject.toml | sha256sum | cut -c1-16)-${GISTQA_WITH_TEST:-0}"
# This machine's pip configuration names local mirrors that may be absent; pip warns once per
# package about each. Those lines say nothing about gistqa, so they are filtered out.
pip_install() { .venv/bin/pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing pinned dependencies (constraints.txt)"
  # torch first and by exact version: the CPU build is what the constraints name; a loose
  # requirement would pull the registry's CUDA build (several GB).
  pip_install -c constraints.txt "torch==$(grep -i '^torch==' constraints.txt | cut -d= -f3)"
  extras=""
  [ "${GISTQA_WITH_TEST:-0}" = "1" ] && extras="[test]"
  pip_install -c constraints.txt -e ".${extras}"
  echo "$want" > "$stamp"
fi

if [ "${GISTQA_WITH_TEST:-0}" = "1" ] && [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Debian's chromium and CJK fonts for the browser tests"
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-cjk >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-cjk >/dev/null
  fi
fi

echo "==> building the embedded model (once) and the index (only what changed)"
.venv/bin/gistqa index
