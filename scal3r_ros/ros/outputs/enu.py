"""The map's place on the Earth: ``enu -> map`` on /tf once GNSS has fitted it.

The engine's graph estimates map -> ENU as a similarity (its scale is the map's metric
scale); the node publishes ``map`` in metres with that scale (`ScaleUpdate`), so what is
left is a rigid transform, published with the parent ``enu_frame`` (x east, y north, z up,
origin at the first GNSS fix, whose latitude, longitude and altitude ~/status gives). It is
re-published after every window (the graph refines it) and when the map frame is
re-expressed (rescale, levelling).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tf2_msgs.msg import TFMessage

from scal3r_ros.mapping.events import MapUpdate, SensorFusionUpdate
from scal3r_ros.ros.conversions import ns_to_stamp
from scal3r_ros.ros.frames import FrameConverter
from scal3r_ros.ros.outputs import ScaleUpdate, newest_stamp
from scal3r_ros.ros.outputs.poses import transform_msg


def enu_from_map(converter: FrameConverter, engine_to_enu: np.ndarray) -> np.ndarray:
    """T_enu_map (rigid 4x4) from the engine's map -> ENU similarity and the converter's
    engine -> map placement (scale folded in); a residual scale ratio (the applied scale
    lags the graph's within the rescale tolerance) goes into the translation only."""
    F = np.asarray(engine_to_enu, dtype=np.float64)
    s_f = float(np.cbrt(np.linalg.det(F[:3, :3])))
    M = converter.engine_to_map()  # x_map = R (s x) + t
    ratio = s_f / converter.scale
    R = (F[:3, :3] / s_f) @ M[:3, :3].T
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = F[:3, 3] - ratio * R @ M[:3, 3]
    return out


class EnuOutputs:
    """/tf ``enu_frame -> map_frame`` (an `Output`)."""

    def __init__(
        self,
        converter: FrameConverter,
        enu_frame: str,
        map_frame: str,
        publish_tf: Callable[[TFMessage], None],
    ) -> None:
        self.converter, self.enu_frame, self.map_frame = converter, enu_frame, map_frame
        self._pub = publish_tf
        self.reset()

    def reset(self) -> None:
        self.engine_to_enu: np.ndarray | None = None
        self.anchor: tuple[float, float, float] | None = None  # lat, lon, alt of ENU's origin
        self.T_enu_map: np.ndarray | None = None
        self._stamp = 0

    def on_events(self, events: list[MapUpdate]) -> None:
        due = False
        for ev in events:
            if isinstance(ev, SensorFusionUpdate) and ev.enu is not None:
                self.engine_to_enu, self.anchor, due = ev.enu, ev.enu_anchor, True
            elif isinstance(ev, ScaleUpdate) and ev.rescaled:
                due = True
        self._stamp = newest_stamp(events, self._stamp)
        if due and self.engine_to_enu is not None and self.converter.anchor is not None:
            self.T_enu_map = enu_from_map(self.converter, self.engine_to_enu)
            tf = transform_msg(
                self.T_enu_map, self.enu_frame, self.map_frame, ns_to_stamp(self._stamp)
            )
            self._pub(TFMessage(transforms=[tf]))
