"""Helpers for cross-process node tests: start processes, record topics, call services."""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path as FsPath

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry, Path
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from scal3r_ros_msgs.msg import MappingStatus
from sensor_msgs.msg import PointCloud2
from tf2_msgs.msg import TFMessage

from scal3r_ros.tools.processes import spawn_module, stop_process

NODE = "/scal3r_mapping"


def start(args: list[str], log_path) -> subprocess.Popen:
    return spawn_module(args, log_path)


def stop(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGINT, SIGKILL after ``timeout``: longer than the node's own bound on a stop
    (``shutdown_window_wait``, 30 s, then the save), so only a hang is killed."""
    return stop_process(proc, timeout)


def node_args(output_dir, **params) -> list[str]:
    args = ["scal3r_ros.ros.node", "--ros-args", "-p", f"output_dir:={output_dir}"]
    for k, v in params.items():
        if isinstance(v, list):
            v = "[" + ",".join(f"'{x}'" if isinstance(x, str) else str(x) for x in v) + "]"
        args += ["-p", f"{k}:={v}"]
    return args


# what the cross-process tests run the node with: the oracle (no checkpoint), a reliable and
# deep input (no frame lost to QoS on a loaded machine)
ORACLE_NODE = {"backend": "oracle", "input_qos": "reliable", "input_qos_depth": 200}


def oracle_node_args(output_dir, **params) -> list[str]:
    """`node_args` with `ORACLE_NODE` (``params`` add to or override it)."""
    return node_args(output_dir, **{**ORACLE_NODE, **params})


def start_mapping(
    rec: Recorder, args: list[str], log_dir: FsPath, camera: list[str], up_timeout: float = 60.0
) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Start the node (``args``), wait until ``rec`` hears its first status, then start the
    synthetic camera with reliable QoS and ``camera``'s arguments; logs go to
    ``log_dir/node.log`` and ``log_dir/camera.log``. Returns (node, camera); if the node
    does not come up, it is stopped and the assertion names its log."""
    node = start(args, log_dir / "node.log")
    try:
        assert rec.spin_until(lambda: rec.msgs[f"{NODE}/status"], up_timeout, [node]), (
            "node did not come up:\n" + (log_dir / "node.log").read_text()
        )
        cam = start(
            ["scal3r_ros.tools.synthetic_camera", "--reliable", *camera], log_dir / "camera.log"
        )
    except BaseException:
        stop(node)
        raise
    return node, cam


@contextmanager
def mapping_run(
    rec: Recorder, args: list[str], log_dir: FsPath, camera: list[str], up_timeout: float = 60.0
) -> Iterator[subprocess.Popen]:
    """``start_mapping`` as a context: yields the node; on exit stops the camera, then the
    node if it still runs."""
    node, cam = start_mapping(rec, args, log_dir, camera, up_timeout)
    try:
        yield node
    finally:
        stop(cam)
        if node.poll() is None:
            stop(node)


class Recorder:
    """A node in the test process that records every output of the mapping node."""

    LATCHED = QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )

    def __init__(self, name: str = "recorder") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.msgs: dict[str, list] = defaultdict(list)
        rel = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        for topic, typ, qos in (
            ("/tf", TFMessage, rel),
            ("/tf_static", TFMessage, self.LATCHED),
            (f"{NODE}/cloud", PointCloud2, rel),
            (f"{NODE}/map", PointCloud2, self.LATCHED),
            (f"{NODE}/odometry", Odometry, rel),
            (f"{NODE}/path", Path, self.LATCHED),
            (f"{NODE}/status", MappingStatus, rel),
            ("/diagnostics", DiagnosticArray, rel),
        ):
            self.subscribe(topic, typ, qos)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def subscribe(self, topic: str, typ, qos=None) -> None:
        qos = qos or QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(typ, topic, lambda m: self.msgs[topic].append(m), qos)

    def spin_until(self, cond: Callable[[], bool], timeout: float, procs=()) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
            if cond():
                return True
            if any(p.poll() not in (None, 0) for p in procs):
                return False
        return False

    def last(self, topic: str):
        return self.msgs[topic][-1] if self.msgs[topic] else None

    def call(self, srv_type, name: str, request, timeout: float = 60.0):
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} not available")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        if not future.done():
            raise TimeoutError(f"service {name} did not answer")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
