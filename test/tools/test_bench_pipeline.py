"""`scal3r_bench.pipeline`: both worker modes run over the real engine and the figures add up."""

from __future__ import annotations

import json

import pytest

from scal3r_ros.tools.bench import pipeline as pipeline_bench


def test_pipeline_bench_measures_both_modes(capsys):
    argv = ["--network-ms", "40", "--windows", "4", "--chunk-size", "8", "--overlap", "4"]
    assert pipeline_bench.main([*argv, "--width", "64", "--height", "24", "--json"]) == 0
    out = capsys.readouterr().out
    assert "model: serial T+P, pipelined max(T, P)" in out and "speed-up" in out
    runs = json.loads(out.strip().splitlines()[-1])["runs"]
    assert [r["mode"] for r in runs] == ["serial", "pipelined"]
    for r in runs:
        assert r["windows"] == 4
        assert r["network_ms"] >= 40.0  # every window's inference lasts the simulated time
        assert r["placement_ms"] > 0.0 and r["window_ms"] > 0.0


@pytest.mark.parametrize(
    "argv",
    [["--network-ms", "-1"], ["--windows", "2"], ["--chunk-size", "8", "--overlap", "8"]],
)
def test_pipeline_bench_rejects_bad_settings_with_exit_code_2(argv, capsys):
    assert pipeline_bench.main(argv) == 2
    assert "scal3r_bench.pipeline:" in capsys.readouterr().err
