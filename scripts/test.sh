#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
EBFT_REHEARSAL=1 bash scripts/setup.sh  # the tests also convert the rehearsal's GGUF model
# system tests (EBFT_SYSTEM_TESTS=1, as in CI) need Debian packages: a local Slurm and headless Chromium
if [ "${EBFT_SYSTEM_TESTS:-0}" = "1" ]; then bash scripts/install_system_test_deps.sh; fi
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check ebft tests benchmarks
.venv/bin/python -m pytest "$@"
