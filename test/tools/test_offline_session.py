"""scal3r_offline --save-session / --map: write a session, start the next run in it."""

from __future__ import annotations

import json

import numpy as np

from scal3r_ros.mapping.session import read_session
from scal3r_ros.tools.offline import main

FRAMES = 48
NODE_LIKE = ["--gcs", "causal", "--chunk-size", "16", "--overlap", "8", "--no-progress"]


def test_a_run_saves_a_session_and_the_next_starts_in_it(tmp_path, capsys):
    s1 = tmp_path / "s1"
    synthetic = ["--synthetic", str(FRAMES), *NODE_LIKE]
    rc = main([*synthetic, "--out", str(tmp_path / "a"), "--save-session", str(s1)])
    assert rc == 0
    data = read_session(s1)
    assert data.n_frames == FRAMES and data.parameters.chunk_size == 16
    rc = main([*synthetic, "--out", str(tmp_path / "b"), "--map", str(s1)])
    assert rc == 0
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["session"]["loaded_frames"] == FRAMES and run["session"]["path"] == str(s1)
    assert run["session"]["state"] in ("relocalising", "localised")
    # the trajectory holds the loaded frames and this run's, in the session's frame
    assert len(np.loadtxt(tmp_path / "b" / "trajectory_tum.txt")) == 2 * FRAMES
    assert run["evaluation"]["ate"]["translation_m"]["rmse"] is not None  # this run's frames
    assert "started in session" in capsys.readouterr().out


def test_a_session_of_other_window_sizes_or_a_corrupt_one_is_a_clear_error(tmp_path, capsys):
    s1 = tmp_path / "s1"
    save = ["--save-session", str(s1), *NODE_LIKE]
    assert main(["--synthetic", "32", "--out", str(tmp_path / "a"), *save]) == 0
    capsys.readouterr()
    rc = main(["--synthetic", "32", "--out", str(tmp_path / "b"), "--map", str(s1)])
    err = capsys.readouterr().err
    assert rc == 2 and "chunk_size: saved 16, here 60" in err and "Traceback" not in err
    (s1 / "pose_graph.npz").write_bytes(b"truncated")
    rc = main(["--synthetic", "32", "--out", str(tmp_path / "c"), "--map", str(s1), *NODE_LIKE])
    err = capsys.readouterr().err
    assert rc == 2 and "pose_graph.npz" in err and "Traceback" not in err
