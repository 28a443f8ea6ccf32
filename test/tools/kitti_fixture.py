"""A tiny KITTI odometry dataset on disk, in the benchmark's layout, for tool tests.

    root/sequences/00/{image_2,image_3}/000000.png ..., calib.txt, times.txt
    root/poses/00.txt

Calibration is KITTI sequence 00's, with the intrinsics scaled to the small image (the
metric offsets between cameras, hence the ~0.54 m colour baseline, are kept). The car
drives forward along cam0's z at ~1 m per frame while turning slowly, so poses and
times are plausible; images are smooth gradients with noise and a moving bar, so the
tiny network has texture. Use from another test folder with
``sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# KITTI odometry sequence 00, calib.txt (1241 x 376 images)
KITTI_00_P = {
    "P0": [718.856, 0.0, 607.1928, 0.0, 0.0, 718.856, 185.2157, 0.0, 0.0, 0.0, 1.0, 0.0],
    "P1": [718.856, 0.0, 607.1928, -386.1448, 0.0, 718.856, 185.2157, 0.0, 0.0, 0.0, 1.0, 0.0],
    "P2": [
        718.856,
        0.0,
        607.1928,
        45.38225,
        0.0,
        718.856,
        185.2157,
        -0.1130887,
        0.0,
        0.0,
        1.0,
        0.003779761,
    ],
    "P3": [
        718.856,
        0.0,
        607.1928,
        -337.2877,
        0.0,
        718.856,
        185.2157,
        2.369057,
        0.0,
        0.0,
        1.0,
        0.004915215,
    ],
}
KITTI_00_TR = [
    4.276802385584e-04,
    -9.999672484946e-01,
    -8.084491683471e-03,
    -1.198459927713e-02,
    -7.210626507497e-03,
    8.081198471645e-03,
    -9.999413164504e-01,
    -5.403984729748e-02,
    9.999738645903e-01,
    4.859485810390e-04,
    -7.206933692422e-03,
    -2.921968648686e-01,
]
KITTI_SIZE = (1241, 376)
FRAME_DT = 0.1036  # s, KITTI's ~10 Hz


def scaled_projection(name: str, width: int, height: int) -> np.ndarray:
    """KITTI 00's P<name> for a width x height image (metric offsets unchanged)."""
    P = np.asarray(KITTI_00_P[name], dtype=np.float64).reshape(3, 4)
    t = np.linalg.solve(P[:, :3], P[:, 3])
    K = P[:, :3].copy()
    K[0] *= width / KITTI_SIZE[0]
    K[1] *= height / KITTI_SIZE[1]
    return np.hstack([K, (K @ t)[:, None]])


def poses(n: int) -> np.ndarray:
    """(n, 4, 4) cam0 poses: forward ~1 m/frame along z, a slow yaw about -y (a left turn)."""
    out = np.tile(np.eye(4), (n, 1, 1))
    yaw, pos = 0.0, np.zeros(3)
    for i in range(n):
        c, s = np.cos(yaw), np.sin(yaw)
        out[i, :3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
        out[i, :3, 3] = pos
        pos = pos + out[i, :3, :3] @ np.array([0.0, 0.0, 1.0])
        yaw -= 0.02
    return out


def render(i: int, width: int, height: int, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 4 + i * 7) % 256, (y * 11) % 256, ((x + y) * 3 + shift) % 256], axis=-1)
    img = img + rng.integers(0, 24, size=img.shape)
    bar = (x - (i * 5 + shift)) % width < 4
    img[bar] = 255
    return np.clip(img, 0, 255).astype(np.uint8)


def make_kitti_dataset(
    root: str | Path,
    n_frames: int = 5,
    width: int = 64,
    height: int = 20,
    sequence: str = "00",
    stereo: bool = True,
    with_poses: bool = True,
) -> Path:
    """Write the dataset under ``root``; returns the sequence folder root/sequences/NN."""
    from PIL import Image

    root = Path(root)
    seq = root / "sequences" / sequence
    for cam, shift in (("image_2", 0), ("image_3", 9)):
        if cam == "image_3" and not stereo:
            continue
        (seq / cam).mkdir(parents=True, exist_ok=True)
        for i in range(n_frames):
            Image.fromarray(render(i, width, height, shift)).save(seq / cam / f"{i:06d}.png")
    (seq / "times.txt").write_text("".join(f"{i * FRAME_DT:.6e}\n" for i in range(n_frames)))
    lines = [
        f"{name}: " + " ".join(f"{v:.12e}" for v in scaled_projection(name, width, height).ravel())
        for name in ("P0", "P1", "P2", "P3")
    ]
    lines.append("Tr: " + " ".join(f"{v:.12e}" for v in KITTI_00_TR))
    (seq / "calib.txt").write_text("\n".join(lines) + "\n")
    if with_poses:
        (root / "poses").mkdir(exist_ok=True)
        with open(root / "poses" / f"{sequence}.txt", "w") as f:
            for T in poses(n_frames):
                f.write(" ".join(f"{v:.9e}" for v in T[:3].ravel()) + "\n")
    return seq
