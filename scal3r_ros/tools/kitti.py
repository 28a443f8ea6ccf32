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

The raw data's OXTS GPS/IMU (``read_oxts``), raw calibration (``imu_to_rectified_cam0``)
and the odometry devkit's sequence -> raw drive table (``ODOMETRY_DRIVES``) are read
too, for GNSS and IMU beside the images.

Every reader raises `KittiError` (a ValueError) with a message naming the file and,
where it applies, the line that is wrong; `load_sequence` checks a whole folder up
front and names everything that is missing or inconsistent in one message.
"""

from __future__ import annotations

import re
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


# ====================================================================== raw data: OXTS
# KITTI raw (``<date>/<date>_drive_NNNN_sync/``) holds the OXTS RT3003 GPS/IMU per synced
# frame: ``oxts/timestamps.txt`` (one "YYYY-MM-DD hh:mm:ss.nnnnnnnnn" per sample) and
# ``oxts/data/%010d.txt`` (one line of 30 numbers, fields below, from the raw devkit's
# dataformat.txt); the calibration lies in the date folder. The odometry sequences 00-10
# are cut from these drives (odometry devkit readme): sequence frame i = drive frame
# start + i.
OXTS_FIELDS = (
    "lat lon alt roll pitch yaw vn ve vf vl vu ax ay az af al au wx wy wz wf wl wu "
    "pos_accuracy vel_accuracy navstat numsats posmode velmode orimode"
).split()
OXTS = {name: i for i, name in enumerate(OXTS_FIELDS)}
ODOMETRY_DRIVES = {  # sequence -> (raw drive, its first frame)
    "00": ("2011_10_03_drive_0027", 0),
    "01": ("2011_10_03_drive_0042", 0),
    "02": ("2011_10_03_drive_0034", 0),
    "03": ("2011_09_26_drive_0067", 0),
    "04": ("2011_09_30_drive_0016", 0),
    "05": ("2011_09_30_drive_0018", 0),
    "06": ("2011_09_30_drive_0020", 0),
    "07": ("2011_09_30_drive_0027", 0),
    "08": ("2011_09_30_drive_0028", 1100),
    "09": ("2011_09_30_drive_0033", 0),
    "10": ("2011_09_30_drive_0034", 0),
}
_DRIVE_NAME = re.compile(r"\d{4}_\d{2}_\d{2}_drive_\d{4}")


def read_raw_timestamps(path: str | Path) -> list[int | None]:
    """A raw ``timestamps.txt`` -> ns per line as written (None where a line is not a date).

    The clock is the recording PC's local time, read as if UTC: only differences are used.
    """
    path = Path(path)
    stamps: list[int | None] = []
    for line in _read_lines(path, "timestamps file"):
        if not line.strip():
            continue
        try:
            t = np.datetime64(line.strip(), "ns")
        except ValueError:
            t = np.datetime64("NaT")
        stamps.append(None if np.isnat(t) else int(t.astype(np.int64)))
    if not any(s is not None for s in stamps):
        raise KittiError(f"{path} holds no timestamps ('YYYY-MM-DD hh:mm:ss.fraction' lines)")
    return stamps


@dataclass
class OxtsData:
    """The usable OXTS samples of a raw drive, in time order, and those that were not."""

    folder: Path
    stamps_ns: np.ndarray  # (M,) int64, timestamps.txt as written
    values: np.ndarray  # (M, 30) float64, OXTS_FIELDS
    index: np.ndarray  # (M,) int, the sample's line in timestamps.txt (= data file number)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def read_oxts(folder: str | Path) -> OxtsData:
    """``<drive>/oxts`` -> OxtsData. A sample whose file is missing or not 30 finite
    numbers, or whose stamp is unreadable or not after the previous one, is skipped and
    listed (KITTI's OXTS has gaps: the odometry devkit warns of missing IMU data)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KittiError(f"OXTS folder not found: {folder}")
    stamps = read_raw_timestamps(folder / "timestamps.txt")
    kept_t: list[int] = []
    kept_v: list[list[float]] = []
    kept_i: list[int] = []
    skipped: list[tuple[Path, str]] = []
    latest = None  # the latest stamp so far, of any sample (a jump back is suspect)
    for i, t in enumerate(stamps):
        path = folder / "data" / f"{i:010d}.txt"
        if t is None:
            skipped.append((path, f"timestamps.txt line {i + 1} is not a date"))
            continue
        if latest is not None and t <= latest:
            skipped.append((path, "its timestamp is not after the previous sample's"))
            continue
        latest = t
        try:
            values = [float(v) for v in path.read_text().split()]
        except FileNotFoundError:
            skipped.append((path, "missing"))
            continue
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            skipped.append((path, f"unreadable: {str(exc)[:60]}"))
            continue
        if len(values) != len(OXTS_FIELDS):
            skipped.append((path, f"{len(values)} numbers instead of {len(OXTS_FIELDS)}"))
            continue
        if not np.isfinite(values).all():
            skipped.append((path, "non-finite values"))
            continue
        kept_t.append(t)
        kept_v.append(values)
        kept_i.append(i)
    if not kept_t:
        first = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise KittiError(f"{folder} holds no usable OXTS sample{first}")
    return OxtsData(
        folder=folder,
        stamps_ns=np.asarray(kept_t, dtype=np.int64),
        values=np.asarray(kept_v, dtype=np.float64),
        index=np.asarray(kept_i),
        skipped=skipped,
    )


def drive_name(folder: str | Path) -> str | None:
    """'2011_10_03_drive_0027' for ``.../2011_10_03_drive_0027_sync/oxts`` (None if unnamed)."""
    for part in reversed(Path(folder).resolve().parts):
        m = _DRIVE_NAME.match(part)
        if m:
            return m.group(0)
    return None


def raw_start_frame(sequence: str, oxts_folder: str | Path) -> int:
    """The drive frame of an odometry sequence's frame 0, from the devkit's table.

    0 for a sequence outside 00-10 or a drive folder without a KITTI name; a KittiError
    when the folder is named as another drive than the sequence's (a wrong --oxts).
    """
    entry = ODOMETRY_DRIVES.get(sequence)
    drive = drive_name(oxts_folder)
    if entry is None or drive is None:
        return 0
    if drive != entry[0]:
        raise KittiError(
            f"sequence {sequence} is raw drive {entry[0]} (KITTI odometry devkit), but the "
            f"OXTS folder {oxts_folder} belongs to {drive}; give the matching drive, or "
            "--raw-start N to align another one by hand"
        )
    return entry[1]


def read_raw_calib(path: str | Path) -> dict[str, np.ndarray]:
    """A raw calibration file (``NAME: numbers`` lines) -> {NAME: flat float64 array};
    lines that are not numbers (``calib_time: 25-May-2012 ...``) are left out."""
    path = Path(path)
    calib: dict[str, np.ndarray] = {}
    for line in _read_lines(path, "calibration file"):
        name, sep, rest = line.partition(":")
        try:
            values = np.asarray([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            continue
        if sep and values.size and np.isfinite(values).all():
            calib[name.strip()] = values
    return calib


def _rigid(calib: dict[str, np.ndarray], path: Path) -> np.ndarray:
    R, t = calib.get("R"), calib.get("T")
    if R is None or t is None or R.size != 9 or t.size != 3:
        raise KittiError(f"{path}: expected 'R: 9 numbers' and 'T: 3 numbers' lines")
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R.reshape(3, 3), t
    if not np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-4):
        raise KittiError(f"{path}: R is not a rotation matrix")
    return T


RAW_CALIB_FILES = ("calib_imu_to_velo.txt", "calib_velo_to_cam.txt", "calib_cam_to_cam.txt")


def imu_to_rectified_cam0(date_dir: str | Path) -> np.ndarray | None:
    """T (4x4) taking IMU (= OXTS) coordinates to rectified cam0 coordinates, the frame of
    the odometry calib.txt's P matrices: R_rect_00 @ T_cam0_velo @ T_velo_imu (raw devkit).

    None when the date folder lacks one of the three calibration files; a KittiError
    when one is malformed.
    """
    date_dir = Path(date_dir)
    paths = [date_dir / name for name in RAW_CALIB_FILES]
    if not all(p.is_file() for p in paths):
        return None
    velo_imu = _rigid(read_raw_calib(paths[0]), paths[0])
    cam_velo = _rigid(read_raw_calib(paths[1]), paths[1])
    rect = read_raw_calib(paths[2]).get("R_rect_00")
    if rect is None or rect.size != 9:
        raise KittiError(f"{paths[2]}: no 'R_rect_00: 9 numbers' line")
    R_rect = np.eye(4)
    R_rect[:3, :3] = rect.reshape(3, 3)
    return R_rect @ cam_velo @ velo_imu
