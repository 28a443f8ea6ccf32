"""`scal3r_bench.geometry`: every stage timed for the numpy reference and torch, same run."""

from __future__ import annotations

import pytest

from scal3r_ros.tools.bench import geometry


def test_every_stage_has_a_time_per_column_and_the_total_adds_up(capsys, one_torch_thread):
    argv = ["--chunk-size", "8", "--overlap", "4", "--width", "64", "--height", "24"]
    # --threads sets the process's torch threads: the fixture puts them back afterwards
    assert geometry.main([*argv, "--repeats", "1", "--no-cuda", "--threads", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")]
    assert rows[0].startswith("| stage | numpy ms | torch cpu ms |")  # the reference found
    cells = {r.split("|")[1].strip(): r.split("|")[2:4] for r in rows[1:]}
    assert list(cells) == [*geometry.STAGES, "total"]
    for col in (0, 1):
        parts = [float(cells[k][col]) for k in geometry.STAGES]
        assert all(v > 0 for v in parts)
        assert float(cells["total"][col]) == pytest.approx(sum(parts), abs=0.06 * len(parts))


@pytest.mark.parametrize("argv", [["--overlap", "60"], ["--repeats", "0"], ["--width", "4"]])
def test_bad_settings_exit_2(argv, capsys):
    assert geometry.main(argv) == 2
    assert "scal3r_bench.geometry: need" in capsys.readouterr().err
