"""InputGate (stamps, one size per stream, time jumps), CameraInfo checks and the network
input size after a reset: the input rules without DDS (issue 16, items 6, 8, 9, 10)."""

from __future__ import annotations

import numpy as np
import pytest

from scal3r_ros.ros.input_checks import MAX_CAMERAS, InputGate, StampPolicy, camera_matrix

S = 1_000_000_000  # ns per second
T0 = 1_700_000_000  # a plausible stamp [s]
NOW = (T0 + 3600) * S  # the node's clock: an hour after the stream's stamps


def image(w: int = 160, h: int = 48) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


class Gate:
    """An InputGate whose callbacks record what would reach the worker."""

    def __init__(self, **policy) -> None:
        self.events: list[tuple] = []  # ("frame", cam, stamp_ns) | ("reset",)
        self.drops: list[tuple[str, str]] = []
        self.gate = InputGate(
            StampPolicy(**{"min_frames": 3, **policy}),
            submit=lambda cam, stamp, img: self.events.append(("frame", cam, stamp)),
            reset=lambda msg: self.events.append(("reset",)),
            drop=lambda reason, detail: self.drops.append((reason, detail)),
        )

    def send(self, t: float, cam: str = "cam", img: np.ndarray | None = None, now: int = NOW):
        ns = round(t * S)
        self.gate.offer(cam, ns // S, ns % S, image() if img is None else img, now)

    def frames(self) -> list[float]:
        return [e[2] / S for e in self.events if e[0] == "frame"]

    def resets(self) -> int:
        return sum(e[0] == "reset" for e in self.events)

    def reasons(self) -> list[str]:
        return [r for r, _ in self.drops]


def stream(g: Gate, start: float, n: int, cam: str = "cam", dt: float = 0.1) -> list[float]:
    ts = [round(start + i * dt, 3) for i in range(n)]
    for t in ts:
        g.send(t, cam)
    return ts


# ------------------------------------------------------------------ stamps (item 8)
def test_a_stream_starts_after_min_frames_in_a_row_and_nothing_is_lost():
    g = Gate()
    g.send(T0)
    g.send(T0 + 0.1)
    assert g.frames() == [] and g.gate.held == 2  # held, not dropped
    ts = [T0, T0 + 0.1] + stream(g, T0 + 0.2, 5)
    assert g.frames() == ts and g.drops == [] and g.gate.held == 0


@pytest.mark.parametrize("bad", [T0 + 4.8, T0 - 1000.0, T0 + 500.0, 1.0])
def test_one_bad_stamp_never_resets_the_map(bad):
    """A single frame 0.1 s older, much older, far ahead (within the clock check) or at
    1 s: dropped as stamp_outlier; the stream goes on, no reset (it was -56,848 points)."""
    g = Gate(on_time_jump="reset")
    ts = stream(g, T0, 50)
    g.send(bad)
    ts += stream(g, T0 + 5.0, 20)
    assert g.resets() == 0
    assert g.frames() == ts
    assert g.reasons() == ["stamp_outlier"]


@pytest.mark.parametrize("sec, nanosec", [(0, 0), (-1, 0), (T0, 2**32 - 1), (T0, S)])
def test_invalid_stamps_are_dropped_and_counted(sec, nanosec):
    g = Gate()
    ts = stream(g, T0, 10)
    g.gate.offer("cam", sec, nanosec, image(), NOW)
    ts += stream(g, T0 + 1.0, 10)
    assert g.frames() == ts and g.resets() == 0
    assert g.reasons() == ["invalid_stamp"]


@pytest.mark.parametrize("policy", ["reset", "drop"])
def test_a_far_future_stamp_is_dropped_and_does_not_poison_later_frames(policy):
    g = Gate(on_time_jump=policy, max_future_s=300.0)
    ts = stream(g, T0, 10)
    g.send(T0 + 10 * 365 * 86400.0)  # years ahead of the node's clock
    g.send(NOW / S + 299.0)  # ahead, within the clock check: an outlier of the stream
    ts += stream(g, T0 + 1.0, 10)
    assert g.frames() == ts and g.resets() == 0
    assert g.reasons() == ["future_stamp", "stamp_outlier"]


def test_the_clock_check_waits_for_a_running_clock():
    ts = [T0 + i * 0.1 for i in range(5)]
    g = Gate(max_future_s=300.0)
    for t in ts:
        g.send(t, now=0)  # sim time before the first /clock: no reference yet
    assert g.frames() == ts
    g = Gate(max_future_s=0.0)  # off
    for t in ts:
        g.send(t, now=S)
    assert g.frames() == ts


def test_a_bag_loop_resets_once_after_min_frames_and_keeps_them():
    g = Gate(on_time_jump="reset")
    first = stream(g, T0, 40)
    again = stream(g, T0, 40)  # the bag starts over
    assert g.resets() == 1 and g.drops == []
    reset_at = g.events.index(("reset",))
    assert [e[2] / S for e in g.events[:reset_at]] == first
    assert [e[2] / S for e in g.events[reset_at + 1 :]] == again  # the evidence is kept


def test_with_drop_a_bag_loop_drops_the_older_frames_only():
    g = Gate(on_time_jump="drop")
    first = stream(g, T0, 40)
    stream(g, T0, 39)  # the replay: older than the last stamp
    later = stream(g, T0 + 10.0, 5)
    assert g.resets() == 0 and g.frames() == first + later
    assert g.reasons() == ["stamp_backwards"] * 39


def test_a_clock_jump_back_is_evidence_by_itself():
    g = Gate(on_time_jump="reset")
    first = stream(g, T0, 20)
    g.gate.clock_jumped_back()
    g.send(T0)
    assert g.resets() == 1 and g.frames() == [*first, T0]
    g.send(T0 + 0.1)
    g.send(T0 - 50.0)  # the clock jump was used: one older frame is an outlier again
    g.send(T0 + 0.2)
    assert g.resets() == 1 and g.reasons() == ["stamp_outlier"]


def test_a_forward_gap_goes_on_after_min_frames_without_losing_them():
    g = Gate(max_gap_s=10.0)
    ts = stream(g, T0, 10)
    ts += stream(g, T0 + 60.0, 10)  # the camera paused for a minute
    assert g.frames() == ts and g.drops == [] and g.resets() == 0


def test_a_lone_bad_first_stamp_does_not_become_the_time_base():
    for policy in ("reset", "drop"):
        g = Gate(on_time_jump=policy)
        g.send(T0 + 500.0)  # first frame: stamped 500 s ahead of the stream
        ts = stream(g, T0, 10)
        assert g.frames() == ts and g.resets() == 0, policy
        assert g.reasons() == ["stamp_outlier"]


def test_duplicates_are_dropped():
    g = Gate()
    ts = stream(g, T0, 5)
    g.send(ts[-1])
    assert g.frames() == ts and g.reasons() == ["duplicate_stamp"]


def test_min_frames_1_is_the_old_immediate_rule():
    g = Gate(on_time_jump="reset", min_frames=1)
    stream(g, T0, 5)
    g.send(T0 + 0.05)  # a single older frame resets at once
    assert g.resets() == 1


def test_cameras_keep_their_own_time_base_and_jump_together():
    g = Gate(on_time_jump="reset")
    for i in range(10):  # stereo: the same stamps on two frame_ids
        g.send(T0 + i * 0.1, "left")
        g.send(T0 + i * 0.1, "right")
    assert len(g.frames()) == 20 and g.drops == []
    for i in range(10):  # both loop back
        g.send(T0 + i * 0.1, "left")
        g.send(T0 + i * 0.1, "right")
    assert g.resets() == 1 and len(g.frames()) == 40 and g.drops == []


def test_frame_ids_are_bounded():
    g = Gate(min_frames=1)
    for k in range(MAX_CAMERAS + 3):
        g.send(T0 + k * 0.01, f"cam{k}")
    assert len(g.frames()) == MAX_CAMERAS
    assert g.reasons() == ["too_many_cameras"] * 3


# ------------------------------------------------------------------ sizes (items 6, 9)
def test_two_frame_ids_of_different_sizes_on_one_topic_keep_the_first_size():
    g = Gate()
    for i in range(20):  # interleaved on one topic
        t = T0 + i * 0.1
        g.send(t, "front", image(160, 48))
        g.send(t, "other", image(64, 48))
    assert g.frames() == [round(T0 + i * 0.1, 3) for i in range(20)]
    assert {e[1] for e in g.events} == {"front"}
    assert g.reasons() == ["size_changed"] * 20
    assert "set by frame_id 'front'" in g.drops[-1][1]


def test_a_lone_odd_first_frame_does_not_fix_the_size():
    g = Gate()
    g.send(T0, "cam", image(100, 100))  # plausible size, but not the camera's
    ts = stream(g, T0 + 0.1, 10)
    assert g.frames() == ts and g.gate.size == (160, 48)
    assert g.reasons() == ["size_changed"]


def test_reset_forgets_the_size_and_the_stamps():
    g = Gate()
    stream(g, T0, 5)
    g.send(T0 + 0.5, "cam", image(320, 96))
    assert g.reasons() == ["size_changed"]
    g.gate.reset()
    assert g.gate.size is None
    for i in range(5):  # the camera's new resolution, and stamps from anywhere
        g.send(T0 - 100.0 + i * 0.1, "cam", image(320, 96))
    assert g.gate.size == (320, 96) and len(g.frames()) == 10 and g.resets() == 0


def test_the_policy_can_change_while_running():
    g = Gate(on_time_jump="reset")
    stream(g, T0, 10)
    g.gate.policy = StampPolicy(on_time_jump="drop", min_frames=3)
    stream(g, T0, 5)
    assert g.resets() == 0 and g.reasons() == ["stamp_backwards"] * 5


# ------------------------------------------------------------------ CameraInfo (item 10)
K_GOOD = [500.0, 0.0, 80.0, 0.0, 500.0, 24.0, 0.0, 0.0, 1.0]


def test_a_plausible_camera_matrix_is_accepted():
    np.testing.assert_array_equal(camera_matrix(K_GOOD, 160, 48), np.reshape(K_GOOD, (3, 3)))
    camera_matrix(K_GOOD, 0, 0)  # size not filled in: absolute bounds


@pytest.mark.parametrize(
    "change, match",
    [
        ({0: float("nan")}, "not finite"),
        ({8: 0.0}, "not a camera matrix"),  # a zero last row
        ({6: 0.0, 7: 0.0, 8: 0.0}, "not a camera matrix"),
        ({6: 1.0}, "not a camera matrix"),
        ({3: 5.0}, "not a camera matrix"),
        ({0: 1e-300}, "fx = 1e-300"),
        ({4: -500.0}, "fy"),
        ({0: 1e9, 4: 1e9}, "implausible"),
        ({0: 2000.0}, "fx/fy"),
    ],
)
def test_implausible_camera_matrices_are_refused(change, match):
    k = list(K_GOOD)
    for i, v in change.items():
        k[i] = v
    with pytest.raises(ValueError, match=match):
        camera_matrix(k, 160, 48)
    with pytest.raises(ValueError):
        camera_matrix(k[:8], 160, 48)


# ------------------------------------------------------------------ network size (item 6)
def test_engine_reset_recomputes_the_network_input_size():
    """After ~/reset the next frame decides the network input size again (a 1x60 first
    frame gave 31080x518 for the whole run)."""
    from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig
    from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
    from scal3r_ros.mapping.events import Frame
    from scal3r_ros.mapping.windowing import WindowConfig

    backend = Scal3RBackend.from_config("tiny", Scal3RBackendConfig(device="cpu", max_size=56))
    engine = MappingEngine(EngineConfig(window=WindowConfig(chunk_size=4, overlap=2)), backend)
    engine.push(Frame(1, "cam", np.zeros((160, 20, 3), np.uint8)))  # tall
    tall = backend.target_hw
    engine.reset()
    engine.push(Frame(2, "cam", np.zeros((48, 160, 3), np.uint8)))  # wide
    assert tall[0] > tall[1] and backend.target_hw[0] < backend.target_hw[1]


# ====================================================================== ImageInput
class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, text: str, throttle_duration_sec: float = 0.0) -> None:
        self.lines.append(text)


@pytest.mark.ros
def test_one_image_handler_per_decoder_counts_drops_and_submits_with_intrinsics():
    """Raw and compressed images share one handler (a decode function each): what does
    not decode is a counted drop, the rest reaches ``submit`` with its camera's K."""
    from sensor_msgs.msg import CameraInfo, CompressedImage

    from scal3r_ros.ros.conversions import (
        DEFAULT_LIMITS,
        compressed_to_rgb,
        image_to_rgb,
        rgb_to_image,
    )
    from scal3r_ros.ros.input_checks import ImageInput

    got, resets, log = [], [], _Log()
    inputs = ImageInput(
        StampPolicy(),
        DEFAULT_LIMITS,
        lambda f: got.append(f) or len(got) < 2,
        lambda: resets.append(1),
        lambda: NOW,
        log,
        "queue full",
    )
    on_raw, on_compressed = inputs.callback(image_to_rgb), inputs.callback(compressed_to_rgb)
    info = CameraInfo(width=160, height=48, k=[100.0, 0, 80, 0, 100.0, 24, 0, 0, 1])
    info.header.frame_id = "cam"
    inputs.on_camera_info(info)
    for k in range(3):
        msg = rgb_to_image(image(), frame_id="cam")
        msg.header.stamp.sec, msg.header.stamp.nanosec = T0 + k, 0
        on_raw(msg)
    bad = CompressedImage(format="jpeg", data=b"not a jpeg")
    bad.header.frame_id = "cam"
    on_compressed(bad)
    assert [f.stamp_ns for f in got] == [(T0 + k) * S for k in range(3)]
    assert all(f.intrinsics is not None and f.intrinsics[0, 0] == 100.0 for f in got)
    drops, notices = inputs.counts()
    assert sum(drops.values()) == 1 and notices == {} and not resets
    assert log.lines.count("queue full") == 2  # submit said False for the 2nd and 3rd
