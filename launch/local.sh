#!/usr/bin/env bash
# Run a synthpre command locally with the project's virtual environment (made by `make install`).
#
#   launch/local.sh [--dry-run] [--devices N] synthpre train --gin_file=... ...
#   launch/local.sh experiment --grid gin_configs/experiments/paper_table1.yaml
#
# --devices N simulates N CPU devices (XLA_FLAGS), to try sharded runs on a laptop.
set -euo pipefail
DRY=0 DEVICES=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift;;
    --devices) DEVICES="$2"; shift 2;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
    *) break;;
  esac
done
[[ $# -gt 0 ]] || { echo "error: give the command, e.g. synthpre train --gin_file=..." >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[[ "$1" == "synthpre" ]] && shift
CMD=("$ROOT/.venv/bin/synthpre" "$@")
ENVV=()
[[ -n "$DEVICES" ]] && ENVV=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES")
if [[ $DRY == 1 ]]; then printf '%q ' "${ENVV[@]}" "${CMD[@]}"; echo; else exec "${ENVV[@]}" "${CMD[@]}"; fi
