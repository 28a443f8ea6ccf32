"""Where the package's data files (config/, launch/) are, however it was installed.

colcon installs them into share/scal3r_ros (found through the ament index); an editable
pip install (scripts/setup.sh) leaves them in the checkout next to the package.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "scal3r_ros"


def share_dir() -> Path:
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "config").is_dir() and (checkout / "package.xml").is_file():
        return checkout
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception as exc:  # not in an ament index either
        raise FileNotFoundError(f"cannot find the {PACKAGE} share directory ({exc})") from exc


def config_file(name_or_path: str) -> Path:
    """A parameter file: a path, or a bare name of config/<name>.yaml."""
    if "/" in name_or_path or name_or_path.endswith(".yaml"):
        path = Path(name_or_path).expanduser()
    else:
        path = share_dir() / "config" / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (share_dir() / "config").glob("*.yaml"))
        raise FileNotFoundError(f"no parameter file {path} (bundled configs: {available})")
    return path
