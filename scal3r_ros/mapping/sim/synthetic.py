"""A small synthetic KITTI-like drive with exact ground truth (numpy ray casting).

Why: the engine's geometry (chunk alignment, stitching, loop closure, map) must be
checked against exact poses and depth, and the demo / ROS tests need an image stream
without a dataset. The scene is a textured ground plane with box "buildings" along a
rounded-rectangle road; the camera drives once around it (plus ``extra_laps`` of the
start, so the drive revisits its start and contains a loop).

World frame: z up, ground at z = 0. Camera poses are camera-to-world 4x4 matrices in
OpenCV camera axes (x right, y down, z forward), like the rest of the engine.

Usage::

    drive = SyntheticDrive(SyntheticConfig(n_frames=200, seed=0))
    for frame, c2w in drive.frames():
        ...
    drive.gt_poses()        # (N, 4, 4)
    drive.render(i)         # (rgb uint8 HxWx3, z-depth float32 HxW, inf on sky)
    drive.save_gt(path, "tum" | "kitti")
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scal3r_ros.mapping.events import Frame


@dataclass
class SyntheticConfig:
    """Scene and camera knobs. Defaults: ~170 m loop, 10 Hz, 160x48 pixels."""

    n_frames: int = 200
    width: int = 160
    height: int = 48
    hfov_deg: float = 80.0  # KITTI's colour cameras are ~81 deg
    loop_length_m: float = 60.0  # rounded rectangle, long side
    loop_width_m: float = 30.0  # short side
    corner_radius_m: float = 8.0
    extra_laps: float = 0.15  # drive this fraction of the loop again -> revisits the start
    # (a long drive at road speed: many laps, e.g. the soak's 20,000 frames = ~77 laps)
    camera_height_m: float = 1.65
    road_half_width_m: float = 4.0
    building_spacing_m: float = 7.0
    max_depth_m: float = 80.0
    pitch_wobble_deg: float = 0.5  # small pitch/roll oscillation, avoids a perfectly flat path
    fps: float = 10.0
    start_stamp_ns: int = 1_000_000_000
    camera_id: str = "cam0"
    seed: int = 0


def drive_summary(config: SyntheticConfig) -> str:
    """The parameters that define a drive, as the camera's options and the node's oracle_*
    parameters name them (frames, laps, seed, size): for messages about which drive."""
    return (
        f"{config.n_frames} frames, {1.0 + config.extra_laps:g} laps, seed {config.seed}, "
        f"{config.width}x{config.height}"
    )


def road_speed_laps(n_frames: int) -> float:
    """Laps of the default loop that ``n_frames`` cover at the demo's speed (300 frames for
    1.15 laps, ~0.65 m a frame, 6.5 m/s at 10 Hz); never less than the default 1.15, so
    every drive revisits its start. Long runs (soak, engine memory) use it."""
    return max(1.15, 1.15 * n_frames / 300)


def textured_image(height: int, width: int, seed: int, dtype=np.uint8) -> np.ndarray:
    """Deterministic test image: smooth shading, fine sinusoids, sharp checkerboard, noise
    (resampling tests and their fixtures, scripts/make_head_fixtures.py, regenerate the
    same pixels from the seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack(
        [
            0.5 + 0.25 * np.sin(xx / 3.1) * np.cos(yy / 4.3) + 0.15 * np.sin(xx / 1.3),
            xx / max(width - 1, 1),
            (((xx // 7) + (yy // 7)) % 2) * 0.8 + 0.1,
        ],
        axis=-1,
    )
    img = np.clip(img + rng.normal(0.0, 0.05, img.shape), 0.0, 1.0)
    return np.round(img * np.iinfo(dtype).max).astype(dtype)


def _hash3(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Cheap deterministic value noise in [0, 1) from integer cells."""
    h = (
        ix.astype(np.int64) * 73856093
        ^ iy.astype(np.int64) * 19349663
        ^ iz.astype(np.int64) * 83492791
        ^ (seed * 2654435761)
    )
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFF).astype(np.float32) / 65536.0


class SyntheticDrive:
    """Deterministic drive (from ``config.seed``) with exact RGB, depth and poses."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = cfg = config or SyntheticConfig()
        self._rng = np.random.default_rng(cfg.seed)
        f = (cfg.width / 2) / np.tan(np.radians(cfg.hfov_deg) / 2)
        self.K = np.array([[f, 0, cfg.width / 2], [0, f, cfg.height / 2], [0, 0, 1.0]])
        self._perimeter = self._path_perimeter()
        self._poses = self._make_poses()
        self._boxes_min, self._boxes_max, self._box_color = self._make_buildings()
        u = np.arange(cfg.width) + 0.5
        v = np.arange(cfg.height) + 0.5
        uu, vv = np.meshgrid(u, v)
        self._rays_cam = np.stack(
            [(uu - self.K[0, 2]) / f, (vv - self.K[1, 2]) / f, np.ones_like(uu)], -1
        ).reshape(-1, 3)  # z = 1 so the ray parameter is the z-depth

    # ------------------------------------------------------------------ path
    def _path_perimeter(self) -> float:
        c = self.config
        r = c.corner_radius_m
        return 2 * (c.loop_length_m - 2 * r) + 2 * (c.loop_width_m - 2 * r) + 2 * np.pi * r

    def _path_at(self, s: float) -> tuple[np.ndarray, float]:
        """Position (x, y) and heading on the rounded rectangle at arc length s (CCW)."""
        c = self.config
        r = c.corner_radius_m
        a, b = c.loop_length_m - 2 * r, c.loop_width_m - 2 * r
        q = np.pi * r / 2
        s = s % self._perimeter
        # start in the middle of the bottom straight, heading +x
        segs = [("line", a / 2), ("arc", q), ("line", b), ("arc", q), ("line", a), ("arc", q)]
        segs += [("line", b), ("arc", q), ("line", a / 2)]
        x, y, th = 0.0, 0.0, 0.0
        for kind, length in segs:
            d = min(s, length)
            if kind == "line":
                x, y = x + d * np.cos(th), y + d * np.sin(th)
            else:
                dth = d / r
                cx, cy = x - r * np.sin(th), y + r * np.cos(th)
                th2 = th + dth
                x, y, th = cx + r * np.sin(th2), cy - r * np.cos(th2), th2
            s -= d
            if s <= 0:
                break
        return np.array([x, y]), th

    def _make_poses(self) -> np.ndarray:
        c = self.config
        total = self._perimeter * (1.0 + c.extra_laps)
        n = c.n_frames
        poses = np.zeros((n, 4, 4))
        wob = np.radians(c.pitch_wobble_deg)
        for i in range(n):
            p, th = self._path_at(total * i / max(n - 1, 1))
            fwd = np.array([np.cos(th), np.sin(th), 0.0])
            right = np.array([np.sin(th), -np.cos(th), 0.0])
            down = np.array([0.0, 0.0, -1.0])
            R = np.stack([right, down, fwd], 1)
            pitch = wob * np.sin(0.37 * i)
            roll = 0.5 * wob * np.sin(0.23 * i + 1.0)
            cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
            Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
            Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
            poses[i, :3, :3] = R @ Rx @ Rz
            poses[i, :3, 3] = [p[0], p[1], c.camera_height_m]
            poses[i, 3, 3] = 1.0
        return poses

    def _make_buildings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.config
        rng = self._rng
        path = np.array(
            [self._path_at(s)[0] for s in np.linspace(0, self._perimeter, 400, endpoint=False)]
        )
        mins, maxs = [], []
        for s in np.arange(0, self._perimeter, c.building_spacing_m):
            p, th = self._path_at(s + rng.uniform(0, 2))
            normal = np.array([-np.sin(th), np.cos(th)])
            for side in (-1.0, 1.0):
                if rng.uniform() < 0.15:
                    continue  # gaps, like side streets
                size = rng.uniform([3.0, 3.0, 3.0], [6.0, 8.0, 14.0])
                centre = p + side * normal * (c.road_half_width_m + 1.5 + size[0] / 2)
                lo = np.array([centre[0] - size[0] / 2, centre[1] - size[1] / 2, 0.0])
                hi = np.array([centre[0] + size[0] / 2, centre[1] + size[1] / 2, size[2]])
                # keep the road clear: no path sample inside the grown footprint
                g = c.road_half_width_m + 0.5
                inside = (
                    (path[:, 0] > lo[0] - g)
                    & (path[:, 0] < hi[0] + g)
                    & (path[:, 1] > lo[1] - g)
                    & (path[:, 1] < hi[1] + g)
                )
                if inside.any():
                    continue
                mins.append(lo)
                maxs.append(hi)
        colors = rng.uniform(0.35, 1.0, size=(len(mins), 3)).astype(np.float32)
        return np.array(mins), np.array(maxs), colors

    # ------------------------------------------------------------------ API
    @property
    def n_frames(self) -> int:
        return self.config.n_frames

    def stamp_ns(self, i: int) -> int:
        return int(self.config.start_stamp_ns + round(i * 1e9 / self.config.fps))

    def index_of_stamp(self, stamp_ns: int) -> int:
        """Inverse of :meth:`stamp_ns` (used by the oracle backend)."""
        c = self.config
        return int(round((stamp_ns - c.start_stamp_ns) * c.fps / 1e9))

    def gt_poses(self) -> np.ndarray:
        """(N, 4, 4) camera-to-world ground truth."""
        return self._poses.copy()

    def gt_pose(self, i: int) -> np.ndarray:
        return self._poses[i].copy()

    def path_length(self) -> float:
        d = np.diff(self._poses[:, :3, 3], axis=0)
        return float(np.linalg.norm(d, axis=1).sum())

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8 and z-depth (H, W) float32 (inf where nothing is hit)."""
        c = self.config
        c2w = self._poses[i]
        R, o = c2w[:3, :3], c2w[:3, 3]
        d = self._rays_cam @ R.T  # world directions with unit camera-z
        n = len(d)
        t_best = np.full(n, np.inf)
        kind = np.zeros(n, np.int32)  # 0 sky, 1 ground, 2+k box k
        # ground plane z = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            tg = -o[2] / d[:, 2]
        ok = (d[:, 2] < -1e-9) & (tg > 0) & (tg < c.max_depth_m)
        t_best[ok] = tg[ok]
        kind[ok] = 1
        # boxes near the camera and not entirely behind it
        corners_lo = (self._boxes_min - o) @ R  # camera coordinates of the two corners
        corners_hi = (self._boxes_max - o) @ R
        centre = 0.5 * (corners_lo + corners_hi)
        radius = 0.5 * np.linalg.norm(self._boxes_max - self._boxes_min, axis=1)
        near = (centre[:, 2] > -radius) & (np.linalg.norm(centre, axis=1) < c.max_depth_m + radius)
        idx = np.nonzero(near)[0]
        if len(idx):
            bmin = (self._boxes_min[idx] - o).astype(np.float32)
            bmax = (self._boxes_max[idx] - o).astype(np.float32)
            dd = np.where(np.abs(d) < 1e-9, 1e-9, d).astype(np.float32)
            inv = 1.0 / dd  # (n, 3), finite
            tmin = np.zeros((n, len(idx)), np.float32)
            tmax = np.full((n, len(idx)), np.inf, np.float32)
            for a in range(3):  # slab test, one axis at a time (fast: no size-3 reductions)
                t1 = inv[:, a, None] * bmin[None, :, a]
                t2 = inv[:, a, None] * bmax[None, :, a]
                np.maximum(tmin, np.minimum(t1, t2), out=tmin)
                np.minimum(tmax, np.maximum(t1, t2), out=tmax)
            tmin = np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)
            jb = np.argmin(tmin, axis=1)
            tb = tmin[np.arange(n), jb]
            better = tb < t_best
            t_best[better] = tb[better]
            kind[better] = 2 + idx[jb[better]]
        depth = t_best.astype(np.float32)
        rgb = self._shade(o, d, t_best, kind, c.seed)
        H, W = c.height, c.width
        return rgb.reshape(H, W, 3), depth.reshape(H, W)

    def _shade(
        self, o: np.ndarray, d: np.ndarray, t: np.ndarray, kind: np.ndarray, seed: int
    ) -> np.ndarray:
        n = len(d)
        col = np.empty((n, 3), np.float32)
        sky = kind == 0
        up = np.clip(d[sky, 2] / np.linalg.norm(d[sky], axis=1), 0, 1)[:, None]
        col[sky] = np.array([0.75, 0.85, 1.0]) * (0.8 + 0.2 * up)
        hit = ~sky
        p = o + d[hit] * t[hit, None]
        cell = np.floor(p * 2.0).astype(np.int64)  # 0.5 m cells
        fine = np.floor(p * 8.0).astype(np.int64)
        noise = 0.6 * _hash3(*cell.T, seed) + 0.4 * _hash3(*fine.T, seed + 1)
        k = kind[hit]
        base = np.empty((len(k), 3), np.float32)
        g = k == 1
        base[g] = 0.45
        lane = g & (np.abs(np.sin(p[:, 0] * 0.9) * np.sin(p[:, 1] * 0.9)) > 0.97)
        base[~g] = self._box_color[k[~g] - 2]
        shade = 0.55 + 0.45 * noise[:, None]
        c = base * shade
        c[lane] = 0.95
        col[hit] = c
        return np.clip(col * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def surface_distance(self, points: np.ndarray) -> np.ndarray:
        """Distance (m) from world points (N, 3) to the nearest scene surface (ground or
        box faces): the ground-truth check for map points."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        best = np.abs(p[:, 2])
        for lo, hi in zip(self._boxes_min, self._boxes_max, strict=True):
            q = np.maximum(lo - p, p - hi)  # > 0 outside along that axis
            outside = np.linalg.norm(np.maximum(q, 0), axis=1)
            inside = np.minimum(q.max(axis=1), 0)
            best = np.minimum(best, np.abs(outside + inside))
        return best

    def frame(self, i: int) -> Frame:
        rgb, _ = self.render(i)
        return Frame(
            stamp_ns=self.stamp_ns(i),
            camera_id=self.config.camera_id,
            image=rgb,
            intrinsics=self.K.copy(),
        )

    def frames(self) -> Iterator[tuple[Frame, np.ndarray]]:
        """Yield (Frame, ground-truth c2w) in order."""
        for i in range(self.n_frames):
            yield self.frame(i), self.gt_pose(i)

    def save_gt(self, path: str | Path, fmt: str = "tum") -> None:
        """Write the ground-truth trajectory (TUM or KITTI format, readable by evo)."""
        from scal3r_ros.mapping.trajectory import write_poses

        stamps = np.array([self.stamp_ns(i) for i in range(self.n_frames)], dtype=np.int64)
        write_poses(path, stamps, self._poses, fmt)
