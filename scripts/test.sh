#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check ebft tests benchmarks
.venv/bin/python -m pytest "$@"
