"""Sessions in the node (issue 17): the node's own placement of ``map`` saved with a
session, and the relocalisation gate after a load.

Why a module of its own: a session's ``node`` block (``session.json``) is the one place
where the node's frame choices (mount, anchor, gravity level, metric scale, occupancy
grid) outlive the process, so the loaded map frame IS the saved run's ``map`` frame; and
between a load and the engine's "localised" the node must publish nothing in ``map``
for new frames (their poses are in the new chain's own gauge), while odom -> base_link
goes on. `node_block` / `parse_node_block` do the first, `RelocalisationGate` the second.
"""

from __future__ import annotations

import base64
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scal3r_ros.mapping.events import (
    FrameCloudsUpdate,
    MapCorrected,
    MapUpdate,
    PointsUpdate,
    PosesUpdate,
    RelocalisationUpdate,
)
from scal3r_ros.mapping.session import SessionError

NODE_FORMAT = "scal3r_ros.node"
NODE_VERSION = 1
LOCALISED = "localised"
RELOCALISING = "relocalising"


# ---------------------------------------------------------------- the node block
def encode_grid(i0: int, j0: int, counts: np.ndarray, resolution: float) -> dict:
    """An occupancy grid's state as JSON: cell offsets, shape and the int32 counts
    (ground, obstacle, free), zlib-compressed little-endian bytes in base64."""
    counts = np.ascontiguousarray(counts, dtype="<i4")
    return {
        "resolution": float(resolution),
        "i0": int(i0),
        "j0": int(j0),
        "shape": [int(v) for v in counts.shape],
        "counts_zlib_b64": base64.b64encode(zlib.compress(counts.tobytes(), 6)).decode("ascii"),
    }


def decode_grid(g: object) -> tuple[int, int, np.ndarray, float]:
    """`encode_grid`'s inverse; SessionError for anything malformed."""
    where = "session.json: node.grid"
    if not isinstance(g, dict):
        raise SessionError(f"{where} must be an object")
    try:
        res = float(g["resolution"])
        i0, j0 = g["i0"], g["j0"]
        shape = tuple(g["shape"])
        raw = zlib.decompress(base64.b64decode(g["counts_zlib_b64"], validate=True))
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise SessionError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
    if not (isinstance(i0, int) and isinstance(j0, int)) or not res > 0 or not math.isfinite(res):
        raise SessionError(f"{where}: i0/j0 must be integers and resolution > 0")
    if len(shape) != 3 or shape[0] != 3 or not all(isinstance(v, int) and v >= 0 for v in shape):
        raise SessionError(f"{where}: shape must be [3, rows, cols]")
    if len(raw) != 4 * shape[0] * shape[1] * shape[2]:
        raise SessionError(f"{where}: {len(raw)} bytes of counts do not fit shape {list(shape)}")
    counts = np.frombuffer(raw, dtype="<i4").reshape(shape)
    if (counts < 0).any():
        raise SessionError(f"{where}: negative counts")
    return i0, j0, counts.astype(np.int32), res


@dataclass
class NodePlacement:
    """A parsed ``node`` block: `FrameConverter.restore`'s placement and the rest."""

    placement: dict  # origin (4x4), anchor (4x4 or None), level (3x3), T_base_cam, scale
    scale_source: str = "none"
    scale_metric: bool = False
    tilt_deg: float | None = None
    map_frame: str = "map"
    grid: tuple[int, int, np.ndarray, float] | None = None

    def as_mount_block(self) -> dict:
        return {**self.placement, "tilt_deg": self.tilt_deg}


def node_block(
    placement: dict,
    *,
    levelled: bool,
    tilt_deg: float | None,
    scale_source: str,
    scale_metric: bool,
    map_frame: str,
    grid: dict | None,
) -> dict:
    """The ``node`` block of a session saved by this node (JSON-ready, no NaN)."""
    return {
        "format": NODE_FORMAT,
        "version": NODE_VERSION,
        **placement,
        "levelled": bool(levelled),
        "tilt_deg": None if tilt_deg is None else float(tilt_deg),
        "scale_source": scale_source,
        "scale_metric": bool(scale_metric),
        "map_frame": map_frame,
        "grid": grid,
    }


def _matrix(block: dict, key: str, n: int, optional: bool = False) -> list | None:
    v = block.get(key)
    if v is None and optional:
        return None
    try:
        a = np.array(v, dtype=np.float64)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.shape != (n, n) or not np.isfinite(a).all():
        raise SessionError(f"session.json: node.{key} must be a finite {n}x{n} matrix")
    return a.tolist()


def parse_node_block(block: dict | None) -> NodePlacement | None:
    """A session's ``node`` block, validated (SessionError naming the field); None when
    the session has none (written by the offline tool or an older node)."""
    if block is None:
        return None
    if block.get("format") != NODE_FORMAT or block.get("version") != NODE_VERSION:
        raise SessionError(
            f"session.json: node block is {block.get('format')!r} version "
            f"{block.get('version')!r}, this node reads {NODE_FORMAT!r} version {NODE_VERSION}"
        )
    scale = block.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise SessionError("session.json: node.scale must be a positive number")
    if not math.isfinite(scale):
        raise SessionError("session.json: node.scale must be finite")
    placement = {
        "origin": _matrix(block, "origin", 4),
        "anchor": _matrix(block, "anchor", 4, optional=True),
        "level": _matrix(block, "level", 3),
        "T_base_cam": _matrix(block, "T_base_cam", 4),
        "scale": float(scale),
    }
    tilt = block.get("tilt_deg")
    if tilt is not None and (isinstance(tilt, bool) or not isinstance(tilt, int | float)):
        raise SessionError("session.json: node.tilt_deg must be a number or null")
    source = block.get("scale_source", "none")
    frame = block.get("map_frame", "map")
    if not isinstance(source, str) or not isinstance(frame, str):
        raise SessionError("session.json: node.scale_source and node.map_frame must be strings")
    grid = None if block.get("grid") is None else decode_grid(block["grid"])
    return NodePlacement(
        placement,
        scale_source=source,
        scale_metric=bool(block.get("scale_metric", False)),
        tilt_deg=None if tilt is None else float(tilt),
        map_frame=frame,
        grid=grid,
    )


def session_path(path: str, output_dir: Path) -> Path:
    """A session folder as given (``~`` expanded; relative: under ``output_dir``). A
    save's folder (holding ``session/``) stands for its session."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = output_dir / p
    if not (p / "manifest.json").exists() and (p / "session" / "manifest.json").exists():
        p = p / "session"
    return p


# ---------------------------------------------------------------- the gate
@dataclass
class GateResult:
    """One batch split by the gate: ``odometry`` new frames' poses in the new chain's own
    gauge (odom only), ``status`` events for ~/status only, ``events`` for every output."""

    odometry: list[PosesUpdate]
    status: list[MapUpdate]
    events: list[MapUpdate]
    localised: RelocalisationUpdate | None = None


class RelocalisationGate:
    """Between a load and the engine's "localised": new frames' poses go to odometry
    only; their points, corrections and grid updates go nowhere (the loaded map stays as
    published at load). From the "localised" event on (in its batch: the corrected poses,
    now in the loaded map's frame, and a MapCorrected) every event passes again. Frames
    of the loaded map itself (ids below ``first_new``) never reach the pose outputs: they
    were published by the run that saved them."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loaded = False
        self.path = ""
        self.mode = ""
        self.first_new = 0
        self.newest: RelocalisationUpdate | None = None

    def start(self, path: str, mode: str, first_new: int) -> None:
        self.loaded, self.path, self.mode, self.first_new = True, path, mode, int(first_new)
        self.newest = None

    @property
    def relocalising(self) -> bool:
        return self.loaded and (self.newest is None or self.newest.state != LOCALISED)

    @property
    def state(self) -> str:
        if not self.loaded:
            return ""
        return RELOCALISING if self.relocalising else LOCALISED

    def split(self, events: list[MapUpdate]) -> GateResult:
        """Sort a batch (see the class docstring)."""
        out = GateResult([], [], [])
        if not self.loaded:
            out.events = list(events)
            return out
        gated = self.relocalising
        for ev in events:
            if gated and _ends_gate(ev):
                gated = False  # from here on: the loaded map's frame
            if isinstance(ev, RelocalisationUpdate):
                self.newest = ev
                out.status.append(ev)
                if ev.state == LOCALISED:
                    out.localised = ev
                continue
            if isinstance(ev, PosesUpdate):
                ev = self._new_frames(ev)
                if ev is None:
                    continue
                (out.odometry if gated else out.events).append(ev)
            elif gated and isinstance(ev, PointsUpdate | MapCorrected | FrameCloudsUpdate):
                continue  # in the new chain's gauge: nothing of it in map
            elif gated:
                out.status.append(ev)  # stats, alignment reports, failures, fusion
            else:
                out.events.append(ev)
        return out

    def _new_frames(self, ev: PosesUpdate) -> PosesUpdate | None:
        """The event restricted to frames after the loaded ones (None: nothing left)."""
        ids = np.asarray(ev.frame_ids, np.int64)
        keep = ids >= self.first_new
        if keep.all():
            return ev
        if not keep.any():
            return None
        cams = tuple(c for c, k in zip(ev.camera_ids, keep, strict=False) if k)
        return PosesUpdate(
            ev.chunk_id,
            ids[keep],
            np.asarray(ev.stamps_ns)[keep],
            np.asarray(ev.c2w)[keep],
            corrected=ev.corrected,
            reason=ev.reason,
            camera_ids=cams,
        )


def _ends_gate(ev: MapUpdate) -> bool:
    """The first event of a batch that is already in the loaded map's frame."""
    if isinstance(ev, RelocalisationUpdate):
        return ev.state == LOCALISED
    return isinstance(ev, PosesUpdate) and ev.corrected and ev.reason == "relocalised"
