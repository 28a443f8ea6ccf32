"""Planner-ready outputs: sensor-frame clouds (~/sensor_cloud) and the occupancy grid
(~/grid, and ``grid.pgm``/``grid.yaml`` in a save).

An `Output`: the engine's events in, on the worker thread. The metric scale comes as a
`ScaleUpdate` event (estimated in `ros/scale.py`, applied to the converter by the node);
a rescale or a map correction rebuilds the grid from the whole map. The estimators
themselves live in `mapping/planning/` (sensor_cloud.py, occupancy.py).
"""

from __future__ import annotations

import array
import time

import numpy as np
from nav_msgs.msg import OccupancyGrid as GridMsg
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2

from scal3r_ros.mapping.atomic_io import SaveFolder
from scal3r_ros.mapping.events import (
    FrameCloudsUpdate,
    MapCorrected,
    MapUpdate,
    PointsUpdate,
    PosesUpdate,
)
from scal3r_ros.mapping.planning.occupancy import OccupancyConfig, OccupancyGrid, TrajectoryGround
from scal3r_ros.mapping.planning.sensor_cloud import SensorCloudBuilder, SensorCloudConfig
from scal3r_ros.ros import qos
from scal3r_ros.ros.conversions import ns_to_stamp, points_to_cloud
from scal3r_ros.ros.frames import FrameConverter
from scal3r_ros.ros.outputs import ScaleUpdate, Track, newest_stamp
from scal3r_ros.ros.outputs.cloud import MapCloud
from scal3r_ros.ros.params import NodeConfig

GRID_FILES = ("grid.pgm", "grid.yaml")  # in a save's folder (map_server's pair)


class PlannerOutputs:
    """~/sensor_cloud and ~/grid, each when enabled (an `Output`)."""

    def __init__(
        self, node: Node, cfg: NodeConfig, converter: FrameConverter, map_cloud: MapCloud
    ) -> None:
        self.cfg, self.converter, self._map_cloud = cfg, converter, map_cloud
        self.period = cfg.map_publish_period
        self.clouds = (
            SensorCloudBuilder(
                SensorCloudConfig(
                    frames=cfg.sensor_cloud_frames,
                    every_n=cfg.sensor_cloud_every_n,
                    voxel_size=cfg.sensor_cloud_voxel_size,
                    max_points=cfg.sensor_cloud_max_points,
                    max_depth=cfg.sensor_cloud_max_depth,
                )
            )
            if cfg.sensor_cloud_enabled
            else None
        )
        self.grid = (
            OccupancyGrid(
                OccupancyConfig(
                    resolution=cfg.occupancy_resolution,
                    ground_band=cfg.occupancy_ground_band,
                    obstacle_min=cfg.occupancy_obstacle_min,
                    obstacle_max=cfg.occupancy_obstacle_max,
                )
            )
            if cfg.occupancy_enabled
            else None
        )
        self.pub_sensor = (
            node.create_publisher(PointCloud2, "~/sensor_cloud", qos.RELIABLE_OUTPUT)
            if self.clouds
            else None
        )
        self.pub_grid = node.create_publisher(GridMsg, "~/grid", qos.LATCHED) if self.grid else None
        self.reset()

    def reset(self) -> None:
        self.frozen = False  # localisation in a loaded map: the grid stays as loaded
        self._track = Track()  # camera positions: trajectory ground, grid rebuilds
        self._plane = None  # the scale source's ground plane (camera_height)
        self._stamp_ns = 0
        self._grid_dirty = False
        self._last_grid_pub = 0.0
        if self.grid is not None:
            self.grid.reset()

    # ------------------------------------------------------------ worker thread
    def on_events(self, events: list[MapUpdate]) -> None:
        """Sensor clouds of the new frames; the grid (rebuilt after a rescale)."""
        rescaled = False
        for ev in events:
            if isinstance(ev, PosesUpdate):
                self._track.add(ev)
            elif isinstance(ev, ScaleUpdate):
                self._plane = ev.estimate.plane
                rescaled = rescaled or ev.rescaled
        self._stamp_ns = newest_stamp(events, self._stamp_ns)
        if self.clouds is not None:
            for ev in events:
                if isinstance(ev, FrameCloudsUpdate):
                    self._publish_sensor_clouds(ev)
        if self.grid is not None and not self.frozen:
            self._update_grid(events, rebuild=rescaled)
            self._publish_grid(ns_to_stamp(self._stamp_ns))

    def restore(self, poses: PosesUpdate, grid_state=None, frozen: bool = False) -> None:
        """A loaded session: its cameras (ground model, later rebuilds) and its grid
        (`OccupancyGrid.state`: (i0, j0, counts); None: rebuilt from the loaded map),
        published at once. ``frozen``: later windows leave the grid alone."""
        self._track.add(poses)
        self._stamp_ns = newest_stamp([poses], self._stamp_ns)
        if self.grid is None:
            return
        if grid_state is not None:
            self.grid.restore(*grid_state)
        elif len(self._track):
            _, _, c2w = self._track.poses()
            xyz, _, _ = self._map_cloud()
            self.grid.rebuild(
                self.converter.points(xyz), self._ground(), self.converter.points(c2w[:, :3, 3])
            )
        self._grid_dirty, self._last_grid_pub = True, -np.inf
        self._publish_grid(ns_to_stamp(self._stamp_ns))
        self.frozen = frozen

    def grid_state(self):
        """(i0, j0, counts) of the grid, or None when it is off (a session's node block)."""
        return None if self.grid is None else self.grid.state()

    def _publish_sensor_clouds(self, ev: FrameCloudsUpdate) -> None:
        for c in self.clouds.build(ev, self.converter.scale):
            frame = self.cfg.camera_frame or c.camera_id
            self.pub_sensor.publish(
                points_to_cloud(c.xyz, None, c.confidence, ns_to_stamp(c.stamp_ns), frame)
            )

    def _ground(self):
        if self._plane is not None:
            return self._plane.transformed(self.converter.points)
        _, _, c2w = self._track.poses()
        return TrajectoryGround(self.converter.points(c2w[:, :3, 3]), self.cfg.camera_height_m)

    def _update_grid(self, events: list[MapUpdate], rebuild: bool) -> None:
        if not len(self._track):
            return
        ground = self._ground()
        if rebuild or any(isinstance(e, MapCorrected) for e in events):
            _, _, c2w = self._track.poses()
            xyz, _, _ = self._map_cloud()
            self.grid.rebuild(
                self.converter.points(xyz), ground, self.converter.points(c2w[:, :3, 3])
            )
        else:
            cams = [
                e.c2w[:, :3, 3] for e in events if isinstance(e, PosesUpdate) and not e.corrected
            ]
            for e in events:
                if isinstance(e, PointsUpdate) and len(e.xyz):
                    self.grid.integrate(
                        self.converter.points(e.xyz),
                        ground,
                        self.converter.points(np.concatenate(cams)) if cams else None,
                    )
        self._grid_dirty = True

    def _publish_grid(self, stamp) -> None:
        now = time.monotonic()
        if not self._grid_dirty or now - self._last_grid_pub < self.period:
            return
        f = self.grid.msg_fields()
        msg = GridMsg()
        msg.header.stamp, msg.header.frame_id = stamp, self.cfg.map_frame
        msg.info.map_load_time = stamp
        msg.info.resolution = float(f["resolution"])
        msg.info.width, msg.info.height = int(f["width"]), int(f["height"])
        msg.info.origin.position.x = float(f["origin_x"])
        msg.info.origin.position.y = float(f["origin_y"])
        msg.info.origin.orientation.w = 1.0
        msg.data = array.array("b", f["data"].astype(np.int8).tobytes())
        self.pub_grid.publish(msg)
        self._grid_dirty = False
        self._last_grid_pub = now

    def save(self, folder: SaveFolder) -> None:
        """Add the occupancy grid (``grid.pgm``, ``grid.yaml``) to a save's folder."""
        if self.grid is not None:
            pgm, yml = self.grid.encode(GRID_FILES[0])
            folder.write_bytes(GRID_FILES[0], pgm)
            folder.write_bytes(GRID_FILES[1], yml)
