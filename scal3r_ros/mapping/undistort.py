"""Undistortion before the network, from a camera's calibration (no ROS: plain numbers in).

The network assumes a pinhole camera; a lens with distortion bends straight lines, and a
known K only helps the unprojection if the image follows it. A calibration with a
supported model and non-zero coefficients is undistorted with OpenCV's remap, the maps
computed once per camera and calibration (`Undistorter`):

* ``plumb_bob`` and ``rational_polynomial``: ``cv2.initUndistortRectifyMap``;
* ``equidistant`` (fisheye): ``cv2.fisheye.initUndistortRectifyMap``.

The undistorted image's camera matrix (the frame's K from then on): the 3x3 part of the
CameraInfo's P when P is set and R is the identity (or unset) -- what ``image_proc``'s
``image_rect`` uses, so the node sees the image a rectify node would publish -- else K (a
stereo camera's R rectifies to the pair, which a single-camera map does not want; the
image keeps its size and roughly its field of view). Areas the lens did not see are
black. A calibration without distortion (all coefficients zero) is used as is; an
unknown model with non-zero coefficients cannot be undistorted (`UnknownDistortion`).

Camera matrices here follow CameraInfo / OpenCV: pixel centres at integers.
`to_pixel_edges` converts one to the engine's convention (pixel centres at +0.5, as
``alignment.unproject_depth`` and ``ResizeCrop``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PINHOLE_MODELS = ("plumb_bob", "rational_polynomial")
FISHEYE_MODELS = ("equidistant",)


class UnknownDistortion(ValueError):
    """A calibration with distortion coefficients of a model this module cannot undo."""


def to_pixel_edges(K: np.ndarray) -> np.ndarray:
    """An OpenCV / CameraInfo camera matrix (pixel centres at integers) in the engine's
    convention (pixel ``i`` spans ``[i, i+1]``): the principal point moves by half a pixel."""
    out = np.array(K, dtype=np.float64)
    out[0, 2] += 0.5
    out[1, 2] += 0.5
    return out


@dataclass(frozen=True)
class Calibration:
    """The numbers of a CameraInfo that undistortion needs (its width/height, K, D, R, P)."""

    width: int
    height: int
    K: tuple[float, ...]  # 9, row-major
    D: tuple[float, ...] = ()
    model: str = ""
    R: tuple[float, ...] = ()  # 9, row-major; empty or all zero: unset
    P: tuple[float, ...] = ()  # 12, row-major; empty or all zero: unset

    @staticmethod
    def of(
        width: int,
        height: int,
        k: Sequence[float],
        d: Sequence[float] = (),
        model: str = "",
        r: Sequence[float] = (),
        p: Sequence[float] = (),
    ) -> Calibration:
        def floats(v: Sequence[float]) -> tuple[float, ...]:
            return tuple(float(x) for x in v)

        return Calibration(
            int(width), int(height), floats(k), floats(d), model, floats(r), floats(p)
        )

    @property
    def distorted(self) -> bool:
        """Any non-zero distortion coefficient."""
        return any(c != 0.0 for c in self.D)

    def camera_matrix(self) -> np.ndarray:
        return np.asarray(self.K, dtype=np.float64).reshape(3, 3)

    def rectified_matrix(self) -> np.ndarray:
        """The undistorted image's camera matrix: P's 3x3 when P is set and R is the
        identity or unset, else K (see the module docstring)."""
        R = np.asarray(self.R, dtype=np.float64)
        P = np.asarray(self.P, dtype=np.float64)
        r_identity = R.size != 9 or not R.any() or np.allclose(R.reshape(3, 3), np.eye(3))
        if P.size == 12 and np.isfinite(P).all() and P.reshape(3, 4)[:, :3].any() and r_identity:
            M = P.reshape(3, 4)[:, :3].copy()
            if M[0, 0] > 0 and M[1, 1] > 0 and np.array_equal(M[2], (0.0, 0.0, 1.0)):
                return M
        return self.camera_matrix()


class Undistorter:
    """Undistorts the images of one calibration: maps computed once, here; then a remap
    per image (`__call__`). ``K`` is the undistorted images' camera matrix (CameraInfo
    convention). Raises `UnknownDistortion` for a distorted calibration of an unknown
    model and ValueError for coefficients the model does not take."""

    def __init__(self, calib: Calibration) -> None:
        import cv2  # only cameras with a distorted calibration need OpenCV

        self.calibration = calib
        self.K = calib.rectified_matrix()
        self._maps: tuple[np.ndarray, np.ndarray] | None = None
        if not calib.distorted:
            return
        size = (calib.width, calib.height)
        K, D = calib.camera_matrix(), np.asarray(calib.D, dtype=np.float64)
        if not np.isfinite(D).all():
            raise ValueError(f"distortion coefficients are not finite: {D.tolist()}")
        if calib.model in PINHOLE_MODELS:
            if D.size not in (4, 5, 8, 12, 14):
                raise ValueError(
                    f"{calib.model} takes 4, 5, 8, 12 or 14 coefficients, got {D.size}"
                )
            self._maps = cv2.initUndistortRectifyMap(K, D, None, self.K, size, cv2.CV_16SC2)
        elif calib.model in FISHEYE_MODELS:
            if D.size != 4:
                raise ValueError(f"{calib.model} takes 4 coefficients (k1..k4), got {D.size}")
            self._maps = cv2.fisheye.initUndistortRectifyMap(
                K, D.reshape(4, 1), np.eye(3), self.K, size, cv2.CV_16SC2
            )
        else:
            known = ", ".join(PINHOLE_MODELS + FISHEYE_MODELS)
            raise UnknownDistortion(
                f"distortion model {calib.model!r} with non-zero coefficients cannot be "
                f"undistorted (known: {known})"
            )

    @property
    def remaps(self) -> bool:
        """Images change (a distorted calibration); False: they pass as they are."""
        return self._maps is not None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``image`` (height x width of the calibration) undistorted."""
        if self._maps is None:
            return image
        import cv2

        h, w = image.shape[:2]
        c = self.calibration
        if (w, h) != (c.width, c.height):
            raise ValueError(f"image is {w}x{h}, the calibration {c.width}x{c.height}")
        return cv2.remap(
            image, *self._maps, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
