"""The streaming mapping engine: frames in, map updates out (no ROS).

Each window (every ``stride`` frames, see ``windowing``) goes through two phases, which
``push`` runs back to back and the pipelined ``MappingWorker`` runs on two threads (window
k placed while window k+1 is in the network):

Network phase (``push_network``): everything that touches the backend, in the causal GCS
order ``infer(k), loops(k), infer(k+1)``:

1. ``Backend.infer`` on the window's images, reference (middle) frame first, with the
   GCS state the engine keeps between windows (``causal``); ``exact`` defers all windows
   to ``flush`` (official layer-synchronous schedule over a recorded sequence).
   The loop hook's network part: the window's descriptors into the detector, loop
   windows planned, loop chunks inferred (``LoopClosureHook.infer_loops``).

Placement phase (``place``), on the ``InferredWindow`` the network phase returned:

2. Points from the prediction: depth unprojection (official default ``use_xyz_align=0``)
   or the point head (``placement.WindowPoints``). The depth is unprojected with the
   predicted intrinsics or, with ``intrinsics="camera_info"``, the camera's known K
   (``mapping.intrinsics``, chosen at the end of the network phase, loop chunks too).
3. Place against the previous window: robust Sim(3) on the overlap frames' same-pixel
   points (``placement.PreviousWindow``), ``G_new = G_prev @ T(new -> prev)``, pose graph
   node + sequential edge. A degenerate overlap is reported (``AlignmentReport.ok =
   False``); the window is then placed from the overlap frames' predicted camera poses
   and its points stay out of the map.
4. Hand over overlap frames as the official stitching (``placement.hand_over``): of an
   overlap, the first half stays with the earlier window, the second half moves to the
   new one (``PosesUpdate(corrected=True, reason="overlap")``).
5. Insert into the map (confidence > 0.75 x frame mean, voxel grid, cap).
6. Keep the tail: the overlap frames for the next window, subsampled geometry for loops.
7. Close loops: the hook's verification part (``LoopClosureHook.verify_loops``) aligns
   the already inferred loop chunks and adds loop edges through ``add_loop_constraint``;
   the optional sensor hook (``SensorFusionHook``: odometry, GNSS) adds its factors; the
   engine re-optimises once and pushes the corrected chunk Sim(3)s to the trajectory and
   the map. ``place`` yields its events in two parts: the alignment report and the poses
   as soon as the window is aligned (steps 2-4), then the map, loop and stats events.

Thread rules for the two phases on two threads: the network phase alone touches the
backend, the scheduler and the loop detector; the placement phase alone touches the
trajectory, map, pose graph and loop geometry (under ``state_lock``); the frame store and
the spill budget they share are used under ``_store_lock``; frames of windows between
the phases stay stored (``protect_from``).

After ``load_session`` (a saved session, ``session``), each placed window is also matched
against the session's keyframes (``relocalisation.Relocaliser``: the network part in the
network phase, the verification in the placement phase) until the new chain is tied to the
loaded map (``RelocalisationUpdate``); ``localisation`` mode places windows without
changing the loaded map, graph or trajectory.

Memory is bounded: images live in a ``FrameStore`` (RAM window + disk spill), only the
previous window's overlap geometry is kept at full resolution, per-window loop geometry
is subsampled and spilled, the map has a hard cap, and the GCS state has constant size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from scal3r_ros.mapping.alignment import AlignmentConfig
from scal3r_ros.mapping.backends.protocol import GCS_MODES, Backend, ChunkInput, ChunkPrediction
from scal3r_ros.mapping.config import INTRINSICS_SOURCES, MapSection, WindowSection
from scal3r_ros.mapping.events import (
    AlignmentReport,
    ChunkFailed,
    Frame,
    FrameCloudsUpdate,
    LoopClosureUpdate,
    MapCorrected,
    MapUpdate,
    PointsUpdate,
    PosesUpdate,
    RelocalisationUpdate,
    StatsUpdate,
)
from scal3r_ros.mapping.frame_store import FrameStore, FrameStoreConfig, StoredFrame
from scal3r_ros.mapping.intrinsics import IntrinsicsChoice, choose_intrinsics
from scal3r_ros.mapping.loop_closure import DescriptorDatabase
from scal3r_ros.mapping.loop_geometry import ChunkGeometry, ChunkGeometryStore
from scal3r_ros.mapping.map_store import MapConfig, MapStore
from scal3r_ros.mapping.memory import host_rss_bytes, release_freed_memory
from scal3r_ros.mapping.placement import Handover, Link, PreviousWindow, WindowPoints, hand_over
from scal3r_ros.mapping.pose_graph import PoseGraphConfig, Sim3PoseGraph
from scal3r_ros.mapping.relocalisation import (
    Match,
    RelocalisationConfig,
    Relocaliser,
)
from scal3r_ros.mapping.session.data import (
    CameraInfo,
    ScaleState,
    SessionData,
    SessionParameters,
)
from scal3r_ros.mapping.session.format import SessionError
from scal3r_ros.mapping.session.keyframes import Keyframes, collect_keyframes
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.tensors import to_numpy
from scal3r_ros.mapping.trajectory import Trajectory
from scal3r_ros.mapping.windowing import ChunkScheduler, ChunkSpec, WindowConfig, window_problem

T = TypeVar("T")

SESSION_MODES = ("mapping", "localisation")


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
    intrinsics: str = "predicted"  # predicted | camera_info: the K depth is unprojected with
    relocalisation: RelocalisationConfig = field(default_factory=RelocalisationConfig)
    # frames of a localisation run kept (chain gauge) to re-publish once localised
    localisation_history: int = 256

    def __post_init__(self) -> None:
        if self.gcs_mode not in GCS_MODES:
            raise ValueError(f"gcs_mode must be one of {GCS_MODES}, got {self.gcs_mode!r}")
        if self.intrinsics not in INTRINSICS_SOURCES:
            raise ValueError(
                f"intrinsics must be one of {INTRINSICS_SOURCES}, got {self.intrinsics!r}"
            )
        if problem := window_problem(self.window.chunk_size, self.window.overlap):
            raise ValueError(problem)

    @staticmethod
    def low_latency(**kw: Any) -> EngineConfig:
        return EngineConfig(window=WindowConfig.low_latency(), **kw)

    @staticmethod
    def from_sections(
        window: WindowSection, map_section: MapSection | None = None, frame_clouds: bool = False
    ) -> EngineConfig:
        """The engine of the config tree's window and map sections (node, offline, bench);
        the other knobs keep their defaults."""
        m = map_section or MapSection()
        return EngineConfig(
            window=WindowConfig(window.chunk_size, window.overlap),
            gcs_mode=window.gcs_mode,
            loop_closure=window.loop_closure,
            frame_clouds=frame_clouds,
            map=MapConfig(
                voxel_size=m.voxel_size, conf_ratio=m.confidence_ratio, max_points=m.max_points
            ),
            frames=FrameStoreConfig(max_spill_bytes=m.max_spill_mb << 20),
            intrinsics=m.intrinsics,
        )


class Stopwatch:
    """Seconds per named stage of one window: the ``StatsUpdate.timings`` the node and the
    bench read. A stage that raises is not counted (a failed inference is retried)."""

    def __init__(self, **seconds: float) -> None:
        self.timings: dict[str, float] = dict(seconds)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


class LoopClosureHook(Protocol):
    """Loop closure in two parts (``loop_closure.LoopClosure``): a network part run in the
    network phase right after a window's inference, and a verification part run when that
    window is placed. The value the first returns is handed to the second unchanged."""

    def infer_loops(
        self,
        engine: MappingEngine,
        chunk_id: int,
        frame_ids: np.ndarray,
        descriptors: Any | None,
    ) -> Any:
        """Add the window's frames (time order; ``descriptors`` the backend's, time order,
        or None) to retrieval, plan loop chunks against ``engine.window_spans()`` and infer
        them with ``engine.infer``; returns the work for `verify_loops`."""
        ...

    def infer_pending_loops(self, engine: MappingEngine) -> Any:
        """End of stream: `infer_loops` for the candidates retrieval still holds."""
        ...

    def verify_loops(self, engine: MappingEngine, work: Any) -> list[LoopClosureUpdate]:
        """Verify the inferred loop chunks against the placed chunks; add loop edges with
        ``engine.add_loop_constraint``; return the accepted loops (the engine re-optimises)."""
        ...

    def keyframe_descriptors(self) -> DescriptorDatabase | None:
        """The retrieval database: a saved session's keyframes (`export_session`)."""
        ...

    def restore_keyframes(self, db: DescriptorDatabase, last_frame: int) -> None:
        """Retrieval restarts from a loaded session's keyframes (`load_session`)."""
        ...

    def reset(self) -> None: ...


class SensorFusionHook(Protocol):
    """Factors from the robot's other sensors for a placed window
    (``sensor_fusion.SensorFusion``): odometry motions, GNSS positions."""

    def on_chunk(self, engine: MappingEngine, chunk_id: int) -> bool:
        """Add the window's factors through the engine's graph methods; True when any was
        added (the engine then re-optimises)."""
        ...

    def report(self, engine: MappingEngine, chunk_id: int) -> MapUpdate:
        """The sensors' state after the window's optimisation (a ``SensorFusionUpdate``)."""
        ...

    def reset(self) -> None: ...


@dataclass
class PreparedFrame:
    """A frame at the network's resolution (`MappingEngine.prepare`), made ahead of its
    push; ``generation`` says before which reset (the network's input size may change)."""

    frame: Frame
    image: np.ndarray
    intrinsics: np.ndarray | None
    generation: int


@dataclass
class InferredWindow:
    """A window between its network phase and its placement phase (``push_network`` ->
    ``place``): the prediction in network order, the stage times so far, and what the
    network phase measured, so the window's events read the same whichever thread places
    it and however far the network has gone on since."""

    spec: ChunkSpec
    pred: ChunkPrediction
    clock: Stopwatch
    loops: Any  # the loop hook's network part (None without loop closure)
    n_frames: int  # frames pushed when the window was inferred
    gcs_state_bytes: int
    intrinsics: IntrinsicsChoice = field(default_factory=IntrinsicsChoice)  # ``pred`` 's K
    reloc: Any = None  # the relocaliser's network part (None: not tried)


class MappingEngine:
    """``push(frame) -> list[MapUpdate]``, ``flush()``, ``reset()``; see module doc."""

    def __init__(
        self,
        config: EngineConfig,
        backend: Backend,
        loop_closure: LoopClosureHook | None = None,
        sensor_fusion: SensorFusionHook | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.loop_closure = loop_closure if config.loop_closure else None
        self.sensor_fusion = sensor_fusion
        self.scheduler = ChunkScheduler(config.window)
        self.frames = FrameStore(config.frames)
        self.frames.protect_from = self._oldest_needed_frame
        self.trajectory = Trajectory()
        self.map = MapStore(config.map)
        self.pose_graph = Sim3PoseGraph(config.pose_graph)
        self.previous = PreviousWindow(config.alignment, config.window.overlap)
        # spilled loop geometry: same per-process folder and disk cap as the frames
        self.loop_geometry = ChunkGeometryStore(
            config.loop_geometry_stride,
            config.loop_geometry_ram_chunks,
            config.frames.spill_dir,
            self.frames.budget,
        )
        # windows between their network phase and the end of their placement: their
        # frames stay stored, and loop planning counts them as chunks
        self._in_flight: dict[int, ChunkSpec] = {}
        # Held while a window is placed into trajectory and map (not while the network
        # runs), so another thread can read placed windows: the node's shutdown saves what
        # is integrated while a long window is still being inferred.
        self.state_lock = threading.RLock()
        # the frame store and the spill budget it shares with the loop geometry: used by
        # the network phase (frames in, network inputs) and the placement phase (colours,
        # loop geometry) when they run on two threads
        self._store_lock = threading.RLock()
        self._generation = 0  # resets so far: which prepared frames are still valid
        self._init_state()

    # ================================================================ public API
    def push(self, frame: Frame) -> list[MapUpdate]:
        """Add one frame; returns the events of any chunk this frame completed (the
        network phase and the placement phase back to back)."""
        return self.place_all(self.push_network(frame))

    def prepare(self, frame: Frame) -> PreparedFrame:
        """The frame at the network's resolution (`Backend.prepare`): may run on another
        thread ahead of `push_network` (the pipelined worker prepares frames while the
        network runs); a frame prepared before a `reset` is prepared again at its push."""
        generation = self._generation  # read first: a reset during the call invalidates it
        img, K = self.backend.prepare(frame.image, frame.intrinsics)
        return PreparedFrame(frame, np.ascontiguousarray(img), K, generation)

    def push_network(self, frame: Frame | PreparedFrame) -> list[MapUpdate | InferredWindow]:
        """The network phase of `push`: store the frame (prepared here unless it comes
        from `prepare`) and, when it completes a window, infer it (and any window waiting
        for a retry) with its loop chunks. Returns, in order, ``ChunkFailed`` events and
        the ``InferredWindow`` s to `place` in that order; placing them may run on another
        thread while the next frames come in."""
        with self.clock.stage("prepare"):  # (only the wait, when prepared elsewhere)
            fid = self.scheduler.n_frames
            if not isinstance(frame, PreparedFrame) or frame.generation != self._generation:
                frame = self.prepare(frame.frame if isinstance(frame, PreparedFrame) else frame)
            img, K, frame = frame.image, frame.intrinsics, frame.frame
            self._network_hw = (int(img.shape[0]), int(img.shape[1]))  # one size per reset
            with self._store_lock:
                self.frames.put(fid, StoredFrame(img, frame.stamp_ns, frame.camera_id, K))
            if self._mode != "localisation":  # (flat: stamps come from the frame store)
                self._stamps.append(int(frame.stamp_ns))
        spec = self.scheduler.push()
        if spec is None:
            return []
        if self.config.gcs_mode == "exact":
            self._pending.append(spec)  # offline: everything happens in flush()
            return []
        self._waiting.append(spec)
        return self._run_waiting()

    def place(self, window: InferredWindow) -> Iterator[list[MapUpdate]]:
        """The placement phase of a window from `push_network`, in two parts: first the
        alignment report and the poses (as soon as the window is aligned), then the map
        points, loop closures, corrections and the window's stats. Windows must be placed
        in the order the network phase returned them."""
        try:
            yield from self._integrate(window)
        finally:
            with self._store_lock:
                self._in_flight.pop(window.spec.chunk_id, None)
            release_freed_memory()

    def place_all(self, items: Iterable[MapUpdate | InferredWindow]) -> list[MapUpdate]:
        """Events of `push_network` 's items with every window placed, in order."""
        out: list[MapUpdate] = []
        for item in items:
            if isinstance(item, InferredWindow):
                for part in self.place(item):
                    out += part
            else:
                out.append(item)
        return out

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
        return self.place_all(self.flush_network()) + self.finish()

    def finish(self) -> list[MapUpdate]:
        """The end of `flush`, after its windows are placed: the loop candidates still
        pending are inferred and verified (both loop parts), then the graph re-optimised."""
        if self.loop_closure is None or not self.n_chunks or self._mode == "localisation":
            return []
        work = self.loop_closure.infer_pending_loops(self)
        loops = self.loop_closure.verify_loops(self, work)
        if not loops:
            return []
        return [*loops, *self._optimize_pose_graph(Stopwatch())]  # not a window: no stats

    def flush_network(self) -> Iterator[MapUpdate | InferredWindow]:
        """The network phase of `flush` (then `place` each window in order, then `finish`):
        lazily, window by window, so each is placed before the next one is inferred
        (``exact`` mode: the backend's generator runs window after window)."""
        spec = self.scheduler.flush()
        if self.config.gcs_mode == "exact":
            if spec is not None:
                self._pending.append(spec)
            specs = self._pending  # pending (their frames kept) until all are placed
            loaders: list[Callable[[], ChunkInput]] = [
                (lambda s=s: self._chunk_input(s)) for s in specs
            ]
            try:
                preds = self._timed(self.backend.infer_exact(loaders), "infer")
                for s, pred in zip(specs, preds, strict=True):
                    yield self._inferred(s, pred)
            finally:
                self._pending = []
        else:
            if spec is not None:
                self._waiting.append(spec)
            while self._waiting:  # no later window will retry: use the attempts up now
                yield from self._run_waiting()

    def reset(self) -> None:
        """Forget everything (frames, map, trajectory, GCS state, loops)."""
        with self.state_lock:
            self._reset()

    def _reset(self) -> None:
        self._generation += 1  # frames prepared before this are prepared again
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
        if self.sensor_fusion is not None:
            self.sensor_fusion.reset()
        with self._store_lock:
            self._in_flight.clear()
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

    def chunk_spans(self) -> dict[int, tuple[int, int]]:
        """(first frame, last frame + 1) of every placed window, by chunk id."""
        return {c: (f[0], f[-1] + 1) for c, f in self._chunk_frames.items()}

    def window_spans(self) -> dict[int, tuple[int, int]]:
        """(first frame, last frame + 1) of every window through the network phase, placed
        or not yet: the chunks loop planning sees, the same on one thread or two."""
        return dict(self._spans)

    def chunk_geometry(self, chunk_id: int) -> ChunkGeometry:
        """Subsampled local geometry of a past chunk (RAM or disk)."""
        with self._store_lock:
            return self.loop_geometry.get(chunk_id)

    def has_chunk_geometry(self, chunk_id: int) -> bool:
        with self._store_lock:
            return chunk_id in self.loop_geometry

    def will_have_geometry(self, chunk_id: int) -> bool:
        """The chunk's loop geometry is stored, or will be once its window (through the
        network phase, not yet placed) is placed: loop planning's test in the network phase."""
        with self._store_lock:
            return chunk_id in self._in_flight or chunk_id in self.loop_geometry

    def has_frame(self, frame_id: int) -> bool:
        """The frame's image is stored (RAM or disk)."""
        with self._store_lock:
            return frame_id in self.frames

    def frame(self, frame_id: int) -> StoredFrame:
        """A stored frame (KeyError when the caps deleted it), safe beside the other phase."""
        with self._store_lock:
            return self.frames.get(frame_id)

    def path_length(self, chunk_from: int, chunk_to: int) -> float:
        """Map distance travelled between two chunks along the pose graph's chain."""
        return self.pose_graph.path_length(chunk_from, chunk_to)

    def chunk_input(
        self, frame_ids: list[int] | tuple[int, ...], chunk_id: int, is_loop: bool = True
    ) -> ChunkInput:
        """Network input for arbitrary stored frames (loop chunks), reference first."""
        return self._chunk_input(ChunkSpec(chunk_id, tuple(frame_ids), is_loop))

    def infer(self, chunk: ChunkInput) -> ChunkPrediction:
        """Run the backend with the engine's GCS state (loop chunks join the sums, as
        official), returning frames in the order given, with the intrinsics
        ``config.intrinsics`` asks for (as the windows')."""
        pred = self.backend.infer(chunk, self._gcs_state)
        hw = (int(chunk.images.shape[1]), int(chunk.images.shape[2]))
        return choose_intrinsics(pred, chunk.intrinsics, hw, self.config.intrinsics)[0]

    def add_loop_constraint(self, chunk_a: int, chunk_b: int, sim3_a_to_b: Sim3) -> None:
        """A verified loop edge ``T(A -> B)``; the engine re-optimises after the hook."""
        self.pose_graph.add_loop(chunk_a, chunk_b, sim3_a_to_b)

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

    def owned_frames(self, chunk_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame ids, stamps, c2w in the chunk's coordinates) of the frames ``chunk_id``
        owns, time order: what other sensors' factors attach to."""
        ids = self.trajectory.frames_of_chunks([chunk_id])
        stamps, c2w = self.trajectory.local_poses(ids)
        return ids, stamps, c2w

    def has_external_frame(self, name: str) -> bool:
        return self.pose_graph.has_frame(name)

    def external_frame(self, name: str) -> Sim3:
        """Current estimate of an external frame (map -> ``name``, e.g. ENU)."""
        return self.pose_graph.frame(name)

    def add_external_frame(self, name: str, initial: Sim3, prior_sigmas: np.ndarray) -> None:
        self.pose_graph.add_frame(name, initial, prior_sigmas)

    def add_position_prior(
        self,
        chunk_id: int,
        point_chunk: np.ndarray,
        position: np.ndarray,
        sigmas: float | np.ndarray,
        frame: str,
        robust_k: float | None,
    ) -> int:
        """A position of a chunk point measured in an external frame (GNSS)."""
        return self.pose_graph.add_position_prior(
            chunk_id, point_chunk, position, sigmas, frame, robust_k
        )

    def add_relative_motion(
        self,
        a: int,
        c2w_a: np.ndarray,
        b: int,
        c2w_b: np.ndarray,
        motion: np.ndarray,
        sigmas: np.ndarray,
        frame: str,
        robust_k: float | None,
    ) -> int:
        """A metric motion between cameras of two chunks (odometry)."""
        return self.pose_graph.add_relative_motion(
            a, c2w_a, b, c2w_b, motion, sigmas, frame, robust_k
        )

    def gcs_state(self) -> Any:
        """The backend's GCS state (None in ``off`` and ``exact`` modes), for tests and
        inspection; read it only while no window is in the network."""
        return self._gcs_state

    def save_map(self, path: str | Path, voxelize: bool = True) -> None:
        self.map.save(path, voxelize=voxelize)

    def save_trajectory(self, path: str | Path, fmt: str = "tum") -> None:
        self.trajectory.save(path, fmt)

    # ================================================================ sessions
    def session_parameters(self) -> SessionParameters:
        """What a session saved by this engine shares with any engine that loads it."""
        backend = self.backend
        while hasattr(backend, "inner"):  # wrappers (TimedBackend) keep the network's kind
            backend = backend.inner
        c = self.config
        return SessionParameters(
            c.window.chunk_size,
            c.window.overlap,
            c.gcs_mode,
            type(backend).__name__,
            c.use_point_head,
        )

    def export_session(self, keyframe_stride: int = 5) -> SessionData:
        """The placed map as a `SessionData` (``session.write_session`` writes it): per-chunk
        points, trajectory, pose graph, keyframes (at most one per ``keyframe_stride``
        frames, with a small JPEG), cameras, the metric scale when the graph has an ``enu``
        frame. Call it while no window is in either phase (``MappingWorker.call`` runs it so,
        after draining the placement thread); frames after the last window are not in it
        (``call(..., flush=True)`` or `flush` first to include them). A node with
        its own scale source sets ``data.scale`` before writing."""
        if keyframe_stride < 1:
            raise ValueError(f"keyframe_stride must be >= 1, got {keyframe_stride}")
        with self.state_lock:
            traj = self.trajectory.state()
            spans = self.chunk_spans()
            # (frame images under the store lock one at a time: the network phase goes on)
            keyframes, cameras = collect_keyframes(self, keyframe_stride)
            scale = ScaleState()
            if self.pose_graph.has_frame("enu"):
                scale = ScaleState(self.pose_graph.frame("enu").s, "graph:enu")
            n_frames, next_chunk = self.n_frames, self.scheduler.next_chunk_id
            if self._mode == "localisation" and self._loaded_counts is not None:
                n_frames, next_chunk = self._loaded_counts  # the map is the loaded one
            return SessionData(
                parameters=self.session_parameters(),
                n_frames=n_frames,
                next_chunk_id=next_chunk,
                stamps_ns=np.array(self._stamps, np.int64),
                chunk_spans=spans,
                trajectory=traj,
                map=self.map.snapshot(),
                pose_graph=self.pose_graph.state(),
                keyframes=keyframes,
                cameras=cameras,
                scale=scale,
            )

    def load_session(self, data: SessionData, mode: str = "mapping") -> None:
        """Replace everything by the session ``data`` (``session.read_session``): map points
        per chunk, trajectory, pose graph, keyframes (`keyframes`, and the loop detector's
        database), cameras. New frames and chunks get ids after the loaded ones; the next
        window starts a new chain in the graph (held by its own prior: nothing ties it to
        the loaded map until relocalisation adds an edge). Full images, loop geometry and
        the GCS state are not in a session: loops to loaded chunks are proposed but cannot
        be verified from them. Raises `SessionError` when the session's parameters differ
        from this engine's; the engine is then unchanged.

        ``mode``: ``mapping`` (new windows extend the loaded map once relocalised) or
        ``localisation`` (map, graph and trajectory stay as loaded; new windows are only
        placed and published, memory stays flat). Either way the new windows are matched
        against the keyframes (`relocalisation`, `relocalisation_state`) until a match is
        verified; their points join the map only after that, in mapping mode."""
        if mode not in SESSION_MODES:
            raise ValueError(f"mode must be one of {SESSION_MODES}, got {mode!r}")
        if diff := data.parameters.mismatches(self.session_parameters()):
            raise SessionError(f"session parameters do not match this engine ({'; '.join(diff)})")
        with self.state_lock:
            self._reset()
            try:
                self.scheduler.resume(data.n_frames, data.next_chunk_id)
                self._stamps = [int(s) for s in data.stamps_ns]
                self._chunk_frames = {
                    c: tuple(range(a, b)) for c, (a, b) in data.chunk_spans.items()
                }
                self._spans = dict(data.chunk_spans)
                self.trajectory.restore(data.trajectory)
                self.map.restore(data.map, data.trajectory.chunk_poses)
                self.pose_graph.restore(data.pose_graph)
                self.pose_graph.start_segment()
                self.keyframes, self.cameras = data.keyframes, dict(data.cameras)
                if self.loop_closure is not None and len(data.keyframes):
                    db: DescriptorDatabase = data.keyframes.database()
                    self.loop_closure.restore_keyframes(db, data.n_frames - 1)
                self._mode = mode
                self._loaded_counts = (int(data.n_frames), int(data.next_chunk_id))
                self._reloc = Relocaliser(self, data, self.config.relocalisation)
            except BaseException:
                self._reset()  # half a session is no map: start empty
                raise

    # ================================================================ one window
    def _inferred(self, spec: ChunkSpec, pred_net: ChunkPrediction) -> InferredWindow:
        """The end of a window's network phase: its frames stay stored until it is placed,
        it counts as a chunk for loop planning, and the loop hook's network part runs (loop
        chunks join the GCS sums right after the window, before the next one). The
        prediction gets the intrinsics ``config.intrinsics`` asks for."""
        clock, self.clock = self.clock, Stopwatch(prepare=0.0)  # the next window's time
        pred_net, choice = choose_intrinsics(
            pred_net, self._known_intrinsics(spec), self._network_hw, self.config.intrinsics
        )
        with self._store_lock:
            self._in_flight[spec.chunk_id] = spec
        self._spans[spec.chunk_id] = (spec.frame_ids[0], spec.frame_ids[-1] + 1)
        loops = None
        if self.loop_closure is not None and self._mode != "localisation":
            try:
                with clock.stage("loop_infer"):  # "loop": the verification part
                    order = np.argsort(np.asarray(spec.network_order))  # back to time order
                    desc = pred_net.descriptors
                    loops = self.loop_closure.infer_loops(
                        self,
                        spec.chunk_id,
                        np.array(spec.frame_ids, dtype=np.int64),
                        None if desc is None else desc[order],
                    )
            except BaseException:  # the window is lost: nothing will place it
                self._forget_in_flight([spec.chunk_id])
                raise
        reloc = None
        if self._reloc is not None and self._reloc.wants():
            with clock.stage("reloc_infer"):
                order = np.argsort(np.asarray(spec.network_order))
                desc = pred_net.descriptors
                reloc = self._reloc.infer(
                    self, np.array(spec.frame_ids, np.int64), None if desc is None else desc[order]
                )
        gcs = self.backend.gcs_state_nbytes(self._gcs_state) if self._gcs_state is not None else 0
        return InferredWindow(spec, pred_net, clock, loops, self.n_frames, gcs, choice, reloc)

    def _integrate(self, window: InferredWindow) -> Iterator[list[MapUpdate]]:
        """Place a window (under `state_lock`, released between the two parts), then its
        loop verification and sensor factors (outside it); the window's events in two parts."""
        spec, clock = window.spec, window.clock
        localisation = self._mode == "localisation"
        with self.state_lock:
            with clock.stage("unproject"):
                w = WindowPoints.from_prediction(spec, window.pred, self.config.use_point_head)
            with clock.stage("align"):
                if localisation:
                    link, pose, out = self._place_localisation(w)
                else:
                    link, pose, out = self._place_against_previous(w)
            with clock.stage("map"):
                handover = hand_over(w.frame_ids, link, self.config.window.overlap)
                if localisation:
                    out += self._localisation_poses(w, handover, pose)
                else:
                    out += self._set_frame_poses(w, handover, pose)
        yield out
        with self.state_lock:
            with clock.stage("map"):
                # a loaded map gets no points of a chain not yet tied to it (they would be
                # in another gauge), and none at all in localisation mode
                held = self._reloc is not None and (localisation or not self._reloc.localised)
                out = [] if held else self._insert_into_map(w, link, handover, pose)
            with clock.stage("store"):
                self._keep_tail(w)
        if self._reloc is not None:
            with clock.stage("reloc"):
                out += self._relocalise(window, w, pose)
        if not localisation:
            out += self._add_constraints(window, clock)
        out.append(self._stats(window, clock.timings))
        yield out

    def _place_against_previous(self, w: WindowPoints) -> tuple[Link | None, Sim3, list[MapUpdate]]:
        """Chunk -> map Sim(3) of ``w`` from its link to the previous window (identity for
        the first); pose graph, trajectory and map learn it."""
        link = self.previous.align(w)
        out: list[MapUpdate] = []
        if link is None:
            pose = Sim3.identity()
            self.pose_graph.add_node(w.chunk_id, pose)
        else:
            pose = self.pose_graph.add_sequential(link.prev_id, w.chunk_id, link.sim3)
            self.reports.append(link.report)
            out.append(link.report)
        self.trajectory.set_chunk_pose(w.chunk_id, pose)
        self.map.set_chunk_pose(w.chunk_id, pose)
        self._chunk_frames[w.chunk_id] = tuple(int(f) for f in w.frame_ids)
        return link, pose, out

    # ------------------------------------------------------- relocalisation
    def _place_localisation(self, w: WindowPoints) -> tuple[Link | None, Sim3, list[MapUpdate]]:
        """Localisation mode: chain the window on the previous one outside the graph and
        the trajectory (nothing of it is stored but the newest pose): in the new chain's
        gauge until the fix, in the loaded map after it."""
        link = self.previous.align(w)
        out: list[MapUpdate] = []
        if link is None or self._loc_pose is None:
            pose = Sim3.identity()
        else:
            pose = self._loc_pose @ link.sim3
            out.append(link.report)
        self._loc_pose = pose
        with self._store_lock:
            self._spans.pop(w.chunk_id, None)  # (loops are off: no window needs it)
            self.frames.drop_before(min(int(w.frame_ids[0]), self._oldest_needed_frame()))
        return link, pose, out

    def _localisation_poses(
        self, w: WindowPoints, handover: Handover, pose: Sim3
    ) -> list[MapUpdate]:
        """`_set_frame_poses` without a trajectory: poses straight from the window."""
        pos = {int(f): k for k, f in enumerate(w.frame_ids)}

        def poses(ids: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
            with self._store_lock:
                info = [self.frames.info(f) for f in ids]
            c2w = np.stack([pose.apply_pose(w.pred.c2w[pos[f]]) for f in ids])
            return (
                np.array(ids, np.int64),
                np.array([i[0] for i in info]),
                c2w,
                tuple(i[1] for i in info),
            )

        out: list[MapUpdate] = []
        if handover.corrected_ids:
            ids, st, c2w, _ = poses(list(handover.corrected_ids))
            out.append(PosesUpdate(w.chunk_id, ids, st, c2w, True, "overlap"))
        if handover.new_ids:
            ids, st, c2w, cams = poses(list(handover.new_ids))
            out.append(PosesUpdate(w.chunk_id, ids, st, c2w, False, "new", cams))
            if self.config.frame_clouds:
                out.append(self._frame_clouds(w, handover, pose, st))
        if self._reloc is not None and not self._reloc.localised:
            owned = [int(w.frame_ids[k]) for k in handover.owned]
            ids, st, c2w, _ = poses(owned)
            for f, stamp, T in zip(owned, st.tolist(), c2w, strict=True):
                self._loc_history[f] = (int(stamp), T)  # re-published once localised
            while len(self._loc_history) > self.config.localisation_history:
                del self._loc_history[min(self._loc_history)]
        return out

    def _relocalise(self, window: InferredWindow, w: WindowPoints, pose: Sim3) -> list[MapUpdate]:
        """The relocaliser's verification of a placed window; on the fix the new chain is
        tied to the loaded map, after it a verified match is a loop edge (mapping) or
        re-places the newest window (localisation)."""
        r = self._reloc
        assert r is not None
        localisation = self._mode == "localisation"
        with self.state_lock:
            chain = pose if localisation else self.pose_graph.estimate(w.chunk_id)
        upd, match = r.verify(self, w, window.reloc, chain)
        out: list[MapUpdate] = [] if upd is None else [upd]
        if match is None:
            return out
        if localisation:
            return out + self._localised_at(w, match, first=upd is not None)
        if upd is not None:
            return out + self._tie_new_chain(w.chunk_id, match)
        return out + self._keyframe_loop(w.chunk_id, match)

    def _localised_at(self, w: WindowPoints, match: Match, first: bool) -> list[MapUpdate]:
        """Localisation mode: the window's verified pose replaces the chained one (the
        fix, or a drift reset); the frames seen so far re-published in the map."""
        H = match.chunk_pose @ self._loc_pose.inverse() if self._loc_pose is not None else None
        self._loc_pose = match.chunk_pose
        if H is None:
            return []
        if first:
            ids = np.array(sorted(self._loc_history), np.int64)
            stamps = np.array([self._loc_history[int(f)][0] for f in ids], np.int64)
            c2w = np.stack([H.apply_pose(self._loc_history[int(f)][1]) for f in ids])
            self._loc_history.clear()
        else:
            ids = np.asarray(w.frame_ids, np.int64)
            c2w = np.stack([match.chunk_pose.apply_pose(T) for T in w.pred.c2w])
            with self._store_lock:
                stamps = np.array([self.frames.info(int(f))[0] for f in ids], np.int64)
        # (no map chunk moved: the loaded map stays as it is)
        return [MapCorrected(-1, {}), PosesUpdate(-1, ids, stamps, c2w, True, "relocalised")]

    def _tie_new_chain(self, chunk_id: int, match: Match) -> list[MapUpdate]:
        """The fix in mapping mode: the new chain moved into the loaded map by the match,
        its prior released, an edge from the window to the matched loaded chunk, then one
        optimisation and the corrected poses everywhere."""
        loaded = self._reloc.loaded_chunks if self._reloc is not None else set()
        with self.state_lock:
            g = self.pose_graph
            new = [n for n in g.nodes if n not in loaded]
            g.set_estimates({n: match.hypothesis @ g.estimate(n) for n in new})
            for a in [a for a in g.anchors if a not in loaded]:
                g.release_anchor(a)
            edge = g.estimate(match.matched_chunk).inverse() @ g.estimate(chunk_id)
            g.add_loop(chunk_id, match.matched_chunk, edge)
            poses = g.optimize()
        return self.apply_chunk_poses(poses, "relocalised")

    def _keyframe_loop(self, chunk_id: int, match: Match) -> list[MapUpdate]:
        """Mapping after the fix: a verified match to a loaded keyframe is a loop edge."""
        with self.state_lock:
            g = self.pose_graph
            edge = g.estimate(match.matched_chunk).inverse() @ match.chunk_pose
            g.add_loop(chunk_id, match.matched_chunk, edge)
        upd = LoopClosureUpdate(
            chunk_id,
            match.matched_chunk,
            edge.matrix(),
            (-1, -1),
            {"inlier_ratio": match.inlier_ratio, "rmse": match.rmse, "keyframe": 1.0},
        )
        return [upd, *self._optimize_pose_graph(Stopwatch(), "loop_closure")]

    def untied_chunks(self) -> set[int]:
        """Chunks of a new chain not yet tied to the loaded map (mapping mode, before the
        fix): their poses are in another gauge, a saved session takes no keyframes there."""
        r = self._reloc
        if r is None or r.localised or self._mode == "localisation":
            return set()
        return set(self._chunk_frames) - r.loaded_chunks

    def relocalisation_state(self) -> RelocalisationUpdate | None:
        """The newest relocalisation event (None when no session was loaded)."""
        return None if self._reloc is None else self._reloc.last

    @property
    def session_mode(self) -> str:
        """``mapping`` or ``localisation`` (the mode of the loaded session; ``mapping``
        without one)."""
        return self._mode

    def loaded_map_points(self, chunk_ids: list[int]) -> np.ndarray:
        """Map-frame points of loaded chunks (relocalisation's overlap test)."""
        with self.state_lock:
            return self.map.chunk_points(chunk_ids)

    def state_sizes(self) -> dict[str, int]:
        """How many entries each of the engine's growing stores holds: what must stay
        flat in localisation mode (map, graph, trajectory, bookkeeping, retrieval)."""
        detector = getattr(self.loop_closure, "detector", None)
        with self.state_lock, self._store_lock:
            return {
                "map_points": len(self.map),
                "map_chunks": len(self.map.chunk_ids()),
                "graph_nodes": len(self.pose_graph),
                "graph_edges": len(self.pose_graph.edges),
                "trajectory_frames": len(self.trajectory),
                "stamps": len(self._stamps),
                "chunks": len(self._chunk_frames),
                "spans": len(self._spans),
                "reports": len(self.reports),
                "loop_geometry_chunks": len(self.loop_geometry),
                "loop_database": 0 if detector is None else len(detector),
                "frames_stored": len(self.frames),
                "frames_forgotten": self.frames.n_forgotten,
                "localisation_history": len(self._loc_history),
            }

    def _set_frame_poses(self, w: WindowPoints, handover: Handover, pose: Sim3) -> list[MapUpdate]:
        """Trajectory entries of the frames ``w`` owns; pose events for the taken-over and
        the new frames (and the new frames' depth when ``frame_clouds`` is on)."""
        out: list[MapUpdate] = []
        for k in handover.owned:
            f = int(w.frame_ids[k])
            self.trajectory.set_frame(f, self._stamps[f], w.chunk_id, w.pred.c2w[k])
        if handover.corrected_ids:
            ids = np.array(handover.corrected_ids)
            st, c2w = self.trajectory.poses(ids)
            out.append(PosesUpdate(w.chunk_id, ids, st, c2w, True, "overlap"))
        if handover.new_ids:
            ids = np.array(handover.new_ids)
            st, c2w = self.trajectory.poses(ids)
            with self._store_lock:
                cams = tuple(self.frames.camera_id(int(f)) for f in ids)
            out.append(PosesUpdate(w.chunk_id, ids, st, c2w, False, "new", cams))
            if self.config.frame_clouds:
                out.append(self._frame_clouds(w, handover, pose, st))
        return out

    def _frame_clouds(
        self, w: WindowPoints, handover: Handover, pose: Sim3, stamps: np.ndarray
    ) -> FrameCloudsUpdate:
        new_set = set(handover.new_ids)
        ks = [k for k in handover.owned if int(w.frame_ids[k]) in new_set]
        d = torch.where(w.valid[ks], w.pred.depth[ks] * np.float32(pose.s), torch.nan)
        with self._store_lock:
            cams = tuple(self.frames.camera_id(f) for f in handover.new_ids)
        return FrameCloudsUpdate(
            w.chunk_id,
            np.array(handover.new_ids),
            stamps,
            cams,
            to_numpy(d).astype(np.float32),
            to_numpy(w.conf[ks]),
            w.pred.intrinsics[ks].astype(np.float64),
        )

    def _insert_into_map(
        self, w: WindowPoints, link: Link | None, handover: Handover, pose: Sim3
    ) -> list[MapUpdate]:
        """Taken-over frames leave the previous window's points; the owned frames' points
        enter the map unless the placement was degenerate."""
        if link is not None and handover.handed:
            self.map.drop_frames(link.prev_id, np.array(handover.handed))
        degenerate = link is not None and link.degenerate
        if degenerate and not self.config.insert_points_on_degenerate:
            return []
        owned = handover.owned
        with self._store_lock:
            rgb = np.stack([self.frames.get(int(f)).image for f in w.frame_ids[owned]])
        hw = tuple(w.pred.depth.shape[1:3])
        if rgb.shape[1:3] != hw:
            rgb = _resize_nearest(rgb, hw)
        xyz, col, cf = self.map.insert(
            w.chunk_id,
            pose,
            w.points[owned],
            rgb,
            torch.where(w.valid[owned], w.conf[owned], torch.nan),
            w.frame_ids[owned],
            w.pred.depth[owned],
        )
        return [PointsUpdate(w.chunk_id, xyz, col, cf)] if len(xyz) else []

    def _keep_tail(self, w: WindowPoints) -> None:
        """What the next window (its overlap) and loop closure (subsampled geometry) need."""
        self.previous.keep_tail(w)
        if self.loop_closure is not None and self._mode != "localisation":
            with self._store_lock:  # its spill budget is the frames' too
                self.loop_geometry.put(
                    w.chunk_id,
                    w.frame_ids,
                    w.points,
                    w.conf,
                    w.valid,
                    w.pred.c2w,
                    w.pred.descriptors,
                )

    def _add_constraints(self, window: InferredWindow, clock: Stopwatch) -> list[MapUpdate]:
        """The window's inferred loop chunks verified (the hook adds their edges) and the
        other sensors' factors added, then one re-optimisation and the corrected poses."""
        loops: list[MapUpdate] = []
        if self.loop_closure is not None:
            with clock.stage("loop"):
                loops = list(self.loop_closure.verify_loops(self, window.loops))
        fused = False
        if self.sensor_fusion is not None:
            with clock.stage("fusion"):
                fused = self.sensor_fusion.on_chunk(self, window.spec.chunk_id)
        out: list[MapUpdate] = []
        if loops or fused:
            reason = "loop_closure" if loops else "sensor_fusion"
            out = [*loops, *self._optimize_pose_graph(clock, reason)]
        if self.sensor_fusion is not None:
            out.append(self.sensor_fusion.report(self, window.spec.chunk_id))
        return out

    def _optimize_pose_graph(
        self, clock: Stopwatch, reason: str = "loop_closure"
    ) -> list[MapUpdate]:
        """Re-optimise after new loop edges or sensor factors; the corrected chunk poses go
        everywhere."""
        with self.state_lock:
            with clock.stage("graph"):
                poses = self.pose_graph.optimize()
            return self.apply_chunk_poses(poses, reason)

    # ================================================================ internals
    def _init_state(self) -> None:
        self._stamps: list[int] = []
        self._chunk_frames: dict[int, tuple[int, ...]] = {}
        self._spans: dict[int, tuple[int, int]] = {}  # windows through the network phase
        self._pending: list[ChunkSpec] = []
        self._waiting: list[ChunkSpec] = []  # ready windows, in order (a failed one first)
        self._attempts: dict[int, int] = {}
        self.previous.reset()
        self.loop_geometry.clear()
        self.clock = Stopwatch(prepare=0.0)  # the next window's stages
        self._network_hw = (0, 0)  # the network input's size (set by the first frame)
        self.intrinsics_fallbacks = 0  # windows that wanted camera_info and had no K
        mode = self.config.gcs_mode
        self._gcs_state = None if mode in ("off", "exact") else self.backend.new_gcs_state(mode)
        self.reports: list[AlignmentReport] = []
        # a loaded session's keyframes (pose, descriptor, small image: what relocalisation
        # queries) and cameras; empty when mapping from scratch
        self.keyframes = Keyframes()
        self.cameras: dict[str, CameraInfo] = {}
        self._mode = "mapping"  # a loaded session's mode
        self._reloc: Relocaliser | None = None  # set by load_session
        self._loc_pose: Sim3 | None = None  # localisation mode: the newest window's pose
        # localisation mode before the fix: frame -> (stamp, c2w in the chain's gauge)
        self._loc_history: dict[int, tuple[int, np.ndarray]] = {}
        self._loaded_counts: tuple[int, int] | None = None  # (n_frames, next_chunk_id)

    def _known_intrinsics(self, spec: ChunkSpec) -> np.ndarray | None:
        """The stored K of the window's frames in network order (at the network input's
        resolution), None unless every frame has one."""
        with self._store_lock:
            Ks = [self.frames.intrinsics(spec.frame_ids[k]) for k in spec.network_order]
        if any(K is None for K in Ks):
            return None
        return np.stack(Ks)  # type: ignore[arg-type]

    def _chunk_input(self, spec: ChunkSpec) -> ChunkInput:
        with self._store_lock:
            return ChunkInput.from_stored(spec, self.frames.get)

    def _run_waiting(self) -> list[MapUpdate | InferredWindow]:
        """Infer ready windows in order. A backend failure keeps the window for a retry
        when the next one is ready (transient faults such as CUDA OOM), up to
        ``max_chunk_attempts`` tries; then it is skipped and reported."""
        out: list[MapUpdate | InferredWindow] = []
        try:
            self._infer_waiting(out)
        except BaseException:  # windows inferred before the error are lost with it
            self._forget_in_flight([w.spec.chunk_id for w in out if isinstance(w, InferredWindow)])
            raise
        return out

    def _forget_in_flight(self, chunk_ids: list[int]) -> None:
        with self._store_lock:
            for c in chunk_ids:
                self._in_flight.pop(c, None)
                self._spans.pop(c, None)

    def _infer_waiting(self, out: list[MapUpdate | InferredWindow]) -> None:
        """`_run_waiting` 's loop, appending to ``out``."""
        while self._waiting:
            spec = self._waiting[0]
            try:
                with self.clock.stage("infer"):
                    pred = self.backend.infer(self._chunk_input(spec), self._gcs_state)
            except Exception as exc:  # the backend's failure, not the engine's
                attempt = self._attempts.get(spec.chunk_id, 0) + 1
                self._attempts[spec.chunk_id] = attempt
                retry = attempt < self.config.max_chunk_attempts
                if not retry:
                    self._waiting.pop(0)
                out.append(
                    ChunkFailed(spec.chunk_id, f"{type(exc).__name__}: {exc}", attempt, retry)
                )
                if retry:
                    break
                continue
            self._waiting.pop(0)
            self._attempts.pop(spec.chunk_id, None)
            out.append(self._inferred(spec, pred))

    def _timed(self, items: Iterable[T], stage: str) -> Iterator[T]:
        """``items`` one by one, the time each took to produce counted as ``stage`` of the
        window it goes to (exact mode: the backend computes window after window)."""
        it = iter(items)
        while True:
            try:
                with self.clock.stage(stage):
                    item = next(it)
            except StopIteration:
                return
            yield item

    def _oldest_needed_frame(self) -> int:
        """Frames from this id on are needed by windows still to run: the next regular
        window (within the newest ``chunk_size`` frames), the ones inferred and not yet
        placed, and any waiting or, in ``exact`` mode, pending window; the frame store
        keeps them. Called by the frame store under ``_store_lock``."""
        specs = (*self._waiting, *self._pending, *self._in_flight.values())
        starts = [s.frame_ids[0] for s in specs if s.frame_ids]
        return min([self.scheduler.n_frames - self.config.window.chunk_size, *starts])

    def _stats(self, window: InferredWindow, timings: dict[str, float]) -> StatsUpdate:
        timings["engine_total"] = sum(v for k, v in timings.items() if k not in ("infer",))
        with self._store_lock:
            frames_ram, frames_disk = self.frames.ram_nbytes(), self.frames.disk_frames()
            spill = self.frames.budget.used
        memory = {
            "rss_bytes": float(host_rss_bytes()),
            "map_points": float(len(self.map)),
            "map_bytes": float(self.map.nbytes()),
            "frames_ram_bytes": float(frames_ram),
            "frames_on_disk": float(frames_disk),
            "spill_bytes": float(spill),
            "gcs_state_bytes": float(window.gcs_state_bytes),
            "n_frames": float(window.n_frames),
            "n_chunks": float(self.n_chunks),
        }
        k = window.intrinsics
        self.intrinsics_fallbacks += k.fallback  # counted as placed: the same on two threads
        return StatsUpdate(
            window.spec.chunk_id,
            timings,
            memory,
            k.source,
            k.focal_ratio,
            self.intrinsics_fallbacks,
        )

    def __del__(self) -> None:
        try:
            self.loop_geometry.clear()
        except Exception:
            pass


def is_aligned_part(events: list[MapUpdate]) -> bool:
    """``events`` is the first part of a window's placement (``MappingEngine.place``): the
    window's own poses, no stats yet (its map points and stats follow in the second)."""
    return not any(isinstance(e, StatsUpdate) for e in events) and any(
        isinstance(e, PosesUpdate) and e.chunk_id >= 0 and e.reason in ("new", "overlap")
        for e in events
    )


def _resize_nearest(images: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize (F, H, W, 3) -> (F, h, w, 3) for point colours."""
    F, H, W, _ = images.shape
    h, w = hw
    ys = np.minimum((np.arange(h) + 0.5) * H / h, H - 1).astype(int)
    xs = np.minimum((np.arange(w) + 0.5) * W / w, W - 1).astype(int)
    return images[:, ys][:, :, xs]
