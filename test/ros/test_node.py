"""The node end to end, across processes over DDS: synthetic camera -> node -> recorder.

The node runs the oracle backend (exact geometry of the synthetic drive, random Sim(3)
per chunk), so its outputs can be checked against ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_drive
from node_harness import NODE, Recorder, mapping_run, oracle_node_args, stop
from scal3r_ros_msgs.srv import SaveMap
from std_srvs.srv import Trigger

from scal3r_ros.mapping.session import read_session
from scal3r_ros.mapping.sim3 import umeyama
from scal3r_ros.ros.conversions import cloud_to_array
from scal3r_ros.ros.frames import matrix_from_quaternion

pytestmark = pytest.mark.ros
N_FRAMES = 64
CHUNK, OVERLAP = 16, 8


def _T(translation, rotation) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion((rotation.x, rotation.y, rotation.z, rotation.w))
    T[:3, 3] = (translation.x, translation.y, translation.z)
    return T


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("node")
    rec = Recorder()
    args = oracle_node_args(
        out / "maps",
        chunk_size=CHUNK,
        overlap=OVERLAP,
        map_publish_period=0.2,
        status_period=0.2,
        oracle_frames=N_FRAMES,
    )
    try:
        with mapping_run(rec, args, out, ["--frames", str(N_FRAMES), "--rate", "40"]) as node:

            def done() -> bool:
                st = rec.last(f"{NODE}/status")
                return (
                    st is not None and st.frames_processed >= N_FRAMES and st.chunks_processed >= 7
                )

            def delivered() -> bool:  # the last window's messages have arrived (no fixed sleep)
                path = rec.last(f"{NODE}/path")
                return (
                    path is not None
                    and len(path.poses) == N_FRAMES
                    and len(rec.msgs[f"{NODE}/odometry"]) >= N_FRAMES
                )

            ok = rec.spin_until(done, 120, [node])
            assert ok, "node did not process the stream:\n" + (out / "node.log").read_text()
            rec.spin_until(delivered, 60, [node])  # the tests below say what is missing, if so
            yield rec, node, out
    finally:
        rec.close()


def test_tf_chain_is_map_odom_base_with_image_stamps(run):
    rec, _, _ = run
    pairs = {(t.header.frame_id, t.child_frame_id) for m in rec.msgs["/tf"] for t in m.transforms}
    assert pairs == {("map", "odom"), ("odom", "base_link")}
    static = {
        (t.header.frame_id, t.child_frame_id) for m in rec.msgs["/tf_static"] for t in m.transforms
    }
    assert ("base_link", "camera_optical") in static
    drive = make_drive(n_frames=N_FRAMES)
    image_stamps = {drive.stamp_ns(i) for i in range(N_FRAMES)}
    base_stamps = {
        _ns(t.header.stamp)
        for m in rec.msgs["/tf"]
        for t in m.transforms
        if t.child_frame_id == "base_link"
    }
    assert base_stamps == image_stamps


def test_path_matches_ground_truth_and_map_is_z_up(run):
    rec, _, _ = run
    path = rec.last(f"{NODE}/path")
    assert path.header.frame_id == "map" and len(path.poses) == N_FRAMES
    est = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in path.poses])
    drive = make_drive(n_frames=N_FRAMES)
    gt = drive.gt_poses()[:, :3, 3]
    sim = umeyama(est, gt)
    ate = np.sqrt(((sim.apply(est) - gt) ** 2).sum(1).mean())
    assert ate < 1e-3 * drive.path_length(), ate
    # REP-103: map z is up, so a drive on flat ground stays at one height ...
    extent = np.ptp(est[:, :2], axis=0).max()
    assert extent > 0 and np.ptp(est[:, 2]) < 0.03 * extent
    # ... and base_link's z axis points up throughout
    ups = [_T(p.pose.position, p.pose.orientation)[:3, 2] for p in path.poses]
    assert min(u[2] for u in ups) > 0.99


def test_odometry_agrees_with_tf(run):
    rec, _, _ = run
    tf = {
        _ns(t.header.stamp): _T(t.transform.translation, t.transform.rotation)
        for m in rec.msgs["/tf"]
        for t in m.transforms
        if t.child_frame_id == "base_link"
    }
    odoms = rec.msgs[f"{NODE}/odometry"]
    assert len(odoms) == N_FRAMES
    for o in odoms:
        assert o.header.frame_id == "odom" and o.child_frame_id == "base_link"
        np.testing.assert_allclose(
            _T(o.pose.pose.position, o.pose.pose.orientation), tf[_ns(o.header.stamp)], atol=1e-6
        )
    speeds = [o.twist.twist.linear.x for o in odoms[1:]]
    assert np.median(speeds) > 0  # driving forward along base_link x


def test_clouds_have_fields_frame_and_points(run):
    rec, _, _ = run
    clouds = rec.msgs[f"{NODE}/cloud"]
    assert len(clouds) >= 7
    for c in clouds:
        assert c.header.frame_id == "map"
        assert [f.name for f in c.fields] == ["x", "y", "z", "rgb", "confidence"]
    arr = cloud_to_array(clouds[-1])
    assert len(arr) > 100 and np.isfinite(arr["x"]).all()
    full = rec.last(f"{NODE}/map")
    assert full is not None and full.width >= len(arr)
    # points of the map lie around the drive (same frame as /tf), not in another frame
    path = rec.last(f"{NODE}/path")
    centre = np.mean([[p.pose.position.x, p.pose.position.y] for p in path.poses], axis=0)
    m = cloud_to_array(full)
    assert np.linalg.norm(np.median(np.stack([m["x"], m["y"]], 1), 0) - centre) < np.ptp(m["x"])


def test_status_and_diagnostics(run):
    rec, _, _ = run
    st = rec.last(f"{NODE}/status")
    assert st.frames_received == N_FRAMES and st.frames_processed == N_FRAMES
    assert st.frames_dropped == 0 and st.chunks_processed == 7
    assert st.backend == "oracle" and st.gcs_mode == "causal" and st.scale_source == "none"
    assert st.state == st.STATE_MAPPING and st.map_points > 0 and st.queue_capacity == 64
    assert st.host_rss_mb > 10
    diag = rec.last("/diagnostics").status[0]
    values = {kv.key: kv.value for kv in diag.values}
    assert "scal3r_mapping" in diag.name and values["frames_processed"] == str(N_FRAMES)
    assert diag.level == diag.OK and values["frames_dropped"] == "0"


def test_save_service_writes_files_and_refuses_escapes(run):
    rec, _, out = run
    for bad in ("../escape", "/tmp/abs", "a/../../b"):
        res = rec.call(
            SaveMap,
            f"{NODE}/save_map",
            SaveMap.Request(name=bad, save_map=True, save_trajectory=True),
        )
        assert not res.success and "refused" in res.message, bad
    assert not (out / "escape").exists()
    res = rec.call(
        SaveMap,
        f"{NODE}/save_map",
        SaveMap.Request(name="run1", save_map=True, save_trajectory=True),
    )
    assert res.success, res.message
    names = sorted(p.split("/")[-1] for p in res.files)
    assert names == [
        "map.pcd",
        "map.ply",
        "session",  # save_session (default): the folder to come back to (map_file)
        "trajectory_camera_kitti.txt",
        "trajectory_camera_tum.txt",
        "trajectory_kitti.txt",
        "trajectory_tum.txt",
    ]
    tum = np.loadtxt(out / "maps" / "run1" / "trajectory_tum.txt")
    assert tum.shape == (N_FRAMES, 8)
    assert read_session(out / "maps" / "run1" / "session").n_frames == N_FRAMES
    assert (out / "maps" / "run1" / "map.ply").read_bytes().startswith(b"ply")


def test_reset_service_clears_the_map(run):
    rec, _, out = run
    res = rec.call(Trigger, f"{NODE}/reset", Trigger.Request())
    assert res.success
    res = rec.call(
        SaveMap,
        f"{NODE}/save_map",
        SaveMap.Request(name="after_reset", save_map=False, save_trajectory=True),
    )
    assert res.success, res.message
    assert (out / "maps" / "after_reset" / "trajectory_tum.txt").read_text().strip() == ""


def test_dynamic_parameters_apply_and_read_only_ones_are_refused(run):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import DescribeParameters, SetParameters

    rec, _, _ = run

    def set_param(name, value: ParameterValue):
        req = SetParameters.Request(parameters=[Parameter(name=name, value=value)])
        return rec.call(SetParameters, f"{NODE}/set_parameters", req).results[0]

    ok = set_param(
        "map_publish_period", ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=5.0)
    )
    assert ok.successful
    bad = set_param(
        "on_time_jump", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="explode")
    )
    assert not bad.successful and "on_time_jump" in bad.reason
    ro = set_param(
        "chunk_size", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=10)
    )
    assert not ro.successful
    desc = rec.call(
        DescribeParameters,
        f"{NODE}/describe_parameters",
        DescribeParameters.Request(names=["chunk_size", "map_publish_period"]),
    )
    chunk, period = desc.descriptors
    assert chunk.read_only and chunk.integer_range[0].from_value == 2 and chunk.description
    assert not period.read_only


def test_sigint_exits_cleanly(run):
    _, node, out = run
    assert node.poll() is None, "node died during the run"
    assert stop(node) == 0, (out / "node.log").read_text()
