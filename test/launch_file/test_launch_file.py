"""launch/mapping.launch.py, checked against test-only stand-ins of launch/launch_ros.

`launch` and `launch_ros` come with a real ROS 2 install and are not on PyPI, so this
test imports the launch file with the stand-ins in standin/ (they only record their
arguments), evaluates the substitutions the way the launch system would, and checks
the node, parameter files, remapping, arguments and conditions it describes.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STANDIN = pathlib.Path(__file__).parent / "standin"


@pytest.fixture
def description():
    saved = {
        k: sys.modules.pop(k)
        for k in list(sys.modules)
        if k.split(".")[0] in ("launch", "launch_ros")
    }
    sys.path.insert(0, str(STANDIN))
    try:
        spec = importlib.util.spec_from_file_location(
            "mapping_launch", ROOT / "launch" / "mapping.launch.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module.generate_launch_description()
    finally:
        sys.path.remove(str(STANDIN))
        for k in [k for k in sys.modules if k.split(".")[0] in ("launch", "launch_ros")]:
            del sys.modules[k]
        sys.modules.update(saved)


def perform(sub, args: dict[str, str]) -> str:
    """Evaluate a substitution like the launch system (share dir = this checkout)."""
    name = type(sub).__name__
    if isinstance(sub, str):
        return sub
    if isinstance(sub, list):
        return "".join(perform(s, args) for s in sub)
    if name == "LaunchConfiguration":
        return args[sub.name]
    if name == "FindPackageShare":
        assert sub.package == "scal3r_ros"
        return str(ROOT)  # share/scal3r_ros holds config/ and launch/ as in the repo
    if name == "PathJoinSubstitution":
        return "/".join(perform(p, args) for p in sub.parts)
    if name == "PythonExpression":
        return str(eval(perform(sub.parts, args)))  # what launch's PythonExpression does
    raise TypeError(name)


def launch_args(description, **overrides) -> dict[str, str]:
    args = {
        e.name: e.default_value
        for e in description.entities
        if type(e).__name__ == "DeclareLaunchArgument"
    }
    assert set(overrides) <= set(args), set(overrides) - set(args)
    return {**args, **overrides}


def entity(description, kind: str, executable: str | None = None):
    found = [
        e
        for e in description.entities
        if type(e).__name__ == kind
        and (executable is None or e.kwargs.get("executable") == executable)
    ]
    assert len(found) == 1
    return found[0]


def test_arguments_and_defaults(description):
    args = launch_args(description)
    assert args == {
        "config": "default",
        "image_topic": "/camera/image_raw",
        "checkpoint": "",
        "use_sim_time": "false",
        "rviz": "false",
        "bag": "",
        "map_file": "",
        "session_mode": "mapping",
    }


@pytest.mark.parametrize(
    "config, expected",
    [
        ("default", ROOT / "config" / "default.yaml"),
        ("kitti", ROOT / "config" / "kitti.yaml"),
        ("low_latency", ROOT / "config" / "low_latency.yaml"),
        ("/opt/my/params.yaml", pathlib.Path("/opt/my/params.yaml")),
    ],
)
def test_node_gets_the_parameter_file_and_overrides(description, config, expected):
    node = entity(description, "Node", "scal3r_mapping")
    kw = node.kwargs
    assert kw["package"] == "scal3r_ros" and kw["name"] == "scal3r_mapping"
    args = launch_args(description, config=config, use_sim_time="true", checkpoint="/w/s.pt")
    params_file = pathlib.Path(perform(kw["parameters"][0], args))
    assert params_file == expected
    if config != "/opt/my/params.yaml":
        assert params_file.is_file()
    overrides = kw["parameters"][1]
    assert overrides["use_sim_time"].value_type is bool
    assert perform(overrides["use_sim_time"].value, args) == "true"
    assert perform(overrides["checkpoint"], args) == "/w/s.pt"
    assert perform(overrides["map_file"], args) == ""
    monday = launch_args(description, map_file="/maps/monday", session_mode="localisation")
    assert perform(overrides["map_file"], monday) == "/maps/monday"
    assert perform(overrides["session_mode"], monday) == "localisation"
    remap = [
        (a, perform(b, launch_args(description, image_topic="/kitti/img")))
        for a, b in kw["remappings"]
    ]
    assert remap == [("/camera/image_raw", "/kitti/img")]


def test_executable_is_a_console_script_of_the_package():
    """The launch file's executable is the package's console script, whose entry point
    (cli.console_main: --help without importing the node and torch) exists."""
    import importlib
    import re

    setup_py = (ROOT / "setup.py").read_text()
    entry = re.search(r'"scal3r_mapping = ([\w.]+):(\w+)"', setup_py)
    assert entry and entry.groups() == ("scal3r_ros.ros.cli", "console_main")
    assert callable(getattr(importlib.import_module(entry[1]), entry[2]))


def test_rviz_and_bag_are_optional(description):
    rviz = entity(description, "Node", "rviz2")
    bag = entity(description, "ExecuteProcess")
    off = launch_args(description)
    on = launch_args(description, rviz="true", bag="/data/kitti_00")
    assert perform(rviz.condition.predicate, off) == "false"
    assert perform(rviz.condition.predicate, on) == "true"
    rviz_file = pathlib.Path(perform(rviz.kwargs["arguments"][1], off))
    assert rviz_file == ROOT / "config" / "scal3r.rviz" and rviz_file.is_file()
    assert perform(bag.condition.predicate, off) == "False"
    assert perform(bag.condition.predicate, on) == "True"
    assert [perform(c, on) for c in bag.cmd] == ["ros2", "bag", "play", "/data/kitti_00", "--clock"]


@pytest.mark.ros
def test_config_files_set_only_declared_and_valid_parameters():
    import yaml

    from scal3r_ros.ros.params import NodeConfig, check_settings, read_parameter_file

    known = set(NodeConfig.__dataclass_fields__) | {"use_sim_time"}
    for path in sorted((ROOT / "config").glob("*.yaml")):
        params = yaml.safe_load(path.read_text())["/**"]["ros__parameters"]
        assert set(params) <= known, (path.name, set(params) - known)
        # typed as rcl types the file, against the types the metadata-declared fields have
        errors, warnings = check_settings(read_parameter_file(path)[0])
        assert not errors and not warnings, (path.name, errors, warnings)
        params.pop("use_sim_time", None)
        NodeConfig(**{**NodeConfig().__dict__, **params}).validate()


def test_rviz_config_shows_the_node_outputs_in_map():
    import yaml

    rviz = yaml.safe_load((ROOT / "config" / "scal3r.rviz").read_text())["Visualization Manager"]
    assert rviz["Global Options"]["Fixed Frame"] == "map"
    topics = {d["Topic"]["Value"]: d for d in rviz["Displays"] if "Topic" in d}
    assert set(topics) == {
        "/scal3r_mapping/map",
        "/scal3r_mapping/cloud",
        "/scal3r_mapping/path",
        "/scal3r_mapping/odometry",
        "/scal3r_mapping/grid",
        "/scal3r_mapping/sensor_cloud",
    }
    # latched outputs need a transient-local subscription, or RViz shows nothing
    for latched in ("/scal3r_mapping/map", "/scal3r_mapping/path", "/scal3r_mapping/grid"):
        assert topics[latched]["Topic"]["Durability Policy"] == "Transient Local"
    assert topics["/scal3r_mapping/map"]["Color Transformer"] == "RGB8"
    assert any(d["Class"] == "rviz_default_plugins/TF" for d in rviz["Displays"])


@pytest.mark.ros
def test_docs_document_every_parameter():
    """The table's rows (name, default, description, run-time changeability) are the ones
    generated from the parameters' metadata: print `parameter_table()` to update it."""
    from scal3r_ros.ros.params import parameter_table

    doc = (ROOT / "docs" / "ros_interface.md").read_text()
    stale = [row for row in parameter_table().splitlines() if row not in doc.splitlines()]
    assert not stale, (
        "docs/ros_interface.md's parameter table differs from the parameters' metadata; "
        f"expected rows: {stale}"
    )
    assert "docs/ros_interface.md" in (ROOT / "README.md").read_text()


@pytest.mark.ros
def test_launch_lets_the_node_finish_its_window_and_save(description):
    """launch sends SIGTERM 5 s after SIGINT by default; the node's stop waits longer."""
    from scal3r_ros.ros.params import NodeConfig

    node = entity(description, "Node", "scal3r_mapping")
    assert float(node.kwargs["sigterm_timeout"]) > NodeConfig().shutdown_window_wait + 5
