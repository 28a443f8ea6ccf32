"""Keyframes of a session: a thinned set of placed frames with their pose, stamp, camera,
loop descriptor and a small JPEG of the image.

Why a JPEG and not the frame: relocalisation (and loops to a loaded map) verify a
retrieved keyframe by running the network on it beside the query frames, which needs an
image, but a whole drive of full frames would dwarf the map. A keyframe image of at most
`THUMBNAIL_MAX_SIDE` pixels costs a few kB. The same `Keyframes` object is the session's
data and, after loading, the engine's database to query (`query`, `thumbnail`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from scal3r_ros.mapping.loop_closure import DescriptorDatabase, thumbnail_descriptor
from scal3r_ros.mapping.session.format import THUMBNAIL_MAX_SIDE
from scal3r_ros.mapping.sim3 import Sim3

if TYPE_CHECKING:
    from scal3r_ros.mapping.engine import MappingEngine
    from scal3r_ros.mapping.session.data import CameraInfo

JPEG_QUALITY = 90


def encode_thumbnail(image: np.ndarray, max_side: int = THUMBNAIL_MAX_SIDE) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes, the longest side at most ``max_side`` (area
    resampling; never enlarged)."""
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    scale = max_side / max(im.size)
    if scale < 1.0:
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.resize(size, Image.Resampling.BOX)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def decode_thumbnail(jpeg: bytes) -> np.ndarray:
    """JPEG bytes -> (h, w, 3) uint8 RGB."""
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))


@dataclass
class Keyframes:
    """Parallel per-keyframe arrays, frame ids ascending. ``descriptors`` as the loop
    detector stores them (unit length unless ``normalised`` is False: a centring detector
    keeps raw descriptors and subtracts ``descriptor_sum / descriptor_count``)."""

    frame_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    chunk_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stamps_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    c2w: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))  # map frame
    camera_ids: list[str] = field(default_factory=list)
    descriptors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    jpegs: list[bytes] = field(default_factory=list)
    normalised: bool = True
    descriptor_sum: np.ndarray | None = None  # (D,) float64
    descriptor_count: int = 0
    # per-keyframe geometry for relocalisation: subsampled points in the keyframe's chunk
    # coordinates (K, h, w, 3) float32 and their confidence (K, h, w) float32, NaN where
    # invalid or unknown; None when the saving engine kept no loop geometry
    points: np.ndarray | None = None
    conf: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __contains__(self, frame_id: int) -> bool:
        return self._index(frame_id) is not None

    def _index(self, frame_id: int) -> int | None:
        k = int(np.searchsorted(self.frame_ids, frame_id))
        return k if k < len(self.frame_ids) and self.frame_ids[k] == frame_id else None

    def index(self, frame_id: int) -> int:
        k = self._index(frame_id)
        if k is None:
            raise KeyError(f"frame {frame_id} is not a keyframe")
        return k

    def has_geometry(self, frame_id: int) -> bool:
        """The keyframe's points are known (relocalisation can verify against it)."""
        if self.points is None or self.conf is None:
            return False
        return bool(np.isfinite(self.conf[self.index(frame_id)]).any())

    def points_in_map(self, frame_id: int, chunk_pose: Sim3) -> tuple[np.ndarray, np.ndarray]:
        """The keyframe's subsampled points (h, w, 3) moved into the map by its chunk's
        current pose ``chunk_pose``, and their confidence (h, w) (NaN: invalid)."""
        if self.points is None or self.conf is None:
            raise KeyError("the session has no keyframe geometry")
        k = self.index(frame_id)
        p = self.points[k].reshape(-1, 3).astype(np.float64)
        out = chunk_pose.apply(p).astype(np.float32).reshape(self.points[k].shape)
        return out, self.conf[k]

    def thumbnail(self, frame_id: int) -> np.ndarray:
        """The keyframe's image (h, w, 3) uint8, longest side <= 256."""
        return decode_thumbnail(self.jpegs[self.index(frame_id)])

    def query(self, descriptor: np.ndarray, top_k: int = 5) -> list[tuple[int, float]]:
        """``(frame id, cosine similarity)`` of the ``top_k`` most similar keyframes, best
        first (centred like the detector when ``normalised`` is False)."""
        if not len(self):
            return []
        db, q = self.descriptors.astype(np.float64), np.asarray(descriptor, np.float64)
        if not self.normalised and self.descriptor_sum is not None and self.descriptor_count:
            mean = self.descriptor_sum / self.descriptor_count
            db, q = db - mean, q - mean
        db = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
        sims = db @ (q.reshape(-1) / max(float(np.linalg.norm(q)), 1e-12))
        top = np.argsort(-sims, kind="stable")[:top_k]
        return [(int(self.frame_ids[k]), float(sims[k])) for k in top]

    def database(self) -> DescriptorDatabase:
        """The descriptors for the loop detector (`LoopClosure.restore_keyframes`)."""
        return DescriptorDatabase(
            self.frame_ids.copy(),
            self.descriptors.copy(),
            self.normalised,
            None if self.descriptor_sum is None else self.descriptor_sum.copy(),
            self.descriptor_count,
        )


def collect_keyframes(
    engine: MappingEngine, stride: int
) -> tuple[Keyframes, dict[str, CameraInfo]]:
    """The keyframes of an engine's session and the cameras they show.

    Candidates: the loop detector's database (its descriptors are the keyframes'), or
    without loop closure every ``stride``-th placed frame (official thumbnail descriptor);
    thinned to at most one per ``stride`` frames, keeping a loaded session's keyframes.
    A candidate needs a pose and an image: a loaded keyframe's JPEG, or the frame store's
    image (frames the disk cap deleted are skipped)."""
    from scal3r_ros.mapping.session.data import CameraInfo  # (data.py imports this module)

    loaded: Keyframes = engine.keyframes
    cameras = dict(engine.cameras)
    placed = engine.trajectory.frame_ids()
    db = engine.loop_closure.keyframe_descriptors() if engine.loop_closure is not None else None
    if db is not None:
        cand, desc = np.asarray(db.frame_ids, np.int64), db.descriptors
        normalised, dsum, count = db.normalised, db.sum, db.count
    else:
        new = placed[placed % max(1, stride) == 0]
        cand = np.union1d(loaded.frame_ids, new).astype(np.int64)
        desc = None
        normalised, dsum, count = loaded.normalised, loaded.descriptor_sum, loaded.descriptor_count
    cand_row = {int(f): k for k, f in enumerate(cand)}
    untied = engine.untied_chunks()  # a chain in another gauge: no keyframes there
    if untied:
        owners_of = engine.trajectory.frames_of_chunks(untied)
        placed = np.setdiff1d(placed, owners_of)
    keep: list[int] = []
    rows: list[tuple[bytes, str, int, np.ndarray]] = []
    for f in (int(x) for x in cand[np.isin(cand, placed)]):
        in_loaded = f in loaded
        if not in_loaded and keep and f - keep[-1] < stride:
            continue
        if in_loaded:
            k = loaded.index(f)
            jpeg, cam, stamp = loaded.jpegs[k], loaded.camera_ids[k], int(loaded.stamps_ns[k])
            d = loaded.descriptors[k] if desc is None else desc[cand_row[f]]
        elif engine.has_frame(f):
            try:
                fr = engine.frame(f)
            except KeyError:  # deleted by the disk cap meanwhile
                continue
            jpeg, cam, stamp = encode_thumbnail(fr.image), fr.camera_id, int(fr.stamp_ns)
            d = thumbnail_descriptor(fr.image) if desc is None else desc[cand_row[f]]
            if cam not in cameras or cameras[cam].intrinsics is None:
                K = None if fr.intrinsics is None else np.array(fr.intrinsics, np.float64)
                cameras[cam] = CameraInfo(K, (int(fr.image.shape[0]), int(fr.image.shape[1])))
        else:
            continue
        keep.append(f)
        rows.append((jpeg, cam, stamp, np.asarray(d, np.float32)))
    ids = np.array(keep, np.int64)
    owners = np.array([engine.trajectory.owner(f) for f in keep], np.int64)
    c2w = engine.trajectory.poses(ids)[1] if len(ids) else np.zeros((0, 4, 4))
    dim = rows[0][3].size if rows else (0 if desc is None else np.shape(desc)[-1])
    kf = Keyframes(
        ids,
        owners,
        np.array([r[2] for r in rows], np.int64),
        c2w,
        [r[1] for r in rows],
        np.stack([r[3] for r in rows]) if rows else np.zeros((0, dim), np.float32),
        [r[0] for r in rows],
        normalised,
        None if dsum is None else np.asarray(dsum, np.float64),
        int(count),
    )
    kf.points, kf.conf = _keyframe_geometry(engine, loaded, ids, owners)
    return kf, {c: cameras[c] for c in sorted(set(kf.camera_ids) | set(cameras))}


def _keyframe_geometry(
    engine: MappingEngine, loaded: Keyframes, ids: np.ndarray, owners: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Each keyframe's subsampled points in its owner chunk's coordinates and their
    confidence (NaN where invalid or unknown): a loaded keyframe keeps its own, a new one
    takes its chunk's loop geometry. None when no keyframe has any (no loop geometry)."""
    rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k, (f, owner) in enumerate(zip(ids.tolist(), owners.tolist(), strict=True)):
        if f in loaded:
            if loaded.points is not None and loaded.conf is not None:
                j = loaded.index(f)
                rows[k] = (loaded.points[j], loaded.conf[j])
        elif engine.has_chunk_geometry(owner):
            try:
                g = engine.chunk_geometry(owner)
            except KeyError:  # deleted by the disk cap meanwhile
                continue
            hit = np.flatnonzero(np.asarray(g.frame_ids) == f)
            if len(hit):
                j = int(hit[0])
                conf = np.where(g.valid[j], g.conf[j], np.nan).astype(np.float32)
                rows[k] = (np.asarray(g.points[j], np.float32), conf)
    if not rows:
        return None, None
    hw = next(iter(rows.values()))[1].shape
    points = np.full((len(ids), *hw, 3), np.nan, np.float32)
    conf = np.full((len(ids), *hw), np.nan, np.float32)
    for k, (p, c) in rows.items():
        if c.shape == hw:  # (one camera size per session in practice)
            points[k], conf[k] = p, c
    return points, conf
