"""`scal3r_offline`: map a recorded sequence in one command (exact GCS, as the official).

    scal3r_offline path/to/images --out run1                      # *.png,*.jpg,*.jpeg,*.bmp
    scal3r_offline dataset/sequences/00 --out run00               # KITTI folder (+ its GT)
    scal3r_offline kitti_00_bag --topic /kitti/camera_color_left/image_raw --gt 00.txt
    scal3r_offline --synthetic 200 --out demo                     # built-in drive, oracle

Input is an image folder (sorted by name like the official release), a KITTI odometry
sequence folder (image_2/, times.txt; ground truth from poses/NN.txt when present) or a
ROS 2 bag (rosbags; sensor_msgs/Image or CompressedImage). Unlike the node, which must
be causal, every chunk is run with the official layer-synchronous GCS schedule
(``--gcs exact``, the default) once the whole sequence is known. Writes
``trajectory_tum.txt``, ``trajectory_kitti.txt``, ``map.ply`` and ``run.json`` into
``--out``, and with ground truth (``--gt`` or the input's own) the evaluation of
``scal3r_evaluate`` (``evaluation.json``, ``trajectory.png``, ``errors.png``).

Image folders get stamps ``--start-stamp-ns + i / --fps`` (defaults: the synthetic
drive's, so ``--backend oracle`` finds its ground truth by stamp) or from ``--times``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scal3r_ros.mapping.atomic_io import atomic_write
from scal3r_ros.mapping.backends.protocol import GCS_MODES
from scal3r_ros.mapping.config import BackendSection, OracleSection, WindowSection
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig

IMAGE_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.bmp")  # the official image_patterns
IMAGE_MSGTYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class OfflineError(ValueError):
    """Bad input (missing folder, no images, unknown topic, ...): message says which."""


@dataclass
class Source:
    """Frames to map: ``frames()`` yields (stamp_ns, HxWx3 uint8 RGB) in order;
    ``frames(only)`` just those at the given positions (a distributed rank reads only the
    frames of its windows)."""

    name: str
    n: int
    frames: Callable[..., Iterator[tuple[int, np.ndarray]]]
    gt: np.ndarray | None = None  # (n, 4, 4) per frame (index-matched), when known
    gt_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- sources
def list_images(folder: str | Path, patterns: Sequence[str] = IMAGE_PATTERNS) -> list[Path]:
    """Images of a folder as the official release lists them: glob each pattern, sort
    the union of full paths lexicographically (case-sensitive, like its glob)."""
    folder = Path(folder)
    found = {p for pat in patterns for p in folder.glob(pat) if p.is_file()}
    return sorted(found, key=lambda p: str(p))


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _subsample(n: int, every: int, max_frames: int | None) -> np.ndarray:
    sel = np.arange(0, n, max(every, 1))
    return sel[:max_frames] if max_frames else sel


def image_folder_source(
    folder: Path, stamps_ns: np.ndarray | None, fps: float, start_ns: int, sel_args: tuple
) -> Source:
    files = list_images(folder)
    if not files:
        raise OfflineError(f"no images ({', '.join(IMAGE_PATTERNS)}) in {folder}")
    if stamps_ns is None:
        stamps_ns = start_ns + np.round(np.arange(len(files)) * 1e9 / fps).astype(np.int64)
    elif len(stamps_ns) != len(files):
        raise OfflineError(f"{len(stamps_ns)} times for {len(files)} images in {folder}")
    sel = _subsample(len(files), *sel_args)

    def frames(only: Collection[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for k, i in enumerate(sel):
            if only is None or k in only:
                yield int(stamps_ns[i]), _read_rgb(files[i])

    return Source(
        str(folder), len(sel), frames, info=dict(kind="images", selected=sel, total=len(files))
    )


def kitti_source(seq_dir: Path, sel_args: tuple) -> Source:
    """A KITTI odometry sequence: image_2, times.txt, GT of image_2 when available."""
    from scal3r_ros.tools.kitti import load_sequence

    seq = load_sequence(seq_dir, right=False)
    files = seq.images["image_2"]
    stamps = np.round(seq.times * 1e9).astype(np.int64)
    sel = _subsample(len(files), *sel_args)
    gt = seq.camera_poses("image_2")

    def frames(only: Collection[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for k, i in enumerate(sel):
            if only is None or k in only:
                yield int(stamps[i]), _read_rgb(files[i])

    return Source(
        f"KITTI {seq.name}",
        len(sel),
        frames,
        gt=None if gt is None else gt[sel],
        gt_name=str(seq.poses_path or ""),
        info=dict(kind="kitti", selected=sel, total=len(files)),
    )


def _is_bag(path: Path) -> bool:
    if path.is_file():
        return path.suffix in (".mcap", ".db3")
    return (path / "metadata.yaml").is_file()


def bag_source(path: Path, topic: str | None, sel_args: tuple) -> Source:
    """Images of one topic of a ROS 2 bag (rosbags), stamped with their header stamps."""
    from rosbags.highlevel import AnyReader

    def open_reader() -> AnyReader:
        return AnyReader([path])

    with open_reader() as reader:
        conns = [c for c in reader.connections if c.msgtype in IMAGE_MSGTYPES]
        topics = sorted({c.topic for c in conns})
        if topic is None:
            if len(topics) != 1:
                raise OfflineError(
                    f"{path}: {len(topics)} image topics {topics}; pick one with --topic"
                )
            topic = topics[0]
        elif topic not in topics:
            raise OfflineError(f"{path}: no image topic {topic!r} (image topics: {topics})")
        total = sum(c.msgcount for c in conns if c.topic == topic)
    sel = _subsample(total, *sel_args)
    position = {int(m): k for k, m in enumerate(sel)}  # message index -> frame position

    def frames(only: Collection[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        from scal3r_ros.ros.conversions import compressed_to_rgb, image_to_rgb

        with open_reader() as reader:
            cs = [c for c in reader.connections if c.topic == topic]
            for k, (conn, t_bag, raw) in enumerate(reader.messages(connections=cs)):
                pos = position.get(k)
                if pos is None or (only is not None and pos not in only):
                    continue
                msg = reader.deserialize(raw, conn.msgtype)
                st = msg.header.stamp
                stamp = int(st.sec) * 1_000_000_000 + int(st.nanosec) or int(t_bag)
                if conn.msgtype.endswith("CompressedImage"):
                    yield stamp, compressed_to_rgb(msg)
                else:
                    yield stamp, image_to_rgb(msg)

    return Source(
        f"{path} {topic}",
        len(sel),
        frames,
        info=dict(kind="bag", topic=topic, selected=sel, total=total),
    )


def synthetic_source(cfg: SyntheticConfig) -> tuple[Source, Any]:
    from scal3r_ros.mapping.sim.synthetic import SyntheticDrive

    drive = SyntheticDrive(cfg)

    def frames(only: Collection[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(drive.n_frames):
            if only is None or i in only:
                yield drive.stamp_ns(i), drive.render(i)[0]

    src = Source(
        f"synthetic drive ({cfg.n_frames} frames, seed {cfg.seed})",
        drive.n_frames,
        frames,
        gt=drive.gt_poses(),
        gt_name="synthetic ground truth",
        info=dict(kind="synthetic", selected=np.arange(drive.n_frames), total=drive.n_frames),
    )
    return src, drive


# ---------------------------------------------------------------- running
class _CountingBackend:
    """Delegates to a backend; ticks a progress bar at every chunk load of the exact
    schedule (the official schedule re-reads each chunk once per GCM layer)."""

    def __init__(self, backend: Any, tick: Callable[[], None]) -> None:
        self._backend = backend
        self._tick = tick

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def infer_exact(self, chunks):
        def wrap(load):
            def counted():
                self._tick()
                return load()

            return counted

        return self._backend.infer_exact([wrap(c) for c in chunks])


def exact_loads_per_chunk(backend: Any) -> int:
    """Chunk loads of ``infer_exact`` per chunk: one per GCM layer + the final pass."""
    model = getattr(backend, "model", None)
    agg = getattr(model, "agg_regator", None)
    layers = getattr(agg, "gcm_layers", None)
    return 1 + len(layers) if layers is not None else 1


def n_chunks(n_frames: int, chunk_size: int, overlap: int) -> int:
    """Chunks of a sequence (the official count, see ``mapping.windowing``)."""
    if n_frames <= chunk_size:
        return 1 if n_frames else 0
    return math.ceil((n_frames - overlap) / (chunk_size - overlap))


@dataclass
class OfflineConfig:
    """Everything of one offline run but the input."""

    out: Path = Path("scal3r_offline_out")
    backend: BackendSection = field(default_factory=BackendSection)  # the node's section
    # the node's window section; GCS "exact" (whole sequence known) only offline
    window: WindowSection = field(default_factory=lambda: WindowSection(gcs_mode="exact"))
    max_size: int | None = None  # network input size (official 518); None: backend default
    seed: int = 0
    oracle: SyntheticConfig | None = None  # the drive the oracle backend knows
    progress: bool = True
    map: Path | None = None  # a saved session to start in (relocalise, then go on)
    session_mode: str = "mapping"  # in that session: mapping | localisation
    save_session: Path | None = None  # write the run's session folder there


def make_offline_backend(cfg: OfflineConfig) -> Any:
    """The run's backend (a ``factory.BuiltBackend``), the same on every rank."""
    from scal3r_ros.mapping.backends.factory import BackendSpec, make_backend

    oc = cfg.oracle or SyntheticConfig()
    oracle = OracleSection(
        oracle_seed=oc.seed,
        oracle_frames=oc.n_frames,
        oracle_width=oc.width,
        oracle_height=oc.height,
    )
    spec = BackendSpec.from_sections(cfg.backend, oracle, cfg.window.loop_closure, seed=cfg.seed)
    built = make_backend(spec)
    if cfg.max_size is not None and hasattr(built.backend, "config"):
        if hasattr(built.backend.config, "max_size"):
            built.backend.config.max_size = int(cfg.max_size)
    return built


def run(
    source: Source, cfg: OfflineConfig, wrap_backend: Callable[[Any], Any] | None = None
) -> dict:
    """Map ``source``; write trajectory, map and run.json; returns the run summary.
    ``wrap_backend``: wraps the network backend (rank 0 of a distributed run)."""
    from tqdm import tqdm

    from scal3r_ros.mapping.backends.factory import build_engine
    from scal3r_ros.mapping.engine import EngineConfig
    from scal3r_ros.mapping.events import Frame
    from scal3r_ros.mapping.windowing import window_problem

    win = cfg.window
    if win.gcs_mode not in GCS_MODES:
        raise OfflineError(f"--gcs must be one of {GCS_MODES}")
    if problem := window_problem(win.chunk_size, win.overlap):
        raise OfflineError(problem)
    built = make_offline_backend(cfg)
    bars: dict[str, Any] = {}

    def tick() -> None:
        if "exact" in bars:
            bars["exact"].update(1)

    inner = built.backend if wrap_backend is None else wrap_backend(built.backend)
    backend = _CountingBackend(inner, tick)
    ecfg = EngineConfig.from_sections(win)
    engine = build_engine(ecfg, backend, built.loop_closure)
    loaded = _load_map(engine, cfg) if cfg.map is not None else None
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_loops = 0
    from scal3r_ros.mapping.events import LoopClosureUpdate

    with tqdm(
        total=source.n, desc="frames", unit="frame", disable=not cfg.progress, mininterval=0.5
    ) as bar:
        for stamp, rgb in source.frames():
            for u in engine.push(Frame(stamp, "cam0", rgb)):
                n_loops += isinstance(u, LoopClosureUpdate)
            bar.update(1)
            if win.gcs_mode != "exact":  # exact mode runs every chunk in flush()
                bar.set_postfix(chunks=engine.n_chunks, refresh=False)
    t_push = time.perf_counter() - t0
    total = None
    if win.gcs_mode == "exact":
        total = n_chunks(engine.n_frames, win.chunk_size, win.overlap)
        own = getattr(inner, "own_windows", None)  # distributed: this rank's share
        total = (own(total) if own else total) * exact_loads_per_chunk(built.backend)
    with tqdm(
        total=total,
        desc="exact GCS" if win.gcs_mode == "exact" else "flush",
        unit="load",
        disable=not cfg.progress,
    ) as bars["exact"]:
        for u in engine.flush():
            n_loops += isinstance(u, LoopClosureUpdate)
    elapsed = time.perf_counter() - t0

    ids, stamps, c2w = engine.poses()
    files = {
        "trajectory_tum": cfg.out / "trajectory_tum.txt",
        "trajectory_kitti": cfg.out / "trajectory_kitti.txt",
        "map_ply": cfg.out / "map.ply",
    }
    engine.save_trajectory(files["trajectory_tum"], "tum")
    engine.save_trajectory(files["trajectory_kitti"], "kitti")
    engine.save_map(files["map_ply"])
    xyz, _, _ = engine.map_points()
    rejected = sum(1 for r in engine.reports if not r.ok)
    summary = dict(
        input=source.name,
        backend=built.name,
        device=built.device_name,
        gcs=win.gcs_mode,
        chunk_size=win.chunk_size,
        overlap=win.overlap,
        loop_closure=win.loop_closure,
        frames=int(source.n),
        frames_placed=len(ids),
        chunks=engine.n_chunks,
        loops=n_loops,
        alignments_rejected=rejected,
        map_points=len(xyz),
        seconds=dict(total=elapsed, read_and_schedule=t_push, fps=len(ids) / max(elapsed, 1e-9)),
        files={k: str(v) for k, v in files.items()},
    )
    if loaded is not None:
        summary["session"] = dict(loaded, **_relocalisation(engine))
    if cfg.save_session is not None:
        from scal3r_ros.mapping.session import write_session

        summary["files"]["session"] = str(write_session(engine.export_session(), cfg.save_session))
    summary["_poses"] = (ids, stamps, c2w)
    return summary


def _load_map(engine: Any, cfg: OfflineConfig) -> dict:
    """Start in the saved session ``cfg.map`` (a session folder, or a node's save folder
    holding ``session/``): the run's frames relocalise in it and go on in its frame."""
    from scal3r_ros.mapping.session import SessionError, read_session

    folder = Path(cfg.map).expanduser()
    if not (folder / "manifest.json").exists() and (folder / "session").is_dir():
        folder = folder / "session"
    try:
        data = read_session(folder, expected=engine.session_parameters())
        engine.load_session(data, cfg.session_mode)
    except (SessionError, NotImplementedError) as exc:
        raise OfflineError(f"--map {folder}: {exc}") from None
    return dict(path=str(folder), mode=cfg.session_mode, loaded_frames=int(data.n_frames))


def _relocalisation(engine: Any) -> dict:
    """Where relocalisation in the loaded session ended (the engine's newest report)."""
    state = getattr(engine, "relocalisation_state", lambda: None)()
    if state is None:
        return dict(state="relocalising")
    return dict(
        state=state.state,
        windows_tried=state.windows_tried,
        frames_tried=state.frames_tried,
        matched_chunk=state.matched_chunk_id,
        inlier_ratio=state.inlier_ratio,
        rmse=state.rmse,
        reason=state.reason,
    )


def evaluate_run(
    summary: dict, source: Source, gt_file: str | None, gt_format: str, eval_cfg: Any, out: Path
) -> dict | None:
    """Score the run: against ``gt_file`` (TUM: by stamps; KITTI: by input index) or the
    source's own ground truth (by index). Started in a session (``--map``): this run's
    frames only (``scal3r_evaluate --reference`` scores them in the session's frame)."""
    from scal3r_ros.tools import evaluate as ev

    ids, stamps, c2w = summary["_poses"]
    first = summary.get("session", {}).get("loaded_frames", 0)  # engine ids of this run
    new = ids >= first
    ids, stamps, c2w = ids[new] - first, stamps[new], c2w[new]
    if gt_file is not None:
        gt = ev.read_trajectory(gt_file, gt_format)
        if gt.stamps is None:  # index-matched: frame k is input image selected[k]
            sel = source.info["selected"]
            if len(gt.poses) == source.info["total"]:
                gt_poses = gt.poses[sel[ids]]
            elif len(gt.poses) == len(ids):
                gt_poses = gt.poses
            else:
                raise OfflineError(
                    f"{gt_file} has {len(gt.poses)} poses for {source.info['total']} input frames"
                )
            est = ev.TrajectoryFile(c2w, None, "mem")
            e, g, _, how = ev.match(est, ev.TrajectoryFile(gt_poses, None, "kitti"), eval_cfg)
        else:
            est = ev.TrajectoryFile(c2w, stamps.astype(np.float64) * 1e-9, "mem")
            e, g, _, how = ev.match(est, gt, eval_cfg)
        gt_name = str(gt_file)
    elif source.gt is not None:
        e, g, how, gt_name = c2w, source.gt[ids], f"index ({len(ids)} poses)", source.gt_name
    else:
        return None
    res = ev._evaluate(e, g, eval_cfg)
    s = dict(
        estimate=summary["files"]["trajectory_tum"],
        ground_truth=gt_name,
        matched_by=how,
        **res["summary"],
    )
    ev.write_outputs(res, s, out, eval_cfg)
    return s


# ---------------------------------------------------------------- console
def _parser() -> argparse.ArgumentParser:
    from scal3r_ros.tools.evaluate import add_eval_arguments

    p = argparse.ArgumentParser(
        prog="scal3r_offline",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:7]),
    )
    p.add_argument("input", nargs="?", help="image folder, KITTI sequence folder or ROS 2 bag")
    p.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="map the built-in synthetic drive of N frames instead",
    )
    p.add_argument("--out", default="scal3r_offline_out", help="output folder")
    p.add_argument("--topic", help="bag image topic (default: the only one)")
    p.add_argument(
        "--backend",
        choices=("scal3r", "tiny", "oracle"),
        default=None,
        help="scal3r: official checkpoint; tiny: random test network; oracle: "
        "synthetic ground truth (default: oracle with --synthetic, else "
        "scal3r)",
    )
    p.add_argument("--checkpoint", help="scal3r.pt (default ~/.cache/scal3r_ros/scal3r.pt)")
    backend_d, window_d = OfflineConfig().backend, OfflineConfig().window
    p.add_argument("--device", default=backend_d.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default=backend_d.dtype, choices=("auto", "float32", "bfloat16"))
    p.add_argument("--max-size", type=int, help="network input long side (official 518)")
    p.add_argument("--chunk-size", type=int, default=window_d.chunk_size)
    p.add_argument("--overlap", type=int, default=window_d.overlap)
    p.add_argument(
        "--gcs",
        choices=GCS_MODES,
        default=window_d.gcs_mode,
        help="exact: official layer-synchronous schedule; causal: as the node",
    )
    p.add_argument("--no-loop-closure", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="tiny weights / synthetic drive seed")
    p.add_argument("--every", type=int, default=1, help="use every k-th frame")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    d = SyntheticConfig()
    p.add_argument("--fps", type=float, default=d.fps, help="image-folder frame rate")
    p.add_argument(
        "--start-stamp-ns", type=int, default=d.start_stamp_ns, help="image-folder first stamp"
    )
    p.add_argument("--times", help="image-folder stamps: KITTI times.txt (seconds)")
    p.add_argument("--width", type=int, default=d.width, help="synthetic/oracle image width")
    p.add_argument("--height", type=int, default=d.height, help="synthetic/oracle height")
    p.add_argument(
        "--oracle-frames",
        type=int,
        help="frames of the drive the oracle knows (default: the input's count)",
    )
    p.add_argument(
        "--map",
        metavar="SESSION",
        help="start in a saved session (scal3r_offline --save-session, or the node's save "
        "folder / its session/): the frames relocalise in it and go on in its frame; "
        "window sizes, --gcs and the backend must be the session's",
    )
    p.add_argument(
        "--session-mode",
        choices=("mapping", "localisation"),
        default="mapping",
        help="with --map: extend the loaded map, or only localise in it",
    )
    p.add_argument(
        "--save-session",
        metavar="DIR",
        help="also write the run as a session folder (load it with --map, or in the node "
        "with map_file: then use --gcs causal and the node's window sizes)",
    )
    p.add_argument("--gt", help="ground truth (TUM: matched by stamps; KITTI: by index)")
    p.add_argument("--gt-format", choices=("auto", "tum", "kitti"), default="auto")
    p.add_argument("--no-progress", action="store_true")
    dist = p.add_argument_group(
        "distributed exact mode",
        "launch with: torchrun --nproc_per_node=N -m scal3r_ros.tools.offline --distributed ...",
    )
    dist.add_argument(
        "--distributed",
        action="store_true",
        help="split the windows over the torchrun ranks (on by itself under torchrun)",
    )
    dist.add_argument(
        "--dist-reduce",
        choices=("ordered", "allreduce"),
        default="ordered",
        help="ordered: the single-process additions in window order, passed from rank to "
        "rank (bitwise equal to one process); allreduce: one all-reduce per GCM layer "
        "(reassociated sums: not bitwise, see the README)",
    )
    dist.add_argument(
        "--dist-timeout",
        type=float,
        default=1800.0,
        help="seconds any collective may wait (covers rank 0 reading the input)",
    )
    add_eval_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from scal3r_ros.model.checkpoint import CheckpointError
    from scal3r_ros.tools import evaluate as ev
    from scal3r_ros.tools import offline_distributed as od

    args = _parser().parse_args(argv)
    sel_args = (args.every, args.max_frames)
    distributed = args.distributed or od.in_torchrun()
    rank = od.rank_of() if distributed else 0
    try:
        if (args.synthetic is None) == (args.input is None):
            raise OfflineError("give an input (image folder, KITTI folder or bag) or --synthetic N")
        backend = args.backend or ("oracle" if args.synthetic else "scal3r")
        if args.synthetic is not None:
            scfg = SyntheticConfig(
                n_frames=args.synthetic, width=args.width, height=args.height, seed=args.seed
            )
            source, _ = synthetic_source(scfg)
            oracle = scfg
        else:
            path = Path(args.input)
            if not path.exists():
                raise OfflineError(f"input not found: {path}")
            if _is_bag(path):
                source = bag_source(path, args.topic, sel_args)
            elif (path / "image_2").is_dir():
                source = kitti_source(path, sel_args)
            elif path.is_dir():
                stamps = None
                if args.times:
                    from scal3r_ros.tools.kitti import read_times

                    stamps = np.round(read_times(args.times) * 1e9).astype(np.int64)
                source = image_folder_source(path, stamps, args.fps, args.start_stamp_ns, sel_args)
            else:
                raise OfflineError(f"{path}: not an image folder, KITTI folder or ROS 2 bag")
            w, h = args.width, args.height
            if backend == "oracle":  # the drive the frames were rendered from: same size
                h, w = next(iter(source.frames()))[1].shape[:2]
            oracle = SyntheticConfig(
                n_frames=args.oracle_frames or source.info["total"],
                width=w,
                height=h,
                seed=args.seed,
            )
        backend_section = BackendSection(
            backend=backend, checkpoint=args.checkpoint or "", device=args.device, dtype=args.dtype
        )
        window = WindowSection(
            chunk_size=args.chunk_size,
            overlap=args.overlap,
            gcs_mode=args.gcs,
            loop_closure=not args.no_loop_closure,
        )
        cfg = OfflineConfig(
            out=Path(args.out),
            backend=backend_section,
            window=window,
            max_size=args.max_size,
            seed=args.seed,
            oracle=oracle,
            progress=not args.no_progress,
            map=Path(args.map) if args.map else None,
            session_mode=args.session_mode,
            save_session=Path(args.save_session) if args.save_session else None,
        )
        if distributed and (cfg.map or cfg.save_session):
            raise OfflineError("--map and --save-session are not available with --distributed")
        if rank == 0:
            print(
                f"scal3r_offline: {source.name}: {source.n} frames, backend {backend}, "
                f"GCS {window.gcs_mode}, chunks {window.chunk_size}/{window.overlap}",
                flush=True,
            )
        if distributed:
            dcfg = od.DistributedConfig(args.dist_reduce, args.dist_timeout)
            dsum = od.run_rank(source, cfg, dcfg)
            if dsum is None:
                return 0  # not rank 0: its windows went to rank 0
            summary = dsum
        else:
            summary = run(source, cfg)
        ecfg = ev.eval_config(args, label=f"scal3r_ros ({summary['backend']})")
        evaluation = evaluate_run(summary, source, args.gt, args.gt_format, ecfg, cfg.out)
    except (OfflineError, ev.EvaluationError, CheckpointError) as exc:
        print(f"scal3r_offline: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad settings / KITTI folder (KittiError) / backend
        print(f"scal3r_offline: error: {exc}", file=sys.stderr)
        return 2
    except od.RankFailure as exc:  # a peer died or a collective timed out
        print(f"scal3r_offline: error: {exc}", file=sys.stderr)
        return 1
    summary.pop("_poses")
    if evaluation is not None:
        summary["evaluation"] = {k: evaluation[k] for k in ("ate", "rpe", "kitti", "matched_by")}
        summary["files"].update(evaluation["files"])
    with atomic_write(cfg.out / "run.json") as f:  # last: the run is complete
        f.write((json.dumps(summary, indent=2, default=str) + "\n").encode())
    if "session" in summary:
        s = summary["session"]
        print(f"started in session {s['path']} ({s['loaded_frames']} frames): {s['state']}")
    print(
        f"placed {summary['frames_placed']}/{summary['frames']} frames in "
        f"{summary['chunks']} chunks, {summary['loops']} loop closures, "
        f"{summary['map_points']} map points, {summary['seconds']['total']:.1f} s"
    )
    if evaluation is not None:
        print(ev.format_table(evaluation))
    else:
        print("no ground truth: give --gt to evaluate")
    for k, v in summary["files"].items():
        print(f"  {k:18s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
