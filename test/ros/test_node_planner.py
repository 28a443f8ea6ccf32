"""Planner-ready outputs across processes: metric scale, sensor-frame clouds, grid."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_drive
from nav_msgs.msg import OccupancyGrid
from node_harness import NODE, Recorder, mapping_run, oracle_node_args
from scal3r_ros_msgs.srv import SaveMap
from sensor_msgs.msg import PointCloud2

from scal3r_ros.mapping.planning.occupancy import read_map_server
from scal3r_ros.mapping.sim3 import umeyama
from scal3r_ros.ros.conversions import cloud_to_array

pytestmark = pytest.mark.ros
N = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("planner")
    rec = Recorder("planner_recorder")
    rec.subscribe(f"{NODE}/sensor_cloud", PointCloud2)
    rec.subscribe(f"{NODE}/grid", OccupancyGrid, Recorder.LATCHED)
    args = oracle_node_args(
        out / "maps",
        chunk_size=16,
        overlap=8,
        status_period=0.2,
        map_publish_period=0.2,
        oracle_frames=N,
        oracle_depth_noise=0.02,
        scale_source="camera_height",
        camera_height_m=1.65,
        sensor_cloud_enabled=True,
        sensor_cloud_frames="every_n",
        sensor_cloud_every_n=4,
        occupancy_enabled=True,
        occupancy_resolution=0.25,
    )
    try:
        with mapping_run(rec, args, out, ["--frames", str(N), "--rate", "40"]) as node:

            def done() -> bool:
                st = rec.last(f"{NODE}/status")
                return st is not None and st.frames_processed >= N and st.chunks_processed >= 7

            def delivered() -> bool:  # the last window's messages have arrived (no fixed sleep)
                path = rec.last(f"{NODE}/path")
                return (
                    path is not None
                    and len(path.poses) == N
                    and len(rec.msgs[f"{NODE}/sensor_cloud"]) >= N // 4 - 2
                    and rec.last(f"{NODE}/grid") is not None
                )

            ok = rec.spin_until(done, 180, [node])
            assert ok, (out / "node.log").read_text()
            rec.spin_until(delivered, 60, [node])  # the tests below say what is missing, if so
            yield rec, node, out
    finally:
        rec.close()


def test_camera_height_makes_the_path_metric(run):
    rec, _, _ = run
    st = rec.last(f"{NODE}/status")
    assert st.scale_source == "camera_height" and st.scale_confidence > 0.3
    path = rec.last(f"{NODE}/path")
    est = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in path.poses])
    gt = make_drive(n_frames=N).gt_poses()[:, :3, 3]
    assert len(est) == N
    fit = umeyama(est, gt)
    assert abs(fit.s - 1.0) < 0.03, fit.s  # metres: no scale left between path and truth
    values = {kv.key: kv.value for kv in rec.last("/diagnostics").status[0].values}
    assert float(values["scale"]) == pytest.approx(st.scale, rel=1e-4) and values["scale_status"]


def test_sensor_clouds_are_in_the_optical_frame_at_image_stamps(run):
    rec, _, _ = run
    drive = make_drive(n_frames=N)
    stamps = {drive.stamp_ns(i) for i in range(N)}
    clouds = rec.msgs[f"{NODE}/sensor_cloud"]
    assert len(clouds) >= N // 4 - 2
    for c in clouds:
        assert c.header.frame_id == "camera_optical"
        assert c.header.stamp.sec * 1_000_000_000 + c.header.stamp.nanosec in stamps
        arr = cloud_to_array(c)
        assert 0 < len(arr) <= 20000
        assert (arr["z"] > 0).all() and arr["z"].max() <= 40.0 + 1e-3  # in front, metres
    # ground points lie ~1.65 m below the camera: optical +y is down
    y = np.concatenate([cloud_to_array(c)["y"] for c in clouds])
    assert np.isclose(np.percentile(y, 95), 1.65, atol=0.15)


def test_occupancy_grid_has_free_road_and_occupied_buildings(run):
    rec, _, out = run
    grid = rec.last(f"{NODE}/grid")
    assert grid is not None and grid.header.frame_id == "map"
    assert grid.info.resolution == pytest.approx(0.25)
    data = np.asarray(grid.data, dtype=np.int8)
    assert data.size == grid.info.width * grid.info.height
    assert (data == 0).sum() > 100 and (data == 100).sum() > 20 and (data == -1).any()
    res = rec.call(
        SaveMap,
        f"{NODE}/save_map",
        SaveMap.Request(name="with_grid", save_map=True, save_trajectory=False),
    )
    assert res.success and any(f.endswith("grid.yaml") for f in res.files)
    loaded = read_map_server(out / "maps" / "with_grid" / "grid.yaml")
    assert loaded is not None
