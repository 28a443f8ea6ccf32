"""The localisation-memory bench runs and tells the modes apart (one short run; the figures
themselves are in docs/benchmarks.md)."""

from __future__ import annotations

import json

from scal3r_ros.tools.bench import localisation


def test_a_short_run_writes_flat_localisation_and_a_growing_mapping_baseline(tmp_path, capsys):
    out = tmp_path / "loc.json"
    args = ["--laps", "2", "--warmup-laps", "1", "--sample", "55", "--json", str(out)]
    assert localisation.main(args) == 0
    report = json.loads(out.read_text())
    loc, mapping = report["modes"]["localisation"], report["modes"]["mapping"]
    assert [s["frames"] for s in loc["samples"]] == [55, 110, 165, 220]
    assert {s["state"] for s in loc["samples"][1:]} == {"localised"}
    assert len({s["map_points"] for s in loc["samples"]}) == 1  # the map as loaded
    assert loc["growth_after_warmup"]["stored_entries"] <= 0.0
    assert mapping["growth_after_warmup"]["map_points"] > 0.2  # the baseline grows
    assert "growth from frame 110" in capsys.readouterr().out


def test_bad_options_exit_2(capsys):
    assert localisation.main(["--laps", "2", "--warmup-laps", "2"]) == 2
    assert "warmup" in capsys.readouterr().err
