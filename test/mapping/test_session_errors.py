"""A session folder that is corrupt, truncated, incomplete, of another version or of another
engine is refused with one `SessionError` naming the file; writing is atomic and never
replaces a folder that is not a session."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.atomic_io import SaveFolder
from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.loop_closure import LoopClosure
from scal3r_ros.mapping.session import (
    FORMAT_VERSION,
    SessionError,
    SessionParameters,
    read_session,
    write_session,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    drive = make_drive(n_frames=40, seed=1)
    eng = MappingEngine(
        EngineConfig.low_latency(), OracleBackend(drive, OracleConfig(seed=1)), LoopClosure()
    )  # (loop closure: its geometry gives the keyframes theirs)
    push_and_collect(eng, drive)
    return write_session(eng.export_session(), tmp_path_factory.mktemp("s") / "session")


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    dst = tmp_path / "session"
    shutil.copytree(saved, dst)
    return dst


def _rewrite(path: Path, name: str, blob: bytes) -> None:
    """Replace a file and fix its manifest entry: the content checks must catch it."""
    (path / name).write_bytes(blob)
    m = json.loads((path / "manifest.json").read_text())
    m["files"][name] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(m))


def _npz_with(path: Path, name: str, **changes) -> bytes:
    with np.load(path / name) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _thumb(path: Path) -> str:
    return sorted(p.name for p in path.glob("kf_*.jpg"))[1]


def corrupt_byte(p: Path) -> str:
    blob = bytearray((p / "map.npz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (p / "map.npz").write_bytes(bytes(blob))
    return r"map\.npz: checksum mismatch"


def truncate(p: Path) -> str:
    blob = (p / "trajectory.npz").read_bytes()
    (p / "trajectory.npz").write_bytes(blob[: len(blob) // 3])
    return r"trajectory\.npz: \d+ bytes, manifest\.json says \d+ \(truncated"


def remove_thumbnail(p: Path) -> str:
    name = _thumb(p)
    (p / name).unlink()
    return rf"{name}: missing \(listed in manifest\.json\)"


def remove_graph(p: Path) -> str:
    (p / "pose_graph.npz").unlink()
    return r"pose_graph\.npz: missing"


def remove_manifest(p: Path) -> str:
    (p / "manifest.json").unlink()
    return r"manifest\.json: missing"


def extra_file(p: Path) -> str:
    (p / "notes.txt").write_text("mine")
    return r"notes\.txt: not listed in manifest\.json"


def version_bump(p: Path) -> str:
    m = json.loads((p / "manifest.json").read_text())
    m["version"] = FORMAT_VERSION + 1
    (p / "manifest.json").write_text(json.dumps(m))
    return rf"manifest\.json: format version {FORMAT_VERSION + 1} is not supported"


def manifest_not_json(p: Path) -> str:
    (p / "manifest.json").write_text('{"format": ')
    return r"manifest\.json: not valid JSON"


def nan_chunk_pose(p: Path) -> str:
    with np.load(p / "trajectory.npz") as z:
        t = z["chunk_t"].copy()
    t[1, 0] = np.nan
    _rewrite(p, "trajectory.npz", _npz_with(p, "trajectory.npz", chunk_t=t))
    return r"trajectory\.npz: chunk poses has non-finite values"


def nan_frame_pose(p: Path) -> str:
    with np.load(p / "trajectory.npz") as z:
        c2w = z["local_c2w"].copy()
    c2w[3, 0, 3] = np.inf
    _rewrite(p, "trajectory.npz", _npz_with(p, "trajectory.npz", local_c2w=c2w))
    return r"trajectory\.npz: local_c2w has non-finite values"


def not_a_rotation(p: Path) -> str:
    with np.load(p / "pose_graph.npz") as z:
        R = z["node_R"].copy()
    R[0] *= 2.0
    _rewrite(p, "pose_graph.npz", _npz_with(p, "pose_graph.npz", node_R=R))
    return r"pose_graph\.npz: node estimates holds a matrix that is not a rotation"


def wrong_dtype(p: Path) -> str:
    with np.load(p / "map.npz") as z:
        xyz = z["xyz"].astype(np.float64)
    _rewrite(p, "map.npz", _npz_with(p, "map.npz", xyz=xyz))
    return r"map\.npz: xyz has dtype float64, expected float32"


def wrong_shape(p: Path) -> str:
    with np.load(p / "map.npz") as z:
        rgb = z["rgb"][:-1]
    _rewrite(p, "map.npz", _npz_with(p, "map.npz", rgb=rgb))
    return r"map\.npz: rgb has shape"


def pickled_array(p: Path) -> str:
    obj = np.array([{"x": 1}], dtype=object)
    _rewrite(p, "keyframes.npz", _npz_with(p, "keyframes.npz", descriptors=obj))
    return r"keyframes\.npz: not a readable array file"


def dangling_edge(p: Path) -> str:
    with np.load(p / "pose_graph.npz") as z:
        dst = z["edge_dst"].copy()
    dst[0] = 999
    _rewrite(p, "pose_graph.npz", _npz_with(p, "pose_graph.npz", edge_dst=dst))
    return r"pose_graph\.npz: edge_dst names unknown nodes \[999\]"


def keyframe_points_without_conf(p: Path) -> str:
    with np.load(p / "keyframes.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "conf"}
    assert "points" in arrays  # the fixture's keyframes carry geometry
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _rewrite(p, "keyframes.npz", buf.getvalue())
    return r"keyframes\.npz: array 'conf' is missing"


def keyframe_negative_conf(p: Path) -> str:
    with np.load(p / "keyframes.npz") as z:
        conf = z["conf"].copy()
    conf[0, 0, 0] = -1.0
    _rewrite(p, "keyframes.npz", _npz_with(p, "keyframes.npz", conf=conf))
    return r"keyframes\.npz: conf must be >= 0"


def keyframe_nan_points(p: Path) -> str:
    with np.load(p / "keyframes.npz") as z:
        points, conf = z["points"].copy(), z["conf"]
    k = np.argwhere(np.isfinite(conf))[0]
    points[tuple(k)] = np.nan
    _rewrite(p, "keyframes.npz", _npz_with(p, "keyframes.npz", points=points))
    return r"keyframes\.npz: points are not finite where conf is known"


def keyframe_geometry_shape(p: Path) -> str:
    with np.load(p / "keyframes.npz") as z:
        conf = z["conf"][:, :-1]
    _rewrite(p, "keyframes.npz", _npz_with(p, "keyframes.npz", conf=conf))
    return r"keyframes\.npz: conf has shape"


def keyframe_unknown_chunk(p: Path) -> str:
    with np.load(p / "keyframes.npz") as z:
        cids = z["chunk_ids"].copy()
    cids[0] = 999
    _rewrite(p, "keyframes.npz", _npz_with(p, "keyframes.npz", chunk_ids=cids))
    return r"keyframes\.npz: chunk_ids name chunks not in trajectory\.npz"


def not_a_jpeg(p: Path) -> str:
    name = _thumb(p)
    _rewrite(p, name, b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    return rf"{name}: not a readable image"


CASES = [
    corrupt_byte,
    truncate,
    remove_thumbnail,
    remove_graph,
    remove_manifest,
    extra_file,
    version_bump,
    manifest_not_json,
    nan_chunk_pose,
    nan_frame_pose,
    not_a_rotation,
    wrong_dtype,
    wrong_shape,
    pickled_array,
    dangling_edge,
    keyframe_points_without_conf,
    keyframe_negative_conf,
    keyframe_nan_points,
    keyframe_geometry_shape,
    keyframe_unknown_chunk,
    not_a_jpeg,
]


@pytest.mark.parametrize("damage", CASES, ids=[c.__name__ for c in CASES])
def test_damaged_session_is_refused_naming_the_file(copy, damage):
    read_session(copy)  # intact before
    pattern = damage(copy)
    with pytest.raises(SessionError, match=pattern) as info:
        read_session(copy)
    assert "\n" not in str(info.value)


def test_mismatching_parameters_are_refused(saved):
    m = json.loads((saved / "manifest.json").read_text())
    params = SessionParameters.from_dict(m["parameters"])
    other = SessionParameters(60, 30, params.gcs_mode, params.backend, params.use_point_head)
    with pytest.raises(SessionError, match=r"manifest\.json: parameters do not match.*chunk_size"):
        read_session(saved, expected=other)
    assert read_session(saved, expected=params).parameters == params


def test_not_a_session_folder(tmp_path):
    with pytest.raises(SessionError, match="no such folder"):
        read_session(tmp_path / "nothing")
    with pytest.raises(SessionError, match=r"manifest\.json: missing"):
        read_session(tmp_path)


def test_write_replaces_a_session_but_not_a_foreign_folder(saved, tmp_path):
    data = read_session(saved)
    target = tmp_path / "s"
    write_session(data, target)
    first = json.loads((target / "manifest.json").read_text())
    write_session(data, target)  # over a session: replaced whole
    assert read_session(target).n_frames == data.n_frames
    assert json.loads((target / "manifest.json").read_text())["files"] == first["files"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not delete")
    with pytest.raises(FileExistsError, match="thesis.tex"):
        write_session(data, foreign)
    assert (foreign / "thesis.tex").read_text() == "do not delete"
    assert sorted(os.listdir(tmp_path)) == ["mine", "s"]  # no staging folder left


def test_a_failed_write_leaves_the_old_session(saved, tmp_path, monkeypatch):
    data = read_session(saved)
    target = write_session(data, tmp_path / "s")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    calls = []
    real = SaveFolder.write_bytes

    def failing(self, name, blob):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(self, name, blob)

    monkeypatch.setattr(SaveFolder, "write_bytes", failing)
    with pytest.raises(OSError, match="No space"):
        write_session(data, target)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["s"]
    read_session(target)
