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
