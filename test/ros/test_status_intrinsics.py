"""~/status and /diagnostics report the newest window's intrinsics (source, predicted /
known focal ratio, fallbacks); the log warns once when the ratio leaves 1 +- focal_ratio_warn
and notes once when it is back. Driven by a real engine run (oracle with a 20 % focal
error) through `StatusOutputs` on a stand-in node."""

from __future__ import annotations

import pytest
from helpers import make_drive, push_and_collect
from rclpy.time import Time

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import StatsUpdate
from scal3r_ros.mapping.planning.scale import ScaleEstimate
from scal3r_ros.mapping.worker import WorkerStats
from scal3r_ros.ros.outputs import ScaleUpdate
from scal3r_ros.ros.params import NodeConfig

pytestmark = pytest.mark.ros


class _Node:
    """What `StatusOutputs` uses of a node: publishers (recorded), a clock, a logger."""

    def __init__(self) -> None:
        self.published: dict[str, list] = {}
        self.log: list[tuple[str, str]] = []

    def create_publisher(self, msg_type, topic, profile):
        sent = self.published.setdefault(topic, [])
        return type("Pub", (), {"publish": lambda _self, msg: sent.append(msg)})()

    def get_clock(self):
        return type("Clock", (), {"now": lambda _self: Time(nanoseconds=10**18)})()

    def get_logger(self):
        log = self.log

        class Logger:
            def warning(self, text: str, **_kw) -> None:
                log.append(("warning", text))

            def info(self, text: str, **_kw) -> None:
                log.append(("info", text))

        return Logger()


def _status(**params):
    from scal3r_ros.ros.outputs.status import StatusOutputs

    node = _Node()
    est = ScaleEstimate(1.0, 0.0, "none", "no scale source", False)
    out = StatusOutputs(
        node,
        NodeConfig(progress_log_period=0.0, **params),
        "oracle",
        "cpu",
        lambda: (WorkerStats(chunks=1), 0),
        lambda: ({}, {}),
        ScaleUpdate(-1, est),
    )
    return node, out


@pytest.fixture(scope="module")
def events():
    drive = make_drive(n_frames=40)
    eng = MappingEngine(
        EngineConfig.low_latency(loop_closure=False, intrinsics="camera_info"),
        OracleBackend(drive, OracleConfig(focal_error=1.2)),
    )
    return push_and_collect(eng, drive)


def test_status_and_diagnostics_carry_the_newest_windows_intrinsics(events):
    node, out = _status(intrinsics="camera_info")
    msg, _, _ = out.snapshot()
    assert (msg.intrinsics_source, msg.focal_ratio) == ("", 0.0)  # no window yet
    out.on_events(events)
    msg, _, _ = out.snapshot()
    assert msg.intrinsics_source == "camera_info"
    assert msg.focal_ratio == pytest.approx(1.2, rel=1e-6)
    out.publish()
    diag = node.published["/diagnostics"][-1].status[0]
    values = {kv.key: kv.value for kv in diag.values}
    assert values["intrinsics_source"] == "camera_info" and values["focal_ratio"] == "1.2000"
    assert values["intrinsics_fallbacks"] == "0"
    assert diag.level == diag.WARN and "focal length 1.200" in diag.message
    assert node.published["~/status"][-1].focal_ratio == pytest.approx(1.2, rel=1e-6)


def test_the_log_warns_once_per_transition(events):
    node, out = _status()
    stats = [e for e in events if isinstance(e, StatsUpdate)]
    assert len(stats) >= 3
    out.on_events(events)  # every window 1.2: one warning
    warnings = [t for level, t in node.log if level == "warning"]
    assert len(warnings) == 1 and "1.200" in warnings[0] and "focal_ratio_warn" in warnings[0]

    def window(ratio: float) -> StatsUpdate:
        return StatsUpdate(9, {}, {}, "camera_info", ratio, 0)

    out.on_events([window(1.05), window(0.97)])  # back within 0.15: one note
    assert [level for level, _ in node.log] == ["warning", "info"]
    out.on_events([window(0.0)])  # a window without a known K: no news either way
    out.on_events([window(0.8)])
    assert [level for level, _ in node.log] == ["warning", "info", "warning"]
    msg, _, _ = out.snapshot()
    assert msg.focal_ratio == pytest.approx(0.8)


def test_no_warning_when_off_or_within(events):
    node, out = _status(focal_ratio_warn=0.0)
    out.on_events(events)
    node2, out2 = _status(focal_ratio_warn=0.25)
    out2.on_events(events)
    assert node.log == [] and node2.log == []
    out2.publish()
    diag = node2.published["/diagnostics"][-1].status[0]
    assert diag.level == diag.OK
