# shellcheck shell=bash
# Source this to use the venv made by scripts/setup.sh:   source scripts/env.sh [VENV]
# It activates the venv and configures ROS 2 for this machine (Fast DDS, localhost
# discovery, a shared-memory segment large enough for camera images and point clouds).
# With a real ROS 2 install (apt + colcon), source that install's setup.bash instead.

_scal3r_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
# (a script that sources this passes its own arguments along: take $1 only if it is a dir)
_scal3r_venv="${SCAL3R_VENV:-$_scal3r_root/.venv}"
if [ -n "${1:-}" ] && [ -d "$1" ]; then _scal3r_venv="$1"; fi
if [ ! -x "$_scal3r_venv/bin/python" ]; then
  echo "env.sh: no venv at $_scal3r_venv (run scripts/setup.sh first)" >&2
  unset _scal3r_root _scal3r_venv
  return 1 2>/dev/null || exit 1
fi
_scal3r_venv="$(cd "$_scal3r_venv" && pwd)"
# shellcheck disable=SC1091
. "$_scal3r_venv/bin/activate"

case ":${AMENT_PREFIX_PATH:-}:" in *":$_scal3r_venv:"*) ;; *) export AMENT_PREFIX_PATH="$_scal3r_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}";; esac
case ":${CMAKE_PREFIX_PATH:-}:" in *":$_scal3r_venv:"*) ;; *) export CMAKE_PREFIX_PATH="$_scal3r_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}";; esac
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
unset ROS_LOCALHOST_ONLY FASTRTPS_DEFAULT_PROFILES_FILE
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_scal3r_root/config/fastdds_localhost.xml}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # see scal3r_ros/__init__.py
export ROS_DISTRO="${ROS_DISTRO:-kilted}" ROS_VERSION=2 ROS_PYTHON_VERSION=3
unset _scal3r_root _scal3r_venv
