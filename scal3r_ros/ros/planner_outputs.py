"""Planner-ready outputs: metric scale, sensor-frame clouds, occupancy grid.

The node hands every batch of engine events to `PlannerOutputs.on_events` (worker
thread); this class keeps the scale source, applies its estimate to the node's
`FrameConverter` (so /tf, clouds, odometry, path and saved files all change together),
publishes per-frame clouds in the camera's optical frame, and maintains the grid.
The estimators themselves live in `mapping/` (scale.py, sensor_cloud.py, occupancy.py).
"""

from __future__ import annotations

import array
import threading
import time

import numpy as np
from nav_msgs.msg import OccupancyGrid as GridMsg
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, PointCloud2

from scal3r_ros.mapping.atomic_io import SaveFolder
from scal3r_ros.mapping.engine import MappingEngine
from scal3r_ros.mapping.frame import (
    FrameCloudsUpdate,
    MapCorrected,
    MapUpdate,
    PointsUpdate,
    PosesUpdate,
)
from scal3r_ros.mapping.occupancy import OccupancyConfig, OccupancyGrid, TrajectoryGround
from scal3r_ros.mapping.scale import (
    ChunkObservation,
    baseline_from_projection,
    make_scale_source,
)
from scal3r_ros.mapping.sensor_cloud import SensorCloudBuilder, SensorCloudConfig
from scal3r_ros.ros import qos
from scal3r_ros.ros.conversions import ns_to_stamp, points_to_cloud
from scal3r_ros.ros.frames import FrameConverter
from scal3r_ros.ros.params import NodeConfig

GRID_FILES = ("grid.pgm", "grid.yaml")  # in a save's folder (map_server's pair)
RESCALE_TOLERANCE = 1e-3  # relative scale change that re-publishes path, map and grid


class PlannerOutputs:
    def __init__(self, node: Node, cfg: NodeConfig, converter: FrameConverter) -> None:
        self.node, self.cfg, self.converter = node, cfg, converter
        self.scale_src = make_scale_source(
            cfg.scale_source, camera_height_m=cfg.camera_height_m,
            odometry_window_s=cfg.scale_odometry_window_s,
            stereo_baseline_m=cfg.stereo_baseline_m or None,
        )  # fmt: skip
        self.estimate = self.scale_src.update(ChunkObservation())
        self._lock = threading.Lock()  # odometry callback vs worker thread
        if cfg.scale_source == "odometry":
            node.create_subscription(Odometry, cfg.scale_odometry_topic, self._on_odometry,
                                     qos.input_profile("reliable", 100))  # fmt: skip
        if cfg.scale_source == "stereo" and not cfg.stereo_baseline_m:
            if len(cfg.camera_info_topics) < 2:
                node.get_logger().warning(
                    "stereo scale: no stereo_baseline_m and no second "
                    "camera_info topic; the scale stays unknown"
                )
            else:
                node.create_subscription(CameraInfo, cfg.camera_info_topics[1],
                                         self._on_right_info,
                                         qos.input_profile(cfg.input_qos, 10))  # fmt: skip
        self.clouds = SensorCloudBuilder(SensorCloudConfig(
            frames=cfg.sensor_cloud_frames, every_n=cfg.sensor_cloud_every_n,
            voxel_size=cfg.sensor_cloud_voxel_size, max_points=cfg.sensor_cloud_max_points,
            max_depth=cfg.sensor_cloud_max_depth,
        )) if cfg.sensor_cloud_enabled else None  # fmt: skip
        self.grid = OccupancyGrid(OccupancyConfig(
            resolution=cfg.occupancy_resolution, ground_band=cfg.occupancy_ground_band,
            obstacle_min=cfg.occupancy_obstacle_min, obstacle_max=cfg.occupancy_obstacle_max,
        )) if cfg.occupancy_enabled else None  # fmt: skip
        self.pub_sensor = (node.create_publisher(PointCloud2, "~/sensor_cloud",
                                                 qos.RELIABLE_OUTPUT)
                           if self.clouds else None)  # fmt: skip
        self.pub_grid = (node.create_publisher(GridMsg, "~/grid", qos.LATCHED)
                         if self.grid else None)  # fmt: skip
        self._grid_dirty = False
        self._last_grid_pub = 0.0

    # ------------------------------------------------------------ inputs
    def _on_odometry(self, msg: Odometry) -> None:
        p = msg.pose.pose.position
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            self.scale_src.add_reference(stamp, (p.x, p.y, p.z))

    def _on_right_info(self, msg: CameraInfo) -> None:
        baseline = baseline_from_projection(list(msg.p))
        if baseline:
            with self._lock:
                self.scale_src.set_baseline(baseline)

    # ------------------------------------------------------------ worker thread
    def on_events(self, events: list[MapUpdate], engine: MappingEngine, stamp) -> bool:
        """Update scale, clouds, grid; returns True when the scale changed (the node then
        re-publishes poses and map in the new scale)."""
        camera_of = None
        if self.cfg.scale_source == "stereo":
            camera_of = engine.frames.camera_id  # no image read; known after eviction
        with self._lock:
            if self.cfg.scale_source == "odometry":
                _, stamps, c2w = engine.poses()
                self.scale_src.set_map_poses(stamps, c2w[:, :3, 3])
            est = self.scale_src.update(ChunkObservation.from_events(events, camera_of))
        self.estimate = est
        rescaled = False
        if est.metric and abs(est.scale / self.converter.scale - 1) > RESCALE_TOLERANCE:
            self.converter.scale = est.scale
            rescaled = True
        if self.clouds is not None:
            for ev in events:
                if isinstance(ev, FrameCloudsUpdate):
                    self._publish_sensor_clouds(ev)
        if self.grid is not None:
            self._update_grid(events, engine, rebuild=rescaled)
            self._publish_grid(stamp)
        return rescaled

    def _publish_sensor_clouds(self, ev: FrameCloudsUpdate) -> None:
        for c in self.clouds.build(ev, self.converter.scale):
            frame = self.cfg.camera_frame or c.camera_id
            self.pub_sensor.publish(points_to_cloud(c.xyz, None, c.confidence,
                                                    ns_to_stamp(c.stamp_ns), frame))  # fmt: skip

    def _ground(self, engine: MappingEngine):
        plane = self.estimate.plane
        if plane is not None:
            return plane.transformed(self.converter.points)
        _, _, c2w = engine.poses()
        return TrajectoryGround(self.converter.points(c2w[:, :3, 3]), self.cfg.camera_height_m)

    def _update_grid(self, events: list[MapUpdate], engine: MappingEngine, rebuild: bool) -> None:
        if not engine.n_chunks:
            return
        ground = self._ground(engine)
        if rebuild or any(isinstance(e, MapCorrected) for e in events):
            _, _, c2w = engine.poses()
            xyz, _, _ = engine.map_points(voxelize=False)
            self.grid.rebuild(self.converter.points(xyz), ground,
                              self.converter.points(c2w[:, :3, 3]))  # fmt: skip
        else:
            cams = [e.c2w[:, :3, 3] for e in events if isinstance(e, PosesUpdate) and
                    not e.corrected]  # fmt: skip
            for e in events:
                if isinstance(e, PointsUpdate) and len(e.xyz):
                    self.grid.integrate(self.converter.points(e.xyz), ground,
                                        self.converter.points(np.concatenate(cams))
                                        if cams else None)  # fmt: skip
        self._grid_dirty = True

    def _publish_grid(self, stamp) -> None:
        now = time.monotonic()
        if not self._grid_dirty or now - self._last_grid_pub < self.cfg.map_publish_period:
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

    def reset(self) -> None:
        with self._lock:
            self.scale_src.reset()
            self.estimate = self.scale_src.update(ChunkObservation())
        self.converter.scale = 1.0
        if self.grid is not None:
            self.grid.reset()

    def save(self, folder: SaveFolder) -> None:
        """Add the occupancy grid (``grid.pgm``, ``grid.yaml``) to a save's folder."""
        if self.grid is not None:
            pgm, yml = self.grid.encode(GRID_FILES[0])
            folder.write_bytes(GRID_FILES[0], pgm)
            folder.write_bytes(GRID_FILES[1], yml)
