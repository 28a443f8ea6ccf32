"""A synthetic stereo rig for the scale tests (mapping and ROS side)."""

from __future__ import annotations

import numpy as np

from scal3r_ros.mapping.events import Frame
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive


class StereoDrive(SyntheticDrive):
    """The synthetic drive seen by a stereo rig: frame 2k = left, 2k+1 = right
    (``baseline`` metres along the left camera's x), 1 us apart (one stamp each for the
    oracle; pairing tolerates it)."""

    def __init__(self, config: SyntheticConfig, baseline: float) -> None:
        self.baseline = baseline
        super().__init__(config)

    def _make_poses(self) -> np.ndarray:
        left = super()._make_poses()
        right = left.copy()
        right[:, :3, 3] += self.baseline * left[:, :3, 0]
        out = np.empty((2 * len(left), 4, 4))
        out[0::2], out[1::2] = left, right
        return out

    @property
    def n_frames(self) -> int:
        return 2 * self.config.n_frames

    def stamp_ns(self, i: int) -> int:
        return super().stamp_ns(i // 2) + (i % 2) * 1000

    def index_of_stamp(self, stamp_ns: int) -> int:
        k = super().index_of_stamp(stamp_ns)
        return 2 * k + int(stamp_ns != super().stamp_ns(k))

    def frame(self, i: int) -> Frame:
        f = super().frame(i)
        f.stamp_ns, f.camera_id = self.stamp_ns(i), ("left", "right")[i % 2]
        return f
