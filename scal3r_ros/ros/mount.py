"""Where the map sits: the camera mount (base_frame -> camera frame) and the map anchor.

The mount is decided when the first poses go out (not at the first image, so a
/tf_static published at about the same time as the images still counts): /tf_static if
it has the chain base_frame -> camera frame, else the parameters camera_xyz/camera_rpy
(then published on /tf_static). The map frame is fixed by the first pose: ``map`` is
the first frame's base_link. Both are written into the node's `FrameConverter` here and
nowhere else (the scale is the node's, from `ScaleUpdate`). With an IMU, gravity levels
the map (`FrameConverter.set_level`): the up direction measured in base axes at some stamp
is carried into ``map`` by the base's pose at that stamp (the first frame's when the robot
stood still before the first image), and ``map`` is turned about its origin so its z is up.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tf2_msgs.msg import TFMessage

from scal3r_ros.mapping.events import MapUpdate, PosesUpdate
from scal3r_ros.mapping.sensors.gravity import level_from_up
from scal3r_ros.ros.conversions import ns_to_stamp
from scal3r_ros.ros.frames import FrameConverter, matrix_from_quaternion
from scal3r_ros.ros.outputs import Track
from scal3r_ros.ros.outputs.poses import transform_msg
from scal3r_ros.ros.params import NodeConfig

MAX_CHAIN = 16  # /tf_static links walked from the camera frame up to base_frame
LEVEL_MAX_DT_S = 0.25  # the base pose used to carry gravity into map: this close in time

Gravity = Callable[[], "tuple[np.ndarray, int] | None"]  # (up in base axes, stamp) or None


class CameraMount:
    """/tf_static in (`on_tf_static`, executor), the first camera frame in (`saw_camera`,
    input callbacks), the engine's events in (`on_events`, worker thread)."""

    def __init__(
        self,
        cfg: NodeConfig,
        converter: FrameConverter,
        publish_tf_static: Callable[[TFMessage], None],
        log: Callable[[str], None],
        gravity: Gravity | None = None,
        on_mount: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self.cfg, self.converter = cfg, converter
        self._publish, self._log = publish_tf_static, log
        self._gravity, self._on_mount = gravity, on_mount
        self._static_tf: dict[str, tuple[str, np.ndarray]] = {}
        self.camera_frame: str | None = None  # optical frame of the first images
        self.decided = False
        self._track = Track()  # poses of this map (the base attitude at gravity's stamp)
        self.levelled = False
        self.tilt_deg: float | None = None  # first base_link's z against up, once known

    def on_tf_static(self, msg: TFMessage) -> None:
        for t in msg.transforms:
            T = np.eye(4)
            tr, q = t.transform.translation, t.transform.rotation
            T[:3, :3] = matrix_from_quaternion((q.x, q.y, q.z, q.w))
            T[:3, 3] = (tr.x, tr.y, tr.z)
            self._static_tf[t.child_frame_id] = (t.header.frame_id, T)

    def saw_camera(self, camera: str) -> None:
        if self.camera_frame is None:
            self.camera_frame = self.cfg.camera_frame or camera

    def static_chain(self, child: str) -> np.ndarray | None:
        """T_base_child from /tf_static (walking parents up to base_frame), if known."""
        T = np.eye(4)
        frame = child
        for _ in range(MAX_CHAIN):
            if frame == self.cfg.base_frame:
                return T
            if frame not in self._static_tf:
                return None
            parent, T_pc = self._static_tf[frame]
            T = T_pc @ T
            frame = parent
        return None

    def on_events(self, events: list[MapUpdate], publish: bool = True) -> bool:
        """Decide the mount (once), anchor the map at the first pose (after each reset) and
        level it once gravity is known. ``publish`` False: ROS is down (a shutdown): the
        fallback mount is not published. True when the map frame turned under poses
        already published (the outputs re-express them)."""
        poses = [ev for ev in events if isinstance(ev, PosesUpdate) and len(ev.frame_ids)]
        if not self.decided:
            stamps = [int(s) for ev in poses for s in ev.stamps_ns]
            self._decide(ns_to_stamp(min(stamps, default=0)), publish)
        published_before = self.converter.anchor is not None
        if self.converter.anchor is None and poses:
            ev = poses[0]
            self.converter.set_anchor(ev.c2w[int(np.argmin(ev.frame_ids))])
        if self._gravity is None or self.levelled:
            return False
        for ev in poses:  # kept until levelled
            self._track.add(ev)
        return self._level() and published_before

    def _level(self) -> bool:
        """Turn ``map`` so its z is up, once gravity and the base pose at its stamp are known."""
        measured = None if self.levelled else self._gravity()  # type: ignore[misc]
        ids, stamps, c2w = self._track.poses()
        if measured is None or not len(ids):
            return False
        up_base, stamp = measured
        if stamp <= stamps.min():  # still before the first image: the first frame's attitude
            k = int(np.argmin(stamps))
        else:
            k = int(np.argmin(np.abs(stamps - stamp)))
            if abs(int(stamps[k]) - stamp) * 1e-9 > LEVEL_MAX_DT_S:
                return False  # the base pose at that time is not known (yet)
        self.converter.set_level(np.eye(3))
        R_map_base = self.converter.base_poses(c2w[k])[0, :3, :3]
        up_map = R_map_base @ np.asarray(up_base, dtype=np.float64)
        self.converter.set_level(level_from_up(up_map))
        self.tilt_deg = float(np.degrees(np.arccos(np.clip(up_map[2], -1.0, 1.0))))
        self.levelled = True
        self._track.reset()
        self._log(
            f"map levelled by gravity: the first base_link was {self.tilt_deg:.2f} deg off up"
        )
        return True

    def reset(self) -> None:
        """A map reset: the next pose anchors the new map (the mount stays); levelling
        starts again with the next gravity measurement."""
        self.converter.forget_placement()
        self._track.reset()
        self.levelled, self.tilt_deg = False, None

    def restore(self, node_block: dict) -> None:
        """A loaded session's map frame (`FrameConverter.restore`): anchored and, if that
        run levelled it, levelled; the mount of this run is still decided as usual."""
        self.converter.restore(node_block)
        self._track.reset()
        self.levelled = True  # the saved frame stays: gravity does not turn it again
        tilt = node_block.get("tilt_deg")
        self.tilt_deg = None if tilt is None else float(tilt)

    def _decide(self, stamp, publish: bool) -> None:
        self.decided = True
        cam_frame = self.camera_frame or self.cfg.camera_frame or "camera"
        T = self.static_chain(cam_frame) if self.cfg.use_tf_static else None
        if T is not None:
            self.converter.set_mount(T)
            if self._on_mount is not None:
                self._on_mount(T)
            self._log(f"camera mount {self.cfg.base_frame} -> {cam_frame} taken from /tf_static")
        elif self.cfg.publish_camera_tf and publish:
            self._publish(
                TFMessage(
                    transforms=[
                        transform_msg(
                            self.converter.T_base_cam, self.cfg.base_frame, cam_frame, stamp
                        )
                    ]
                )
            )
