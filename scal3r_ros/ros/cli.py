"""The `scal3r_mapping` console script: arguments, parameter files checked before rclpy
reads them, signals, spinning, and the stop-and-save at the end.

`scal3r_ros.ros.node.main` calls `main` here with the node class (so this module does
not import the node); the console script's `console_main` imports the node (and torch) only
once the arguments are checked, so ``--help`` and usage mistakes answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

from scal3r_ros.ros.params import (
    ParameterInputError,
    RosArguments,
    check_settings,
    parameter_help,
    parse_override,
    read_parameter_file,
    split_ros_args,
)
from scal3r_ros.share import config_file

_ROS_ARGS_HELP = """\
ROS arguments (after --ros-args, as for any ROS 2 node; `--` ends them):
  -p NAME:=VALUE        set one parameter (over the value of --config's file)
  --params-file FILE    a YAML parameter file (`/**: ros__parameters: NAME: VALUE`)
  -r FROM:=TO           remap a topic, or the node name (__node:=NAME)
  --log-level LEVEL     debug, info, warn, error or fatal

Parameter files and overrides are checked before the node starts: a value of the wrong
type is an error (exit 2), an unknown name a warning. A float needs its decimal point
(voxel_size:=1.0), a list of strings its quotes (image_topics:="['/cam/image_raw']").

examples:
  scal3r_mapping --config synthetic
  scal3r_mapping --config kitti --ros-args -p checkpoint:=/data/scal3r.pt
  scal3r_mapping --ros-args -p image_topics:="['/cam/image_raw']" -p chunk_size:=40

parameters (NAME = default: description; `ros2 param describe /scal3r_mapping NAME`):
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scal3r_mapping",
        usage="scal3r_mapping [-h] [--config NAME|PATH] [--ros-args ...]",
        description="The Scal3R online mapping node: images in; /tf, map clouds, odometry, "
        "path and status out.",
        epilog=_ROS_ARGS_HELP + parameter_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="NAME|PATH",
        help="parameter file: a bundled one (default, low_latency, kitti, synthetic) "
        "or a path, like the launch file's config argument",
    )
    return p


def _read_parameter_sources(config: Path | None, ros: RosArguments) -> list[str]:
    """Check --config, --params-file and -p before rclpy reads them; returns warnings.

    Raises ParameterInputError naming the file or override (rclpy would give a traceback,
    or silently keep an earlier value of another type)."""
    settings, warnings = [], []
    for path in ([str(config)] if config else []) + ros.param_files:
        got, sections = read_parameter_file(path, ros.node_fqn)
        if sections and not got:
            warnings.append(
                f"{path}: no section applies to {ros.node_fqn} (sections: "
                f"{', '.join(sections)}); none of its parameters is used"
            )
        settings += got
    for rule in ros.overrides:
        setting = parse_override(rule, ros.node_fqn)
        if setting is not None:
            settings.append(setting)
    errors, unknown = check_settings(settings)
    if errors:
        raise ParameterInputError("\n  ".join(["invalid parameter values:", *errors]))
    return warnings + unknown


def console_main(argv: list[str] | None = None) -> int:
    """The ``scal3r_mapping`` entry point: `main` with the node imported only when built."""

    def make_node():
        from scal3r_ros.ros.node import MappingNode

        return MappingNode()

    return main(argv, make_node)


def main(argv: list[str] | None, make_node: Callable) -> int:
    """Console script `scal3r_mapping [-h] [--config NAME|PATH] [--ros-args ...]`.

    Runs the node without the launch system; ``--config`` takes a bundled parameter file
    (default, low_latency, kitti, synthetic) or a path, like the launch file's argument.
    Usage mistakes (a bad option, a malformed parameter file, a value of the wrong type)
    exit 2 with one message; ``-h``/``--help`` (also after ``--ros-args``) exit 0.
    ``make_node()`` builds the node (`MappingNode`: its ``worker`` and ``shutdown``).
    """
    argv = list(sys.argv if argv is None else argv)
    parser = _parser()
    try:
        own, ros = split_ros_args(argv[1:])
        if ros.help:
            parser.print_help()
            return 0
        opts = parser.parse_args(own)
        config = config_file(opts.config) if opts.config is not None else None
        warnings = _read_parameter_sources(config, ros)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message printed)
        return exc.code if isinstance(exc.code, int) else 2
    except (ParameterInputError, FileNotFoundError) as exc:
        print(f"[scal3r_mapping] {exc}", file=sys.stderr, flush=True)
        return 2
    args = argv[:1] + (["--ros-args", "--params-file", str(config)] if config else [])
    signals = _StopSignals()
    signals.install()  # before rclpy.init, whose handler calls the one it finds
    try:
        return _run(args + ros.tokens, warnings, ros.node_name, signals, make_node)
    finally:
        signals.restore()


class _StopSignals:
    """SIGINT and SIGTERM while the node runs, called by rclpy's own handler.

    rclpy's handler (installed by rclpy.init; it calls the Python handler it found)
    shuts the context down, which ends spinning. This one sets how patient the shutdown
    is: after a first SIGINT the window in progress and the stream's tail are mapped
    (at most shutdown_window_wait seconds); SIGTERM (what launch and service managers
    send when they lose patience) or another SIGINT sets ``hurry``: save what is mapped
    now. Nothing aborts the save itself -- Python's default handler raised
    KeyboardInterrupt wherever the main thread was, e.g. in the middle of the final save;
    only SIGKILL can, and then the previous save folder is left as it was.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self.hurry = threading.Event()
        self._old: dict = {}
        self._wakeup: tuple[int, int] | None = None
        self._old_wakeup = -1

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # Python runs a handler once for signals that arrive before the main thread gets
        # to it; the wakeup pipe gets a byte per signal, so a quick second Ctrl-C counts
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wakeup = (r, w)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def _arrived(self, signum: int) -> list[int]:
        """The signals delivered since the last call (one byte each in the wakeup pipe)."""
        if self._wakeup is None:
            return [signum]
        got = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._wakeup[0], 4096):
                got += chunk
        return list(got)  # empty: already counted by the call that drained them

    def _on_signal(self, signum: int, frame) -> None:
        for sig in self._arrived(signum):
            if sig not in self.SIGNALS:  # another handler's signal
                continue
            self.count += 1
            if sig == signal.SIGINT and self.count == 1:
                continue
            hurried = self.hurry.is_set()
            text = "still saving, please wait" if hurried else "saving what is mapped now"
            self.hurry.set()
            # os.write: a signal handler may interrupt a print of the main thread
            os.write(2, f"[scal3r_mapping] {signal.Signals(sig).name}: {text}\n".encode())


def _run(
    rcl_args: list[str],
    warnings: list[str],
    logger: str,
    signals: _StopSignals,
    make_node: Callable,
) -> int:
    """rclpy.init, the node, spin; on a signal (or the end of spinning) stop and save."""
    try:
        rclpy.init(args=rcl_args)
    except Exception as exc:  # rcl refuses an argument (e.g. an unknown --ros-args flag)
        print(
            f"[scal3r_mapping] bad ROS arguments ({type(exc).__name__}: {exc}); see "
            "scal3r_mapping --help",
            file=sys.stderr,
            flush=True,
        )
        return 2
    for warning in warnings:
        rclpy.logging.get_logger(logger).warning(warning)
    try:
        if signals.count:
            raise RuntimeError("interrupted")
        node = make_node()
    except Exception as exc:  # bad parameters, missing/corrupt checkpoint: say why, exit 2
        rclpy.try_shutdown()
        if signals.count:  # a signal came while starting (it shut the context down)
            print("[scal3r_mapping] stopped while starting", file=sys.stderr, flush=True)
            return 0
        print(f"[scal3r_mapping] cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    code, clean = 1, True
    try:
        # not executor.spin(): with use_sim_time and a stopped /clock (a bag that ended)
        # nothing may wake the wait set, and a signal must still end the spinning
        while rclpy.ok() and not signals.count:
            executor.spin_once(timeout_sec=0.5)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():  # a real error; a signal's shutdown surfaces as errors of the wait set
            raise
    finally:
        code = node.shutdown(signals.hurry)
        clean = executor.shutdown(timeout_sec=10.0)
        node.destroy_node()
        rclpy.try_shutdown()
    if node.worker.alive or not clean:
        # A window left behind still runs on the worker thread, inside torch: finalising
        # the interpreter would unwind its C++ frames ("terminate called without an
        # active exception", exit -6). Everything is saved: leave without finalising.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
