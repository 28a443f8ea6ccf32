"""Child processes for the cross-process tools (demo, soak): start a module, stop it.

The node and the camera run as separate Python processes, as on a robot, so the tools
exercise DDS and the node's signal handling for real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def spawn_module(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m <args>`` with unbuffered output into ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def stop_process(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGINT (the node saves and exits cleanly), SIGKILL after ``timeout``; exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def rss_bytes(pid: int) -> int:
    """Resident set size of a running process (Linux ``/proc/<pid>/status`` VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


class SyntheticSession:
    """The mapping node and the synthetic camera in their own processes, watched over DDS.

    The demo and the soak both run this: start the node (bundled ``synthetic`` config plus
    ``params``), wait for its status, stream the drive, wait until every frame is handled
    (or nothing more arrives), save through the node's service, stop everything.
    """

    def __init__(
        self, out: Path, frames: int, params: dict[str, str], name: str, laps: float = 1.15
    ) -> None:
        import rclpy
        from scal3r_ros_msgs.msg import MappingStatus

        self.out, self.frames, self.laps = out, frames, laps
        args = [
            "scal3r_ros.ros.node",
            "--config",
            "synthetic",
            "--ros-args",
            "-p",
            f"oracle_frames:={frames}",
            "-p",
            f"oracle_laps:={laps}",
            "-p",
            f"output_dir:={out}",
            "-p",
            "save_on_shutdown:=false",
        ]
        for key, value in params.items():
            args += ["-p", f"{key}:={value}"]
        self.node = spawn_module(args, out / "node.log")
        self.camera: subprocess.Popen | None = None
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.watcher = rclpy.create_node(name, context=self.context)
        self.status: list = []  # the newest MappingStatus only
        self.watcher.create_subscription(
            MappingStatus,
            "/scal3r_mapping/status",
            lambda m: self.status.__setitem__(slice(None), [m]),
            10,
        )
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.watcher)
        self._received = (-1, 0.0)  # frames received, when that last changed

    def spin_until(self, cond, limit: float, what: str, on_tick=None) -> None:
        import time

        deadline = time.monotonic() + limit
        while not cond():
            self.executor.spin_once(timeout_sec=0.05)
            if not self.context.ok():  # rclpy took a SIGINT: let the caller clean up
                raise KeyboardInterrupt
            if self.node.poll() is not None:
                log = (self.out / "node.log").read_text()[-2000:]
                raise RuntimeError(f"the node exited while {what}:\n{log}")
            if on_tick is not None:
                on_tick()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out {what}; see {self.out / 'node.log'}")

    def start(self, rate: float) -> None:
        """Wait for the node, then start the camera."""
        self.spin_until(lambda: bool(self.status), 120, "waiting for the node to start")
        self.camera = spawn_module(
            [
                "scal3r_ros.tools.synthetic_camera",
                "--frames",
                str(self.frames),
                "--rate",
                str(rate),
                "--reliable",
                "--laps",
                str(self.laps),
            ],
            self.out / "camera.log",
        )

    def streamed(self, settle_s: float = 10.0) -> bool:
        """Every frame handled; or the camera is done and nothing arrived for ``settle_s``
        (frames lost in transport never arrive)."""
        import time

        st = self.status[-1]
        if st.frames_received != self._received[0]:
            self._received = (st.frames_received, time.monotonic())
        if self.camera is None or self.camera.poll() is None or st.queue_length:
            return False
        handled = st.frames_processed + st.frames_dropped
        settled = time.monotonic() - self._received[1] > settle_s
        return handled >= self.frames or (settled and handled >= st.frames_received)

    def save(self, name: str, limit: float = 300.0):
        """Ask the node to save map and trajectory into ``out/name``; its response."""
        from scal3r_ros_msgs.srv import SaveMap

        client = self.watcher.create_client(SaveMap, "/scal3r_mapping/save_map")
        client.wait_for_service(timeout_sec=30)
        future = client.call_async(SaveMap.Request(name=name, save_map=True, save_trajectory=True))
        self.spin_until(future.done, limit, "saving the map")
        return future.result()

    def close(self) -> int:
        """Stop camera and node (SIGINT); the node's exit code."""
        import rclpy

        if self.camera is not None:
            stop_process(self.camera)
        code = stop_process(self.node)
        self.executor.shutdown()
        self.watcher.destroy_node()
        rclpy.try_shutdown(context=self.context)
        return code
