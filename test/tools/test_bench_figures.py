"""Every figure `scal3r_bench` reports is what it says it is: steady figures from the
windows after the first, stage means without window 0, the time outside any stage,
``--network-ms`` flooring the network, measured latency, worker modes and their poses.

Figures are checked against each other and against lower bounds that sleeps guarantee
(never against a machine's speed): the tests hold on a loaded 2-core machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scal3r_ros.tools import bench
from scal3r_ros.tools.bench import runs, targets

SMALL = ["--width", "160", "--height", "48", "--device", "cpu", "--no-ros"]
TINY = ["--model", "tiny", *SMALL]


def _run(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "bench.json"
    assert bench.main([*argv, "--json", str(out)]) == 0
    return json.loads(out.read_text())


# ------------------------------------------------------------ figures from known records
def _stream(done: list[float], timings: list[dict], new: dict[int, int], full: set[int]):
    rec = runs.Recorder(None)
    rec.windows = [
        runs.WindowRecord(k, t, dict(tm), {"rss_bytes": 1.0}, None)
        for k, (t, tm) in enumerate(zip(done, timings, strict=True))
    ]
    rec.new_frames.update(new)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4, 4)))
    return runs.Stream(
        start_s=0.0,
        wall_s=done[-1],
        arrivals_s=[0.1 * i for i in range(9)],
        queue_max=3,
        record=rec,
        full_windows=full,
        last_full_end=8,
        poses=empty,
        map_points=0,
        loops_accepted=0,
        infer_log=runs.InferLog(None),
        device="cpu",
    )


def test_steady_figures_leave_out_window_0_and_a_flushed_window():
    """Windows 0..3 of 4/2 windows, 3 a short flush window: steady = windows 1 and 2."""
    cfg = runs.BenchConfig()  # 4/2
    first = {"prepare": 0.4, "infer": 4.0, "align": 2.0}
    steady = {"prepare": 0.02, "infer": 0.5, "align": 0.3}
    flushed = {"prepare": 0.0, "infer": 9.0, "align": 9.0}
    s = _stream(
        done=[5.0, 6.0, 7.5, 7.7],
        timings=[first, steady, steady, flushed],
        new={0: 4, 1: 2, 2: 2, 3: 1},
        full={0, 1, 2},
    )
    fig = runs.throughput_figures(s, cfg, ros=False)
    assert fig["window_ms"] == pytest.approx([5000, 1000, 1500, 200])
    assert fig["steady_windows"] == 2 and fig["steady_new_frames"] == 4
    assert fig["fps"] == pytest.approx(4 / 2.5)  # new frames / (7.5 - 5.0) s
    assert fig["steady_window_ms"] == pytest.approx(1250)
    assert fig["stages_ms"]["infer"] == pytest.approx(500)  # not 4000 (window 0), not 9000
    assert fig["stages_ms"]["align"] == pytest.approx(300)
    assert fig["stages_ms"]["preprocess"] == pytest.approx(20)
    assert fig["stages_ms"]["publish"] is None
    assert fig["stages_ms_window0"]["infer"] == pytest.approx(4000)
    assert fig["outside_ms"] == pytest.approx(1250 - 500 - 300 - 20)
    assert fig["preprocess_ms_per_frame"] == pytest.approx(1e3 * 0.04 / 4)
    assert fig["network_fps"] == pytest.approx(4 / 1.0)
    o = fig["overlap_ms"]
    assert (o["network"], o["rest"]) == pytest.approx((500, 320))
    assert (o["max"], o["sum"], o["window"]) == pytest.approx((500, 820, 1250))


def test_no_steady_window_is_an_error_not_a_figure():
    s = _stream([1.0], [{"infer": 1.0}], {0: 4}, {0})
    with pytest.raises(ValueError, match="two full windows"):
        runs.throughput_figures(s, runs.BenchConfig(), ros=False)


def test_latency_is_arrival_to_pose_out_for_frames_of_steady_windows():
    cfg = runs.BenchConfig(rate=10.0)  # 4/2
    s = _stream([1.0, 2.0, 3.0], [{}, {}, {}], {}, {0, 1, 2})
    s.record.pose_out_s = {f: 1.0 + 0.5 * f for f in range(9)}  # frame 8: a flush window
    lat = runs.latency_figures(s, cfg, 10.0)
    expected = [1.0 + 0.5 * f - 0.1 * f for f in range(4, 8)]  # frames 4..7 only
    assert lat["frames"] == 4
    assert lat["mean_s"] == pytest.approx(np.mean(expected))
    assert lat["max_s"] == pytest.approx(max(expected))
    assert lat["fill_wait_s"] == pytest.approx(0.2) and lat["queue_max"] == 3


def test_pose_difference_measures_translation_and_rotation():
    def stream_with(c2w: np.ndarray, points: int):
        s = _stream([1.0], [{}], {}, {0})
        s.poses = (np.arange(len(c2w)), np.zeros(len(c2w), np.int64), c2w)
        s.map_points = points
        return s

    a = np.repeat(np.eye(4)[None], 3, axis=0)
    b = a.copy()
    b[1, :3, 3] = [0.0, 0.3, 0.4]
    c, si = np.cos(np.radians(2.0)), np.sin(np.radians(2.0))
    b[2, :3, :3] = [[c, -si, 0], [si, c, 0], [0, 0, 1]]
    d = runs.pose_difference(stream_with(a, 10), stream_with(b, 12))
    assert d["frames"] == 3 and d["missing"] == 0
    assert d["max_translation"] == pytest.approx(0.5)
    assert d["max_rotation_deg"] == pytest.approx(2.0)
    assert d["map_points_difference"] == 2
    same = runs.pose_difference(stream_with(a, 10), stream_with(a.copy(), 10))
    assert same["max_translation"] == 0 and same["max_rotation_deg"] == 0


# ------------------------------------------------------------ whole runs (tiny, CPU)
def test_figures_of_a_run_agree_with_each_other(tmp_path, one_torch_thread):
    """The node's (pipelined) worker, tiny network, 10 frames in 4/2 windows: 4 windows, 3
    steady."""
    result = _run(tmp_path, *TINY, "--frames", "10", "--no-baseline", "--rate", "50")
    r = result["runs"]["optimised"]
    stride = result["window_stride"]
    assert r["worker"] == "pipelined"  # the node's worker mode
    assert (r["windows"], r["steady_windows"]) == (4, 3)
    assert r["steady_new_frames"] == 3 * stride  # every full window adds a stride
    steady_s = r["steady_window_ms"] * r["steady_windows"] / 1e3
    assert r["fps"] == pytest.approx(r["steady_new_frames"] / steady_s, rel=1e-9)
    assert r["steady_window_ms"] == pytest.approx(np.mean(r["window_ms"][1:]), rel=1e-9)
    assert r["fps_wall"] == pytest.approx(10 / r["wall_s"], rel=1e-9)
    assert sum(r["window_ms"]) <= 1e3 * r["wall_s"]
    stages = {k: v for k, v in r["stages_ms"].items() if v is not None}
    assert r["outside_ms"] == pytest.approx(r["steady_window_ms"] - sum(stages.values()))
    if r["worker"] == "serial":  # stages are disjoint parts of a serial window
        assert r["outside_ms"] >= 0
    assert r["network_ms_per_window"] == stages["infer"]
    assert r["overlap_ms"]["sum"] == pytest.approx(sum(stages.values()))
    assert r["window_ms"][0] > 0 and set(r["stages_ms_window0"]) == set(r["stages_ms"])
    assert r["latency_s"]["frames"] == 6  # frames 4..9


def test_network_ms_floors_the_network_and_the_window(tmp_path, one_torch_thread):
    """--network-ms 120 over the tiny network: every inference lasts >= 120 ms (the
    TimedBackend sleeps), so the steady network mean and the serial window do too."""
    t = 120.0
    result = _run(
        tmp_path,
        *TINY,
        "--frames",
        "8",
        "--network-ms",
        f"{t:g}",
        "--workers",
        "serial",
        "--no-latency",
    )
    assert result["config"]["network_ms"] == t
    assert list(result["runs"]) == ["serial"]  # columns: the worker modes
    r = result["runs"]["serial"]
    assert r["stages_ms"]["infer"] >= t and r["network_ms_per_window"] >= t
    assert r["stages_ms_window0"]["infer"] >= t
    assert r["steady_window_ms"] >= t  # a serial window holds its network time
    assert r["overlap_ms"]["max"] >= t
    assert r["latency_s"] == {}
    assert any("TimedBackend(tiny, 120 ms)" in n for n in result["notes"])
    assert "network replaced by 120 ms a window" in result["table_markdown"]


def test_oracle_under_network_ms_counts_loop_verifications(tmp_path):
    """The oracle drive revisits its start: the loop window goes through the (timed)
    network, so its verification is counted and floored too."""
    result = _run(
        tmp_path,
        "--model",
        "oracle",
        "--network-ms",
        "30",
        *SMALL,
        "--frames",
        "24",
        "--chunk",
        "8",
        "--overlap",
        "4",
        "--workers",
        "serial",
        "--no-latency",
    )
    loops = result["runs"]["serial"]["loops"]
    assert loops["verifications"] >= 1 and loops["verify_network_ms"] >= 30
    assert result["runs"]["serial"]["map_points"] > 0


def test_worker_modes_each_get_a_column_and_their_poses_are_compared(tmp_path, one_torch_thread):
    """The node's worker serial and pipelined: one column each, the same poses."""
    result = _run(
        tmp_path,
        *TINY,
        "--frames",
        "6",
        "--no-baseline",
        "--workers",
        "serial,pipelined",
        "--no-latency",
    )
    assert list(result["runs"]) == ["optimised/serial", "optimised/pipelined"]
    assert [r["worker"] for r in result["runs"].values()] == ["serial", "pipelined"]
    r = result["runs"]["optimised/pipelined"]
    d = r["extra"]["poses_vs"]
    assert d["column"] == "optimised/serial" and d["frames"] == 6
    assert d["max_translation"] == 0 and d["max_rotation_deg"] == 0  # same work, same poses
    assert list(result["ratios"]) == ["optimised/serial_vs_optimised/pipelined"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--frames", "4"], "two full windows"),
        (["--network-ms", "-5"], "--network-ms must be >= 0"),
        (["--network-ms", "5", "--ablation"], "need the real network"),
        (["--model", "oracle", "--frames", "300"], "at most 256 frames"),
        (["--workers", "serial,serial"], "distinct modes"),
        (["--workers", "fast"], "distinct modes"),
    ],
)
def test_user_mistakes_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main([*TINY, *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


# ------------------------------------------------------------ the device check's table
def test_targets_table_shows_each_target_with_its_measured_value(tmp_path, one_torch_thread):
    main = _run(tmp_path, *TINY, "--frames", "6", "--no-baseline", "--rate", "50")
    r = main["runs"]["optimised"]
    table = targets.targets_table(main, main, "5 passed in 1.0s")
    assert main["machine"]["device_name"] in table and main["machine"]["date"] in table
    assert f"| end-to-end FPS, steady (4/2) | >= 40 | {r['fps']:.1f} |" in table
    assert f"| 4/2 preset FPS, steady | >= 25 | {r['fps']:.1f} |" in table
    assert f"| {r['latency_s']['max_s']:.2f} s |" in table
    assert "| ratio vs official forward, same run | >= 6x | n/a | - |" in table
    assert "| parity fixtures, fp32 | all pass | 5 passed in 1.0s | yes |" in table
    assert "| serial vs pipelined poses | same | not run (one worker mode) | - |" in table
    rss = main["memory"]["host_rss_after_start_bytes"]
    assert f"| host RSS after start | <= 4 GB | {rss / 1e9:.2f} GB |" in table
    assert "| parity fixtures, fp32 | all pass | 1 failed, 2 passed | NO |" in (
        targets.targets_table(main, None, "1 failed, 2 passed")
    )


def test_targets_cli_reads_the_device_check_files(tmp_path, capsys):
    log = tmp_path / "parity.log"
    log.write_text("....\n4 passed in 2.1s\n")
    assert targets.pytest_summary(log) == "4 passed in 2.1s"
    assert targets.main(["--main", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the results" in capsys.readouterr().err
