#!/usr/bin/env bash
# README command 1: set up (idempotent), run the embedded tiny default pipeline, build results/report.html,
# and print how long every rule took. EBFT_CONFIG=<file> runs another config the same way (the report is
# built from that config too); scripts/run_rehearsal.sh uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
config=()
if [ -n "${EBFT_CONFIG:-}" ]; then config=(--configfile "$EBFT_CONFIG"); fi
.venv/bin/snakemake --cores "${CORES:-2}" "${config[@]}" "$@"
.venv/bin/snakemake --report results/report.html "${config[@]}"
.venv/bin/ebft timings results/benchmarks/rules
echo "total wall time (setup included): $(( $(date +%s) - start )) s; report: results/report.html"
