"""The robot's other sensors end to end, across processes over DDS (issue 18).

The synthetic camera publishes, beside the images, the drive's odometry, NavSatFix fixes
(1 m noise) and IMU samples (still for a second before the first image, then at every
image; accelerometer only, or with the orientation), on a 6 degree slope: the first
base_link is not level. The node (oracle backend,
each window in its own random Sim(3) gauge, so nothing is metric unless the graph makes
it so) must count every source in ~/status, keep REP-105's map -> odom -> base_link, add
enu -> map once GNSS fixed it, level the map by gravity (REP-103) and map in metres.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_drive
from node_harness import NODE, Recorder, mapping_run, oracle_node_args

from scal3r_ros.mapping.sim import sensors as sim
from scal3r_ros.mapping.sim3 import umeyama
from scal3r_ros.ros.frames import camera_mount, matrix_from_quaternion

pytestmark = pytest.mark.ros
N_FRAMES = 64
CHUNK, OVERLAP = 16, 8
TILT_DEG, HEADING_DEG = 6.0, 30.0
TOPICS = {"odometry_topic": "/wheel/odom", "gnss_topic": "/gps/fix", "imu_topic": "/imu/data"}


def _T(translation, rotation) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion((rotation.x, rotation.y, rotation.z, rotation.w))
    T[:3, 3] = (translation.x, translation.y, translation.z)
    return T


@pytest.fixture(scope="module", params=["accelerometer", "orientation"])
def run(request, tmp_path_factory):
    """The node mapping the camera's drive; the IMU gives gravity by its accelerometer
    (still samples averaged) or by its orientation (``--imu-orientation``)."""
    out = tmp_path_factory.mktemp(f"node_sensors_{request.param}")
    rec = Recorder("sensors_tester")
    args = oracle_node_args(
        out / "maps",
        chunk_size=CHUNK,
        overlap=OVERLAP,
        status_period=0.2,
        oracle_frames=N_FRAMES,
        **TOPICS,
    )
    camera = [
        *("--frames", str(N_FRAMES), "--rate", "40"),
        *("--odometry", TOPICS["odometry_topic"], "--gnss", TOPICS["gnss_topic"]),
        *("--imu", TOPICS["imu_topic"], "--gnss-sigma", "1.0", "--imu-noise", "0.01"),
        *("--tilt-deg", str(TILT_DEG), "--heading-deg", str(HEADING_DEG), "--still-s", "1.0"),
        *(["--imu-orientation"] if request.param == "orientation" else []),
    ]
    try:
        with mapping_run(rec, args, out, camera) as node:

            def done() -> bool:
                st = rec.last(f"{NODE}/status")
                return (
                    st is not None
                    and st.frames_processed >= N_FRAMES
                    and st.chunks_processed >= 7
                    and st.georeferenced
                )

            def delivered() -> bool:  # the last window's messages have arrived (no fixed sleep)
                path = rec.last(f"{NODE}/path")
                return path is not None and len(path.poses) == N_FRAMES

            ok = rec.spin_until(done, 180, [node])
            assert ok, "node did not map the stream:\n" + (out / "node.log").read_text()
            rec.spin_until(delivered, 60, [node])  # the tests below say what is missing, if so
            yield rec, out
    finally:
        rec.close()


def test_status_counts_every_source(run):
    rec, out = run
    st = rec.last(f"{NODE}/status")
    assert st.last_error == "", st.last_error
    # every image stamp had its odometry and fix, the IMU's 100 still samples came first
    # (the node subscribes as to images, input_qos reliable here: nothing lost to load)
    assert st.odometry_used >= 0.9 * N_FRAMES and st.odometry_rejected == 0
    assert st.gnss_used >= 0.9 * N_FRAMES and st.gnss_rejected == 0
    assert st.imu_used >= 0.9 * (100 + N_FRAMES)
    # in the graph: a motion factor between consecutive windows, a prior per frame placed
    assert st.odometry_factors >= 5 and st.gnss_priors >= 0.9 * N_FRAMES - 2 * CHUNK
    assert st.scale_source == "graph"
    assert st.enu_latitude == pytest.approx(sim.DEFAULT_ANCHOR[0], abs=1e-4)
    assert st.enu_longitude == pytest.approx(sim.DEFAULT_ANCHOR[1], abs=1e-4)
    # the first base_link on the slope: ~6 degrees off up (plus the drive's small wobble)
    assert st.map_tilt_deg == pytest.approx(TILT_DEG, abs=0.6)
    diag = {
        kv.key: kv.value
        for m in rec.msgs["/diagnostics"]
        for s in m.status
        for kv in s.values
        if s.name.startswith("scal3r")
    }
    assert "gnss_used" in diag and "map_tilt_deg" in diag, sorted(diag)


def test_tf_has_enu_map_odom_base(run):
    rec, _ = run
    pairs = {(t.header.frame_id, t.child_frame_id) for m in rec.msgs["/tf"] for t in m.transforms}
    assert pairs == {("enu", "map"), ("map", "odom"), ("odom", "base_link")}


def _enu_map(rec) -> np.ndarray:
    last = [t for m in rec.msgs["/tf"] for t in m.transforms if t.header.frame_id == "enu"][-1]
    return _T(last.transform.translation, last.transform.rotation)


def test_map_is_levelled_by_gravity_and_metric(run):
    rec, _ = run
    path = rec.last(f"{NODE}/path")
    assert path is not None and len(path.poses) == N_FRAMES
    est = np.stack([_T(p.pose.position, p.pose.orientation) for p in path.poses])
    drive = make_drive(n_frames=N_FRAMES)
    world = sim.SensorWorld(TILT_DEG, HEADING_DEG)
    mount = camera_mount()
    # REP-103: true up seen in map through every frame's true attitude and mapped attitude
    tilts = [
        sim.tilt_deg(sim.base_orientation_enu(drive, i, world, mount) @ est[i, :3, :3].T)
        for i in range(N_FRAMES)
    ]
    assert np.median(tilts) < 1.0 and max(tilts) < 2.0, (np.median(tilts), max(tilts))
    # the enu -> map transform says the same: map z is ENU's up
    T_enu_map = _enu_map(rec)
    assert sim.tilt_deg(T_enu_map[:3, :3]) < 2.0
    # metric: the graph's scale (GNSS + odometry) makes the path as long as the drive ...
    gt = sim.base_poses(drive.gt_poses(), mount)[:, :3, 3]
    length = np.linalg.norm(np.diff(est[:, :3, 3], axis=0), axis=1).sum()
    assert length == pytest.approx(drive.path_length(), rel=0.03)
    # ... and a similarity fit to the ground truth needs no scale
    assert umeyama(est[:, :3, 3], gt).s == pytest.approx(1.0, rel=0.03)


def test_enu_map_puts_the_path_on_the_fixes(run):
    """The map in ENU (through the published enu -> map) lies on the true positions about
    the ENU origin the status reports (the first fix): georeferenced to ~the fix noise."""
    rec, _ = run
    st = rec.last(f"{NODE}/status")
    path = rec.last(f"{NODE}/path")
    est = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in path.poses])
    T = _enu_map(rec)
    est_enu = est @ T[:3, :3].T + T[:3, 3]
    drive = make_drive(n_frames=N_FRAMES)
    world = sim.SensorWorld(TILT_DEG, HEADING_DEG)
    mount = camera_mount()
    truth = np.stack([sim.antenna_enu(drive, i, world, mount) for i in range(N_FRAMES)])
    origin = (st.enu_latitude, st.enu_longitude, st.enu_altitude)
    truth = sim.reanchor_enu(truth, world.anchor, origin)
    rmse = float(np.sqrt(((est_enu - truth) ** 2).sum(1).mean()))
    assert rmse < 1.5, rmse  # 1 m fixes
