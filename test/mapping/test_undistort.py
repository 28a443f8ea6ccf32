"""Undistortion before the network (``mapping.undistort``): images distorted with a known
model come back to the pinhole camera of the chosen matrix, within a fraction of a pixel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from scal3r_ros.mapping.undistort import (
    Calibration,
    Undistorter,
    UnknownDistortion,
    to_pixel_edges,
)

W, H = 320, 240
K = np.array([[220.0, 0.0, 161.3], [0.0, 225.0, 118.6], [0.0, 0.0, 1.0]])
MODELS = {
    "plumb_bob": [-0.28, 0.09, 0.001, -0.0015, -0.012],
    "rational_polynomial": [-0.25, 0.07, 0.0008, -0.001, 0.01, 0.02, -0.01, 0.004],
    "equidistant": [-0.03, 0.01, -0.004, 0.001],
}


def _points() -> np.ndarray:
    """3-D points on a grid in front of the camera whose images fill the frame."""
    u, v = np.meshgrid(np.linspace(30, W - 30, 9), np.linspace(25, H - 25, 7))
    rays = np.linalg.inv(K) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    return (rays * 5.0).T.copy()


def _project(pts: np.ndarray, model: str, D: list[float]) -> np.ndarray:
    """Where the distorted camera sees ``pts`` (pixel centres at integers, as OpenCV)."""
    r, t = np.zeros(3), np.zeros(3)
    if model == "equidistant":
        uv, _ = cv2.fisheye.projectPoints(pts[None], r, t, K, np.array(D))
    else:
        uv, _ = cv2.projectPoints(pts, r, t, K, np.array(D))
    return uv.reshape(-1, 2)


def _blobs(centres: np.ndarray, sigma: float = 1.6) -> np.ndarray:
    """An RGB image with a Gaussian blob at every centre (OpenCV pixel convention)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W))
    for x, y in centres:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroids(image: np.ndarray, near: np.ndarray, radius: int = 5) -> np.ndarray:
    """Intensity centroid around each expected position."""
    g = image[..., 0].astype(np.float64)
    out = []
    for x, y in near:
        x0, y0 = int(round(x)), int(round(y))
        win = g[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
        yy, xx = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
        out.append(((xx * win).sum() / win.sum(), (yy * win).sum() / win.sum()))
    return np.array(out)


@pytest.mark.parametrize("model", list(MODELS))
def test_a_distorted_image_comes_back_to_the_pinhole_camera(model):
    """Blobs drawn where the distorted lens sees a grid of points are, after undistortion,
    where the pinhole camera K sees them (and were far from there before)."""
    D = MODELS[model]
    pts = _points()
    distorted_uv = _project(pts, model, D)
    pinhole_uv = (K @ pts.T).T
    pinhole_uv = pinhole_uv[:, :2] / pinhole_uv[:, 2:]
    und = Undistorter(Calibration.of(W, H, K.ravel(), D, model))
    assert und.remaps
    np.testing.assert_array_equal(und.K, K)  # no P given: the new camera matrix is K
    out = und(_blobs(distorted_uv))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    err = np.linalg.norm(_centroids(out, pinhole_uv) - pinhole_uv, axis=1)
    assert err.max() < 0.2, err.max()  # pixels (measured 0.07-0.08)
    moved = np.linalg.norm(distorted_uv - pinhole_uv, axis=1)
    assert moved.max() > 3.0  # the lens distortion undone is several pixels


def test_p_is_the_new_camera_matrix_when_r_is_the_identity():
    P = np.array([[180.0, 0, 158.0, 0], [0, 185.0, 121.0, 0], [0, 0, 1, 0]])
    calib = Calibration.of(
        W, H, K.ravel(), MODELS["plumb_bob"], "plumb_bob", np.eye(3).ravel(), P.ravel()
    )
    und = Undistorter(calib)
    np.testing.assert_array_equal(und.K, P[:, :3])
    pts = _points()
    want = (P[:, :3] @ pts.T).T
    want = want[:, :2] / want[:, 2:]
    out = und(_blobs(_project(pts, "plumb_bob", MODELS["plumb_bob"])))
    inside = (want[:, 0] > 8) & (want[:, 0] < W - 8) & (want[:, 1] > 8) & (want[:, 1] < H - 8)
    err = np.linalg.norm(_centroids(out, want[inside]) - want[inside], axis=1)
    assert err.max() < 0.2
    # a stereo rectification (R not the identity) is not applied: K stays
    R = cv2.Rodrigues(np.array([0.0, 0.05, 0.0]))[0]
    stereo = Calibration.of(W, H, K.ravel(), MODELS["plumb_bob"], "plumb_bob", R.ravel(), P.ravel())
    np.testing.assert_array_equal(Undistorter(stereo).K, K)


def test_no_distortion_passes_images_unchanged():
    img = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    for d, model in (([0.0] * 5, "plumb_bob"), ([], ""), ([0.0] * 4, "some_other_model")):
        und = Undistorter(Calibration.of(W, H, K.ravel(), d, model))
        assert not und.remaps and und(img) is img


def test_unknown_models_and_wrong_coefficient_counts_are_refused():
    with pytest.raises(UnknownDistortion, match="'kannala_brandt'.*known: plumb_bob"):
        Undistorter(Calibration.of(W, H, K.ravel(), [0.1, 0, 0, 0], "kannala_brandt"))
    with pytest.raises(ValueError, match="equidistant takes 4"):
        Undistorter(Calibration.of(W, H, K.ravel(), [0.1, 0, 0, 0, 0], "equidistant"))
    und = Undistorter(Calibration.of(W, H, K.ravel(), MODELS["plumb_bob"], "plumb_bob"))
    with pytest.raises(ValueError, match="image is 160x120, the calibration 320x240"):
        und(np.zeros((120, 160, 3), np.uint8))


def test_to_pixel_edges_moves_the_principal_point_half_a_pixel():
    """OpenCV's centred camera of a W-pixel row has cx = (W - 1) / 2; the engine's W / 2."""
    Kc = np.array([[100.0, 0, (W - 1) / 2], [0, 100.0, (H - 1) / 2], [0, 0, 1]])
    Ke = to_pixel_edges(Kc)
    assert (Ke[0, 2], Ke[1, 2]) == (W / 2, H / 2) and Ke[0, 0] == 100.0
    assert Kc[0, 2] == (W - 1) / 2  # a copy
