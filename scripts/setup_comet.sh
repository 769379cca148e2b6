#!/usr/bin/env bash
# Idempotent COMET environment setup: .venv-comet (unbabel-comet, transformers 4, numpy 1).
# Kept apart from .venv because unbabel-comet 2.2.7 pins transformers<5, huggingface-hub<1 and numpy<2;
# the main env reaches it only through a subprocess (ebft/evaluation/comet_bridge.py, docs/comet.md).
# Re-running is cheap: it only reinstalls when requirements/comet.txt changed. Prints the COMET python.
# Env vars: PYTHON (interpreter that creates the venv), EBFT_COMET_VENV (venv path, default .venv-comet).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${EBFT_COMET_VENV:-.venv-comet}
stamp="$VENV/.ebft-comet-installed"
want=$(sha256sum < requirements/comet.txt | cut -c1-16)

if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  echo "[setup-comet] creating $VENV" >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  # torch first and pinned: a bare requirement could resolve to a multi-GB CUDA build on CPU-only machines.
  "$VENV/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" -r requirements/comet.txt
  "$VENV/bin/python" -c "import comet" >/dev/null 2>&1 \
    || { echo "[setup-comet] 'import comet' fails in $VENV" >&2; exit 1; }
  echo "$want" > "$stamp"
  echo "[setup-comet] done: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(*(p + " " + m.version(p) for p in ("torch", "unbabel-comet", "transformers", "numpy")), sep=", ")')" >&2
fi
echo "$(cd "$VENV" && pwd)/bin/python"
