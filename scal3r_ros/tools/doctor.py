"""`scal3r_doctor`: check that this environment can run the node, and say what is missing.

Run after setup (scripts/setup.sh does) or on a robot before a drive: it imports torch,
the ROS 2 client library and the generated interfaces, starts a node on the configured
middleware, and reports the compute device.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def _check(name: str, fn) -> tuple[bool, str]:
    try:
        return True, str(fn())
    except Exception as exc:  # report, don't crash: this tool exists to explain failures
        return False, f"{type(exc).__name__}: {exc}"


def _torch() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.__version__}, cuda:0 = {torch.cuda.get_device_name(0)}"
    return f"{torch.__version__}, cpu only (no CUDA device)"


def _rclpy_node() -> str:
    import rclpy
    from rclpy.utilities import get_rmw_implementation_identifier

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("scal3r_doctor", context=context)
        node.destroy_node()
        return f"rmw = {get_rmw_implementation_identifier()}"
    finally:
        rclpy.shutdown(context=context)


def _import(module: str):
    return lambda: getattr(importlib.import_module(module), "__file__", module)


CHECKS = [
    ("torch", _torch),
    ("numpy", lambda: importlib.import_module("numpy").__version__),
    ("rclpy node", _rclpy_node),
    ("sensor_msgs", _import("sensor_msgs.msg")),
    ("nav_msgs", _import("nav_msgs.msg")),
    ("diagnostic_msgs", _import("diagnostic_msgs.msg")),
    ("tf2_msgs", _import("tf2_msgs.msg")),
    ("scal3r_ros_msgs", _import("scal3r_ros_msgs.msg")),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="one line unless something fails")
    args = parser.parse_args(argv)

    results = [(name, *_check(name, fn)) for name, fn in CHECKS]
    failed = [r for r in results if not r[1]]
    if args.quiet and not failed:
        print("[scal3r_doctor] ok: " + "; ".join(f"{n}: {m}" for n, ok, m in results[:3]))
        return 0
    for name, ok, msg in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {name:16s} {msg}")
    for var in ("RMW_IMPLEMENTATION", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID"):
        print(f"       {var} = {os.environ.get(var, '(unset)')}")
    print(
        f"       FASTDDS_DEFAULT_PROFILES_FILE = "
        f"{os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', '(unset)')}"
    )
    if failed:
        print(
            "[scal3r_doctor] missing pieces; run scripts/setup.sh (or source your ROS 2 "
            "install and build the workspace), then `source scripts/env.sh`."
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
