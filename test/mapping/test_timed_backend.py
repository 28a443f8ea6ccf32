"""The timed stand-in backend: same predictions as the backend it wraps, a floor on the time."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.backends.factory import build_engine
from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.backends.timed import TimedBackend
from scal3r_ros.mapping.engine import EngineConfig
from scal3r_ros.mapping.windowing import WindowConfig


def _poses(backend) -> np.ndarray:
    drive = make_drive(40)
    engine = build_engine(EngineConfig(window=WindowConfig(16, 8), loop_closure=False), backend)
    push_and_collect(engine, drive)
    return engine.poses()[2]


def test_same_poses_as_the_wrapped_backend_and_at_least_the_given_time() -> None:
    drive = make_drive(40)
    plain = _poses(OracleBackend(drive, OracleConfig(seed=3)))
    timed = TimedBackend(OracleBackend(make_drive(40), OracleConfig(seed=3)), network_s=0.05)
    t0 = time.perf_counter()
    got = _poses(timed)
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(got, plain)
    assert timed.calls >= 4
    assert elapsed >= 0.05 * timed.calls  # a floor, never an upper bound


class InstantBackend:
    """Answers at once: the timed wrapper's own wait is all the time a call takes."""

    def infer(self, chunk, gcs_state):
        return "prediction"


def test_the_wait_leaves_the_cpu_to_other_threads() -> None:
    """The wait sleeps (as a thread waiting for a GPU): a thread beside it keeps running."""
    timed = TimedBackend(InstantBackend(), network_s=1.0)
    spins = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal spins
        while not done.is_set():
            spins += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        t0 = time.perf_counter()
        assert timed.infer(None, None) == "prediction"
        elapsed = time.perf_counter() - t0
    finally:
        done.set()
        t.join()
    assert elapsed >= 1.0 and timed.slept_s > 0.0 and timed.calls == 1
    assert spins > 1000


def test_negative_time_is_refused() -> None:
    with pytest.raises(ValueError, match="network time"):
        TimedBackend(OracleBackend(make_drive(8), OracleConfig()), network_s=-1.0)
