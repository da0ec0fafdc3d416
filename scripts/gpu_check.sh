#!/usr/bin/env bash
# GPU check of kstar's CUDA paths (exact k*, extraction) against the CPU; prints one table. Under 5 minutes on one GPU.
# Usage: scripts/gpu_check.sh [--device cuda:0] [--json out.json]     dry run without a GPU: --device cpu --tiny
# Exits 0 with a message on a machine without CUDA; 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout "${GPU_CHECK_TIMEOUT:-290}" "$PY" scripts/gpu_check.py "$@"
