"""Map clouds out: ~/cloud (each window's new points) and ~/map (the whole map, throttled).

Why a class of its own: the node and `scal3r_bench` publish the window's cloud the same
way. ~/map is the engine's per-window voxel clouds as they are (cached transforms),
cheap enough for the worker thread; it is re-published at once after a correction (loop
closure) or a rescale, else at most every ``period`` seconds. The saved map is
voxelised globally (`saving.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from sensor_msgs.msg import PointCloud2

from scal3r_ros.mapping.events import MapCorrected, MapUpdate, PointsUpdate
from scal3r_ros.ros.conversions import ns_to_stamp, points_to_cloud
from scal3r_ros.ros.frames import FrameConverter
from scal3r_ros.ros.outputs import ScaleUpdate, newest_stamp

MapCloud = Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""The engine's whole map (xyz, rgb, confidence) in engine units, read on the worker thread."""


class CloudOutputs:
    """~/cloud and ~/map (an `Output`). ``map_cloud`` None or ``period`` <= 0: no ~/map."""

    def __init__(
        self,
        converter: FrameConverter,
        map_frame: str,
        publish_cloud: Callable[[PointCloud2], None],
        publish_map: Callable[[PointCloud2], None] | None = None,
        map_cloud: MapCloud | None = None,
        period: float = 1.0,
    ) -> None:
        self.converter, self.map_frame = converter, map_frame
        self._pub_cloud, self._pub_map, self._map_cloud = publish_cloud, publish_map, map_cloud
        self.period = period
        self.reset()

    def reset(self) -> None:
        self._stamp_ns = 0  # newest frame's stamp: the clouds' header stamp
        self._dirty = False
        self._last_pub = -np.inf

    def on_events(self, events: list[MapUpdate]) -> None:
        self._stamp_ns = newest_stamp(events, self._stamp_ns)
        stamp = ns_to_stamp(self._stamp_ns)
        for ev in events:
            if isinstance(ev, PointsUpdate) and len(ev.xyz):
                xyz = self.converter.points(ev.xyz)
                self._pub_cloud(points_to_cloud(xyz, ev.rgb, ev.confidence, stamp, self.map_frame))
                self._dirty = True
            elif isinstance(ev, MapCorrected) or (isinstance(ev, ScaleUpdate) and ev.rescaled):
                self._dirty = True
                self._last_pub = -np.inf  # re-publish the moved map now
        now = time.monotonic()
        if (
            self._map_cloud is None
            or self._pub_map is None
            or not self._dirty
            or self.period <= 0
            or now - self._last_pub < self.period
        ):
            return
        self.publish_map(stamp)
        self._last_pub = now

    def publish_map(self, stamp) -> None:
        """~/map now (a loaded session: at once, whatever the period)."""
        if self._map_cloud is None or self._pub_map is None:
            return
        xyz, rgb, conf = self._map_cloud()
        self._pub_map(points_to_cloud(self.converter.points(xyz), rgb, conf, stamp, self.map_frame))
        self._dirty = False
