"""The README's first command: the demo maps the synthetic drive through the node."""

import json
import re
from pathlib import Path

import pytest

from scal3r_ros.tools import demo, soak

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_demo_writes_map_trajectory_plot_and_ate(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCAL3R_CHECKPOINT", str(tmp_path / "absent.pt"))  # force the oracle
    # 125 frames: 16/8 windows end at frame 120, the save's flush places the last five
    assert demo.main(["--frames", "125", "--rate", "40", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "running the ORACLE backend" in out and "ATE (Sim(3)-aligned)" in out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["backend"] == "oracle" and summary["frames_dropped"] == 0
    assert summary["frames_received"] == 125  # every published frame arrived
    assert summary["matched_poses"] == summary["frames_processed"] == 125
    assert summary["chunks"] == 15  # 14 full windows and the tail: the status after the save
    # the two map sizes, named: the node's per-window clouds vs map.ply's merged grid
    live, saved = summary["map_points_live"], summary["map_points_saved"]
    assert saved == soak.ply_vertices(tmp_path / "demo" / "map.ply")
    assert 0 < saved < live  # overlapping windows see the same surfaces
    assert f"{live:,} points live" in out and f"{saved:,} saved in map.ply" in out
    # a drifting oracle (0.15 deg/frame bends) stays within a few % of the path
    assert summary["ate_rmse_m"] < 0.05 * summary["path_length_m"]
    for name in (
        "map.ply",
        "map.pcd",
        "trajectory_tum.txt",
        "trajectory_kitti.txt",
        "trajectory.png",
        "errors.png",
        "evaluation.json",
    ):
        assert (tmp_path / "demo" / name).stat().st_size > 0, name
    # the README names every file the demo writes (its first screen promises that)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    named = set(re.findall(r"`(?:output/(?:demo/)?)?([\w.]+\.\w+)`", readme))
    written = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [n for n in written if n not in named], (sorted(written), named)
