"""Parameter values checked on their own: finite floats, ranges for every number, at start
(file, -p, the node's own declaration) and at run time (issue 16, item 5)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import fields

import pytest
from node_harness import node_args

from scal3r_ros.ros.params import (
    DYNAMIC,
    PARAMS,
    NodeConfig,
    check_settings,
    parse_override,
    value_problem,
)

pytestmark = pytest.mark.ros

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"camera_rpy": [NAN, 0.0, 0.0]}, "camera_rpy must be finite"),
        ({"camera_xyz": [0.0, INF, 0.0]}, "camera_xyz must be finite"),
        ({"oracle_width": -5}, "oracle_width must be in"),
        ({"oracle_frames": 0}, "oracle_frames must be in"),
        ({"map_publish_period": NAN}, "map_publish_period must be finite"),
        ({"voxel_size": -1.0}, "voxel_size must be in"),
        ({"max_image_aspect": 0.5}, "max_image_aspect must be in"),
        ({"time_jump_min_frames": 0}, "time_jump_min_frames must be in"),
        ({"backend": "oracle", "oracle_height": 4}, "refused by the input limits"),
    ],
)
def test_node_config_refuses_values_that_are_not_finite_or_out_of_range(change, match):
    with pytest.raises(ValueError, match=match):
        NodeConfig(**change).validate()


def test_every_number_has_a_range_and_defaults_are_valid():
    """A parameter added later without a range would skip the check (rclpy's ranges are
    the only bound, and only in some versions)."""
    defaults = NodeConfig()
    defaults.validate()
    for f in fields(NodeConfig):
        value = getattr(defaults, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            info = PARAMS[f.name]
            assert info["int_range"] or info["float_range"], f.name
            assert value_problem(f.name, value) is None, f.name


@pytest.mark.parametrize(
    "rule, match",
    [
        ("camera_rpy:=[.nan, 0.0, 0.0]", "camera_rpy must be finite"),
        ("camera_xyz:=[.inf, 0.0, 0.0]", "camera_xyz must be finite"),
        ("oracle_width:=-5", "oracle_width must be in"),
        ("oracle_frames:=0", "oracle_frames must be in"),
        ("max_image_pixels:=10", "max_image_pixels must be in"),
    ],
)
def test_overrides_out_of_range_are_errors_naming_the_override(rule, match):
    errors, _ = check_settings([parse_override(rule)])
    assert len(errors) == 1 and match in errors[0] and f"-p {rule}" in errors[0]


def test_run_time_changes_are_validated_like_start_values():
    """The node's set-parameters callback builds a NodeConfig and validates it: every
    dynamic float is checked for finiteness there too."""
    for name in DYNAMIC:
        value = getattr(NodeConfig(), name)
        if isinstance(value, float):
            with pytest.raises(ValueError, match=f"{name} must be finite"):
                NodeConfig(**{name: NAN}).validate()
            assert math.isfinite(value)


def test_nan_camera_mount_exits_2_at_start(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            *node_args(tmp_path, backend="oracle"),
            "-p",
            "camera_rpy:=[.nan, 0.0, 0.0]",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "camera_rpy must be finite" in proc.stderr and "Traceback" not in proc.stderr
