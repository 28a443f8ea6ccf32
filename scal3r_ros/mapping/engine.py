"""The streaming mapping engine: frames in, map updates out (no ROS).

Per chunk (every ``stride`` frames, see ``windowing``):

1. ``Backend.infer`` on the chunk's images, reference (middle) frame first, with the
   GCS state the engine keeps between chunks (``causal``); ``exact`` defers all chunks
   to ``flush`` (official layer-synchronous schedule over a recorded sequence).
2. Chunk points from depth unprojection (official default ``use_xyz_align=0``) or
   from the point head.
3. Robust Sim(3) to the previous chunk on the overlap frames' same-pixel points
   (``alignment.align_points``): ``G_new = G_prev @ T(new -> prev)``. A degenerate
   overlap is reported (``AlignmentReport.ok = False``); the chunk is then placed from
   the overlap frames' predicted camera poses and its points stay out of the map.
4. Pose graph node + sequential edge; optional loop closure (hook, see
   ``LoopClosureHook``) adds loop edges and re-optimises; corrected chunk Sim(3)s are
   pushed to the trajectory and the map.
5. Frame ownership as the official stitching: of an overlap, the first half stays
   with the earlier chunk, the second half moves to the new one (its poses and points
   are replaced: ``PosesUpdate(corrected=True, reason="overlap")``).
6. Map insert (confidence > 0.75 x frame mean, voxel grid, cap) and events.

Memory is bounded: images live in a ``FrameStore`` (RAM window + disk spill), only the
previous chunk's overlap geometry is kept at full resolution, per-chunk loop geometry
is subsampled and spilled, the map has a hard cap, and the GCS state has constant size.
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scal3r_ros.mapping.alignment import (
    AlignmentConfig,
    AlignmentResult,
    align_points,
    gather_overlap,
    unproject_depth,
)
from scal3r_ros.mapping.backend import GCS_MODES, Backend, ChunkInput, ChunkPrediction
from scal3r_ros.mapping.frame import (
    AlignmentReport,
    ChunkFailed,
    Frame,
    FrameCloudsUpdate,
    LoopClosureUpdate,
    MapCorrected,
    MapUpdate,
    PointsUpdate,
    PosesUpdate,
    StatsUpdate,
)
from scal3r_ros.mapping.frame_store import FrameStore, FrameStoreConfig, StoredFrame
from scal3r_ros.mapping.map_store import MapConfig, MapStore
from scal3r_ros.mapping.pose_graph import PoseGraphConfig, Sim3PoseGraph
from scal3r_ros.mapping.sim3 import Sim3, _as_rotation
from scal3r_ros.mapping.spill import SpillStore
from scal3r_ros.mapping.trajectory import Trajectory
from scal3r_ros.mapping.windowing import ChunkScheduler, ChunkSpec, WindowConfig


@dataclass
class EngineConfig:
    """Every knob of the engine. ``EngineConfig.low_latency()`` for 16/8 chunks."""

    window: WindowConfig = field(default_factory=WindowConfig)
    gcs_mode: str = "causal"  # causal | exact | off
    use_point_head: bool = False  # official default aligns with depth unprojection
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    insert_points_on_degenerate: bool = False  # keep a rejected chunk's points out
    map: MapConfig = field(default_factory=MapConfig)
    frames: FrameStoreConfig = field(default_factory=FrameStoreConfig)
    pose_graph: PoseGraphConfig = field(default_factory=PoseGraphConfig)
    loop_closure: bool = True  # used only when a loop-closure hook is given
    loop_geometry_stride: int = 2  # pixel stride of the per-chunk geometry kept for loops
    loop_geometry_ram_chunks: int = 4  # older chunk geometry is spilled to disk
    max_chunk_attempts: int = 3  # backend failures on one window before it is skipped
    frame_clouds: bool = False  # emit FrameCloudsUpdate (per-frame depth, sensor clouds)

    def __post_init__(self) -> None:
        if self.gcs_mode not in GCS_MODES:
            raise ValueError(f"gcs_mode must be one of {GCS_MODES}, got {self.gcs_mode!r}")

    @staticmethod
    def low_latency(**kw: Any) -> EngineConfig:
        return EngineConfig(window=WindowConfig.low_latency(), **kw)


@dataclass
class ChunkGeometry:
    """Subsampled per-frame geometry of one chunk in its local frame (for loops)."""

    chunk_id: int
    frame_ids: np.ndarray  # (F,) time order
    points: np.ndarray  # (F, h, w, 3) float32
    conf: np.ndarray  # (F, h, w) float32
    valid: np.ndarray  # (F, h, w) bool
    c2w: np.ndarray  # (F, 4, 4) local poses
    descriptors: np.ndarray | None  # (F, D)


class LoopClosureHook(Protocol):
    """What the engine calls after each chunk is placed (helper L's loop closure)."""

    def on_chunk(self, engine: MappingEngine, chunk_id: int) -> list[LoopClosureUpdate]:
        """Detect/verify loops ending in ``chunk_id``; add loop edges to
        ``engine.pose_graph``; return the accepted loops (the engine re-optimises)."""
        ...

    def reset(self) -> None: ...


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS. A window allocates and frees hundreds of MB
    of temporaries; without this glibc keeps them and RSS creeps up over a long drive
    (measured: +12 % vs +1 % from 2000 to 4000 frames with the map at its cap)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def host_rss_bytes() -> int:
    """This process's resident set size (Linux statm; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def pose_fallback(c2w_dst: np.ndarray, c2w_src: np.ndarray) -> Sim3 | None:
    """Sim(3) src-chunk -> dst-chunk from the same frames' predicted camera poses.

    Used when the point overlap is degenerate: rotation = chordal mean of
    R_dst R_src^T, scale = ratio of camera-centre spreads, translation from centroids.
    Returns None when the scale cannot be observed (a single frame / no motion).
    """
    R = _as_rotation(sum(a[:3, :3] @ b[:3, :3].T for a, b in zip(c2w_dst, c2w_src, strict=True)))
    cd, cs = c2w_dst[:, :3, 3], c2w_src[:, :3, 3]
    sd = np.sqrt(((cd - cd.mean(0)) ** 2).sum(1).mean())
    ss = np.sqrt(((cs - cs.mean(0)) ** 2).sum(1).mean())
    if len(cd) < 2 or ss <= 1e-12 or sd <= 1e-12:
        return None
    s = float(sd / ss)
    return Sim3(s, R, cd.mean(0) - s * (R @ cs.mean(0)))


class MappingEngine:
    """``push(frame) -> list[MapUpdate]``, ``flush()``, ``reset()``; see module doc."""

    def __init__(
        self,
        config: EngineConfig,
        backend: Backend,
        loop_closure: LoopClosureHook | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.loop_closure = loop_closure if config.loop_closure else None
        self.scheduler = ChunkScheduler(config.window)
        self.frames = FrameStore(config.frames)
        self.frames.protect_from = self._oldest_needed_frame
        self.trajectory = Trajectory()
        self.map = MapStore(config.map)
        self.pose_graph = Sim3PoseGraph(config.pose_graph)
        # spilled loop geometry: same per-process folder and disk cap as the frames
        self._geom = SpillStore("geom", config.frames.spill_dir, self.frames.budget)
        self._placing: ChunkSpec | None = None  # the window being placed (frames kept)
        # Held while a window is placed into trajectory and map (not while the network
        # runs), so another thread can read whole windows: the node's shutdown saves what
        # is integrated while a long window is still being inferred.
        self.state_lock = threading.RLock()
        self._init_state()

    # ================================================================ public API
    def push(self, frame: Frame) -> list[MapUpdate]:
        """Add one frame; returns the events of any chunk this frame completed."""
        t0 = time.perf_counter()
        fid = self.scheduler.n_frames
        img, K = self.backend.prepare(frame.image, frame.intrinsics)
        self.frames.put(fid, StoredFrame(np.ascontiguousarray(img), frame.stamp_ns,
                                         frame.camera_id, K))  # fmt: skip
        self._stamps.append(int(frame.stamp_ns))
        self._prepare_s += time.perf_counter() - t0
        spec = self.scheduler.push()
        if spec is None:
            return []
        if self.config.gcs_mode == "exact":
            self._pending.append(spec)  # offline: everything happens in flush()
            return []
        self._waiting.append(spec)
        return self._run_waiting()

    def flush(self) -> list[MapUpdate]:
        """End of stream, shutdown or a save: map the frames that arrived after the last
        full window as a final, shorter window (the previous window's last ``overlap``
        frames as context plus the new ones, however few), so every frame pushed so far
        has a pose and its points are in the map; finalise pending loop candidates. In
        ``exact`` mode this runs every window. Nothing happens when all frames are placed.

        Streaming may go on afterwards: the next full window starts at the same frame as
        the flushed one, is aligned to it like any window and takes over its newest
        frames (`PosesUpdate` with ``reason="overlap"``); the flushed window stays in the
        chain (and, in ``causal`` mode, in the GCS sums, like a loop window).
        """
        spec = self.scheduler.flush()
        out: list[MapUpdate] = []
        if self.config.gcs_mode == "exact":
            if spec is not None:
                self._pending.append(spec)
            specs = self._pending  # pending (their frames kept) until all are placed
            loaders: list[Callable[[], ChunkInput]] = [
                (lambda s=s: self._chunk_input(s)) for s in specs
            ]
            t0 = time.perf_counter()
            try:
                for s, pred in zip(specs, self.backend.infer_exact(loaders), strict=True):
                    out += self._integrate(s, pred, time.perf_counter() - t0)
                    t0 = time.perf_counter()
            finally:
                self._pending = []
        else:
            if spec is not None:
                self._waiting.append(spec)
            while self._waiting:  # no later window will retry: use the attempts up now
                out += self._run_waiting()
        finish = getattr(self.loop_closure, "finish", None)
        if finish is not None and self.n_chunks:
            loops = finish(self)
            if loops:
                out += loops
                with self.state_lock:
                    out += self.apply_chunk_poses(self.pose_graph.optimize(), "loop_closure")
        return out

    def reset(self) -> None:
        """Forget everything (frames, map, trajectory, GCS state, loops)."""
        with self.state_lock:
            self._reset()

    def _reset(self) -> None:
        self.scheduler.reset()
        self.frames.reset()
        self.trajectory.reset()
        self.map.reset()
        self.pose_graph.reset()
        reset_resolution = getattr(self.backend, "reset_resolution", None)
        if reset_resolution is not None:  # the next frame fixes the network's input size
            reset_resolution()
        if self.loop_closure is not None:
            self.loop_closure.reset()
        self._geom.clear()
        self._placing = None
        self._init_state()

    @property
    def n_frames(self) -> int:
        return self.scheduler.n_frames

    @property
    def n_chunks(self) -> int:
        return len(self._chunk_frames)

    def poses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame_ids, stamps_ns, c2w (N, 4, 4)) of every frame placed so far."""
        with self.state_lock:
            ids = self.trajectory.frame_ids()
            stamps, c2w = self.trajectory.poses(ids)
        return ids, stamps, c2w

    def map_points(self, voxelize: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Accumulated map (xyz, rgb, confidence) in the map frame."""
        with self.state_lock:
            return self.map.points(voxelize=voxelize)

    def chunk_pose(self, chunk_id: int) -> Sim3:
        return self.pose_graph.estimate(chunk_id)

    def chunk_frames(self, chunk_id: int) -> tuple[int, ...]:
        return self._chunk_frames[chunk_id]

    def chunk_geometry(self, chunk_id: int) -> ChunkGeometry:
        """Subsampled local geometry of a past chunk (RAM or disk)."""
        g = self._geom_ram.get(chunk_id)
        if g is not None:
            return g
        path = self._geom.path(chunk_id)
        if path is None:
            raise KeyError(f"no geometry stored for chunk {chunk_id} (or deleted to bound disk)")
        z = np.load(path)
        return ChunkGeometry(
            chunk_id,
            z["frame_ids"],
            z["points"].astype(np.float32),
            z["conf"].astype(np.float32),
            z["valid"],
            z["c2w"],
            z["descriptors"] if "descriptors" in z.files else None,
        )

    def chunk_input(self, frame_ids: list[int] | tuple[int, ...], chunk_id: int,
                    is_loop: bool = True) -> ChunkInput:  # fmt: skip
        """Network input for arbitrary stored frames (loop chunks), reference first."""
        return self._chunk_input(ChunkSpec(chunk_id, tuple(frame_ids), is_loop))

    def infer(self, chunk: ChunkInput) -> ChunkPrediction:
        """Run the backend with the engine's GCS state (loop chunks join the sums, as
        official), returning frames in the order given."""
        return self.backend.infer(chunk, self._gcs_state)

    def apply_chunk_poses(self, poses: dict[int, Sim3], reason: str) -> list[MapUpdate]:
        """Set new chunk -> map Sim(3)s everywhere; returns the correction events."""
        with self.state_lock:
            for cid, g in poses.items():
                self.trajectory.set_chunk_pose(cid, g)
                self.map.set_chunk_pose(cid, g)
            ids = self.trajectory.frames_of_chunks(poses)
            stamps, c2w = self.trajectory.poses(ids)
        return [
            MapCorrected(-1, {c: g.matrix() for c, g in poses.items()}),
            PosesUpdate(-1, ids, stamps, c2w, corrected=True, reason=reason),
        ]

    def save_map(self, path: str | Path, voxelize: bool = True) -> None:
        self.map.save(path, voxelize=voxelize)

    def save_trajectory(self, path: str | Path, fmt: str = "tum") -> None:
        self.trajectory.save(path, fmt)

    # ================================================================ internals
    def _init_state(self) -> None:
        self._stamps: list[int] = []
        self._chunk_frames: dict[int, tuple[int, ...]] = {}
        self._prev: tuple[int, dict[int, tuple[np.ndarray, ...]]] | None = None
        self._pending: list[ChunkSpec] = []
        self._waiting: list[ChunkSpec] = []  # ready windows, in order (a failed one first)
        self._attempts: dict[int, int] = {}
        self._geom_ram: dict[int, ChunkGeometry] = {}
        self._prepare_s = 0.0
        mode = self.config.gcs_mode
        self._gcs_state = None if mode in ("off", "exact") else self.backend.new_gcs_state(mode)
        self.reports: list[AlignmentReport] = []

    def _chunk_input(self, spec: ChunkSpec) -> ChunkInput:
        order = spec.network_order
        fids = [spec.frame_ids[k] for k in order]
        stored = [self.frames.get(f) for f in fids]
        Ks = [s.intrinsics for s in stored]
        return ChunkInput(
            chunk_id=spec.chunk_id,
            frame_ids=np.array(fids, dtype=np.int64),
            stamps_ns=np.array([s.stamp_ns for s in stored], dtype=np.int64),
            images=np.stack([s.image for s in stored]),
            intrinsics=None if any(k is None for k in Ks) else np.stack(Ks),  # type: ignore[arg-type]
            camera_ids=tuple(s.camera_id for s in stored),
            is_loop=spec.is_loop,
        )

    def _run_waiting(self) -> list[MapUpdate]:
        """Run ready windows in order. A backend failure keeps the window for a retry
        when the next one is ready (transient faults such as CUDA OOM), up to
        ``max_chunk_attempts`` tries; then it is skipped and reported."""
        out: list[MapUpdate] = []
        while self._waiting:
            spec = self._waiting[0]
            try:
                t0 = time.perf_counter()
                pred = self.backend.infer(self._chunk_input(spec), self._gcs_state)
            except Exception as exc:  # the backend's failure, not the engine's
                attempt = self._attempts.get(spec.chunk_id, 0) + 1
                self._attempts[spec.chunk_id] = attempt
                retry = attempt < self.config.max_chunk_attempts
                if not retry:
                    self._waiting.pop(0)
                out.append(ChunkFailed(spec.chunk_id, f"{type(exc).__name__}: {exc}", attempt,
                                       retry))  # fmt: skip
                if retry:
                    break
                continue
            self._waiting.pop(0)
            self._attempts.pop(spec.chunk_id, None)
            out += self._integrate(spec, pred, time.perf_counter() - t0)
            del pred
            release_freed_memory()
        return out

    def _integrate(
        self, spec: ChunkSpec, pred_net: ChunkPrediction, t_infer: float
    ) -> list[MapUpdate]:
        """Place a window (under `state_lock`), then loop closure (outside it: loop
        verification may run the network); the window's events."""
        self._placing = spec  # its frames stay stored while it is placed
        with self.state_lock:
            out, timings = self._place(spec, pred_net, t_infer)
        cid = spec.chunk_id
        if self.loop_closure is not None:
            t0 = time.perf_counter()
            loops = self.loop_closure.on_chunk(self, cid)
            timings["loop"] = time.perf_counter() - t0
            if loops:
                out += loops
                t0 = time.perf_counter()
                with self.state_lock:
                    new = self.pose_graph.optimize()
                    timings["graph"] = time.perf_counter() - t0
                    out += self.apply_chunk_poses(new, "loop_closure")
        out.append(self._stats(cid, timings))
        return out

    def _place(
        self, spec: ChunkSpec, pred_net: ChunkPrediction, t_infer: float
    ) -> tuple[list[MapUpdate], dict[str, float]]:
        cfg = self.config
        timings = {"prepare": self._prepare_s, "infer": t_infer}
        self._prepare_s = 0.0
        t0 = time.perf_counter()
        cid = spec.chunk_id
        order = spec.network_order
        inv = np.argsort(np.asarray(order))
        pred = pred_net.take(inv)  # back to time order
        fids = np.array(spec.frame_ids, dtype=np.int64)
        if cfg.use_point_head and pred.points is not None:
            pts = pred.points.astype(np.float32)
            conf = pred.points_conf if pred.points_conf is not None else pred.depth_conf
        else:
            pts = unproject_depth(pred.depth, pred.intrinsics, pred.c2w)
            conf = pred.depth_conf
        conf = conf.astype(np.float32)
        valid = np.isfinite(pred.depth) & (pred.depth > 0) & np.isfinite(pts).all(-1)
        timings["unproject"] = time.perf_counter() - t0

        # ---- alignment to the previous chunk
        t0 = time.perf_counter()
        out: list[MapUpdate] = []
        report: AlignmentReport | None = None
        prev_id: int | None = None
        shared: list[int] = []
        degenerate = False
        if self._prev is None:
            g = Sim3.identity()
            self.pose_graph.add_node(cid, g)
        else:
            prev_id, prev_tail = self._prev
            shared = [int(f) for f in fids if int(f) in prev_tail]
            pos = {int(f): k for k, f in enumerate(fids)}
            res: AlignmentResult | None = None
            if shared:
                ia = [pos[f] for f in shared]
                P = np.stack([prev_tail[f][0] for f in shared])
                C = np.stack([prev_tail[f][1] for f in shared])
                V = np.stack([prev_tail[f][2] for f in shared])
                a, b, ca, cb = gather_overlap(
                    P, pts[ia], C, conf[ia], V, valid[ia], cfg.alignment.max_points_per_frame
                )
                res = align_points(b, a, cb, ca, cfg.alignment)
            fallback = ""
            if res is not None and res.ok:
                T = res.sim3
            else:
                degenerate = True
                T = None
                if shared:
                    Pc2w = np.stack([prev_tail[f][3] for f in shared])
                    T = pose_fallback(Pc2w, pred.c2w[[pos[f] for f in shared]])
                    fallback = "camera_poses" if T is not None else ""
                if T is None:
                    T = res.sim3 if res is not None and np.isfinite(res.sim3.s) else None
                    fallback = "raw_fit" if T is not None else "identity"
                    T = T or Sim3.identity()
            g = self.pose_graph.add_sequential(prev_id, cid, T)
            report = AlignmentReport(
                chunk_id=cid,
                other_chunk_id=prev_id,
                ok=not degenerate,
                reason=(res.reason if res is not None else "no_overlap") if degenerate else "",
                n_points=res.n_points if res is not None else 0,
                inlier_ratio=res.inlier_ratio if res is not None else 0.0,
                rmse=res.rmse if res is not None else float("nan"),
                scale=T.s,
                fallback=fallback,
            )
            self.reports.append(report)
            out.append(report)
        self.trajectory.set_chunk_pose(cid, g)
        self.map.set_chunk_pose(cid, g)
        self._chunk_frames[cid] = tuple(int(f) for f in fids)
        timings["align"] = time.perf_counter() - t0

        # ---- ownership: first half of the overlap stays with prev, rest is ours; frames
        # before prev's tail (a full window after a flushed one) stay with their owners
        t0 = time.perf_counter()
        keep_prev = set(shared[: min(cfg.window.overlap // 2, len(shared))])
        handed = [f for f in shared if f not in keep_prev]
        first = min(self._prev[1], default=0) if self._prev is not None else 0
        owned = [k for k, f in enumerate(fids) if int(f) not in keep_prev and f >= first]
        new_ids, corr_ids = [], []
        for k in owned:
            f = int(fids[k])
            (corr_ids if f in handed else new_ids).append(f)
            self.trajectory.set_frame(f, self._stamps[f], cid, pred.c2w[k])
        if corr_ids:
            st, c2w = self.trajectory.poses(np.array(corr_ids))
            out.append(PosesUpdate(cid, np.array(corr_ids), st, c2w, True, "overlap"))
        if new_ids:
            st, c2w = self.trajectory.poses(np.array(new_ids))
            cams = tuple(self.frames.camera_id(f) for f in new_ids)
            out.append(PosesUpdate(cid, np.array(new_ids), st, c2w, False, "new", cams))
            if cfg.frame_clouds:
                new_set = set(new_ids)
                ks = [k for k in owned if int(fids[k]) in new_set]
                d = np.where(valid[ks], pred.depth[ks] * np.float32(g.s), np.nan)
                out.append(FrameCloudsUpdate(
                    cid, np.array(new_ids), st,
                    tuple(self.frames.get(f).camera_id for f in new_ids),
                    d.astype(np.float32), conf[ks], pred.intrinsics[ks].astype(np.float64),
                ))  # fmt: skip

        # ---- map
        if prev_id is not None and handed:
            self.map.drop_frames(prev_id, np.array(handed))
        if not degenerate or cfg.insert_points_on_degenerate:
            rgb = np.stack([self.frames.get(int(f)).image for f in fids[owned]])
            if rgb.shape[1:3] != pred.depth.shape[1:3]:
                rgb = _resize_nearest(rgb, pred.depth.shape[1:3])
            xyz, col, cf = self.map.insert(
                cid, g, pts[owned], rgb, np.where(valid[owned], conf[owned], np.nan),
                fids[owned], pred.depth[owned],
            )  # fmt: skip
            if len(xyz):
                out.append(PointsUpdate(cid, xyz, col, cf))
        timings["map"] = time.perf_counter() - t0

        # ---- keep what the next chunk / loops need
        t0 = time.perf_counter()
        n_tail = cfg.window.overlap
        tail = {}
        for k in range(max(0, len(fids) - n_tail), len(fids)):
            tail[int(fids[k])] = (pts[k], conf[k], valid[k], pred.c2w[k])
        self._prev = (cid, tail)
        if self.loop_closure is not None:
            self._store_geometry(cid, fids, pts, conf, valid, pred)
        timings["store"] = time.perf_counter() - t0
        return out, timings

    def _store_geometry(self, cid: int, fids: np.ndarray, pts: np.ndarray, conf: np.ndarray,
                        valid: np.ndarray, pred: ChunkPrediction) -> None:  # fmt: skip
        s = max(1, self.config.loop_geometry_stride)
        geo = ChunkGeometry(
            cid, fids.copy(), pts[:, ::s, ::s].copy(), conf[:, ::s, ::s].copy(),
            valid[:, ::s, ::s].copy(), pred.c2w.copy(),
            None if pred.descriptors is None else pred.descriptors.copy(),
        )  # fmt: skip
        self._geom_ram[cid] = geo
        while len(self._geom_ram) > self.config.loop_geometry_ram_chunks:
            old_id = min(self._geom_ram)
            old = self._geom_ram.pop(old_id)
            arrays = {
                "frame_ids": old.frame_ids, "points": old.points,
                "conf": old.conf, "valid": old.valid, "c2w": old.c2w,
            }  # fmt: skip
            if old.descriptors is not None:
                arrays["descriptors"] = old.descriptors
            try:  # age: the chunk's first frame (evicted along with the frames' images)
                self._geom.put(old_id, int(old.frame_ids[0]), ".npz",
                               lambda p, a=arrays: _save_npz(p, a))  # fmt: skip
            except OSError:  # disk full: loops to this chunk are then rejected
                pass

    def has_chunk_geometry(self, chunk_id: int) -> bool:
        return chunk_id in self._geom_ram or chunk_id in self._geom

    def _oldest_needed_frame(self) -> int:
        """Frames from this id on are needed by windows still to run: the next regular
        window (within the newest ``chunk_size`` frames), the one being placed, and any
        waiting or, in ``exact`` mode, pending window; the frame store keeps them."""
        specs = (*self._waiting, *self._pending, *((self._placing,) if self._placing else ()))
        starts = [s.frame_ids[0] for s in specs if s.frame_ids]
        return min([self.scheduler.n_frames - self.config.window.chunk_size, *starts])

    def _stats(self, cid: int, timings: dict[str, float]) -> StatsUpdate:
        timings["engine_total"] = sum(v for k, v in timings.items() if k not in ("infer",))
        gcs = self.backend.gcs_state_nbytes(self._gcs_state) if self._gcs_state is not None else 0
        memory = {
            "rss_bytes": float(host_rss_bytes()),
            "map_points": float(len(self.map)),
            "map_bytes": float(self.map.nbytes()),
            "frames_ram_bytes": float(self.frames.ram_nbytes()),
            "frames_on_disk": float(self.frames.disk_frames()),
            "spill_bytes": float(self.frames.budget.used),
            "gcs_state_bytes": float(gcs),
            "n_frames": float(self.n_frames),
            "n_chunks": float(self.n_chunks),
        }
        return StatsUpdate(cid, timings, memory)

    def __del__(self) -> None:
        try:
            self._geom.clear()
        except Exception:
            pass


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # np.savez(path) would append ".npz" to other names
        np.savez(f, **arrays)


def _resize_nearest(images: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize (F, H, W, 3) -> (F, h, w, 3) for point colours."""
    F, H, W, _ = images.shape
    h, w = hw
    ys = np.minimum((np.arange(h) + 0.5) * H / h, H - 1).astype(int)
    xs = np.minimum((np.arange(w) + 0.5) * W / w, W - 1).astype(int)
    return images[:, ys][:, :, xs]


# ====================================================================== loop closure
@dataclass
class LoopClosureConfig:
    """Wiring of helper L's loop-closure pieces into the engine."""

    half_window: int = 10  # official loop_size 20 = 2 x 10
    detector: Any = None  # loop_closure.LoopDetectorConfig (None: its defaults)
    verifier: Any = None  # loop_closure.LoopVerifierConfig (None: its defaults)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    # frame id -> descriptor; None: the backend's per-frame descriptors
    descriptor_fn: Callable[[int], np.ndarray] | None = None


class LoopClosure:
    """``LoopClosureHook`` built from ``loop_closure`` (retrieval, windows, verification).

    After each chunk: add its frames' descriptors to the detector; for every finalised
    candidate whose two ends lie in different, already placed chunks, build the loop
    chunk (two windows), run it through the backend (with the GCS state: loop chunks
    join the sums, as official), align it to both chunks on their shared frames,
    verify, and add the loop edge ``T(A -> B)`` to the engine's pose graph.
    """

    def __init__(self, config: LoopClosureConfig | None = None) -> None:
        from scal3r_ros.mapping import loop_closure as lc

        self.config = cfg = config or LoopClosureConfig()
        self._lc = lc
        self.detector = lc.LoopDetector(cfg.detector)
        self.planner = lc.LoopWindowPlanner(cfg.half_window)
        self.verifier = lc.LoopVerifier(cfg.verifier)
        self.reset()

    def reset(self) -> None:
        self.detector.reset()
        self.planner.reset()
        self._last_frame = -1
        self._n_loops = 0
        self.rejected: list[tuple[int, int, str]] = []
        self.accepted: list[tuple[int, int]] = []

    def inject(self, later: int, earlier: int, similarity: float = 1.0) -> None:
        """Propose a candidate directly (tests: a wrong loop must be rejected)."""
        self.detector.inject(later, earlier, similarity)

    def on_chunk(self, engine: MappingEngine, chunk_id: int) -> list[LoopClosureUpdate]:
        geo = engine.chunk_geometry(chunk_id)
        new, descs = [], []
        for k, f in enumerate(geo.frame_ids):
            f = int(f)
            if f <= self._last_frame:
                continue
            if self.config.descriptor_fn is not None:
                descs.append(self.config.descriptor_fn(f))
            elif geo.descriptors is not None:
                descs.append(geo.descriptors[k])
            else:
                descs.append(self._lc.thumbnail_descriptor(engine.frames.get(f).image))
            new.append(f)
            self._last_frame = f
        if not new:
            return []
        return self._process(engine, self.detector.add_many(new, np.stack(descs)))

    def finish(self, engine: MappingEngine) -> list[LoopClosureUpdate]:
        return self._process(engine, self.detector.flush())

    def _process(self, engine: MappingEngine, cands: list) -> list[LoopClosureUpdate]:
        out: list[LoopClosureUpdate] = []
        chunks = {c: (f[0], f[-1] + 1) for c, f in engine._chunk_frames.items()}
        for cand in cands:
            win, why = self.planner.plan(cand, chunks)
            if win is not None and not (
                all(f in engine.frames for f in win.frames)
                and engine.has_chunk_geometry(win.chunk_a)
                and engine.has_chunk_geometry(win.chunk_b)
            ):  # the disk cap deleted what the loop chunk needs
                win, why = None, "evicted"
            if win is None:
                self.rejected.append((cand.later, cand.earlier, why))
                continue
            upd = self._verify(engine, win)
            if upd is not None:
                out.append(upd)
        return out

    def _verify(self, engine: MappingEngine, win: Any) -> LoopClosureUpdate | None:
        cfg = self.config
        self._n_loops += 1
        spec = ChunkSpec(1_000_000 + self._n_loops, tuple(win.frames), True)
        inp = engine._chunk_input(spec)
        pred = engine.infer(inp).take(np.argsort(np.asarray(spec.network_order)))
        s = max(1, engine.config.loop_geometry_stride)
        pts = unproject_depth(pred.depth, pred.intrinsics, pred.c2w)[:, ::s, ::s]
        conf = pred.depth_conf[:, ::s, ::s]
        valid = np.isfinite(pred.depth[:, ::s, ::s]) & (pred.depth[:, ::s, ::s] > 0)
        pos = {f: k for k, f in enumerate(win.frames)}
        results = []
        for cid in (win.chunk_a, win.chunk_b):
            g = engine.chunk_geometry(cid)
            gpos = {int(f): k for k, f in enumerate(g.frame_ids)}
            shared = [f for f in win.frames if f in gpos]
            ia, ib = [gpos[f] for f in shared], [pos[f] for f in shared]
            a, b, ca, cb = gather_overlap(
                g.points[ia], pts[ib], g.conf[ia], conf[ib], g.valid[ia], valid[ib]
            )
            results.append(align_points(b, a, cb, ca, cfg.alignment))
        pg = engine.pose_graph
        verdict = self.verifier.verify(
            results[0], results[1], pg.estimate(win.chunk_a), pg.estimate(win.chunk_b),
            pg.path_length(win.chunk_b, win.chunk_a),
        )  # fmt: skip
        if not verdict.ok:
            self.rejected.append((win.later, win.earlier, verdict.reason))
            return None
        pg.add_loop(win.chunk_a, win.chunk_b, verdict.edge)
        self.accepted.append((win.later, win.earlier))
        return LoopClosureUpdate(
            win.chunk_a, win.chunk_b, verdict.edge.matrix(), (win.later, win.earlier),
            dict(verdict.metrics),
        )  # fmt: skip
