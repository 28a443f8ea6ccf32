"""Read and validate a session folder into a `SessionData`.

Everything is checked before anything is used, and every problem is one `SessionError`
naming the file: the manifest (format name, version, parameters), the folder's listing
against it (missing, extra or non-plain files), each file's size and SHA-256 (a truncated
or corrupt file), then each file's content: JSON fields, array names, dtypes and shapes,
finite poses with positive scales and true rotations, ids that refer to each other.
Arrays are read with ``allow_pickle=False``: nothing in a session is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scal3r_ros.mapping.map_store import MapSnapshot
from scal3r_ros.mapping.pose_graph import (
    Edge,
    ExternalFrame,
    PoseGraphState,
    PositionPrior,
    RelativeMotion,
)
from scal3r_ros.mapping.session.data import (
    CameraInfo,
    ScaleState,
    SessionData,
    SessionParameters,
)
from scal3r_ros.mapping.session.format import (
    DATA_FILES,
    EDGE_KINDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    KERNELS,
    KEYFRAMES,
    MANIFEST,
    MAP,
    POSE_GRAPH,
    SESSION_JSON,
    THUMBNAIL,
    THUMBNAIL_MAX_SIDE,
    TRAJECTORY,
    ArrayFile,
    SessionError,
    optional_float,
    thumbnail_name,
    unpack_sim3,
)
from scal3r_ros.mapping.session.keyframes import Keyframes
from scal3r_ros.mapping.trajectory import TrajectoryState


def read_session(path: str | Path, expected: SessionParameters | None = None) -> SessionData:
    """The session in folder ``path``, fully validated; ``expected``: the loading engine's
    parameters, any difference refused. Raises `SessionError` (one line, names the file)."""
    path = Path(path)
    if not path.is_dir():
        raise SessionError(f"{path}: not a session folder (no such folder)")
    manifest = _manifest(path)
    params = _parameters(manifest)
    if expected is not None and (diff := params.mismatches(expected)):
        raise SessionError(f"{MANIFEST}: parameters do not match this engine ({'; '.join(diff)})")
    blobs = _files(path, manifest["files"])
    session = _json(SESSION_JSON, blobs[SESSION_JSON])
    meta = _session_meta(session)
    stamps, spans, traj = _trajectory(blobs[TRAJECTORY], meta)
    snap = _map(blobs[MAP], meta, set(traj.chunk_poses))
    graph = _graph(blobs[POSE_GRAPH], meta)
    keyframes = _keyframes(blobs[KEYFRAMES], meta, blobs)
    if not {int(c) for c in keyframes.chunk_ids} <= set(traj.chunk_poses):
        raise SessionError(f"{KEYFRAMES}: chunk_ids name chunks not in {TRAJECTORY}")
    return SessionData(
        parameters=params,
        n_frames=meta["n_frames"],
        next_chunk_id=meta["next_chunk_id"],
        stamps_ns=stamps,
        chunk_spans=spans,
        trajectory=traj,
        map=snap,
        pose_graph=graph,
        keyframes=keyframes,
        cameras=meta["cameras"],
        scale=meta["scale"],
        created_utc=manifest["created_utc"],
        software_version=manifest["software_version"],
        node=meta["node"],
    )


# ---------------------------------------------------------------- manifest and files
def _json(name: str, blob: bytes) -> dict:
    try:
        obj = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise SessionError(f"{name}: expected a JSON object")
    return obj


def _field(name: str, obj: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise SessionError(f"{name}: field {key!r} is missing")
    v = obj[key]
    bad_bool = isinstance(v, bool) and kind in (int, float)
    if bad_bool or not isinstance(v, kind):
        raise SessionError(f"{name}: field {key!r} has the wrong type ({type(v).__name__})")
    return v


def _manifest(path: Path) -> dict:
    try:
        blob = _read_plain(path, MANIFEST)
    except FileNotFoundError:
        raise SessionError(f"{MANIFEST}: missing (not a session folder?)") from None
    m = _json(MANIFEST, blob)
    if m.get("format") != FORMAT_NAME:
        raise SessionError(f"{MANIFEST}: format is {m.get('format')!r}, expected {FORMAT_NAME!r}")
    version = m.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise SessionError(
            f"{MANIFEST}: format version {version!r} is not supported "
            f"(this software reads version {FORMAT_VERSION})"
        )
    for key in ("created_utc", "software_version"):
        _field(MANIFEST, m, key, str)
    files = _field(MANIFEST, m, "files", dict)
    for name, entry in files.items():
        if not (name in DATA_FILES or THUMBNAIL.fullmatch(name)):
            raise SessionError(f"{MANIFEST}: lists {name!r}, which no session holds")
        if not isinstance(entry, dict):
            raise SessionError(f"{MANIFEST}: entry of {name} is not an object")
        size = _field(MANIFEST, entry, "bytes", int)
        digest = _field(MANIFEST, entry, "sha256", str)
        if size < 0 or len(digest) != 64:
            raise SessionError(f"{MANIFEST}: entry of {name} is malformed")
    missing = [n for n in DATA_FILES if n not in files]
    if missing:
        raise SessionError(f"{MANIFEST}: does not list {', '.join(missing)}")
    return m


def _parameters(m: dict) -> SessionParameters:
    try:
        return SessionParameters.from_dict(_field(MANIFEST, m, "parameters", dict))
    except ValueError as exc:
        if isinstance(exc, SessionError):
            raise
        raise SessionError(f"{MANIFEST}: {exc}") from None


def _read_plain(folder: Path, name: str) -> bytes:
    """A plain file's bytes, never through a symbolic link."""
    fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise SessionError(f"{name}: not a plain file")
        return f.read()


def _files(path: Path, files: dict) -> dict[str, bytes]:
    """Each listed file's bytes, checked against the manifest; nothing unlisted."""
    present = set(os.listdir(path)) - {MANIFEST}
    extra = sorted(present - set(files))
    if extra:
        raise SessionError(f"{extra[0]}: not listed in {MANIFEST} (extra file in the session)")
    blobs: dict[str, bytes] = {}
    for name, entry in sorted(files.items()):
        if name not in present:
            raise SessionError(f"{name}: missing (listed in {MANIFEST})")
        try:
            blob = _read_plain(path, name)
        except OSError as exc:
            raise SessionError(f"{name}: cannot be read ({exc.strerror or exc})") from None
        if len(blob) != entry["bytes"]:
            raise SessionError(
                f"{name}: {len(blob)} bytes, {MANIFEST} says {entry['bytes']} (truncated or "
                "changed)"
            )
        if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
            raise SessionError(f"{name}: checksum mismatch (corrupt or changed)")
        blobs[name] = blob
    return blobs


def _npz(name: str, blob: bytes, optional=()) -> ArrayFile:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zip/npy parse errors of any kind, object arrays
        raise SessionError(f"{name}: not a readable array file ({exc})") from None
    return ArrayFile(name, arrays, optional)


# ---------------------------------------------------------------- session.json
def _session_meta(s: dict) -> dict:
    n = SESSION_JSON
    out: dict[str, Any] = {
        "n_frames": _field(n, s, "n_frames", int),
        "next_chunk_id": _field(n, s, "next_chunk_id", int),
    }
    if out["n_frames"] < 0 or out["next_chunk_id"] < 0:
        raise SessionError(f"{n}: negative n_frames or next_chunk_id")
    cams: dict[str, CameraInfo] = {}
    order: list[str] = []
    for c in _field(n, s, "cameras", list):
        if not isinstance(c, dict):
            raise SessionError(f"{n}: a camera entry is not an object")
        cid = _field(n, c, "id", str)
        K = c.get("intrinsics")
        size = c.get("image_size")
        try:
            K = None if K is None else np.array(K, np.float64)
            size = None if size is None else tuple(int(v) for v in size)
        except (TypeError, ValueError):
            raise SessionError(f"{n}: camera {cid!r} has malformed intrinsics") from None
        if K is not None and (K.shape != (3, 3) or not np.isfinite(K).all()):
            raise SessionError(f"{n}: camera {cid!r} intrinsics are not a finite 3x3 matrix")
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise SessionError(f"{n}: camera {cid!r} image_size must be [height, width]")
        cams[cid] = CameraInfo(K, size)  # type: ignore[arg-type]
        order.append(cid)
    out["cameras"], out["camera_order"] = cams, order
    sc = _field(n, s, "scale", dict)
    mpu = sc.get("metres_per_unit")
    if mpu is not None and (
        isinstance(mpu, bool) or not isinstance(mpu, int | float) or not mpu > 0
    ):
        raise SessionError(f"{n}: scale.metres_per_unit must be a positive number or null")
    out["scale"] = ScaleState(None if mpu is None else float(mpu), _field(n, sc, "source", str))
    m = _field(n, s, "map", dict)
    out["voxel_size"] = float(_field(n, m, "voxel_size", int | float))
    out["n_evicted_chunks"] = _field(n, m, "n_evicted_chunks", int)
    out["n_coarsened"] = _field(n, m, "n_coarsened", int)
    if not (np.isfinite(out["voxel_size"]) and out["voxel_size"] >= 0):
        raise SessionError(f"{n}: map.voxel_size must be finite and >= 0")
    frames = _field(n, _field(n, s, "pose_graph", dict), "frames", list)
    if not all(isinstance(f, str) for f in frames) or len(set(frames)) != len(frames):
        raise SessionError(f"{n}: pose_graph.frames must be distinct names")
    out["frames"] = frames
    k = _field(n, s, "keyframes", dict)
    out["kf_count"] = _field(n, k, "count", int)
    out["kf_normalised"] = _field(n, k, "normalised", bool)
    out["kf_descriptor_count"] = _field(n, k, "descriptor_count", int)
    node = s.get("node")
    if node is not None and not isinstance(node, dict):
        raise SessionError(f"{n}: node must be an object (the saving node's placement)")
    out["node"] = node
    return out


# ---------------------------------------------------------------- arrays
def _ids_in(f: ArrayFile, key: str, ids: np.ndarray, allowed: set[int], what: str) -> None:
    bad = sorted({int(i) for i in ids} - allowed)
    if bad:
        raise SessionError(f"{f.name}: {key} names unknown {what} {bad[:5]}")


def _trajectory(blob: bytes, meta: dict):
    f = _npz(TRAJECTORY, blob)
    n = meta["n_frames"]
    stamps = f.get("stamps_ns", "int64", (n,))
    ids = f.get("frame_ids", "int64", ("N",))
    owners = f.get("owners", "int64", ("N",))
    local = f.finite("local_c2w", f.get("local_c2w", "float64", ("N", 4, 4)))
    cids = f.get("chunk_ids", "int64", ("C",))
    spans = f.get("chunk_spans", "int64", ("C", 2))
    poses = unpack_sim3(
        TRAJECTORY,
        "chunk poses",
        f.get("chunk_s", "float64", ("C",)),
        f.get("chunk_R", "float64", ("C", 3, 3)),
        f.get("chunk_t", "float64", ("C", 3)),
    )
    f.check_keys(
        {"stamps_ns", "frame_ids", "owners", "local_c2w", "chunk_ids", "chunk_spans"}
        | {"chunk_s", "chunk_R", "chunk_t"}
    )
    if len(ids) and ((np.diff(ids) <= 0).any() or ids[0] < 0 or ids[-1] >= n):
        raise SessionError(f"{TRAJECTORY}: frame_ids must increase within [0, n_frames)")
    if (
        len(np.unique(cids)) != len(cids)
        or (cids >= meta["next_chunk_id"]).any()
        or (cids < 0).any()
    ):
        raise SessionError(f"{TRAJECTORY}: chunk_ids must be distinct, in [0, next_chunk_id)")
    if len(spans) and (
        (spans[:, 0] < 0).any() or (spans[:, 1] > n).any() or (spans[:, 0] >= spans[:, 1]).any()
    ):
        raise SessionError(f"{TRAJECTORY}: chunk_spans must lie in [0, n_frames)")
    _ids_in(f, "owners", owners, {int(c) for c in cids}, "chunks")
    chunk_poses = {int(c): p for c, p in zip(cids, poses, strict=True)}
    span_map = {int(c): (int(a), int(b)) for c, (a, b) in zip(cids, spans, strict=True)}
    return stamps, span_map, TrajectoryState(ids, stamps[ids], owners, local, chunk_poses)


def _map(blob: bytes, meta: dict, chunks: set[int]) -> MapSnapshot:
    f = _npz(MAP, blob)
    cids = f.get("chunk_ids", "int64", ("C",))
    offsets = f.get("offsets", "int64", (len(cids) + 1,))
    levels = f.get("levels", "int64", ("C",))
    xyz = f.finite("xyz", f.get("xyz", "float32", ("M", 3)))
    rgb = f.get("rgb", "uint8", ("M", 3))
    conf = f.get("conf", "float32", ("M",))
    frame = f.get("frame", "int64", ("M",))
    f.check_keys({"chunk_ids", "offsets", "levels", "xyz", "rgb", "conf", "frame"})
    if offsets[0] != 0 or offsets[-1] != len(xyz) or (np.diff(offsets) < 0).any():
        raise SessionError(f"{MAP}: offsets do not split the points into chunks")
    if len(cids) > 1 and (np.diff(cids) <= 0).any():
        raise SessionError(f"{MAP}: chunk_ids must increase")
    if (levels < 0).any():
        raise SessionError(f"{MAP}: negative coarsening levels")
    _ids_in(f, "chunk_ids", cids, chunks, "chunks (not in trajectory.npz)")
    return MapSnapshot(
        meta["voxel_size"],
        cids,
        offsets,
        levels,
        xyz,
        rgb,
        conf,
        frame,
        meta["n_evicted_chunks"],
        meta["n_coarsened"],
    )


def _graph(blob: bytes, meta: dict) -> PoseGraphState:
    f = _npz(POSE_GRAPH, blob)
    name = POSE_GRAPH
    frames = meta["frames"]

    def sims(prefix: str, dim: str, what: str):
        return unpack_sim3(
            name,
            what,
            f.get(f"{prefix}_s", "float64", (dim,)),
            f.get(f"{prefix}_R", "float64", (dim, 3, 3)),
            f.get(f"{prefix}_t", "float64", (dim, 3)),
        )

    nodes = f.get("nodes", "int64", ("N",))
    if len(np.unique(nodes)) != len(nodes):
        raise SessionError(f"{name}: nodes are not distinct")
    node_set = {int(n) for n in nodes}
    estimates = dict(zip((int(n) for n in nodes), sims("node", "N", "node estimates"), strict=True))
    anchors = f.get("anchor_nodes", "int64", ("A",))
    _ids_in(f, "anchor_nodes", anchors, node_set, "nodes")
    if len(nodes) and not len(anchors):
        raise SessionError(f"{name}: no anchor holds the graph")
    anchor_values = sims("anchor", "A", "anchor priors")
    src = f.get("edge_src", "int64", ("E",))
    dst = f.get("edge_dst", "int64", ("E",))
    _ids_in(f, "edge_src", src, node_set, "nodes")
    _ids_in(f, "edge_dst", dst, node_set, "nodes")
    kind = f.get("edge_kind", "int8", ("E",))
    kernel = f.get("edge_kernel", "int8", ("E",))
    if ((kind < 0) | (kind >= len(EDGE_KINDS))).any():
        raise SessionError(f"{name}: edge_kind holds unknown codes")
    if ((kernel < 0) | (kernel >= len(KERNELS))).any():
        raise SessionError(f"{name}: edge_kernel holds unknown codes")
    T = sims("edge", "E", "edge transforms")
    sig = f.finite("edge_sigmas", f.get("edge_sigmas", "float64", ("E", 7)))
    info = f.finite("edge_information", f.get("edge_information", "float64", ("E", 7, 7)))
    if (sig <= 0).any():
        raise SessionError(f"{name}: edge_sigmas must be > 0")
    diag = np.array([np.diag(1.0 / s**2) for s in sig]).reshape(-1, 7, 7)
    if not np.allclose(info, diag, rtol=1e-9, atol=0.0):
        raise SessionError(f"{name}: edge_information does not match edge_sigmas")
    rk = f.get("edge_robust_k", "float64", ("E",))
    scale = f.finite("edge_sigma_scale", f.get("edge_sigma_scale", "float64", ("E",)))
    edges = []
    for k in range(len(src)):
        kern, robust_k = KERNELS[kernel[k]], optional_float(rk[k])
        if kern != "none" and (robust_k is None or not robust_k > 0):
            raise SessionError(f"{name}: edge {k} has a robust kernel without a width")
        e_info: dict = {"sigma_scale": float(scale[k])}
        if EDGE_KINDS[kind[k]] == "loop":
            e_info = {"robust_k": robust_k, **e_info}
        edges.append(
            Edge(
                int(src[k]), int(dst[k]), T[k], EDGE_KINDS[kind[k]], e_info, sig[k], kern, robust_k
            )
        )
    est = sims("frame", "F", "external frames")
    mean = sims("frame_prior", "F", "external frame priors")
    fsig = f.get("frame_prior_sigmas", "float64", ("F", 7))
    if len(est) != len(frames):
        raise SessionError(f"{name}: {len(est)} external frames, {SESSION_JSON} names {frames}")
    ext = []
    for k, fname in enumerate(frames):
        s = fsig[k]
        if not (np.isnan(s).all() or (np.isfinite(s).all() and (s > 0).all())):
            raise SessionError(f"{name}: frame_prior_sigmas of {fname!r} are malformed")
        ext.append(ExternalFrame(fname, est[k], mean[k], None if np.isnan(s).all() else s))

    def frame_of(key: str, dim: str) -> list[str]:
        idx = f.get(key, "int64", (dim,))
        if ((idx < 0) | (idx >= len(frames))).any():
            raise SessionError(f"{name}: {key} names unknown external frames")
        return [frames[i] for i in idx]

    p_node = f.get("prior_node", "int64", ("P",))
    _ids_in(f, "prior_node", p_node, node_set, "nodes")
    p_point = f.finite("prior_point", f.get("prior_point", "float64", ("P", 3)))
    p_pos = f.finite("prior_position", f.get("prior_position", "float64", ("P", 3)))
    p_sig = f.finite("prior_sigmas", f.get("prior_sigmas", "float64", ("P", 3)))
    if (p_sig <= 0).any():
        raise SessionError(f"{name}: prior_sigmas must be > 0")
    p_k = f.get("prior_robust_k", "float64", ("P",))
    p_frame = frame_of("prior_frame", "P")
    priors = [
        PositionPrior(
            int(p_node[k]), p_point[k], p_pos[k], p_sig[k], optional_float(p_k[k]), p_frame[k]
        )
        for k in range(len(p_node))
    ]
    m_a = f.get("motion_a", "int64", ("M",))
    m_b = f.get("motion_b", "int64", ("M",))
    _ids_in(f, "motion_a", m_a, node_set, "nodes")
    _ids_in(f, "motion_b", m_b, node_set, "nodes")
    m_ca = f.finite("motion_c2w_a", f.get("motion_c2w_a", "float64", ("M", 4, 4)))
    m_cb = f.finite("motion_c2w_b", f.get("motion_c2w_b", "float64", ("M", 4, 4)))
    m_T = f.finite("motion", f.get("motion", "float64", ("M", 4, 4)))
    m_sig = f.finite("motion_sigmas", f.get("motion_sigmas", "float64", ("M", 6)))
    if (m_sig <= 0).any():
        raise SessionError(f"{name}: motion_sigmas must be > 0")
    m_k = f.get("motion_robust_k", "float64", ("M",))
    m_frame = frame_of("motion_frame", "M")
    motions = [
        RelativeMotion(
            int(m_a[k]),
            m_ca[k],
            int(m_b[k]),
            m_cb[k],
            m_T[k],
            m_sig[k],
            m_frame[k],
            optional_float(m_k[k]),
        )
        for k in range(len(m_a))
    ]
    known = {
        "nodes",
        "anchor_nodes",
        "frame_prior_sigmas",
        "motion",
        *(f"edge_{k}" for k in ("src", "dst", "kind", "kernel", "sigmas", "information")),
        *(f"edge_{k}" for k in ("robust_k", "sigma_scale")),
        *(f"prior_{k}" for k in ("node", "point", "position", "sigmas", "robust_k", "frame")),
        *(f"motion_{k}" for k in ("a", "b", "c2w_a", "c2w_b", "sigmas", "robust_k", "frame")),
    }
    for prefix in ("node", "anchor", "edge", "frame", "frame_prior"):
        known |= {f"{prefix}_s", f"{prefix}_R", f"{prefix}_t"}
    f.check_keys(known)
    return PoseGraphState(
        [int(n) for n in nodes],
        estimates,
        [(int(a), v) for a, v in zip(anchors, anchor_values, strict=True)],
        edges,
        ext,
        priors,
        motions,
    )


def _keyframes(blob: bytes, meta: dict, blobs: dict[str, bytes]) -> Keyframes:
    f = _npz(KEYFRAMES, blob, optional=("descriptor_sum", "points", "conf"))
    ids = f.get("frame_ids", "int64", ("K",))
    cids = f.get("chunk_ids", "int64", ("K",))
    stamps = f.get("stamps_ns", "int64", ("K",))
    c2w = f.finite("c2w", f.get("c2w", "float64", ("K", 4, 4)))
    cam = f.get("camera_index", "int64", ("K",))
    desc = f.finite("descriptors", f.get("descriptors", "float32", ("K", "D")))
    dsum = None
    if f.has("descriptor_sum"):
        dsum = f.finite("descriptor_sum", f.get("descriptor_sum", "float64", ("D",)))
    points = conf = None
    if f.has("points") or f.has("conf"):  # relocalisation geometry: both or neither
        points = f.get("points", "float32", ("K", "h", "w", 3))
        conf = f.get("conf", "float32", ("K", "h", "w"))
        known = np.isfinite(conf)
        if np.isinf(conf).any() or (conf[known] < 0).any():
            raise SessionError(f"{KEYFRAMES}: conf must be >= 0 (NaN: invalid)")
        if not np.isfinite(points[known]).all():
            raise SessionError(f"{KEYFRAMES}: points are not finite where conf is known")
    f.check_keys({"frame_ids", "chunk_ids", "stamps_ns", "c2w", "camera_index", "descriptors"})
    if len(ids) != meta["kf_count"]:
        raise SessionError(
            f"{KEYFRAMES}: {len(ids)} keyframes, {SESSION_JSON} says {meta['kf_count']}"
        )
    if len(ids) and ((np.diff(ids) <= 0).any() or ids[0] < 0 or ids[-1] >= meta["n_frames"]):
        raise SessionError(f"{KEYFRAMES}: frame_ids must increase within [0, n_frames)")
    order = meta["camera_order"]
    if ((cam < 0) | (cam >= len(order))).any():
        raise SessionError(f"{KEYFRAMES}: camera_index names unknown cameras")
    listed = {int(m.group(1)) for n in blobs if (m := THUMBNAIL.fullmatch(n))}
    if listed != {int(i) for i in ids}:
        odd = sorted(listed ^ {int(i) for i in ids})[:1]
        raise SessionError(f"{thumbnail_name(odd[0])}: keyframe images and keyframes.npz differ")
    jpegs = [blobs[thumbnail_name(int(i))] for i in ids]
    for i, jpeg in zip(ids, jpegs, strict=True):
        _check_jpeg(thumbnail_name(int(i)), jpeg)
    return Keyframes(
        ids,
        cids,
        stamps,
        c2w,
        [order[c] for c in cam],
        desc,
        jpegs,
        meta["kf_normalised"],
        dsum,
        meta["kf_descriptor_count"],
        points,
        conf,
    )


def _check_jpeg(name: str, jpeg: bytes) -> None:
    """A JPEG of at most the thumbnail size (header only: the checksum vouched for the
    bytes; decoding happens when it is used)."""
    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            fmt, size = im.format, im.size
    except Exception as exc:  # PIL raises many kinds for a bad image
        raise SessionError(f"{name}: not a readable image ({exc})") from None
    if fmt != "JPEG" or max(size) > THUMBNAIL_MAX_SIDE:
        raise SessionError(f"{name}: expected a JPEG of at most {THUMBNAIL_MAX_SIDE} px")
