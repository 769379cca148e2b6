#!/usr/bin/env bash
# System-test dependencies (Debian): a single-node Slurm (slurmctld, slurmd, munge) for tests/test_slurm.py
# and headless Chromium for the report test in tests/test_report.py. Idempotent: installs only what is
# missing. Called by .ci/run before README command 2; needs root (or sudo) and apt.
set -euo pipefail
pkgs=(slurmctld slurmd slurm-client munge chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system test dependencies present: ${pkgs[*]}"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
