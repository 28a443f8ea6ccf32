"""The device check's memory probe runs end to end (here on the CPU with the tiny network)."""

from __future__ import annotations

import json

import pytest

from scal3r_ros.model.memcheck import main


def test_memcheck_tiny_on_cpu(capsys, tmp_path):
    argv = ["--device", "cpu", "--model", "tiny", "--frames", "2", "--camera", "518x42"]
    ckpt = tmp_path / "random.pt"
    argv += ["--random-checkpoint", str(ckpt)]
    assert main([*argv, "--fp32", "--baseline", "--gcm-check"]) == 0
    assert ckpt.is_file()  # written once, then loaded by both builds
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("MEMCHECK "))
    result = json.loads(line[len("MEMCHECK ") :])
    slim, before = result["slim"], result["before_issue14"]
    assert slim["window"]["network_input_hw"] == [42, 518]
    assert slim["build"]["weights_mib"] < before["build"]["weights_mib"]  # no point head
    assert result["gcm_gradient"]["bitwise_equal"] is True
    assert result["gcm_gradient"]["apply_bitwise_equal"] is True
    assert result["gcm_gradient"]["tokens"] == 2 * 3 * 37
    assert result["config"]["random_checkpoint"] == str(ckpt)
    assert slim["build"]["host_rss_growth_peak_mib"] >= 0


def test_memcheck_bad_arguments_exit_2(capsys):
    assert main(["--device", "cpu", "--model", "nope", "--frames", "2", "--camera", "28x28"]) == 2
    assert "unknown Scal3R preset" in capsys.readouterr().err
    try:
        main(["--camera", "wide"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("a bad --camera must exit 2")


def test_memcheck_estimate_needs_no_device(capsys):
    argv = ["--estimate", "--baseline", "--model", "tiny", "--frames", "2", "--camera", "518x42"]
    assert main(argv) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    result = json.loads(line[len("MEMCHECK ") :])
    slim, before = result["estimate"], result["estimate_before_issue14_weights"]
    assert 0 < slim["weights_mib"] < before["weights_mib"]  # bf16 trunk, no point head
    assert slim["activations_peak_mib"] > 0
    total = slim["weights_mib"] + slim["activations_peak_mib"]
    assert slim["peak_allocated_mib"] == pytest.approx(total)
