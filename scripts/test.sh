#!/usr/bin/env bash
# The test command: lint, then the whole pytest suite (GPU tests skip without CUDA).
#   scripts/test.sh [pytest args...]     e.g. scripts/test.sh -m "not slow"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/env.sh "${SCAL3R_VENV:-$ROOT/.venv}"
ruff check .
ruff format --check .
python -m pytest "$@"
