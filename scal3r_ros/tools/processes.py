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
    return subprocess.Popen([sys.executable, "-m", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))  # fmt: skip


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
