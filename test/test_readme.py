"""The README serves a new user: its two commands come first, and every console script is named."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _console_scripts() -> list[str]:
    """Names of the console scripts declared in setup.py (read, not executed)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return [ast.literal_eval(e).split("=")[0].strip() for e in value.elts]
    raise AssertionError("no console_scripts in setup.py")


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert README.index("```bash") < 1500  # on the first screen
    lines = [ln.split("#")[0].strip() for ln in first_block.strip().splitlines()]
    assert lines == ["scripts/demo.sh", "scripts/test.sh"]
    for script in lines:
        assert (ROOT / script).is_file()


def test_readme_names_every_console_script():
    scripts = _console_scripts()
    assert len(scripts) >= 10
    missing = [s for s in scripts if f"`{s}`" not in README]
    assert not missing, f"console scripts the README does not mention: {missing}"


def test_readme_links_resolve():
    for target in (
        "docs/ros_interface.md",
        "docs/network.md",
        "docs/benchmarks.md",
        "docs/architecture.md",
        "THIRD_PARTY.md",
        "LICENSE",
        "docs/demo_trajectory.png",
    ):
        assert f"({target})" in README, target
        assert (ROOT / target).is_file(), target


def test_readme_sensor_section_lists_every_sensor_parameter():
    from scal3r_ros.mapping.config import SensorSection
    from scal3r_ros.ros.params import parameter_table

    section = README.split("### Use what the robot already knows", 1)[1].split("\n### ", 1)[0]
    calibration = ("intrinsics", "camera_k", "focal_ratio_warn", "camera_info_topics")
    rows = [r for r in parameter_table().splitlines() if r.split("`")[1] in calibration]
    assert len(rows) == len(calibration)
    for row in parameter_table(SensorSection).strip().splitlines() + rows:
        assert row in section, f"README's sensor table is missing or differs: {row}"
