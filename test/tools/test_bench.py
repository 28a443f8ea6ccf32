"""`scal3r_bench` runs the whole path on the tiny network and reports every stage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from scal3r_ros.tools import bench


@pytest.mark.ros
def test_bench_tiny_json_has_every_stage(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "--model",
        "tiny",
        "--frames",
        "8",
        "--chunk",
        "4",
        "--overlap",
        "2",
        "--width",
        "160",
        "--height",
        "48",
        "--device",
        "cpu",
        "--json",
        str(out),
    ]
    assert bench.main([*argv, "--rate", "40"]) == 0
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"optimised", "official_like"}
    stride = result["window_stride"]
    assert stride == 2
    for run in result["runs"].values():
        assert set(bench.STAGES) <= set(run["stages_ms"])
        assert all(v >= 0 for v in run["stages_ms"].values())
        assert run["stages_ms"]["publish"] > 0  # the node's outputs built the messages
        assert run["fps"] > 0 and run["network_fps"] > 0
        assert run["frames"] == 8
        # 8 frames in 4/2 windows: [0,4), [2,6), [4,8); the engine places every window
        assert run["windows"] == 3 and run["steady_windows"] == 2
        assert run["map_points"] > 0
        assert run["peak_gpu_bytes"] is None and run["peak_gpu_reserved_bytes"] is None  # CPU
        assert run["host_peak_rss_bytes"] > 0
    assert result["memory"]["host_rss_after_start_bytes"] > 0
    # measured latency (the node's column only): a window's oldest new frame waits at
    # least for the stride's other frames to arrive at the camera rate
    lat = result["runs"]["optimised"]["latency_s"]
    assert lat["rate_hz"] == 40 and lat["frames"] == 4  # frames 4..7: steady windows
    assert lat["max_s"] >= lat["mean_s"] > 0
    assert lat["max_s"] >= (stride - 1) / 40
    assert result["runs"]["official_like"]["latency_s"] == {}
    ratio = result["ratios"]["official_like_vs_optimised"]
    assert ratio["fps_end_to_end"] > 0 and ratio["network_time"] > 0
    printed = capsys.readouterr().out
    assert "FPS end to end, steady" in printed and "pose latency max [s] (measured)" in printed
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


TINY = ["--model", "tiny", "--width", "160", "--height", "48", "--device", "cpu"]
ABLATION = [
    "official_like",
    "+batch_preprocess",
    "+depth_heads_only",
    "+bf16_autocast",
    "optimised",
]
REPO = Path(__file__).resolve().parents[2]
DEVICE_CHECK = REPO / "scripts" / "device_check.sh"


def test_ablation_columns_each_add_one_choice():
    cfg = bench.BenchConfig(ablation=True)
    configs, notes = bench.variants(cfg, "cpu", bf16=True)
    assert list(configs) == ABLATION and notes == []
    for prev, new in zip(ABLATION[:-1], ABLATION[1:], strict=True):
        a, b = asdict(configs[prev]), asdict(configs[new])
        assert len([k for k in a if a[k] != b[k]]) == 1, (prev, new)
    default, _ = bench.variants(bench.BenchConfig(), "cpu", bf16=True)
    assert list(default) == ["optimised", "official_like"]
    assert configs["optimised"] == default["optimised"]
    assert configs["official_like"] == default["official_like"]
    # without bf16 there is no bf16 step; the slim network is still the last one
    configs, notes = bench.variants(cfg, "cpu", bf16=False)
    assert list(configs) == [k for k in ABLATION if k != "+bf16_autocast"] and notes == []
    assert configs["optimised"].slim_model and not configs["optimised"].autocast_bf16
    with pytest.raises(ValueError, match="no-baseline"):
        bench.variants(bench.BenchConfig(ablation=True, baseline=False), "cpu", bf16=True)


def test_bench_config_takes_window_and_device_from_the_sections_and_records_them_flat():
    """BenchConfig holds the node's window and backend sections; the results JSON keeps
    the flat keys it always had (chunk, overlap, device, dtype)."""
    from scal3r_ros.mapping.config import BackendSection, WindowSection

    cfg = bench.BenchConfig(
        window=WindowSection(chunk_size=8, overlap=3),
        backend=BackendSection(device="cpu", dtype="float32"),
    )
    record = cfg.record()
    assert list(record) == [
        "model",
        "checkpoint",
        "frames",
        "chunk",
        "overlap",
        "width",
        "height",
        "device",
        "dtype",
        "rate",
        "official",
        "baseline",
        "seed",
        "ablation",
        "ros",
        "network_ms",
        "workers",
        "latency",
    ]
    assert (record["chunk"], record["overlap"], record["device"], record["dtype"]) == (
        8,
        3,
        "cpu",
        "float32",
    )
    json.dumps(record)


@pytest.mark.parametrize("overlap", ["0", "4"])
def test_bench_refuses_a_window_the_node_refuses(overlap, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--chunk", "4", "--overlap", overlap])
    assert exc.value.code == 2 and "chunk_size > overlap >= 1" in capsys.readouterr().err


def test_bench_ablation_reports_every_step(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "ablation.json"
    argv = [
        *TINY,
        "--frames",
        "6",
        "--chunk",
        "4",
        "--overlap",
        "2",
        "--ablation",
        "--no-ros",
        "--no-latency",
        "--dtype",
        "bfloat16",
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert list(result["runs"]) == ABLATION
    steps = [f"{a}_vs_{b}" for a, b in zip(ABLATION[:-1], ABLATION[1:], strict=True)]
    assert list(result["ratios"]) == [*steps, "official_like_vs_optimised"]
    for key, ratio in result["ratios"].items():
        base, new = (result["runs"][k] for k in key.split("_vs_"))
        assert ratio["fps_end_to_end"] == pytest.approx(new["fps"] / base["fps"])
        assert ratio["network_time"] == pytest.approx(
            base["network_ms_per_window"] / new["network_ms_per_window"]
        )
        assert ratio["preprocess_time"] > 0
    for run in result["runs"].values():
        assert run["windows"] == 2 and run["map_points"] > 0
    printed = capsys.readouterr().out
    assert "| | " + " | ".join(ABLATION) + " |" in printed
    assert "(> 1: +batch_preprocess is faster)" in printed
    assert "(> 1: optimised is faster)" in printed
    assert "bf16 autocast" in result["runs"]["+bf16_autocast"]["description"]
    assert "held in bf16" in result["runs"]["optimised"]["description"]
    assert "fp32" in result["runs"]["+depth_heads_only"]["description"]


def test_bench_without_ros_marks_the_message_stage(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "noros.json"
    argv = [
        *TINY,
        "--frames",
        "4",
        "--chunk",
        "2",
        "--overlap",
        "1",
        "--no-baseline",
        "--no-ros",
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert list(result["runs"]) == ["optimised"] and result["ratios"] == {}
    run = result["runs"]["optimised"]
    stages = run["stages_ms"]
    assert stages["publish"] is None
    # what no stage covers: the steady window time less the measured stages alone
    measured = sum(v for v in stages.values() if v is not None)
    assert run["outside_ms"] == pytest.approx(run["steady_window_ms"] - measured, rel=1e-9)
    assert any("ROS messages: not measured (--no-ros given)" in n for n in result["notes"])
    printed = capsys.readouterr().out
    assert "| ROS messages (build+publish) [ms/window] | n/a (no rclpy) |" in printed
    assert "exclude the message stage" in printed
    assert "| pose latency mean [s] (measured) |" in printed


def test_missing_rclpy_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "rclpy", None)  # import rclpy -> ImportError
    reason = bench.ros_missing()
    assert reason is not None and reason.startswith("rclpy cannot be imported")


def test_device_check_script_parses_and_its_bench_flags_exist():
    assert subprocess.run(["bash", "-n", str(DEVICE_CHECK)], check=False).returncode == 0
    assert (
        subprocess.run(
            ["bash", "-n", str(REPO / "scripts" / "device_prepare.sh")], check=False
        ).returncode
        == 0
    )
    text = DEVICE_CHECK.read_text()
    bench_part, rest = text.split("bench() {", 1)[1].split("geo=(", 1)
    geo_part, rest = rest.split("7. memory probe", 1)
    mem_part, summary_part = rest.split("6. summary.md", 1)
    for part, module in [
        (bench_part, "scal3r_ros.tools.bench"),
        (
            "python3 -m scal3r_ros.tools.bench.geometry" + geo_part,
            "scal3r_ros.tools.bench.geometry",
        ),
        (mem_part, "scal3r_ros.model.memcheck"),
        (summary_part, "scal3r_ros.tools.bench.targets"),
    ]:
        used = set(FLAG.findall(part)) - {"--kill-after"}  # timeout's own
        assert used, module
        assert f"python3 -m {module}" in part or module == "scal3r_ros.tools.bench"
        assert used <= _cli_flags(module), (module, used - _cli_flags(module))


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def _cli_flags(module: str) -> set[str]:
    """The options a CLI's own --help lists (no hand-kept copy to go stale)."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True
    ).stdout
    return set(FLAG.findall(out))


@pytest.mark.slow
def test_device_check_dry_run_on_cpu(tmp_path):
    """The GPU script end to end with the tiny model on CPU: every output, at most 8 files."""
    out = tmp_path / "out"
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # python3 = this python
    env = dict(
        os.environ,
        OUT=str(out),
        DEVICE="cpu",
        MODEL="tiny",
        WIDTH="160",
        HEIGHT="48",
        FRAMES="6",
        CHUNK="4",
        OVERLAP="2",
        FRAMES_LOW="6",
        LOW_CHUNK="4",
        LOW_OVERLAP="2",
        TESTS="test/model/test_gcm.py",
        PARITY="test/model/test_parity.py::test_fixture_is_small_and_tiny",
        RATE="50",
        OMP_NUM_THREADS="1",
        PATH=path,
    )
    proc = subprocess.run(
        ["bash", str(DEVICE_CHECK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        [
            "machine.txt",
            "tests.log",
            "parity.log",
            "log.txt",
            "summary.md",
            "bench_main.json",
            "bench_lowlatency.json",
        ]
    )
    assert len(files) <= 8
    main = json.loads((out / "bench_main.json").read_text())
    modes = ["pipelined", "serial"]
    assert [r["worker"] for r in main["runs"].values()] == modes  # WORKERS=all
    assert all(r["latency_s"]["frames"] > 0 for r in main["runs"].values())
    low = json.loads((out / "bench_lowlatency.json").read_text())
    assert list(low["runs"]) == ["optimised"] and low["config"]["chunk"] == 4
    summary = (out / "summary.md").read_text()
    assert "| official | skipped |" in summary and "n/a (no rclpy)" in summary
    assert main["table_markdown"] in summary and low["table_markdown"] in summary
    # the targets table first, with the device and the date, and the parity result
    targets = summary.split("| step | exit code |", 1)[0]
    assert "| target (issue 14) | goal | measured | met |" in targets
    assert main["machine"]["device_name"] in targets
    assert "| parity fixtures, fp32 | all pass | " in targets
    assert "| parity | 0 |" in summary  # the parity step passed
