"""The node's outputs driven by engine events only, as the node wires them: the mount
and anchor (`CameraMount`), the scale (`ScaleTracker` -> `ScaleUpdate` event) and the
outputs (`PoseOutputs`, `CloudOutputs`) that re-express what they published when the
scale changes -- without reading the engine."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo
from stereo_drive import StereoDrive

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig
from scal3r_ros.ros.frames import FrameConverter, camera_mount, matrix_from_quaternion
from scal3r_ros.ros.mount import CameraMount
from scal3r_ros.ros.outputs.cloud import CloudOutputs
from scal3r_ros.ros.outputs.poses import PoseFrames, PoseOutputs
from scal3r_ros.ros.params import NodeConfig
from scal3r_ros.ros.scale import ScaleTracker

pytestmark = pytest.mark.ros
# noisy depth and poses: each window measures the scale a little differently
NOISY = OracleConfig(seed=1, depth_noise=0.05, rot_noise_deg=0.5)


class _StandIn:
    """What `ScaleTracker` uses of a node: subscriptions (recorded) and a logger."""

    def __init__(self) -> None:
        self.subscriptions = []

    def create_subscription(self, msg_type, topic, callback, profile):
        self.subscriptions.append((msg_type, topic, callback))

    def get_logger(self):
        raise AssertionError("nothing to warn about: a second camera_info topic is given")


def _path_T(path) -> np.ndarray:
    T = np.tile(np.eye(4), (len(path.poses), 1, 1))
    for k, ps in enumerate(path.poses):
        q, p = ps.pose.orientation, ps.pose.position
        T[k, :3, :3] = matrix_from_quaternion([q.x, q.y, q.z, q.w])
        T[k, :3, 3] = p.x, p.y, p.z
    return T


def test_a_metric_scale_reaches_every_published_pose_and_the_map_as_an_event():
    drive = StereoDrive(SyntheticConfig(n_frames=32, seed=0), baseline=0.54)
    engine = MappingEngine(EngineConfig.low_latency(), OracleBackend(drive, NOISY))
    # no baseline parameter: it comes with the right camera's CameraInfo, later
    cfg = NodeConfig(scale_source="stereo", camera_info_topics=["/left/info", "/right/info"])
    node = _StandIn()
    conv = FrameConverter(camera_mount((0.2, 0.0, 1.5), (0.0, 0.1, 0.0)))
    tf_static, tf, odom, paths, clouds, maps = [], [], [], [], [], []
    mount = CameraMount(cfg, conv, tf_static.append, lambda text: None)
    scale = ScaleTracker(node, cfg)
    assert [s[1] for s in node.subscriptions] == ["/right/info"]
    batch = [0]
    map_batches = []  # the batches that published ~/map

    def map_cloud():
        map_batches.append(batch[0])
        return engine.map_points(voxelize=False)

    outputs = [
        PoseOutputs(conv, PoseFrames(), tf.append, odom.append, paths.append, path_period=0.0),
        CloudOutputs(conv, "map", clouds.append, maps.append, map_cloud, period=1e9),
    ]
    updates = []
    for i in range(drive.n_frames):
        events = engine.push(drive.frame(i))
        if not events:
            continue
        if len(updates) == 3:  # the baseline arrives: 0.54 m
            scale.on_right_info(
                CameraInfo(p=[700.0, 0, 600, -700.0 * 0.54, 0, 700, 180, 0, 0, 0, 1, 0])
            )
        mount.on_events(events)
        update = scale.on_events(events)
        conv.scale = update.scale
        batch[0] = len(updates)
        updates.append(update)
        for out in outputs:
            out.on_events([update, *events])
    # the scale came from the stereo pairs (camera ids from the events), after poses
    # had been published in engine units
    rescales = [k for k, u in enumerate(updates) if u.rescaled]
    assert rescales and rescales[0] == 3 and updates[-1].scale != 1.0
    assert not any(u.estimate.metric for u in updates[:3])
    assert len(tf_static) == 1 and conv.anchor is not None
    # ~/path: every frame, in the final scale (frames published before it re-expressed)
    ids, _, c2w = engine.poses()
    assert len(paths[-1].poses) == len(ids) == len(odom)
    np.testing.assert_allclose(_path_T(paths[-1]), conv.base_poses(c2w), atol=1e-4)
    # ~/map: at the first window and at once after each rescale (period 1e9 s: never
    # because it is due)
    assert map_batches[0] == 0 and set(rescales) <= set(map_batches)
    assert len(maps) == len(map_batches) and len(clouds) >= len(updates) - 1
