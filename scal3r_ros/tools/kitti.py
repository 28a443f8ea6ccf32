"""Reading KITTI odometry folders: calibration, timestamps, ground-truth poses, images.

The standard layout of the KITTI odometry benchmark (``data_odometry_color.zip`` +
``data_odometry_calib.zip`` + ``data_odometry_poses.zip`` unpacked into one folder)::

    dataset/
      sequences/00/image_2/000000.png ...   left colour camera (cam2)
      sequences/00/image_3/000000.png ...   right colour camera (cam3), optional
      sequences/00/calib.txt                "P0: 12 numbers" ... "P3: ...", "Tr: ..."
      sequences/00/times.txt                one time in seconds per frame
      poses/00.txt                          ground truth (sequences 00-10 only)

Ground-truth poses are 3x4 row-major matrices, one per line: the pose of the left
grey camera (cam0) at frame i in cam0's frame at frame 0 (OpenCV axes: x right, y
down, z forward). ``P0..P3`` are the rectified projection matrices of the four
cameras, all expressed in rectified cam0 coordinates, so ``P_i[:, 3] = K @ t_i`` holds
each camera's offset from cam0 (cam2 ~6 cm left of cam0, cam3 ~47 cm right of it).

Every reader raises `KittiError` (a ValueError) with a message naming the file and,
where it applies, the line that is wrong; `load_sequence` checks a whole folder up
front and names everything that is missing or inconsistent in one message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class KittiError(ValueError):
    """A KITTI file or folder that is missing, malformed or inconsistent."""


# ====================================================================== single files
def _read_lines(path: Path, what: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise KittiError(f"{what} not found: {path}")
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KittiError(f"cannot read {what} {path}: {exc}") from exc


def read_times(path: str | Path) -> np.ndarray:
    """times.txt -> (N,) float64 seconds (strictly increasing; blank lines ignored)."""
    path = Path(path)
    values = []
    for n, line in enumerate(_read_lines(path, "times file"), start=1):
        if not line.strip():
            continue
        try:
            values.append(float(line.split()[0]))
        except ValueError:
            raise KittiError(
                f"{path}:{n}: expected a time in seconds, got {line.strip()!r}"
            ) from None
    times = np.asarray(values, dtype=np.float64)
    if times.size == 0:
        raise KittiError(f"{path} holds no times")
    if not np.isfinite(times).all():
        raise KittiError(f"{path} holds a non-finite time")
    bad = np.nonzero(np.diff(times) <= 0)[0]
    if bad.size:
        i = int(bad[0])
        raise KittiError(f"{path}:{i + 2}: times must increase ({times[i]} then {times[i + 1]})")
    return times


def read_calib(path: str | Path) -> dict[str, np.ndarray]:
    """calib.txt -> {"P0": 3x4, ..., "Tr": 3x4}: every ``NAME: 12 numbers`` line.

    Raises KittiError for a line that is not ``NAME: numbers``; the projection
    matrices a caller needs are checked by `projection` (or `load_sequence`).
    """
    path = Path(path)
    calib: dict[str, np.ndarray] = {}
    for n, line in enumerate(_read_lines(path, "calibration file"), start=1):
        if not line.strip():
            continue
        name, sep, rest = line.partition(":")
        try:
            values = [float(v) for v in rest.split()] if sep else []
        except ValueError:
            values = []
        if not sep or not name.strip() or len(values) != 12 or not np.isfinite(values).all():
            raise KittiError(
                f"{path}:{n}: malformed calibration line (expected 'NAME: 12 numbers', "
                f"e.g. 'P2: 718.856 0 607.19 45.38 ...'), got {line.strip()[:80]!r}"
            )
        calib[name.strip()] = np.asarray(values, dtype=np.float64).reshape(3, 4)
    if not calib:
        raise KittiError(f"{path} holds no calibration lines")
    return calib


def projection(calib: dict[str, np.ndarray], name: str, path: str | Path = "calib.txt"):
    """The 3x4 matrix ``name`` of a `read_calib` result, checked to be a projection."""
    if name not in calib:
        raise KittiError(f"{path}: no {name} line (has {', '.join(sorted(calib))})")
    P = calib[name]
    if P[0, 0] <= 0 or P[1, 1] <= 0 or abs(P[2, 2] - 1.0) > 1e-6:
        raise KittiError(f"{path}: {name} is not a rectified projection matrix [K | K t]: {P}")
    return P


def camera_offset(P: np.ndarray) -> np.ndarray:
    """Translation t of ``P = K [I | t]``: where cam0's origin lies in this camera's frame.

    (Equivalently, this camera's centre is at ``-t`` in cam0 coordinates.)
    """
    return np.linalg.solve(P[:, :3], P[:, 3])


def stereo_baseline(P_left: np.ndarray, P_right: np.ndarray) -> float:
    """Distance (m) from the left to the right camera along x (KITTI cam2/cam3: ~0.54 m)."""
    return float(camera_offset(P_left)[0] - camera_offset(P_right)[0])


def read_kitti_poses(path: str | Path) -> np.ndarray:
    """poses/NN.txt (or any KITTI-format trajectory) -> (N, 4, 4) float64 matrices."""
    path = Path(path)
    poses = []
    for n, line in enumerate(_read_lines(path, "poses file"), start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            values = []
        if len(values) != 12 or not np.isfinite(values).all():
            raise KittiError(
                f"{path}:{n}: expected 12 numbers (a 3x4 pose), got {line.strip()[:80]!r}"
            )
        T = np.eye(4)
        T[:3, :] = np.asarray(values).reshape(3, 4)
        poses.append(T)
    if not poses:
        raise KittiError(f"{path} holds no poses")
    return np.stack(poses)


def write_kitti_poses(path: str | Path, poses: np.ndarray) -> None:
    """(N, 4, 4) or (N, 3, 4) poses -> KITTI format (12 numbers per line)."""
    poses = np.asarray(poses, dtype=np.float64)
    with open(path, "w") as f:
        for T in poses:
            f.write(" ".join(f"{v:.9e}" for v in T[:3, :4].ravel()) + "\n")


def default_poses_path(sequence_dir: str | Path) -> Path:
    """``<dataset>/poses/NN.txt`` for ``<dataset>/sequences/NN`` (may not exist)."""
    seq = Path(sequence_dir).resolve()
    return seq.parent.parent / "poses" / f"{seq.name}.txt"


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder sorted by name (KITTI names are zero-padded indices)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


# ====================================================================== a sequence
@dataclass
class KittiSequence:
    """A checked KITTI odometry sequence. ``images`` maps 'image_2'/'image_3' to files."""

    root: Path
    name: str
    times: np.ndarray  # (N,) seconds
    calib: dict[str, np.ndarray]
    images: dict[str, list[Path]] = field(default_factory=dict)
    poses: np.ndarray | None = None  # (N, 4, 4) cam0 poses, or None
    poses_path: Path | None = None

    def __len__(self) -> int:
        return len(self.times)

    @property
    def stereo(self) -> bool:
        return "image_3" in self.images

    def P(self, camera: str) -> np.ndarray:
        """Projection matrix of 'image_2' (P2) or 'image_3' (P3)."""
        return self.calib["P" + camera[-1]]

    def camera_poses(self, camera: str = "image_2") -> np.ndarray | None:
        """Ground truth as poses of ``camera`` in that camera's frame at frame 0 (the cam0
        poses conjugated by the rectified offset; KITTI's poses start at identity)."""
        if self.poses is None:
            return None
        T_c_0 = np.eye(4)  # cam0 coordinates -> this camera's coordinates
        T_c_0[:3, 3] = camera_offset(self.P(camera))
        T_0_c = np.linalg.inv(T_c_0)
        return T_c_0 @ self.poses @ T_0_c


def load_sequence(
    sequence_dir: str | Path,
    poses: str | Path | None = None,
    right: bool = True,
    require_poses: bool = False,
) -> KittiSequence:
    """Check and load a KITTI odometry sequence folder (images are listed, not read).

    ``poses``: a ground-truth file; None looks for the standard ``poses/NN.txt``
    beside ``sequences/`` (absent is fine unless ``require_poses``). ``right``: also
    use image_3 when the folder has it. Raises one `KittiError` listing every problem.
    """
    seq = Path(sequence_dir)
    if not seq.is_dir():
        raise KittiError(f"KITTI sequence folder not found: {seq}")
    problems: list[str] = []

    images: dict[str, list[Path]] = {}
    for cam in ("image_2", "image_3"):
        folder = seq / cam
        if cam == "image_3" and (not right or not folder.is_dir()):
            continue
        if not folder.is_dir():
            hint = ""
            if (seq / "image_0").is_dir():
                hint = (
                    " (found image_0/: the grey cameras; the colour images are in "
                    "data_odometry_color.zip)"
                )
            problems.append(f"no {cam}/ folder in {seq}{hint}")
            continue
        files = list_images(folder)
        if not files:
            problems.append(f"{folder} holds no .png/.jpg images")
        images[cam] = files

    times = None
    try:
        times = read_times(seq / "times.txt")
    except KittiError as exc:
        problems.append(str(exc))

    calib: dict[str, np.ndarray] = {}
    try:
        calib = read_calib(seq / "calib.txt")
        for cam in images:
            projection(calib, "P" + cam[-1], seq / "calib.txt")
    except KittiError as exc:
        problems.append(str(exc))

    if times is not None:
        for cam, files in images.items():
            if files and len(files) != len(times):
                problems.append(
                    f"{seq / 'times.txt'} has {len(times)} times but {cam}/ has {len(files)} images"
                )
    if "image_2" in images and "image_3" in images and images["image_2"] and images["image_3"]:
        left = [p.stem for p in images["image_2"]]
        right_names = [p.stem for p in images["image_3"]]
        if left != right_names:
            missing = sorted(set(left) ^ set(right_names))[:5]
            problems.append(f"image_2/ and image_3/ hold different frames (e.g. {missing})")

    poses_path = Path(poses) if poses is not None else default_poses_path(seq)
    gt = None
    if poses is not None or poses_path.is_file() or require_poses:
        try:
            gt = read_kitti_poses(poses_path)
            if times is not None and len(gt) != len(times):
                problems.append(
                    f"{poses_path} has {len(gt)} poses but {seq / 'times.txt'} "
                    f"has {len(times)} times"
                )
        except KittiError as exc:
            problems.append(str(exc))

    if problems:
        head = f"invalid KITTI sequence {seq}:"
        raise KittiError(head + "".join(f"\n  - {p}" for p in problems))
    assert times is not None
    return KittiSequence(
        root=seq,
        name=seq.resolve().name,
        times=times,
        calib=calib,
        images=images,
        poses=gt,
        poses_path=poses_path if gt is not None else None,
    )
