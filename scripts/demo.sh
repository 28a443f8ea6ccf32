#!/usr/bin/env bash
# The main job: set up (first run only does real work) and map the built-in synthetic drive
# through the ROS node, then write map, trajectory, plot and ATE under ./output/demo.
#   scripts/demo.sh [scal3r_demo options]     e.g. scripts/demo.sh --frames 300
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! { [ -x .venv/bin/python ] && .venv/bin/python -c 'import scal3r_ros_msgs.msg, scal3r_ros' 2>/dev/null; }; then
  scripts/setup.sh
fi
# shellcheck disable=SC1091
source scripts/env.sh "${SCAL3R_VENV:-$ROOT/.venv}"
exec python -m scal3r_ros.tools.demo "$@"
