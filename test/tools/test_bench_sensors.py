"""`scal3r_bench.sensors`: the issue-18 figures (drift with odometry/GNSS, map tilt)."""

from __future__ import annotations

import json

import pytest

from scal3r_ros.tools.bench import sensors


def test_every_row_is_measured_and_odometry_cuts_the_drift(tmp_path, capsys):
    out = tmp_path / "sensors.json"
    argv = ["--frames", "64", "--gnss-sigmas", "2", "--json", str(out)]
    assert sensors.main(argv) == 0
    text = capsys.readouterr().out
    rows = {r.split("|")[1].strip(): r.split("|")[2:-1] for r in text.splitlines() if "|" in r}
    names = [r.name for r in sensors.runs(sensors.SensorBenchConfig(gnss_sigmas=(2.0,)))]
    assert names == [
        "no sensors",
        "odometry",
        "GNSS 2 m",
        "GNSS 2 m + 5 % jumps",
        "odometry + GNSS 2 m + 5 % jumps",
    ]
    assert set(names) <= set(rows)
    assert "without levelling" in rows and "with gravity levelling" in rows

    doc = json.loads(out.read_text())
    runs = {r["name"]: r for r in doc["runs"]}
    assert list(runs) == names
    none, odo = runs["no sensors"], runs["odometry"]
    assert odo["ate_m"] < none["ate_m"], (odo["ate_m"], none["ate_m"])
    assert none["enu_m"] is None and none["scale_error_pct"] is None  # nothing to tie it to
    assert odo["factors"]["odometry"] > 0 and abs(odo["scale_error_pct"]) < 5
    gnss = runs["GNSS 2 m"]
    assert gnss["factors"]["gnss"] == 64 and gnss["enu_m"] > 0
    # the drive on a 5 degree slope: the first base_link is ~5 degrees off, levelled ~0
    tilt = doc["map_tilt"]
    assert tilt["without_levelling_deg"] == pytest.approx(5.0, abs=0.6)
    assert tilt["with_gravity_levelling_deg"] < 0.5


@pytest.mark.parametrize(
    "argv",
    [["--overlap", "16"], ["--frames", "8"], ["--jumps", "2"], ["--gnss-sigmas", "0"]],
)
def test_bad_settings_exit_2(argv, capsys):
    assert sensors.main(argv) == 2
    assert "scal3r_bench.sensors: " in capsys.readouterr().err
