"""`scal3r_synthetic_camera` and the node agree on the drive (issue 13's first item).

The README's three-terminal recipe (`scal3r_mapping --config synthetic` with
`scal3r_synthetic_camera --reliable`) mapped a 200-frame drive with the ground truth of a
300-frame one. The camera now takes the drive from the same parameter file; a camera
told otherwise makes the node report the mismatch instead of mapping it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from scal3r_ros.ros.params import NodeConfig
from scal3r_ros.share import config_file
from scal3r_ros.tools import synthetic_camera


def test_camera_defaults_are_the_synthetic_config_of_the_node():
    params = yaml.safe_load(config_file("synthetic").read_text())["/**"]["ros__parameters"]
    got = synthetic_camera.drive_parameters("synthetic")
    for opt, name in synthetic_camera.DRIVE_PARAMETERS.items():
        assert got[opt] == params.get(name, getattr(NodeConfig(), name)), opt
    assert got["frames"] == params["oracle_frames"] == 300


def test_a_parameter_file_defines_the_drive_and_defaults_fill_the_rest(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(
        "scal3r_mapping:\n  ros__parameters:\n    oracle_frames: 77\n"
        "    oracle_laps: 2\n    chunk_size: 16\n"
    )
    got = synthetic_camera.drive_parameters(str(f))
    d = NodeConfig()
    assert got == {
        "frames": 77,
        "laps": 2.0,
        "seed": d.oracle_seed,
        "width": d.oracle_width,
        "height": d.oracle_height,
    }


def test_a_missing_or_broken_config_exits_2(tmp_path, capsys):
    assert synthetic_camera.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    assert synthetic_camera.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "bad.yaml" in err and "Traceback" not in err


def _synthetic_node(out: Path) -> list[str]:
    """The node as the README runs it (``--config synthetic``), writing under ``out``."""
    return [
        "scal3r_ros.ros.node",
        "--config",
        "synthetic",
        "--ros-args",
        "-p",
        f"output_dir:={out}",
        "-p",
        "save_on_shutdown:=false",
        "-p",
        "status_period:=0.2",
    ]


@pytest.mark.ros
def test_a_camera_on_another_drive_is_reported_by_the_node(tmp_path):
    """The issue's recipe with the old camera default (--frames 200) against the bundled
    config (300): the node's status says why nothing is mapped."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "ros"))
    from node_harness import NODE, Recorder, mapping_run

    rec = Recorder("drive_mismatch_tester")
    args = _synthetic_node(tmp_path)
    try:
        with mapping_run(rec, args, tmp_path, ["--frames", "200", "--rate", "40"]) as node:

            def reported() -> bool:  # error state: once the worker is idle (stream over)
                st = rec.last(f"{NODE}/status")
                return st is not None and st.state == st.STATE_ERROR

            assert rec.spin_until(reported, 120, [node]), (tmp_path / "node.log").read_text()
            st = rec.last(f"{NODE}/status")
            assert "DriveMismatch" in st.last_error and "300 frames" in st.last_error
            assert st.chunks_processed == 0
            assert "not the oracle's drive" in (tmp_path / "node.log").read_text()
    finally:
        rec.close()


@pytest.mark.ros
@pytest.mark.slow
def test_the_readme_recipe_maps_the_whole_drive(tmp_path):
    """`scal3r_mapping --config synthetic` + `scal3r_synthetic_camera --reliable`, nothing
    else: no error, and the save holds a pose for each of the 300 frames (16/8 windows end
    at frame 296: the last four come from the flush before the save)."""
    import numpy as np
    from scal3r_ros_msgs.srv import SaveMap

    sys.path.insert(0, str(Path(__file__).parents[1] / "ros"))
    from node_harness import NODE, Recorder, mapping_run

    rec = Recorder("recipe_tester")
    args = _synthetic_node(tmp_path)
    try:
        with mapping_run(rec, args, tmp_path, ["--rate", "50"]) as node:

            def processed() -> bool:
                st = rec.last(f"{NODE}/status")
                return st is not None and st.frames_processed >= 300

            assert rec.spin_until(processed, 600, [node]), (tmp_path / "node.log").read_text()
            assert rec.last(f"{NODE}/status").last_error == ""
            req = SaveMap.Request(name="run", save_map=False, save_trajectory=True)
            res = rec.call(SaveMap, f"{NODE}/save_map", req)
            assert res.success, res.message
            assert len(np.loadtxt(tmp_path / "run" / "trajectory_tum.txt", ndmin=2)) == 300
    finally:
        rec.close()


# ---------------------------------------------------------------- simulated sensors (issue 18)
def _sensor_args(*extra: str):
    """The camera's parsed options (as ``main`` parses them) for ``extra``."""
    import argparse

    parser = argparse.ArgumentParser()
    synthetic_camera.add_sensor_options(parser)
    return parser.parse_args(list(extra))


def test_without_sensor_options_nothing_but_the_images_is_published():
    from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive

    drive = SyntheticDrive(SyntheticConfig(n_frames=5))
    sensors = synthetic_camera.SimulatedSensors(drive, _sensor_args())
    assert not sensors.active() and sensors.still() == [] and sensors.at_frame(3) == []


def test_sensor_messages_carry_the_drive_in_the_nodes_conventions():
    import numpy as np
    import pymap3d

    from scal3r_ros.mapping.sim import sensors as sim
    from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive
    from scal3r_ros.ros.conversions import stamp_to_ns
    from scal3r_ros.ros.frames import camera_mount, matrix_from_quaternion

    drive = SyntheticDrive(SyntheticConfig(n_frames=30))
    args = _sensor_args(
        *("--odometry", "/odom", "--gnss", "/fix", "--imu", "/imu", "--gnss-sigma", "0"),
        *("--tilt-deg", "5", "--still-s", "0.5", "--imu-rate", "50", "--heading-deg", "20"),
    )
    sensors = synthetic_camera.SimulatedSensors(drive, args)
    still = sensors.still()
    assert len(still) == 25 and all(topic == "/imu" for _, topic, _ in still)
    assert [t for t, _, _ in still] == sorted(t for t, _, _ in still)
    assert still[-1][0] < drive.stamp_ns(0)
    world = sim.SensorWorld(5.0, 20.0)
    mount = camera_mount()
    R0 = sim.base_orientation_enu(drive, 0, world, mount)
    a = still[0][2].linear_acceleration
    assert np.allclose([a.x, a.y, a.z], R0.T @ [0, 0, 9.80665])  # tilted: not (0, 0, g)
    assert still[0][2].orientation_covariance[0] == -1.0  # unknown unless --imu-orientation

    msgs = dict(sensors.at_frame(12))
    odo, fix = msgs["/odom"], msgs["/fix"]
    assert stamp_to_ns(odo.header.stamp) == stamp_to_ns(fix.header.stamp) == drive.stamp_ns(12)
    assert (odo.header.frame_id, odo.child_frame_id) == ("odom", "base_link")
    q, p = odo.pose.pose.orientation, odo.pose.pose.position
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion([q.x, q.y, q.z, q.w])
    T[:3, 3] = [p.x, p.y, p.z]
    assert np.allclose(T, sim.odometry_pose(drive, 12, mount), atol=1e-9)
    assert not any(odo.pose.covariance)  # exact odometry: covariance unknown (all zero)
    enu = pymap3d.geodetic2enu(fix.latitude, fix.longitude, fix.altitude, *sim.DEFAULT_ANCHOR)
    assert np.allclose(enu, sim.antenna_enu(drive, 12, world, mount), atol=1e-3)
    assert fix.position_covariance_type == fix.COVARIANCE_TYPE_DIAGONAL_KNOWN

    oriented = synthetic_camera.SimulatedSensors(
        drive, _sensor_args("--imu", "/i", "--imu-orientation")
    )
    imu = dict(oriented.at_frame(7))["/i"]
    o = imu.orientation
    R = matrix_from_quaternion([o.x, o.y, o.z, o.w])
    assert imu.orientation_covariance[0] > 0
    assert np.allclose(R, sim.base_orientation_enu(drive, 7, sim.SensorWorld(), mount))


def test_noisy_odometry_says_how_uncertain_it_is():
    from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive

    drive = SyntheticDrive(SyntheticConfig(n_frames=30))
    args = _sensor_args("--odometry", "/odom", "--odometry-noise", "0.01")
    sensors = synthetic_camera.SimulatedSensors(drive, args)
    var = [dict(sensors.at_frame(i))["/odom"].pose.covariance[0] for i in (1, 10, 29)]
    assert 0 < var[0] < var[1] < var[2]  # a random walk's variance grows along the drive


@pytest.mark.parametrize(
    "argv",
    [
        ["--gnss-jumps", "1.5"],
        ["--gnss-sigma", "-1"],
        ["--anchor", "91", "0", "0"],
        ["--imu-rate", "0"],
        ["--tilt-deg", "95"],
        ["--odometry", "/camera/image_raw"],
        ["--odometry-noise", "nan"],
    ],
)
def test_bad_sensor_options_exit_2(argv, capsys):
    assert synthetic_camera.main(argv) == 2
    err = capsys.readouterr().err
    assert "[scal3r_synthetic_camera]" in err and "Traceback" not in err


@pytest.mark.ros
def test_the_camera_publishes_the_sensors_beside_the_images(tmp_path):
    """Over ROS: every image stamp has its odometry, fix and IMU sample, the IMU's still
    samples come first, all before the camera exits."""
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image, Imu, NavSatFix

    sys.path.insert(0, str(Path(__file__).parents[1] / "ros"))
    from node_harness import Recorder, start, stop

    from scal3r_ros.ros.conversions import stamp_to_ns

    rec = Recorder("sensor_camera_tester")
    topics = {"/t/odom": Odometry, "/t/fix": NavSatFix, "/t/imu": Imu, "/t/image_raw": Image}
    for topic, typ in topics.items():
        rec.subscribe(topic, typ)
    cam = start(
        [
            "scal3r_ros.tools.synthetic_camera",
            *("--reliable", "--frames", "12", "--rate", "40", "--topic", "/t/image_raw"),
            *("--odometry", "/t/odom", "--gnss", "/t/fix", "--imu", "/t/imu"),
            *("--still-s", "0.3", "--imu-rate", "100", "--wait-subscribers", "60"),
        ],
        tmp_path / "camera.log",
    )
    try:
        assert rec.spin_until(lambda: len(rec.msgs["/t/image_raw"]) == 12, 120, [cam]), (
            tmp_path / "camera.log"
        ).read_text()
        assert rec.spin_until(lambda: cam.poll() is not None, 60)
        rec.executor.spin_once(timeout_sec=0.2)
    finally:
        stop(cam)
        rec.close()
    stamps = {t: [stamp_to_ns(m.header.stamp) for m in rec.msgs[t]] for t in topics}
    images = stamps["/t/image_raw"]
    assert stamps["/t/odom"] == stamps["/t/fix"] == images
    imu = stamps["/t/imu"]
    assert len(imu) == 30 + 12 and imu[30:] == images and max(imu[:30]) < images[0]
