"""Write a `SessionData` as a session folder, atomically.

Every file is encoded in memory first (its SHA-256 goes into the manifest), then the
folder is written through ``atomic_io.SaveFolder``: a hidden staging folder beside the
target, each file fsynced, then swapped in place of the old folder in one step. A kill
at any moment leaves the old session or the new one, never a mix; an existing folder is
replaced only when it holds nothing but session files.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

import scal3r_ros
from scal3r_ros.mapping.atomic_io import SaveFolder
from scal3r_ros.mapping.map_store import MapConfig, MapStore, write_ply
from scal3r_ros.mapping.session.data import SessionData
from scal3r_ros.mapping.session.format import (
    EDGE_KINDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    KERNELS,
    KEYFRAMES,
    MANIFEST,
    MAP,
    MAP_PLY,
    POSE_GRAPH,
    SESSION_JSON,
    THUMBNAIL_MAX_SIDE,
    TRAJECTORY,
    is_session_file,
    pack_sim3,
    thumbnail_name,
)


def write_session(data: SessionData, path: str | Path) -> Path:
    """Write ``data`` as the session folder ``path`` (replacing an earlier session there);
    sets ``data.created_utc`` / ``software_version``. Returns the folder."""
    path = Path(path)
    data.created_utc = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    data.software_version = scal3r_ros.__version__
    files = encode_files(data)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "created_utc": data.created_utc,
        "software_version": data.software_version,
        "parameters": data.parameters.as_dict(),
        "files": {
            name: {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
            for name, blob in sorted(files.items())
        },
    }
    try:
        present = [n for n in os.listdir(path) if is_session_file(n)]
    except (FileNotFoundError, NotADirectoryError):
        present = []
    with SaveFolder(path.parent, path.name, replaceable=present) as folder:
        for name, blob in files.items():
            folder.write_bytes(name, blob)
        folder.write_bytes(MANIFEST, _json(manifest))
        folder.commit()
    return path


def encode_files(data: SessionData) -> dict[str, bytes]:
    """Every file of the session but the manifest, by name."""
    cameras = sorted(data.cameras)
    cam_index = {c: k for k, c in enumerate(cameras)}
    kf = data.keyframes
    frames = [f.name for f in data.pose_graph.frames]
    session = {
        "n_frames": int(data.n_frames),
        "next_chunk_id": int(data.next_chunk_id),
        "cameras": [
            {
                "id": c,
                "intrinsics": None
                if data.cameras[c].intrinsics is None
                else np.asarray(data.cameras[c].intrinsics, np.float64).tolist(),
                "image_size": None
                if data.cameras[c].image_size is None
                else [int(v) for v in data.cameras[c].image_size],
            }
            for c in cameras
        ],
        "scale": {
            "metres_per_unit": _float_or_none(data.scale.metres_per_unit),
            "source": data.scale.source,
        },
        "map": {
            "voxel_size": float(data.map.voxel_size),
            "n_evicted_chunks": int(data.map.n_evicted_chunks),
            "n_coarsened": int(data.map.n_coarsened),
        },
        "pose_graph": {"frames": frames},
        "keyframes": {
            "count": len(kf),
            "normalised": bool(kf.normalised),
            "descriptor_count": int(kf.descriptor_count),
            "thumbnail_max_side": THUMBNAIL_MAX_SIDE,
        },
    }
    if data.node is not None:
        if not isinstance(data.node, dict):
            raise ValueError("data.node must be a dict (a JSON object)")
        session["node"] = data.node
    files = {
        SESSION_JSON: _json(session),
        TRAJECTORY: _npz(_trajectory_arrays(data)),
        MAP: _npz(_map_arrays(data)),
        MAP_PLY: _map_ply(data),
        POSE_GRAPH: _npz(_graph_arrays(data, frames)),
        KEYFRAMES: _npz(_keyframe_arrays(data, cam_index)),
    }
    unknown = sorted(set(kf.camera_ids) - set(cam_index))
    if unknown:
        raise ValueError(f"keyframes name cameras not in data.cameras: {unknown}")
    for f, jpeg in zip(kf.frame_ids, kf.jpegs, strict=True):
        files[thumbnail_name(int(f))] = jpeg
    return files


def _trajectory_arrays(data: SessionData) -> dict[str, np.ndarray]:
    tr = data.trajectory
    ids = sorted(data.chunk_spans)
    if set(ids) != set(tr.chunk_poses):
        raise ValueError("chunk spans and chunk poses name different chunks")
    s, R, t = pack_sim3([tr.chunk_poses[c] for c in ids])
    return {
        "stamps_ns": np.asarray(data.stamps_ns, np.int64),
        "frame_ids": np.asarray(tr.frame_ids, np.int64),
        "owners": np.asarray(tr.owners, np.int64),
        "local_c2w": np.asarray(tr.local_c2w, np.float64),
        "chunk_ids": np.array(ids, np.int64),
        "chunk_spans": np.array([data.chunk_spans[c] for c in ids], np.int64).reshape(-1, 2),
        "chunk_s": s,
        "chunk_R": R,
        "chunk_t": t,
    }


def _map_arrays(data: SessionData) -> dict[str, np.ndarray]:
    m = data.map
    return {
        "chunk_ids": np.asarray(m.chunk_ids, np.int64),
        "offsets": np.asarray(m.offsets, np.int64),
        "levels": np.asarray(m.levels, np.int64),
        "xyz": np.asarray(m.xyz, np.float32),
        "rgb": np.asarray(m.rgb, np.uint8),
        "conf": np.asarray(m.conf, np.float32),
        "frame": np.asarray(m.frame, np.int64),
    }


def _map_ply(data: SessionData) -> bytes:
    """The merged map (voxelised on the global grid, as ``save_map``) for viewers."""
    store = MapStore(MapConfig(voxel_size=data.map.voxel_size))
    store.restore(data.map, data.trajectory.chunk_poses)
    buf = io.BytesIO()
    write_ply(buf, *store.points(voxelize=True))
    return buf.getvalue()


def _float_or_none(x: float | None) -> float | None:
    return None if x is None else float(x)


def _none_nan(x: float | None) -> float:
    return np.nan if x is None else float(x)


def _graph_arrays(data: SessionData, frames: list[str]) -> dict[str, np.ndarray]:
    g = data.pose_graph
    out: dict[str, np.ndarray] = {"nodes": np.array(g.nodes, np.int64)}
    out["node_s"], out["node_R"], out["node_t"] = pack_sim3([g.estimates[n] for n in g.nodes])
    out["anchor_nodes"] = np.array([n for n, _ in g.anchors], np.int64)
    out["anchor_s"], out["anchor_R"], out["anchor_t"] = pack_sim3([v for _, v in g.anchors])
    e = g.edges
    if any(x.sigmas is None for x in e):
        raise ValueError("an edge without its noise sigmas cannot be saved")
    sig = np.array([x.sigmas for x in e], np.float64).reshape(-1, 7)
    out["edge_src"] = np.array([x.src for x in e], np.int64)
    out["edge_dst"] = np.array([x.dst for x in e], np.int64)
    out["edge_kind"] = np.array([EDGE_KINDS.index(x.kind) for x in e], np.int8)
    out["edge_s"], out["edge_R"], out["edge_t"] = pack_sim3([x.T_dst_src for x in e])
    out["edge_sigmas"] = sig
    out["edge_information"] = np.array([np.diag(1.0 / s**2) for s in sig]).reshape(-1, 7, 7)
    out["edge_kernel"] = np.array([KERNELS.index(x.kernel) for x in e], np.int8)
    out["edge_robust_k"] = np.array([_none_nan(x.robust_k) for x in e], np.float64)
    out["edge_sigma_scale"] = np.array(
        [float(x.info.get("sigma_scale", 1.0)) for x in e], np.float64
    )
    f = g.frames
    out["frame_s"], out["frame_R"], out["frame_t"] = pack_sim3([x.estimate for x in f])
    ps, pR, pt = pack_sim3([x.prior_mean for x in f])
    out["frame_prior_s"], out["frame_prior_R"], out["frame_prior_t"] = ps, pR, pt
    out["frame_prior_sigmas"] = np.array(
        [np.full(7, np.nan) if x.prior_sigmas is None else x.prior_sigmas for x in f], np.float64
    ).reshape(-1, 7)
    p = g.position_priors
    out["prior_node"] = np.array([x.node for x in p], np.int64)
    out["prior_point"] = np.array([x.point_chunk for x in p], np.float64).reshape(-1, 3)
    out["prior_position"] = np.array([x.position for x in p], np.float64).reshape(-1, 3)
    out["prior_sigmas"] = np.array([x.sigmas for x in p], np.float64).reshape(-1, 3)
    out["prior_robust_k"] = np.array([_none_nan(x.robust_k) for x in p], np.float64)
    out["prior_frame"] = np.array([frames.index(x.frame) for x in p], np.int64)
    m = g.motions
    out["motion_a"] = np.array([x.node_a for x in m], np.int64)
    out["motion_b"] = np.array([x.node_b for x in m], np.int64)
    out["motion_c2w_a"] = np.array([x.c2w_a for x in m], np.float64).reshape(-1, 4, 4)
    out["motion_c2w_b"] = np.array([x.c2w_b for x in m], np.float64).reshape(-1, 4, 4)
    out["motion"] = np.array([x.motion for x in m], np.float64).reshape(-1, 4, 4)
    out["motion_sigmas"] = np.array([x.sigmas for x in m], np.float64).reshape(-1, 6)
    out["motion_robust_k"] = np.array([_none_nan(x.robust_k) for x in m], np.float64)
    out["motion_frame"] = np.array([frames.index(x.frame) for x in m], np.int64)
    return out


def _keyframe_arrays(data: SessionData, cam_index: dict[str, int]) -> dict[str, np.ndarray]:
    kf = data.keyframes
    out = {
        "frame_ids": np.asarray(kf.frame_ids, np.int64),
        "chunk_ids": np.asarray(kf.chunk_ids, np.int64),
        "stamps_ns": np.asarray(kf.stamps_ns, np.int64),
        "c2w": np.asarray(kf.c2w, np.float64).reshape(-1, 4, 4),
        "camera_index": np.array([cam_index.get(c, -1) for c in kf.camera_ids], np.int64),
        "descriptors": np.asarray(kf.descriptors, np.float32).reshape(len(kf), -1)
        if len(kf)
        else np.zeros((0, np.shape(kf.descriptors)[-1]), np.float32),
    }
    if kf.descriptor_sum is not None:
        out["descriptor_sum"] = np.asarray(kf.descriptor_sum, np.float64)
    if kf.points is not None and kf.conf is not None:
        out["points"] = np.asarray(kf.points, np.float32)
        out["conf"] = np.asarray(kf.conf, np.float32)
    return out


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _json(obj: object) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
