"""2D occupancy grid from the accumulated map, for planners (nav_msgs/OccupancyGrid).

Why: planners want free / occupied / unknown cells, not a point cloud. Points arrive
already in the ROS ``map`` frame (z up, metres: the node converts engine points with
its ``FrameConverter``). Each point's height above the ground (a ``GroundPlane`` from
the camera-height scale source transformed into ``map``, or ``TrajectoryGround``)
sorts it into a band:

- ground: ``|h| < ground_band``            -> the cell was seen as drivable ground;
- obstacle: ``obstacle_min <= h <= obstacle_max`` -> something a robot would hit;
- anything else (below ground, overhangs above ``obstacle_max``) is ignored.

A cell is occupied (100) with at least ``min_obstacle_hits`` obstacle points, free (0)
when it holds ground points or, with ``raytrace``, lies on the 2D segment from a camera
to a ground hit (line of sight over the ground), unknown (-1) otherwise. Occupied wins.
Counts accumulate per chunk (``integrate``); after loop corrections the node calls
``rebuild`` with the whole corrected map. The grid grows as the map does.

Layout as nav_msgs/OccupancyGrid: ``values()[row, col]`` with row 0 at the lowest y,
``origin`` the map position of cell (0, 0)'s lower-left corner, ``resolution`` m/cell.
``save`` writes the map_server format (PGM P5 + YAML, trinary).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from scal3r_ros.mapping.atomic_io import atomic_write

FREE, OCCUPIED, UNKNOWN = 0, 100, -1
_RAY_SAMPLES_PER_BLOCK = 500_000
_MAX_FLAG_CELLS = 1 << 24


class HeightModel(Protocol):
    def height(self, points: np.ndarray) -> np.ndarray:
        """Signed height (m) of ``points`` (M, 3) above the ground."""
        ...


class TrajectoryGround:
    """Ground = ``camera_height_m`` below the nearest camera (xy): follows slopes when
    no plane is available (e.g. odometry or stereo scale)."""

    def __init__(self, camera_positions: np.ndarray, camera_height_m: float) -> None:
        from scipy.spatial import cKDTree

        self.cams = np.asarray(camera_positions, dtype=np.float64).reshape(-1, 3)
        self.h = float(camera_height_m)
        self._tree = cKDTree(self.cams[:, :2])

    def height(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        _, k = self._tree.query(p[:, :2])
        return p[:, 2] - (self.cams[k, 2] - self.h)


@dataclass
class OccupancyConfig:
    resolution: float = 0.2  # metres per cell
    ground_band: float = 0.15  # |h| below this: ground
    obstacle_min: float = 0.15  # obstacle band above the ground, metres
    obstacle_max: float = 2.0
    min_obstacle_hits: int = 2  # points needed to call a cell occupied
    min_ground_hits: int = 1
    raytrace: bool = True  # free cells along camera -> ground-hit segments
    max_ray_m: float = 20.0  # longer rays are not traced
    max_rays: int = 5_000  # per integrate call (random subset beyond; rays overlap heavily)
    occupied_thresh: float = 0.65  # written to the YAML
    free_thresh: float = 0.196  # see ``save``: 0.25 would reload unknown (205) as free
    grow_margin: int = 32  # cells added around new bounds when the grid grows
    seed: int = 0


class OccupancyGrid:
    """Incremental ground/obstacle counts on a growing 2D grid (see module doc)."""

    def __init__(self, config: OccupancyConfig | None = None) -> None:
        self.config = config or OccupancyConfig()
        if not self.config.resolution > 0:
            raise ValueError("resolution must be > 0")
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.config.seed)  # rebuilds are reproducible
        self._i0 = self._j0 = 0  # cell index of array element [0, 0] (x, y)
        shape = (0, 0)
        self._ground = np.zeros(shape, np.int32)
        self._obst = np.zeros(shape, np.int32)
        self._free = np.zeros(shape, np.int32)

    # ------------------------------------------------------------ updates
    def integrate(
        self, points: np.ndarray, ground: HeightModel, cameras: np.ndarray | None = None
    ) -> None:
        """Add one chunk's points (map frame, metres); ``cameras`` (C, 3) = positions of
        the cameras that saw them (ray origins; nearest camera per point)."""
        cfg = self.config
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        p = p[np.isfinite(p).all(1)]
        if not len(p):
            return
        h = ground.height(p)
        is_g = np.abs(h) < cfg.ground_band
        is_o = (h >= cfg.obstacle_min) & (h <= cfg.obstacle_max) & ~is_g
        cells_g = self._cells(p[is_g, :2])
        cells_o = self._cells(p[is_o, :2])
        rays = np.zeros((0, 2), np.int64)
        if cfg.raytrace and cameras is not None and len(cameras) and is_g.any():
            rays = self._ray_cells(np.asarray(cameras, np.float64).reshape(-1, 3), p[is_g])
        allc = np.concatenate([cells_g, cells_o, rays])
        if not len(allc):
            return
        self._grow(allc.min(0), allc.max(0))
        for arr, cells in ((self._ground, cells_g), (self._obst, cells_o), (self._free, rays)):
            if len(cells):
                np.add.at(arr, (cells[:, 1] - self._j0, cells[:, 0] - self._i0), 1)

    def rebuild(
        self, points: np.ndarray, ground: HeightModel, cameras: np.ndarray | None = None
    ) -> None:
        """Forget everything and integrate the whole (corrected) map."""
        self.reset()
        self.integrate(points, ground, cameras)

    def state(self) -> tuple[int, int, np.ndarray]:
        """(i0, j0, counts (3, rows, cols) int32: ground, obstacle, free): what `restore`
        needs to go on integrating exactly where this grid stands (a saved session)."""
        return self._i0, self._j0, np.stack([self._ground, self._obst, self._free])

    def restore(self, i0: int, j0: int, counts: np.ndarray) -> None:
        """The grid of `state` back (counts (3, rows, cols) of non-negative integers)."""
        counts = np.asarray(counts)
        if counts.ndim != 3 or counts.shape[0] != 3 or (counts < 0).any():
            raise ValueError("grid counts must be (3, rows, cols) non-negative")
        self.reset()
        self._i0, self._j0 = int(i0), int(j0)
        self._ground, self._obst, self._free = (c.astype(np.int32) for c in counts)

    # ------------------------------------------------------------ outputs
    @property
    def shape(self) -> tuple[int, int]:
        """(height rows, width cols)."""
        return self._ground.shape  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[float, float]:
        r = self.config.resolution
        return self._i0 * r, self._j0 * r

    def values(self) -> np.ndarray:
        """(rows, cols) int8 with -1 / 0 / 100; row 0 = lowest y."""
        cfg = self.config
        out = np.full(self.shape, UNKNOWN, np.int8)
        out[(self._ground >= cfg.min_ground_hits) | (self._free > 0)] = FREE
        out[self._obst >= cfg.min_obstacle_hits] = OCCUPIED
        return out

    def msg_fields(self) -> dict:
        """What nav_msgs/OccupancyGrid needs: info.{width, height, resolution,
        origin.position.x/y} and ``data`` (flat row-major int8, origin yaw 0)."""
        v = self.values()
        return {
            "width": v.shape[1],
            "height": v.shape[0],
            "resolution": self.config.resolution,
            "origin_x": self.origin[0],
            "origin_y": self.origin[1],
            "data": v.ravel(),
        }

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """Write ``stem.pgm`` + ``stem.yaml`` (`encode`), each replaced atomically."""
        stem = Path(stem)
        pgm, yml = stem.with_suffix(".pgm"), stem.with_suffix(".yaml")
        pgm_bytes, yml_bytes = self.encode(pgm.name)
        for path, data in ((pgm, pgm_bytes), (yml, yml_bytes)):
            with atomic_write(path) as f:
                f.write(data)
        return pgm, yml

    def encode(self, image_name: str = "grid.pgm") -> tuple[bytes, bytes]:
        """The map_server/map_saver files (trinary): PGM bytes and the YAML naming
        ``image_name``; the caller writes them (`save`, or the node's save folder).

        Pixels: free 254, occupied 0, unknown 205. ``free_thresh`` defaults to 0.196
        (as ROS 1 map_saver and Nav2 since ros-navigation/navigation2#5278): with 0.25,
        (255 - 205) / 255 = 0.196 < 0.25 reloads unknown cells as free.
        """
        cfg = self.config
        v = self.values()
        img = np.full(v.shape, 205, np.uint8)
        img[v == FREE] = 254
        img[v == OCCUPIED] = 0
        img = img[::-1]  # image row 0 is the top (largest y)
        rows, cols = v.shape
        header = f"P5\n# CREATOR: scal3r_ros {cfg.resolution:.3f} m/pix\n{cols} {rows}\n255\n"
        ox, oy = self.origin
        yml = (
            f"image: {image_name}\nmode: trinary\nresolution: {cfg.resolution}\n"
            f"origin: [{ox!r}, {oy!r}, 0.0]\nnegate: 0\n"
            f"occupied_thresh: {cfg.occupied_thresh}\nfree_thresh: {cfg.free_thresh}\n"
        )
        return header.encode("ascii") + img.tobytes(), yml.encode("ascii")

    # ------------------------------------------------------------ internals
    def _cells(self, xy: np.ndarray) -> np.ndarray:
        return np.floor(np.asarray(xy).reshape(-1, 2) / self.config.resolution).astype(np.int64)

    def _ray_cells(self, cams: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Distinct cells on the xy segments from the nearest camera to each end point
        (end cell excluded: it is counted as ground already)."""
        cfg = self.config
        from scipy.spatial import cKDTree

        _, k = cKDTree(cams[:, :2]).query(ends[:, :2])
        a, b = cams[k, :2], ends[:, :2]
        length = np.linalg.norm(b - a, axis=1)
        ok = length <= cfg.max_ray_m
        a, b, length = a[ok], b[ok], length[ok]
        if len(a) > cfg.max_rays:
            sel = self._rng.choice(len(a), cfg.max_rays, replace=False)
            a, b, length = a[sel], b[sel], length[sel]
        if not len(a):
            return np.zeros((0, 2), np.int64)
        step = 0.5 * cfg.resolution
        n = np.maximum(np.ceil(length / step).astype(np.int64), 1)
        lo = self._cells(np.minimum(a.min(0), b.min(0)))[0]
        hi = self._cells(np.maximum(a.max(0), b.max(0)))[0]
        span = hi - lo + 1
        # distinct cells: a flag per cell of the rays' bounding box (no sort; a sort when
        # the box is huge, e.g. wild poses), filled a block of rays at a time so the
        # samples never all exist at once
        flags = int(span[0]) * int(span[1]) <= _MAX_FLAG_CELLS
        seen = np.zeros(int(span[0]) * int(span[1]) if flags else 0, bool)
        found = []
        cum = np.cumsum(n)
        start = 0
        while start < len(a):
            stop = int(np.searchsorted(cum, cum[start] - n[start] + _RAY_SAMPLES_PER_BLOCK))
            stop = min(max(stop, start + 1), len(a))
            nb = n[start:stop]
            ray = np.repeat(np.arange(start, stop), nb)
            t = (np.arange(nb.sum()) - np.repeat(np.cumsum(nb) - nb, nb)) / np.repeat(nb, nb)
            cells = self._cells(a[ray] + t[:, None] * (b[ray] - a[ray])) - lo
            flat = cells[:, 0] * span[1] + cells[:, 1]
            if flags:
                seen[flat] = True
            else:
                found.append(np.unique(flat))
            start = stop
        flat = np.flatnonzero(seen) if flags else np.unique(np.concatenate(found))
        return np.stack([flat // span[1] + lo[0], flat % span[1] + lo[1]], 1)

    def _grow(self, lo: np.ndarray, hi: np.ndarray) -> None:
        H, W = self.shape
        if (
            H
            and lo[0] >= self._i0
            and lo[1] >= self._j0
            and (hi[0] < self._i0 + W and hi[1] < self._j0 + H)
        ):
            return
        m = self.config.grow_margin
        if H:
            lo = np.minimum(lo, [self._i0, self._j0])
            hi = np.maximum(hi, [self._i0 + W - 1, self._j0 + H - 1])
        i0, j0 = int(lo[0]) - m, int(lo[1]) - m
        W2, H2 = int(hi[0]) + m - i0 + 1, int(hi[1]) + m - j0 + 1
        for name in ("_ground", "_obst", "_free"):
            old = getattr(self, name)
            new = np.zeros((H2, W2), np.int32)
            if H:
                new[self._j0 - j0 : self._j0 - j0 + H, self._i0 - i0 : self._i0 - i0 + W] = old
            setattr(self, name, new)
        self._i0, self._j0 = i0, j0


def read_map_server(yaml_path: str | Path) -> tuple[np.ndarray, float, tuple[float, ...]]:
    """Load a map_server map back as (values rows x cols, row 0 = lowest y; resolution;
    origin) with map_server's trinary rule: occ = (255 - p) / 255 (negate 0);
    occupied if occ > occupied_thresh, free if occ < free_thresh, else unknown."""
    yaml_path = Path(yaml_path)
    meta: dict[str, str] = {}
    for line in yaml_path.read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            meta[k.strip()] = v.strip()
    data = (yaml_path.parent / meta["image"]).read_bytes()
    tokens: list[bytes] = []
    pos = 0
    while len(tokens) < 4:  # magic, width, height, maxval (comments skipped)
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        tokens.append(data[pos:end])
        pos = end
    if tokens[0] != b"P5" or int(tokens[3]) != 255:
        raise ValueError(f"not an 8-bit P5 PGM: {tokens}")
    w, h = int(tokens[1]), int(tokens[2])
    img = np.frombuffer(data[pos + 1 : pos + 1 + w * h], np.uint8).reshape(h, w)[::-1]
    occ = (255.0 - img) / 255.0
    if int(meta.get("negate", "0")):
        occ = 1.0 - occ
    out = np.full((h, w), UNKNOWN, np.int8)
    out[occ < float(meta["free_thresh"])] = FREE
    out[occ > float(meta["occupied_thresh"])] = OCCUPIED
    origin = tuple(float(x) for x in meta["origin"].strip("[]").split(","))
    return out, float(meta["resolution"]), origin
