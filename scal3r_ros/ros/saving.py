"""The node's saves: ``~/save_map`` and the save at shutdown, one folder each.

Why a module of its own: a save is the one place where the node reads the engine's
whole state (the map and every pose) -- on the worker thread, through
`MappingWorker.call` -- and it must be atomic (`SaveFolder`).
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scal3r_ros.mapping.atomic_io import SaveFolder, relative_parts
from scal3r_ros.mapping.engine import MappingEngine
from scal3r_ros.mapping.map_store import write_pcd, write_ply
from scal3r_ros.mapping.session import SessionData, write_session
from scal3r_ros.mapping.trajectory import write_poses
from scal3r_ros.ros.frames import FrameConverter
from scal3r_ros.ros.outputs.planner import GRID_FILES

SAVE_FILES = (
    "map.ply",
    "map.pcd",
    "trajectory_tum.txt",
    "trajectory_kitti.txt",
    "trajectory_camera_tum.txt",
    "trajectory_camera_kitti.txt",
    *GRID_FILES,
)
"""Every file a save writes; with a session source also the folder `SESSION_FOLDER`. A
save folder holding anything else is never replaced."""
SESSION_FOLDER = "session"
REPLACEABLE = (*SAVE_FILES, SESSION_FOLDER)

SessionSource = Callable[[MappingEngine], "SessionData | None"]


def save_name(name: str) -> str:
    """The folder of a save inside output_dir: ``name`` when it is a plain relative name
    (absolute names and ``..`` are refused with UnsafePathError), else a timestamp.

    Only the name is checked here; the folders themselves are checked when written, on
    the thread that writes (`SaveFolder`: no symlinked folder, nothing outside)."""
    name = name.rstrip("/") or datetime.datetime.now().strftime("map_%Y%m%d_%H%M%S")
    relative_parts(name)
    return name


class MapSaver:
    """Writes the engine's map and trajectories in the node's frames (``converter``)
    under ``output_dir``; ``extra(folder)`` adds more files to a save (the grid)."""

    def __init__(
        self,
        converter: FrameConverter,
        output_dir: Path,
        extra: Callable[[SaveFolder], None] = lambda folder: None,
        session: SessionSource | None = None,
        refuse: Callable[[], str] = lambda: "",
        warn: Callable[[str], None] = lambda text: print(
            f"[scal3r_mapping] {text}", file=sys.stderr, flush=True
        ),
    ) -> None:
        """``session(engine)``: the session to write with a save (``session/``; None or
        returning None: none), read on the worker thread with the rest; ``refuse()``: why
        the node cannot save now ("" when it can; relocalising in a loaded map)."""
        self.converter, self.output_dir, self.extra = converter, output_dir, extra
        self.session, self.refuse, self.warn = session, refuse, warn
        self.session_error = ""  # why the last save has no session folder ("": it has)

    def on_request(self, request, response, call: Callable):
        """The ``~/save_map`` service; ``call(fn, flush=True)`` runs ``fn(engine)`` on
        the worker thread (`MappingWorker.call`)."""
        try:
            if why := self.refuse():
                raise RuntimeError(why)
            name = save_name(request.name)  # the name only; folders are checked on writing
            # flush: every frame processed so far gets a pose (and its points) first
            files = call(
                lambda engine: self.save(
                    engine, name, request.save_map, request.save_trajectory, root=self.output_dir
                ),
                flush=True,
            )
            response.success, response.files = True, [str(f) for f in files]
            response.message = f"saved {len(files)} files to {self.output_dir / name}"
            if self.session_error:
                response.message += f" (no session folder: {self.session_error})"
        except Exception as exc:
            response.success, response.message = False, f"{type(exc).__name__}: {exc}"
        return response

    def save_at_shutdown(
        self, engine: MappingEngine, joined: bool, say: Callable[[str, str], None]
    ) -> int:
        """The save when the node stops, in a timestamped folder; the exit code. Never
        "not saving": only a failing write gives 1. ``joined`` False: the window in
        progress was left out (said through ``say(level, text)``)."""
        n = engine.n_chunks
        if not joined:
            what = (
                f"saving the {n} window{'s' * (n != 1)} mapped so far"
                if n
                else ("no window was mapped before it: nothing to save")
            )
            say("warning", f"the window in progress is left out (not finished in time); {what}")
        if n == 0:
            return 0
        if why := self.refuse():
            say("warning", f"not saving: {why}")
            return 0
        name = save_name("")
        try:
            files = self.save(engine, name, root=self.output_dir)
        except Exception as exc:  # a full disk, a refused folder: say so, exit 1
            print(
                f"[scal3r_mapping] saving to {self.output_dir / name} failed: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        print(f"[scal3r_mapping] saved {len(files)} files to {self.output_dir / name}", flush=True)
        return 0

    def save(
        self,
        engine: MappingEngine,
        target: Path | str,
        save_map: bool = True,
        save_traj: bool = True,
        root: Path | None = None,
    ) -> list[Path]:
        """Write map (PLY, PCD), trajectories (TUM, KITTI), the grid and the session
        folder (``session/``, when a session source is set) as one set.

        ``target``: a folder name relative to ``root`` (the node: output_dir), or a folder
        path when ``root`` is None (its parent is the root). The files go through one
        `SaveFolder`: written into a fresh staging folder, fsynced, then swapped in as a
        whole, so a kill at any moment leaves the previous save or this one, never a mix
        or a truncated file; nothing is written outside ``root`` or through a symlink.
        The engine's state is read under its ``state_lock`` (whole windows, also while
        the worker thread is still integrating one during shutdown).

        ``trajectory_{tum,kitti}.txt``: base_link in the map frame (what /tf carries).
        ``trajectory_camera_{tum,kitti}.txt``: the camera's optical frame relative to the
        first saved camera pose (identity), the convention of KITTI's poses/NN.txt and of
        camera ground truth in general: score these (scal3r_evaluate --help).
        """
        if root is None:
            root, target = Path(target).parent, Path(target).name
        if not (save_map or save_traj):
            return []
        with engine.state_lock:
            map_pts = engine.map_points() if save_map else None
            poses = engine.poses() if save_traj else None
            session, self.session_error = None, ""
            if save_map and self.session is not None:
                try:
                    session = self.session(engine)
                except Exception as exc:  # the map and trajectories are saved all the same
                    self.session_error = f"{type(exc).__name__}: {exc}"
        with SaveFolder(root, str(target), replaceable=REPLACEABLE) as folder:
            if map_pts is not None:
                xyz, rgb, conf = map_pts
                xyz = self.converter.points(xyz)
                with folder.open("map.ply") as f:
                    write_ply(f, xyz, rgb, conf)
                with folder.open("map.pcd") as f:
                    write_pcd(f, xyz, rgb, conf)
            if poses is not None:
                _, stamps, c2w = poses
                T = self.converter.base_poses(c2w) if len(c2w) else np.zeros((0, 4, 4))
                C = T @ self.converter.T_base_cam  # T_map_camera (optical axes)
                C = np.linalg.inv(C[0]) @ C if len(C) else C  # first camera = identity
                for name, P, fmt in (
                    ("trajectory_tum.txt", T, "tum"),
                    ("trajectory_kitti.txt", T, "kitti"),
                    ("trajectory_camera_tum.txt", C, "tum"),
                    ("trajectory_camera_kitti.txt", C, "kitti"),
                ):
                    with folder.open(name) as f:
                        write_poses(f, stamps, P, fmt)
            if map_pts is not None:
                self.extra(folder)
            if session is not None:  # written atomically inside the staging folder
                try:
                    write_session(session, folder.staging_path / SESSION_FOLDER)
                except (ValueError, OSError) as exc:
                    session, self.session_error = None, f"{type(exc).__name__}: {exc}"
            files = folder.commit()
        if session is not None:
            files.append(folder.path / SESSION_FOLDER)
        elif self.session_error:
            self.warn(f"the session folder was not written ({self.session_error})")
        return files
