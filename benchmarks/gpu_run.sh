#!/usr/bin/env bash
# The one prepared GPU run (benchmarks/gpu_run.py; how to call it with the device tool: benchmarks/README.md).
# Writes at most 8 files into $OUT. Extra arguments go to gpu_run.py (--smoke: the same run on the CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu_run.py "$@"
