#!/usr/bin/env bash
# Every GPU target of issue 14 in one call, on a lent GPU machine (docs/benchmarks.md,
# "GPU runs (device_check.sh)"). Run from the repository root, after
# scripts/device_prepare.sh filled .device/ on a normal machine (carry ".device"):
#
#   bash scripts/device_check.sh
#
# Needs only python3 with torch and numpy beside what the GPU image has (scipy, tqdm,
# pillow, pyyaml, pytest; no ROS: the benchmarks run with --no-ros). gtsam (and pypose for
# the official code) come as wheels from .device/wheels when missing; the package is used
# from the tree (PYTHONPATH). Steps, each under its own time limit so one slow step cannot
# eat the lease:
#   1. wheels: install .device/wheels into a temporary folder if gtsam is missing
#   2. machine.txt: nvidia-smi, python/torch/CUDA versions, what is importable
#   3. tests.log: python3 -m pytest -q -m gpu test/model test/mapping (a failure does not stop
#      the script)
#      parity.log: the parity fixtures in fp32 (test/model/test_parity.py), exact
#   4. bench_main.json: scal3r-1b, 1242x375, windows 60/30, bf16 (dtype auto on CUDA):
#      steady FPS end to end, pose latency measured at 10 Hz with queueing, peak GPU memory
#      allocated and reserved, host RSS after start, every worker mode (pipelined and
#      serial, their poses compared) and, if .device/Scal3R exists, the official forward on
#      the same frames in the same process (the ratio)
#   5. bench_lowlatency.json: the 16/8 preset, FPS and latency (FRAMES_LOW frames)
#      geometry: each geometry stage's ms per 60/30 window at 518x154 (numpy reference, torch
#      on the CPU, torch on CUDA), printed into summary.md
#   7. (T_MEM > 0 only) the model's memory probe, printed into summary.md: a random
#      release-format checkpoint streamed onto the GPU (host RSS of the load vs the old
#      host-first load), one 60-frame window's allocated/reserved peaks new vs the
#      pre-issue-14 setup, the GCM gradient/apply at full size bitwise (~2-3 min: writes 5 GB)
#   6. summary.md: the targets table (device, date, each target and its measured value),
#      step status, machine info, the test result lines and every bench table
# Everything goes to $OUT (at most 8 files: the device returns no more). The exit status is
# 0 when every step that ran passed (a target missed is a "NO" in the table, not a failure).
#
# Settings (environment variables; defaults for the GPU run):
#   OUT=output/device_check  DEVICE=cuda  MODEL=scal3r-1b  WIDTH=1242  HEIGHT=375  RATE=10
#   FRAMES=180 CHUNK=60 OVERLAP=30    FRAMES_LOW=96 LOW_CHUNK=16 LOW_OVERLAP=8
#   WORKERS=all (every worker mode of this build)   WHEELS=.device/wheels
#   OFFICIAL=.device/Scal3R  TESTS="test/model test/mapping"  PARITY=test/model/test_parity.py
#   time limits [s]: T_PIP=30 T_TESTS=45 T_PARITY=60 T_MAIN=300 T_LOW=110 T_GEOM=40 (sum 585 s)
#   T_MEM=0: the memory probe (step 7) is off by default (it writes 5 GB, 2-3 min); T_MEM=240
#   runs it after the benchmarks (then run with a longer command limit, or alone:
#   python3 -m scal3r_ros.model.memcheck --device cuda --baseline --gcm-check
#   --random-checkpoint /tmp/scal3r1b_random.pt)
# CPU smoke test (tiny model, a few frames):
#   DEVICE=cpu MODEL=tiny WIDTH=160 HEIGHT=48 FRAMES=8 CHUNK=4 OVERLAP=2 FRAMES_LOW=8 \
#     LOW_CHUNK=4 LOW_OVERLAP=2 bash scripts/device_check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

OUT=${OUT:-output/device_check}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-scal3r-1b}
WIDTH=${WIDTH:-1242}
HEIGHT=${HEIGHT:-375}
FRAMES=${FRAMES:-180}
CHUNK=${CHUNK:-60}
OVERLAP=${OVERLAP:-30}
FRAMES_LOW=${FRAMES_LOW:-96}
LOW_CHUNK=${LOW_CHUNK:-16}
LOW_OVERLAP=${LOW_OVERLAP:-8}
RATE=${RATE:-10}
WORKERS=${WORKERS:-all}
PARITY=${PARITY:-test/model/test_parity.py}
WHEELS=${WHEELS:-.device/wheels}
OFFICIAL=${OFFICIAL:-.device/Scal3R}
TESTS=${TESTS:-test/model test/mapping}
T_PIP=${T_PIP:-30}
T_TESTS=${T_TESTS:-45}
T_PARITY=${T_PARITY:-60}
T_MAIN=${T_MAIN:-300}
T_LOW=${T_LOW:-110}
T_GEOM=${T_GEOM:-40}
T_MEM=${T_MEM:-0}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# only this script's own files (never the whole folder: OUT may be anything)
rm -f "$OUT"/{machine.txt,tests.log,parity.log,log.txt,summary.md} "$OUT"/bench_{main,lowlatency}.json
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
SITE=$TMP/site  # where the carried wheels are installed (outside $OUT and the tree)
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export TQDM_DISABLE=1  # no progress bars in the logs
LOG=$OUT/log.txt
SUMMARY=$OUT/summary.md
STATUS=$TMP/status.md
WORST=0
START=$SECONDS

say() { echo "[device_check $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
status() {  # status STEP RC SECONDS NOTE
  echo "| $1 | $2 | $3 | $4 |" >>"$STATUS"
  if [ "$2" != 0 ] && [ "$2" != skipped ]; then WORST=1; fi
}

# ---------------------------------------------------------------- 1. wheels
t0=$SECONDS
missing=()
python3 -c "import gtsam" 2>/dev/null || missing+=(gtsam)
if [ -d "$OFFICIAL" ]; then python3 -c "import pypose" 2>/dev/null || missing+=(pypose); fi
if [ ${#missing[@]} -eq 0 ]; then
  status wheels skipped 0 "nothing missing (gtsam, and pypose if $OFFICIAL exists)"
elif ! compgen -G "$WHEELS/*.whl" >/dev/null; then
  say "MISSING: ${missing[*]} not importable and no wheels in $WHEELS (run" \
    "scripts/device_prepare.sh before the session and carry .device); the benchmarks need gtsam"
  status wheels 1 0 "${missing[*]} missing, no wheels in $WHEELS"
else
  say "installing $(cd "$WHEELS" && echo *.whl) into $SITE"
  rc=0
  timeout -k 5 "$T_PIP" python3 -m pip install --no-index --no-deps --no-compile \
    --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl >>"$LOG" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then  # no pip, or pip refused: a wheel is a zip, unpacking does it
    say "pip install failed (exit $rc): unpacking the wheels instead"
    rc=0
    for w in "$WHEELS"/*.whl; do python3 -m zipfile -e "$w" "$SITE" >>"$LOG" 2>&1 || rc=$?; done
  fi
  still=()
  for m in "${missing[@]}"; do python3 -c "import $m" >>"$LOG" 2>&1 || still+=("$m"); done
  if [ ${#still[@]} -eq 0 ]; then
    status wheels 0 $((SECONDS - t0)) "installed ${missing[*]} from $WHEELS"
  else
    say "still not importable after installing $WHEELS: ${still[*]} (see log.txt)"
    status wheels 1 $((SECONDS - t0)) "still missing: ${still[*]}"
  fi
fi

# ---------------------------------------------------------------- 2. machine.txt
t0=$SECONDS
{
  echo "date: $(date -Is)"
  echo "host: $(uname -srm); $(getconf _NPROCESSORS_ONLN) CPU cores"
  free -g 2>/dev/null | head -2 || true
  echo
  timeout 30 nvidia-smi 2>&1 || echo "nvidia-smi: not available here"
  echo
  timeout 60 python3 - <<'PY' 2>&1 || echo "python3 version check failed"
import importlib
import platform

import torch

print("python", platform.python_version(), platform.platform())
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN",
      torch.backends.cudnn.version(), "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor},"
          f" bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.device_count()} device(s)")
for name in ("numpy", "scipy", "PIL", "tqdm", "yaml", "pytest", "gtsam", "pypose", "einops",
             "rich", "cv2", "rclpy"):
    try:
        m = importlib.import_module(name)
        print(f"{name}: {getattr(m, '__version__', 'present')} ({m.__file__})")
    except Exception as exc:  # report, whatever it is
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
PY
  echo
  echo "settings: DEVICE=$DEVICE MODEL=$MODEL ${WIDTH}x$HEIGHT FRAMES=$FRAMES $CHUNK/$OVERLAP" \
    "FRAMES_LOW=$FRAMES_LOW $LOW_CHUNK/$LOW_OVERLAP RATE=$RATE WORKERS=$WORKERS" \
    "OFFICIAL=$OFFICIAL WHEELS=$WHEELS TESTS=$TESTS PARITY=$PARITY"
  echo "time limits [s]: pip $T_PIP, tests $T_TESTS, parity $T_PARITY, main $T_MAIN," \
    "low-latency $T_LOW"
} >"$OUT/machine.txt"
status machine 0 $((SECONDS - t0)) "machine.txt"
{
  echo "# device_check"
  echo
  echo "## machine"
  echo
  echo '```'
  cat "$OUT/machine.txt"
  echo '```'
  echo
} >"$SUMMARY"

# ---------------------------------------------------------------- 3. GPU tests, parity
pytest_step() {  # pytest_step NAME LOG LIMIT PYTEST_ARGS...
  local name=$1 log=$2 limit=$3 rc=0 t=$SECONDS line
  shift 3
  say "$name: pytest $* (limit ${limit}s)"
  timeout -k 10 "$limit" python3 -m pytest -q -p no:cacheprovider "$@" >"$log" 2>&1 || rc=$?
  echo "exit code: $rc (124: timed out after ${limit}s)" >>"$log"
  line=$(grep -E '[0-9]+ (passed|failed|skipped|deselected|errors?)|no tests ran' "$log" |
    tail -n 1 || true)
  status "$name" "$rc" $((SECONDS - t)) "${line:-no pytest summary line}"
  {
    echo "## $name"
    echo
    echo "\`python3 -m pytest -q $*\`: exit code $rc; ${line:-no pytest summary line}"
    echo
  } >>"$SUMMARY"
}
read -ra tests <<<"$TESTS"
read -ra parity <<<"$PARITY"
pytest_step tests "$OUT/tests.log" "$T_TESTS" -m gpu "${tests[@]}"
pytest_step parity "$OUT/parity.log" "$T_PARITY" "${parity[@]}"

# ---------------------------------------------------------------- 4-5. benchmarks
bench() {  # bench NAME LIMIT BENCH_ARGS...
  local name=$1 limit=$2 rc=0 t=$SECONDS
  shift 2
  local cmd=(python3 -m scal3r_ros.tools.bench --no-ros --device "$DEVICE" --model "$MODEL"
    --width "$WIDTH" --height "$HEIGHT" --rate "$RATE" --json "$OUT/bench_$name.json" "$@")
  say "$name: ${cmd[*]} (limit ${limit}s)"
  timeout -k 15 "$limit" "${cmd[@]}" >"$TMP/$name.out" 2>"$TMP/$name.err" || rc=$?
  {
    echo "==== $name (exit code $rc)"
    cat "$TMP/$name.err"
  } >>"$LOG"
  {
    echo "## $name"
    echo
    echo "\`${cmd[*]}\`: exit code $rc after $((SECONDS - t)) s (limit $limit s; 124: timed out)"
    echo
    cat "$TMP/$name.out"
    if [ "$rc" != 0 ]; then
      echo
      echo '```'
      tail -n 25 "$TMP/$name.err"
      echo '```'
    fi
    echo
  } >>"$SUMMARY"
  status "$name" "$rc" $((SECONDS - t)) \
    "$([ -f "$OUT/bench_$name.json" ] && echo "bench_$name.json" || echo "no JSON written")"
}

official=()
if [ "$MODEL" != scal3r-1b ]; then
  status official skipped 0 "--official needs MODEL=scal3r-1b"
elif [ ! -d "$OFFICIAL" ]; then
  status official skipped 0 "no official checkout at $OFFICIAL (scripts/device_prepare.sh --official PATH)"
  say "official: skipped, no $OFFICIAL (scripts/device_prepare.sh --official PATH, carry .device)"
else
  official=(--official "$OFFICIAL")  # in the main run: the ratio is measured in one process
  status official 0 0 "in the main run, on the same frames"
fi
# the node's configuration only (no official_like column): the targets are about it
bench main "$T_MAIN" --frames "$FRAMES" --chunk "$CHUNK" --overlap "$OVERLAP" --no-baseline \
  --workers "$WORKERS" "${official[@]}"
bench lowlatency "$T_LOW" --frames "$FRAMES_LOW" --chunk "$LOW_CHUNK" --overlap "$LOW_OVERLAP" \
  --no-baseline

t=$SECONDS rc=0
geo=(python3 -m scal3r_ros.tools.bench.geometry --repeats 2)
say "geometry: ${geo[*]} (limit ${T_GEOM}s)"
timeout -k 5 "$T_GEOM" "${geo[@]}" >"$TMP/geometry.out" 2>>"$LOG" || rc=$?
{
  echo "## geometry"
  echo
  echo "\`${geo[*]}\`: exit code $rc after $((SECONDS - t)) s (limit $T_GEOM s)"
  echo
  cat "$TMP/geometry.out"
  echo
} >>"$SUMMARY"
status geometry "$rc" $((SECONDS - t)) "printed in summary.md"

# ---------------------------------------------------------------- 7. memory probe
if [ "$T_MEM" -gt 0 ]; then
  t=$SECONDS rc=0
  mem=(python3 -m scal3r_ros.model.memcheck --device "$DEVICE" --baseline --gcm-check
    --random-checkpoint "$TMP/scal3r1b_random.pt")
  say "memcheck: ${mem[*]} (limit ${T_MEM}s)"
  timeout -k 15 "$T_MEM" "${mem[@]}" >"$TMP/memcheck.out" 2>>"$LOG" || rc=$?
  {
    echo "## memcheck"
    echo
    echo "\`${mem[*]}\`: exit code $rc after $((SECONDS - t)) s (limit $T_MEM s)"
    echo
    echo '```'
    cat "$TMP/memcheck.out"
    echo '```'
    echo
  } >>"$SUMMARY"
  status memcheck "$rc" $((SECONDS - t)) "printed in summary.md"
fi

# ---------------------------------------------------------------- 6. summary.md
targets=$TMP/targets.md
if [ -f "$OUT/bench_main.json" ]; then
  low=()
  [ -f "$OUT/bench_lowlatency.json" ] && low=(--lowlatency "$OUT/bench_lowlatency.json")
  python3 -m scal3r_ros.tools.bench.targets --main "$OUT/bench_main.json" "${low[@]}" \
    --parity "$OUT/parity.log" >"$targets" 2>>"$LOG" || echo "targets table failed (log.txt)" >"$targets"
else
  echo "no targets table: the main benchmark wrote no JSON" >"$targets"
fi
{
  echo "# device_check: $(date -Is), $((SECONDS - START)) s in all"
  echo
  cat "$targets"
  echo
  echo "| step | exit code | s | note |"
  echo "|---|---|---|---|"
  cat "$STATUS"
  echo
  tail -n +3 "$SUMMARY"
} >"$TMP/summary.md"
mv "$TMP/summary.md" "$SUMMARY"
cat "$SUMMARY"
n=$(find "$OUT" -maxdepth 1 -type f | wc -l)
say "done in $((SECONDS - START)) s; $n files in $OUT: $(cd "$OUT" && echo *)"
exit "$WORST"
