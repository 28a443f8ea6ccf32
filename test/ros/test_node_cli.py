"""The `scal3r_mapping` console script's command line: help, usage mistakes, parameter
files and -p overrides checked before rclpy reads them (exit 2 with one message, no
traceback), unknown parameter names warned about with the closest known name."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rclpy.parameter import Parameter

from scal3r_ros.ros.node import main
from scal3r_ros.ros.params import (
    ParameterInputError,
    check_settings,
    parse_override,
    read_parameter_file,
    split_ros_args,
)

pytestmark = pytest.mark.ros
T = Parameter.Type


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """main() in this process: every case here ends before rclpy.init."""
    rc = main(["scal3r_mapping", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def _node(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scal3r_ros.ros.node", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def _yaml(tmp_path, body: str, name: str = "params.yaml"):
    path = tmp_path / name
    path.write_text(body)
    return path


# ------------------------------------------------------------------------- help
HELP_ARGVS = [
    ["--help"],
    ["-h"],
    ["--ros-args", "--help"],
    ["--config", "synthetic", "--ros-args", "-p", "a:=1", "-h"],
]


@pytest.mark.parametrize("argv", HELP_ARGVS)
def test_help_prints_usage_and_exits_0(argv, capsys):
    rc, out, _ = _run(argv, capsys)
    assert rc == 0
    assert out.startswith("usage: scal3r_mapping") and "--config NAME|PATH" in out
    assert "-p NAME:=VALUE" in out and "--params-file FILE" in out  # the ROS arguments
    assert "chunk_size = 60: frames per window" in out  # every parameter with its default
    assert "progress_log_period = 5.0" in out


def test_console_script_help_lists_parameters_without_importing_torch():
    """``scal3r_mapping --help`` is generated from the parameters' metadata and answers at
    once: the console script imports the node (torch, the network) only to run it."""
    code = (
        "import sys; from scal3r_ros.ros.cli import console_main\n"
        "rc = console_main(['scal3r_mapping', '--help'])\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "overlap = 30: frames shared by consecutive windows" in proc.stdout
    assert proc.stdout.rstrip().endswith("NO_TORCH 0")


# ------------------------------------------------------------------------- usage mistakes
def test_config_without_a_value_is_a_usage_error(capsys):
    rc, _, err = _run(["--config"], capsys)
    assert rc == 2 and "argument --config: expected one argument" in err
    rc, _, err = _run(["--config", "--ros-args", "-p", "chunk_size:=8"], capsys)
    assert rc == 2 and "argument --config: expected one argument" in err


def test_unknown_config_and_unknown_option(capsys):
    rc, _, err = _run(["--config", "no_such_config"], capsys)
    assert rc == 2 and "no parameter file" in err and "synthetic" in err  # lists the bundled
    rc, _, err = _run(["--bogus"], capsys)
    assert rc == 2 and "unrecognized arguments: --bogus" in err


def test_unknown_ros_argument_is_a_clear_error(tmp_path):
    proc = _node(["--ros-args", "--bogus-flag"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "bad ROS arguments" in proc.stderr
    assert "--bogus-flag" in proc.stderr


# ------------------------------------------------------------------------- parameter files
@pytest.mark.parametrize(
    "body, expected",
    [
        ("/**:\n  ros__parameters:\n    chunk_size: [1, 2\n", ":4:1: not valid YAML"),
        ("/**:\n  ros__parameters:\n    chunk_size: 16\n   overlap: 8\n", "not valid YAML"),
        ("/**:\n  chunk_size: 16\n", "'chunk_size' is not under ros__parameters"),
        ("- chunk_size\n", "expected `<node name>: ros__parameters"),
        ("/**:\n  ros__parameters:\n    checkpoint:\n", "checkpoint: no value"),
        ("/**:\n  ros__parameters:\n    camera_xyz: [0.0, 0, 1.5]\n", "one type only"),
    ],
)
def test_malformed_parameter_file_names_file_and_problem(tmp_path, capsys, body, expected):
    path = _yaml(tmp_path, body)
    for argv in (["--config", str(path)], ["--ros-args", "--params-file", str(path)]):
        rc, _, err = _run(argv, capsys)
        assert rc == 2 and str(path) in err and expected in err, err
        assert "RCLError" not in err


def test_malformed_parameter_file_in_a_subprocess_has_no_traceback(tmp_path):
    path = _yaml(tmp_path, "/**:\n  ros__parameters:\n    chunk_size: [1, 2\n")
    proc = _node(["--config", str(path)], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"parameter file {path}:4:1: not valid YAML" in proc.stderr


def test_file_value_of_the_wrong_type_is_refused(tmp_path, capsys):
    path = _yaml(tmp_path, "/**:\n  ros__parameters:\n    voxel_size: 1\n    backend: oracle\n")
    rc, _, err = _run(["--config", str(path)], capsys)
    assert rc == 2 and "voxel_size must be a float" in err and f"{path} gives an integer" in err


# ------------------------------------------------------------------------- -p overrides
@pytest.mark.parametrize(
    "rule, expected",
    [
        ("chunk_size:=abc", "chunk_size must be an integer; -p chunk_size:=abc gives a string"),
        ("chunk_size:=20.0", "chunk_size must be an integer; -p chunk_size:=20.0 gives a float"),
        ("camera_xyz:=[0,0,1]", "camera_xyz must be a list of floats"),
        ("loop_closure:=maybe", "loop_closure must be true or false"),
    ],
)
def test_override_of_the_wrong_type_is_refused_with_or_without_config(rule, expected, capsys):
    """rcl keeps a file's `chunk_size: 16` next to `-p chunk_size:=abc` and rclpy takes the
    integer: without this check the override vanished when --config was given."""
    for config in ([], ["--config", "synthetic"]):
        rc, _, err = _run([*config, "--ros-args", "-p", rule], capsys)
        assert rc == 2 and expected in err, err


@pytest.mark.parametrize("rule", ["chunk_size", "chunk_size:=", "image_topics:=['/a'"])
def test_malformed_override_is_refused(rule, capsys):
    rc, _, err = _run(["--ros-args", "-p", rule], capsys)
    assert rc == 2 and f"-p {rule}" in err, err


def test_override_applies_over_the_config_file(tmp_path):
    # synthetic.yaml sets chunk_size 16, overlap 8: both overrides must reach the node
    proc = _node(
        [
            "--config",
            "synthetic",
            "--ros-args",
            "-p",
            "chunk_size:=12",
            "-p",
            "overlap:=12",
            "-p",
            f"output_dir:={tmp_path}",
        ],
        tmp_path,
    )
    assert proc.returncode == 2 and "chunk_size=12, overlap=12" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------- unknown names
def test_unknown_parameters_are_warned_about_with_a_suggestion(tmp_path):
    path = _yaml(
        tmp_path,
        "/**:\n  ros__parameters:\n    backend: oracle\n    chunk_sise: 16\n"
        "other_node:\n  ros__parameters:\n    not_ours: 1\n",
    )
    # chunk_size == overlap: the node refuses to start right after the warnings
    proc = _node(
        [
            "--config",
            str(path),
            "--ros-args",
            "-p",
            "overlpa:=3",
            "-p",
            "chunk_size:=8",
            "-p",
            "overlap:=8",
            "-p",
            "use_sim_time:=false",
            "-p",
            f"output_dir:={tmp_path}",
        ],
        tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "chunk_size=8, overlap=8" in log, log
    assert "WARN" in log and "unknown parameter 'chunk_sise'" in log and str(path) in log
    assert "did you mean 'chunk_size'?" in log
    assert "unknown parameter 'overlpa' (-p overlpa:=3)" in log
    assert "did you mean 'overlap'?" in log
    assert "not_ours" not in log and "use_sim_time" not in log  # another node's; rclpy's own
    assert "Traceback" not in log


def test_check_settings_warns_only_on_unknown_names():
    rules = (
        "chunk_size:=40",
        "chunk_sise:=40",
        "xyzzy:=1",
        "use_sim_time:=true",
        "qos_overrides./camera.subscription.depth:=5",
    )
    settings = [parse_override(r) for r in rules]
    errors, warnings = check_settings(settings)
    assert errors == []
    assert len(warnings) == 2 and "did you mean 'chunk_size'" in warnings[0]
    assert "'xyzzy'" in warnings[1] and "did you mean" not in warnings[1]


# ------------------------------------------------------------------------- typing as rcl
@pytest.mark.parametrize(
    "text, ptype, value",
    [
        ("16", T.INTEGER, 16),
        ("-3", T.INTEGER, -3),
        ("0x10", T.INTEGER, 16),
        ("1.5", T.DOUBLE, 1.5),
        ("1e-3", T.DOUBLE, 1e-3),
        ("-.inf", T.DOUBLE, float("-inf")),
        ("true", T.BOOL, True),
        ("y", T.BOOL, True),
        ("Off", T.BOOL, False),
        ("abc", T.STRING, "abc"),
        ("'16'", T.STRING, "16"),
        ('"true"', T.STRING, "true"),
        ("1_000", T.STRING, "1_000"),
        ("[0.0, 1.5]", T.DOUBLE_ARRAY, [0.0, 1.5]),
        ("['/a', '/b']", T.STRING_ARRAY, ["/a", "/b"]),
        ("[]", None, []),
    ],
)
def test_override_values_are_typed_as_rcl_types_them(text, ptype, value):
    """rcl's own rules (rcl_yaml_param_parser), not PyYAML's: `1e-3` is a double, `y` a bool."""
    s = parse_override(f"name:={text}")
    assert s.type == ptype and s.value == value


def test_node_sections_and_prefixes_select_what_applies(tmp_path):
    path = _yaml(
        tmp_path,
        "/**:\n  ros__parameters:\n    chunk_size: 30\n"
        "/robot/scal3r_mapping:\n  ros__parameters:\n    overlap: 10\n"
        "scal3r_mapping:\n  ros__parameters:\n    nested:\n      depth: 2\n"
        "camera:\n  ros__parameters:\n    fps: 10\n",
    )
    settings, sections = read_parameter_file(path, "/scal3r_mapping")
    assert {s.name for s in settings} == {"chunk_size", "nested.depth"}
    assert sections == ["/**", "/robot/scal3r_mapping", "/scal3r_mapping", "/camera"]
    settings, _ = read_parameter_file(path, "/robot/scal3r_mapping")
    assert {s.name for s in settings} == {"chunk_size", "overlap"}
    assert parse_override("camera:fps:=3") is None
    assert parse_override("scal3r_mapping:chunk_size:=3").value == 3


def test_split_ros_args_keeps_every_ros_token():
    ros_tokens = ["--ros-args", "-p", "a:=1", "--params-file", "f.yaml", "-r", "__node:=mapper"]
    ros_tokens += ["-r", "__ns:=/robot", "--log-level", "debug", "--"]
    own, ros = split_ros_args(["--config", "kitti", *ros_tokens, "extra"])
    assert own == ["--config", "kitti", "extra"] and not ros.help
    assert ros.overrides == ["a:=1"] and ros.param_files == ["f.yaml"]
    assert ros.node_fqn == "/robot/mapper"
    assert ros.tokens == ros_tokens
    with pytest.raises(ParameterInputError, match="-p needs a value"):
        split_ros_args(["--ros-args", "-p"])
