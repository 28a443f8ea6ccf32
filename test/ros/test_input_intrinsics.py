"""The node's input side of known intrinsics: CameraInfo with distortion is undistorted
before the network (maps made once per calibration) and the frames carry the undistorted
image's K; unknown models pass distorted (warned once, counted); ``camera_k`` stands in
for a camera without CameraInfo. In process, through `ImageInput` as the node wires it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from scal3r_ros.mapping.undistort import Calibration, Undistorter, to_pixel_edges
from scal3r_ros.ros.input_checks import StampPolicy

pytestmark = pytest.mark.ros
S = 1_000_000_000
T0 = 1_700_000_000
NOW = (T0 + 3600) * S
W, H = 160, 120
K = [110.0, 0.0, 79.5, 0.0, 112.0, 59.5, 0.0, 0.0, 1.0]
D = [-0.3, 0.1, 0.001, -0.001, 0.0]
P = [100.0, 0.0, 80.0, 0.0, 0.0, 101.0, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0]


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, text: str, throttle_duration_sec: float = 0.0) -> None:
        self.lines.append(text)


def _inputs(camera_k=()):
    from scal3r_ros.ros.conversions import DEFAULT_LIMITS
    from scal3r_ros.ros.input_checks import ImageInput

    got, log = [], _Log()
    inputs = ImageInput(
        StampPolicy(min_frames=1),
        DEFAULT_LIMITS,
        lambda f: got.append(f) or True,
        lambda: None,
        lambda: NOW,
        log,
        "queue full",
        camera_k=camera_k,
    )
    return inputs, got, log


def _info(cam: str = "cam", d=D, model: str = "plumb_bob", w: int = W, h: int = H):
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(width=w, height=h, k=K, d=list(d), distortion_model=model, p=P)
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.header.frame_id = cam
    return info


def _pattern() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    checks = ((xx // 10 + yy // 10) % 2 * 200 + 30).astype(np.uint8)
    return np.stack([checks, np.uint8(255) - checks, checks // 2], axis=-1)


def _send(inputs, k: int, cam: str = "cam", img: np.ndarray | None = None) -> None:
    from scal3r_ros.ros.conversions import image_to_rgb, rgb_to_image

    msg = rgb_to_image(_pattern() if img is None else img, frame_id=cam)
    msg.header.stamp.sec, msg.header.stamp.nanosec = T0 + k, 0
    inputs.callback(image_to_rgb)(msg)


def test_a_distorted_camera_is_undistorted_once_per_calibration(monkeypatch):
    want = Undistorter(Calibration.of(W, H, K, D, "plumb_bob", np.eye(3).ravel(), P))(_pattern())
    calls = []
    real = cv2.initUndistortRectifyMap
    monkeypatch.setattr(
        cv2, "initUndistortRectifyMap", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    inputs, got, log = _inputs()
    for k in range(5):  # CameraInfo comes with every image
        inputs.on_camera_info(_info())
        _send(inputs, k)
    assert len(got) == 5 and len(calls) == 1  # the maps: once
    assert not np.array_equal(want, _pattern())
    for f in got:
        np.testing.assert_array_equal(f.image, want)
        # the undistorted image's K: P's 3x3 (R is the identity), in the engine's convention
        np.testing.assert_array_equal(f.intrinsics, to_pixel_edges(np.reshape(P, (3, 4))[:, :3]))
    inputs.on_camera_info(_info(d=[-0.2, 0.05, 0.0, 0.0, 0.0]))  # recalibrated: new maps
    _send(inputs, 5)
    assert len(calls) == 2 and not np.array_equal(got[-1].image, want)
    assert inputs.counts() == ({}, {}) and log.lines == []


def test_without_distortion_images_pass_with_their_k():
    inputs, got, _ = _inputs()
    inputs.on_camera_info(_info(d=[0.0] * 5))
    _send(inputs, 0)
    np.testing.assert_array_equal(got[0].image, _pattern())
    np.testing.assert_array_equal(got[0].intrinsics, to_pixel_edges(np.reshape(K, (3, 3))))


def test_fisheye_cameras_are_undistorted_with_the_fisheye_model():
    inputs, got, _ = _inputs()
    d = [-0.02, 0.01, -0.003, 0.001]
    inputs.on_camera_info(_info(d=d, model="equidistant"))
    _send(inputs, 0)
    want = Undistorter(Calibration.of(W, H, K, d, "equidistant", np.eye(3).ravel(), P))
    np.testing.assert_array_equal(got[0].image, want(_pattern()))


def test_an_unknown_distortion_model_is_warned_once_and_its_frames_counted():
    inputs, got, log = _inputs()
    for k in range(3):
        inputs.on_camera_info(_info(model="kannala_brandt"))
        _send(inputs, k)
    assert len(got) == 3 and all(np.array_equal(f.image, _pattern()) for f in got)
    # the distorted camera's own K: the best there is
    np.testing.assert_array_equal(got[0].intrinsics, to_pixel_edges(np.reshape(K, (3, 3))))
    assert len(log.lines) == 1 and "'kannala_brandt'" in log.lines[0]
    assert "distorted_as_is" in log.lines[0]
    assert inputs.counts() == ({}, {"distorted_as_is": 3})


@pytest.mark.parametrize(
    ("d", "p", "why"),
    [
        ([float("nan"), 0.0, 0.0, 0.0, 0.0], P, "not finite"),
        (D + [0.1], P, "takes 4, 5, 8, 12 or 14"),
        (D, [0.01, 0, 80, 0, 0, 0.01, 60, 0, 0, 0, 1, 0], "fx = 0.01 px is implausible"),
    ],
)
def test_a_calibration_that_cannot_be_undone_never_stops_the_frames(d, p, why):
    inputs, got, log = _inputs()
    info = _info(d=d)
    info.p = p
    inputs.on_camera_info(info)
    _send(inputs, 0)
    np.testing.assert_array_equal(got[0].image, _pattern())
    assert len(log.lines) == 1 and why in log.lines[0]
    assert inputs.counts() == ({}, {"distorted_as_is": 1})


def test_camera_k_stands_in_for_cameras_without_camera_info():
    inputs, got, _ = _inputs(camera_k=[90.0, 91.0, 79.5, 59.5])
    inputs.on_camera_info(_info("left", d=[0.0] * 5))
    _send(inputs, 0, "left")
    _send(inputs, 1, "right")
    np.testing.assert_array_equal(got[0].intrinsics, to_pixel_edges(np.reshape(K, (3, 3))))
    want = np.array([[90.0, 0, 80.0], [0, 91.0, 60.0], [0, 0, 1]])
    np.testing.assert_array_equal(got[1].intrinsics, want)


def test_camera_info_of_another_size_gives_no_k_and_no_undistortion():
    inputs, got, _ = _inputs(camera_k=[90.0, 91.0, 79.5, 59.5])
    inputs.on_camera_info(_info(w=2 * W, h=2 * H))
    _send(inputs, 0)
    assert got[0].intrinsics is None  # not camera_k either: this camera has a CameraInfo
    np.testing.assert_array_equal(got[0].image, _pattern())


def test_a_bad_camera_k_is_refused_at_start():
    from scal3r_ros.ros.input_checks import camera_k_matrix

    with pytest.raises(ValueError, match="4 numbers"):
        camera_k_matrix([100.0, 100.0, 80.0])
    with pytest.raises(ValueError, match="fy"):
        camera_k_matrix([100.0, -100.0, 80.0, 60.0])
    assert camera_k_matrix([]) is None
    from scal3r_ros.ros.params import NodeConfig

    for k, match in (([1.0, 2.0, 3.0], "camera_k: needs 4 numbers"), ([0.0] * 4, "camera_k: fx")):
        with pytest.raises(ValueError, match=match):
            NodeConfig(camera_k=k).validate()
    with pytest.raises(ValueError, match="intrinsics must be one of"):
        NodeConfig(intrinsics="calibrated").validate()
    NodeConfig(camera_k=[500.0, 500.0, 320.0, 240.0], intrinsics="camera_info").validate()
