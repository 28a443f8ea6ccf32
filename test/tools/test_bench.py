"""`scal3r_bench` runs the whole path on the tiny network and reports every stage."""

from __future__ import annotations

import json

import pytest

from scal3r_ros.tools import bench


@pytest.mark.ros
def test_bench_tiny_json_has_every_stage(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--model", "tiny", "--frames", "8", "--chunk", "4", "--overlap", "2",
            "--width", "160", "--height", "48", "--device", "cpu", "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"optimised", "official_like"}
    stride = result["window_stride"]
    assert stride == 2
    for run in result["runs"].values():
        assert set(bench.STAGES) <= set(run["stages_ms"])
        assert all(v >= 0 for v in run["stages_ms"].values())
        assert run["fps"] > 0 and run["network_fps"] > 0
        assert run["frames"] == 8
        # 8 frames in 4/2 windows: [0,4), [2,6), [4,8); the engine places every window
        assert run["windows"] == 3
        assert run["map_points"] > 0
        assert run["peak_gpu_bytes"] is None  # CPU
        assert run["host_peak_rss_bytes"] > 0
        # latency = fill wait (stride / rate) + measured window time
        lat = run["latency_s"]
        assert lat["fill_wait_s"] == pytest.approx(stride / result["config"]["rate"])
        assert lat["max_s"] >= lat["mean_s"] > lat["fill_wait_s"]
    ratio = result["ratios"]["official_like_vs_optimised"]
    assert ratio["fps_end_to_end"] > 0 and ratio["network_time"] > 0
    printed = capsys.readouterr().out
    assert "FPS end to end" in printed and "pose latency" in printed
    assert result["table_markdown"] in printed


@pytest.mark.ros
def test_conversion_and_engine_memory_modes_print_their_tables(capsys):
    from scal3r_ros.tools import bench

    assert bench.main(["--conversions"]) == 0
    out = capsys.readouterr().out
    assert "points_to_cloud 200k" in out and "image_to_rgb 1242x375 bgr8" in out
    assert (
        bench.main(
            [
                "--engine-memory",
                "20,40",
                "--width",
                "96",
                "--height",
                "32",
                "--chunk",
                "8",
                "--overlap",
                "4",
                "--max-points",
                "5000",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| 20 |" in out and "| 40 |" in out and "| align |" in out
