"""A child process killed half-way through writing a file (issue 16: "a kill during the
write turned a good 516,917-byte grid into 0 bytes"), at a state rather than a time."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

_STALL = """
import io, os, time
real_open = io.open
class Stall:
    def __init__(self, f):
        self._f = f
    def write(self, data):
        if bytes(data[:2]) == b"P5":  # a grid image: write half of it, wait for the kill
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            os.fsync(self._f.fileno())
            print("MID-WRITE", flush=True)
            time.sleep(600)
        return self._f.write(data)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self._f.__exit__(*exc)
    def __getattr__(self, name):
        return getattr(self._f, name)
def stalling_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    return Stall(f) if "w" in mode else f
io.open = stalling_open  # what open(), Path.write_bytes and os.fdopen all call
"""


def kill_mid_write(script: str, timeout: float = 300.0) -> None:
    """Run ``script`` in a child whose file writes stall half-way into a PGM image (the
    occupancy grid); SIGKILL the child once it is there."""
    args = [sys.executable, "-c", _STALL + textwrap.dedent(script)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()  # the hang guard: the child's own sleep(600)
        assert line.strip() == "MID-WRITE", line + proc.stdout.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout)
