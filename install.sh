#!/usr/bin/env bash
# Installs facefuse and its stack into ./.venv (idempotent; a second run takes seconds).
# torch is installed first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -c .ci/constraints.txt -e ".[test]"
echo "facefuse installed in $(pwd)/.venv" >&2
