"""Package-level checks: it imports, and the layer boundaries hold (tools -> ros -> mapping
-> model, no ROS below ros/: the README's "Layout" paragraph)."""

import ast
import pathlib
import subprocess
import sys

import scal3r_ros

PKG = pathlib.Path(scal3r_ros.__file__).parent
ROS_MODULES = (
    "rclpy",
    "rosidl",
    "sensor_msgs",
    "geometry_msgs",
    "nav_msgs",
    "std_msgs",
    "tf2_msgs",
    "diagnostic_msgs",
    "scal3r_ros_msgs",
    "builtin_interfaces",
    "rosbags",
    "scal3r_ros.ros",
    "scal3r_ros.tools",
    "launch",
)


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_version():
    assert scal3r_ros.__version__


def test_core_layers_import_no_ros_statically():
    offenders = []
    for layer in ("model", "mapping"):
        for path in sorted((PKG / layer).rglob("*.py")):
            for name in _imports(path):
                if any(name == m or name.startswith(m + ".") for m in ROS_MODULES):
                    offenders.append(f"{path.relative_to(PKG)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_core_layers_import_no_ros_at_runtime():
    """Import every model/mapping module in a fresh interpreter; no ROS module may load."""
    modules = [
        "scal3r_ros." + ".".join(p.relative_to(PKG).with_suffix("").parts)
        for layer in ("model", "mapping")
        for p in sorted((PKG / layer).rglob("*.py"))
    ]
    modules = [m.removesuffix(".__init__") for m in modules]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {ROS_MODULES!r}"
        " or m.startswith(('scal3r_ros.ros', 'scal3r_ros.tools')))\n"
        "print(len(bad)); print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, bad = out.stdout.splitlines()[-2:]
    assert count == "0", f"ROS modules loaded by model/mapping: {bad}"
    assert len(modules) >= 3


def test_one_formatter_without_exceptions():
    """ruff format applies everywhere: no formatter-skip or formatter-off markers."""
    root = PKG.parent
    marked = [
        str(p.relative_to(root))
        for d in ("scal3r_ros", "test", "launch", "scripts")
        for p in (root / d).rglob("*.py")
        if "# fmt: " + "skip" in p.read_text() or "# fmt: " + "off" in p.read_text()
    ]
    assert not marked, marked
