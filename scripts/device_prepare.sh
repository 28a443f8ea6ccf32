#!/usr/bin/env bash
# Fill .device/ for scripts/device_check.sh, on a normal machine with package-registry
# access, before a GPU session (the GPU machine has no network, no gtsam and no pypose):
#
#   bash scripts/device_prepare.sh [--official /path/to/Scal3R]
#
# - .device/wheels: the cp312 manylinux x86_64 wheels (no dependencies: the GPU machine has
#   numpy and torch) of gtsam (the version pinned in constraints.txt) and pypose (the
#   official code's loop optimiser imports it);
# - .device/Scal3R (with --official): the official checkout's *.py, *.yaml and configs/,
#   for `scal3r_bench --official`.
# Then carry ".device" with the working tree (64 MiB in all, the tree included).
# PYVER (default 3.12) and DEVICE_DIR (default .device) change the target, e.g. to
# simulate the GPU machine here: PYVER=3.11 DEVICE_DIR=/tmp/sim bash scripts/device_prepare.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
official=""
while [ $# -gt 0 ]; do
  case $1 in
    --official) official=${2:?--official needs a path}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "device_prepare.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
DEVICE_DIR=${DEVICE_DIR:-.device}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-python3}
gtsam=$(grep -E '^gtsam==' constraints.txt || echo gtsam)
pypose=${PYPOSE:-pypose}

rm -rf "$DEVICE_DIR/wheels"
mkdir -p "$DEVICE_DIR/wheels"
"$PY" -m pip download --only-binary=:all: --python-version "$PYVER" \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --no-deps \
  -d "$DEVICE_DIR/wheels" "$gtsam" "$pypose"

if [ -n "$official" ]; then
  if [ ! -d "$official/scal3r" ] || [ ! -f "$official/configs/models/scal3r.yaml" ]; then
    echo "device_prepare.sh: $official is not an official Scal3R checkout" \
      "(no scal3r/ or configs/models/scal3r.yaml)" >&2
    exit 1
  fi
  dest=$(mkdir -p "$DEVICE_DIR" && cd "$DEVICE_DIR" && pwd)/Scal3R
  rm -rf "$dest"
  mkdir -p "$dest"
  (cd "$official" && find . -name .git -prune -o -type f \
    \( -name '*.py' -o -name '*.yaml' -o -path './configs/*' \) -print0 |
    xargs -0 cp --parents -t "$dest")
  echo "copied $(find "$dest" -type f | wc -l) files of $official to $dest"
fi

echo
ls -l "$DEVICE_DIR/wheels"
echo "size of $DEVICE_DIR: $(du -sh "$DEVICE_DIR" | cut -f1) (the carry limit is 64 MiB with the" \
  "working tree)"
echo "carry: [\"$DEVICE_DIR\"]   then on the GPU machine: bash scripts/device_check.sh"
