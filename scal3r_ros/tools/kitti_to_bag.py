"""`scal3r_kitti_to_bag`: convert a KITTI odometry sequence folder into a ROS 2 bag.

    scal3r_kitti_to_bag dataset/sequences/00 -o kitti_00            # mcap, raw rgb8
    scal3r_kitti_to_bag dataset/sequences/00 --compressed png --storage sqlite3
    scal3r_kitti_to_bag dataset/sequences/00 --oxts raw/2011_10_03/2011_10_03_drive_0027_sync/oxts

Reads ``image_2/`` (and ``image_3/`` when present), ``times.txt``, ``calib.txt`` and the
ground truth ``poses/NN.txt`` beside ``sequences/`` (or ``--poses FILE``); writes, with
the `rosbags` library and ROS 2 Kilted message definitions (type hashes match ROS):

=============================================  ==========================================
topic                                          content
=============================================  ==========================================
/kitti/camera_color_left/image_raw             sensor_msgs/Image rgb8, frame
                                               camera_color_left (optical frame)
/kitti/camera_color_left/image_raw/compressed  sensor_msgs/CompressedImage instead, with
                                               ``--compressed png|jpeg``
/kitti/camera_color_left/camera_info           sensor_msgs/CameraInfo from P2
/kitti/camera_color_right/...                  the same for image_3 (P3)
/tf_static                                     base_link -> camera_color_left/right
/kitti/ground_truth/path                       nav_msgs/Path, the whole trajectory once
/kitti/ground_truth/pose                       geometry_msgs/PoseStamped per frame
/tf (``--gt-tf``)                              map -> base_link_gt per frame
/kitti/oxts/gps/fix (``--oxts DIR``)           sensor_msgs/NavSatFix per OXTS sample, frame
                                               imu_link (the OXTS reports its own position)
/kitti/oxts/imu (``--oxts DIR``)               sensor_msgs/Imu: orientation in ENU, body
                                               rates and accelerations (with gravity)
/tf_static (``--oxts DIR``)                    + base_link -> imu_link, from the raw
                                               calibration (else both in base_link)
=============================================  ==========================================

Stamps are ``--start-time`` + times.txt (a frame keeps its own time with --start and
--stride). CameraInfo follows the ROS stereo convention: K from P2/P3, the left
camera's P has no translation and the right camera's ``P[3] = -fx * baseline`` (the
cam2 -> cam3 baseline from calib.txt, ~0.54 m), so stereo consumers compute it as usual.
``base_link`` is the left camera's ground point (x forward, z up, the camera
``--camera-height`` above it, 1.65 m on KITTI's car). Ground truth is the left colour
camera's trajectory moved to ``base_link`` and anchored at the first written frame,
i.e. in the same ``map`` convention as the mapping node (map = first base_link).

``--oxts`` takes the sequence's KITTI raw drive's ``oxts/`` folder (sequence 00 is
``2011_10_03_drive_0027``; `kitti.ODOMETRY_DRIVES`); OXTS samples keep their own raw
times relative to the sequence's first frame (whose raw time is read from the drive's
``image_02/timestamps.txt``), so GNSS, IMU and images share the bag's clock. The IMU mount
is R_rect_00 @ velo->cam @ imu->velo from the date folder, placed with the cameras
(rectified cam0 in base_link). Unusable OXTS lines (missing, NaN, not 30 numbers) are
skipped and reported once in the summary.

A bad or incomplete folder stops before anything is written with one message naming
what is missing; the exit code is then 2.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scal3r_ros.tools.kitti import (
    OXTS,
    RAW_CALIB_FILES,
    KittiError,
    KittiSequence,
    OxtsData,
    camera_offset,
    imu_to_rectified_cam0,
    load_sequence,
    raw_start_frame,
    read_oxts,
    read_raw_timestamps,
    stereo_baseline,
)

# Optical axes (x right, y down, z forward) in a body frame (x forward, y left, z up);
# the same constant as scal3r_ros.ros.frames (not imported: that module needs rclpy).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
KITTI_DAY = 1_317_340_800.0  # 2011-09-30 00:00:00 UTC, a KITTI recording day
CAMERAS = {"image_2": "camera_color_left", "image_3": "camera_color_right"}
IMU_FRAME = "imu_link"
OXTS_TOPICS = {"gps": "oxts/gps/fix", "imu": "oxts/imu"}  # under --namespace
# OXTS samples this close outside the written frames' span are kept: a synced sample is
# taken a few ms before or after its frame.
OXTS_MARGIN_NS = 50_000_000
# Orientation sigma given with the Imu's roll/pitch/yaw: a small value of the order of an
# RT3000-class INS (tenths of a degree); the devkit gives none.
ORIENTATION_SIGMA_RAD = float(np.radians(0.1))
# pos_accuracy is horizontal (north/east); the vertical sigma is taken as twice it, the
# usual ratio of GNSS vertical to horizontal error.
VERTICAL_SIGMA_FACTOR = 2.0
NAVSTAT_LOCKED = 4  # OXTS NCOM navigation status: 0-3 = no solution yet (invalid .. locking)
# OXTS NCOM GPS position modes -> sensor_msgs/NavSatStatus: differential and RTK (also
# post-processed and the gx/ix variants) are ground-based augmentation; SBAS, OmniSTAR and
# PPP are satellite-based; every other mode (SPS, Doppler, none / blanked while the INS
# dead-reckons) is a plain fix whose pos_accuracy says how good it is.
GBAS_MODES = frozenset({4, 5, 6, 14, 15, 16, 22, 23, 24, 27, 28, 29})
SBAS_MODES = frozenset({7, 8, 9, 17, 18, 30, 31})
STATUS_NO_FIX, STATUS_FIX, STATUS_SBAS_FIX, STATUS_GBAS_FIX = -1, 0, 1, 2
SERVICE_GPS = 1
COVARIANCE_TYPE_UNKNOWN, COVARIANCE_TYPE_DIAGONAL_KNOWN = 0, 2


class ConversionFailed(Exception):
    """An error found while writing (e.g. an unreadable image); the bag is removed."""


# ====================================================================== geometry
def base_from_cam0(seq: KittiSequence, height: float) -> np.ndarray:
    """T_base_cam0: rectified cam0 coordinates in base_link (the left colour camera's
    ground point, body axes; every rectified camera has cam0's orientation)."""
    T = np.eye(4)
    T[:3, :3] = R_BODY_OPTICAL
    c_left = -camera_offset(seq.P("image_2"))  # the left camera's centre in cam0 coordinates
    T[:3, 3] = R_BODY_OPTICAL @ -c_left + (0.0, 0.0, height)
    return T


def camera_mounts(seq: KittiSequence, height: float) -> dict[str, np.ndarray]:
    """T_base_cam (optical frame in base_link) for each camera of the sequence."""
    T_base_cam0 = base_from_cam0(seq, height)
    mounts = {}
    for cam in seq.images:
        T_cam0_cam = np.eye(4)
        T_cam0_cam[:3, 3] = -camera_offset(seq.P(cam))  # the camera's centre in cam0
        mounts[cam] = T_base_cam0 @ T_cam0_cam
    return mounts


def ground_truth_base(seq: KittiSequence, frames: np.ndarray, T_base_cam: np.ndarray):
    """(len(frames), 4, 4) T_map_base with map = base_link of the first written frame."""
    cam = seq.camera_poses("image_2")
    assert cam is not None
    rel = np.linalg.inv(cam[frames[0]]) @ cam[frames]
    return T_base_cam @ rel @ np.linalg.inv(T_base_cam)


def oxts_orientation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation of the OXTS frame (x forward, y left, z up) in east-north-up, from the
    devkit's angles: yaw 0 = east, counter-clockwise; pitch positive = front down (a
    positive turn about y); roll positive = left side up. R = Rz(yaw) Ry(pitch) Rx(roll)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("ZYX", [yaw, pitch, roll]).as_matrix()


def navsat_status(navstat: float, posmode: float) -> int:
    """NavSatStatus.status of an OXTS sample (see GBAS_MODES)."""
    if int(navstat) < NAVSTAT_LOCKED:
        return STATUS_NO_FIX
    if int(posmode) in GBAS_MODES:
        return STATUS_GBAS_FIX
    if int(posmode) in SBAS_MODES:
        return STATUS_SBAS_FIX
    return STATUS_FIX


def _quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    if w < 0:
        x, y, z, w = -x, -y, -z, -w
    return float(x), float(y), float(z), float(w)


# ====================================================================== messages
class Messages:
    """rosbags message builders for one typestore (ROS 2 Kilted definitions)."""

    def __init__(self) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.store = get_typestore(Stores.ROS2_KILTED)
        self.t = self.store.types

    def serialize(self, msg) -> bytes:
        return bytes(self.store.serialize_cdr(msg, msg.__msgtype__))

    def header(self, ns: int, frame_id: str):
        stamp = self.t["builtin_interfaces/msg/Time"](
            sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000
        )
        return self.t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def image(self, ns: int, frame_id: str, rgb: np.ndarray):
        h, w = rgb.shape[:2]
        return self.t["sensor_msgs/msg/Image"](
            header=self.header(ns, frame_id),
            height=h,
            width=w,
            encoding="rgb8",
            is_bigendian=0,
            step=w * 3,
            data=np.ascontiguousarray(rgb, np.uint8).reshape(-1),
        )

    def compressed(self, ns: int, frame_id: str, data: bytes, fmt: str):
        # image_transport's compressed format string: "<original>; <fmt> compressed <enc>"
        return self.t["sensor_msgs/msg/CompressedImage"](
            header=self.header(ns, frame_id),
            format=f"rgb8; {fmt} compressed bgr8",
            data=np.frombuffer(data, dtype=np.uint8),
        )

    def camera_info(self, ns: int, frame_id: str, width: int, height: int, K, tx: float):
        P = np.zeros((3, 4))
        P[:, :3] = K
        P[0, 3] = tx
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        return self.t["sensor_msgs/msg/CameraInfo"](
            header=self.header(ns, frame_id),
            height=height,
            width=width,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=np.asarray(K, float).reshape(9),
            r=np.eye(3).reshape(9),
            p=P.reshape(12),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def transform(self, ns: int, parent: str, child: str, T: np.ndarray):
        t = self.t
        x, y, z, w = _quaternion(T[:3, :3])
        return t["geometry_msgs/msg/TransformStamped"](
            header=self.header(ns, parent),
            child_frame_id=child,
            transform=t["geometry_msgs/msg/Transform"](
                translation=t["geometry_msgs/msg/Vector3"](*map(float, T[:3, 3])),
                rotation=t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w),
            ),
        )

    def tf(self, transforms: list):
        return self.t["tf2_msgs/msg/TFMessage"](transforms=transforms)

    def pose(self, ns: int, frame_id: str, T: np.ndarray):
        t = self.t
        x, y, z, w = _quaternion(T[:3, :3])
        return t["geometry_msgs/msg/PoseStamped"](
            header=self.header(ns, frame_id),
            pose=t["geometry_msgs/msg/Pose"](
                position=t["geometry_msgs/msg/Point"](*map(float, T[:3, 3])),
                orientation=t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w),
            ),
        )

    def path(self, ns: int, frame_id: str, poses: list):
        return self.t["nav_msgs/msg/Path"](header=self.header(ns, frame_id), poses=poses)

    def navsatfix(self, ns: int, frame_id: str, v: np.ndarray):
        """sensor_msgs/NavSatFix from one OXTS sample (30 values, kitti.OXTS_FIELDS).

        The altitude is written as KITTI gives it (~115 m in Karlsruhe: above sea level,
        not the WGS84 ellipsoid NavSatFix asks for, ~48 m higher there); positions
        relative to a first fix, as the mapping node uses them, are not affected.
        """
        sigma = v[OXTS["pos_accuracy"]]
        if sigma > 0:
            var = [sigma**2, sigma**2, (VERTICAL_SIGMA_FACTOR * sigma) ** 2]  # E, N, U
            cov, cov_type = np.diag(var).reshape(9), COVARIANCE_TYPE_DIAGONAL_KNOWN
        else:  # no accuracy reported
            cov, cov_type = np.zeros(9), COVARIANCE_TYPE_UNKNOWN
        status = self.t["sensor_msgs/msg/NavSatStatus"](
            status=navsat_status(v[OXTS["navstat"]], v[OXTS["posmode"]]), service=SERVICE_GPS
        )
        return self.t["sensor_msgs/msg/NavSatFix"](
            header=self.header(ns, frame_id),
            status=status,
            latitude=float(v[OXTS["lat"]]),
            longitude=float(v[OXTS["lon"]]),
            altitude=float(v[OXTS["alt"]]),
            position_covariance=cov,
            position_covariance_type=cov_type,
        )

    def imu(self, ns: int, frame_id: str, v: np.ndarray):
        """sensor_msgs/Imu from one OXTS sample, in the OXTS (= IMU) body frame.

        Orientation: `oxts_orientation` (OXTS frame in ENU, REP-145), with a small
        covariance. Rates and accelerations are the body-axis fields wx wy wz and ax ay
        az ("in direction of vehicle front / left / top", devkit), not wf wl wu / af al
        au, which are about a level frame that follows the heading (as vf vl, "parallel
        to earth-surface"): there gravity always points along u, so a tilt could not be
        seen. The accelerations include gravity (specific force, as sensor_msgs/Imu
        wants): a level OXTS reads az ~ +9.8 m/s^2, and in a KITTI sample with roll 2.05
        deg, ay = 0.04 ~ al + g sin(roll) = -0.32 + 0.35 m/s^2. Their covariances are
        unknown (all zeros, per the message's definition).
        """
        t = self.t
        x, y, z, w = _quaternion(
            oxts_orientation(v[OXTS["roll"]], v[OXTS["pitch"]], v[OXTS["yaw"]])
        )
        vec = t["geometry_msgs/msg/Vector3"]
        return t["sensor_msgs/msg/Imu"](
            header=self.header(ns, frame_id),
            orientation=t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w),
            orientation_covariance=np.diag([ORIENTATION_SIGMA_RAD**2] * 3).reshape(9),
            angular_velocity=vec(*(float(v[OXTS[k]]) for k in ("wx", "wy", "wz"))),
            angular_velocity_covariance=np.zeros(9),
            linear_acceleration=vec(*(float(v[OXTS[k]]) for k in ("ax", "ay", "az"))),
            linear_acceleration_covariance=np.zeros(9),
        )


def _qos(latched: bool):
    """The offered QoS recorded with a topic (players use it: latched for /tf_static)."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    zero = QosTime(sec=0, nsec=0)
    return [
        Qos(
            history=QosHistory.KEEP_LAST,
            depth=1 if latched else 10,
            reliability=QosReliability.RELIABLE,
            durability=QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
            deadline=zero,
            lifespan=zero,
            liveliness=QosLiveliness.AUTOMATIC,
            liveliness_lease_duration=zero,
            avoid_ros_namespace_conventions=False,
        )
    ]


# ====================================================================== OXTS
@dataclass
class OxtsInput:
    """OXTS samples ready for the bag: bag stamp = OXTS stamp + ``offset_ns``."""

    data: OxtsData
    offset_ns: int
    raw_start: int  # the drive frame of the sequence's frame 0
    clock: Path  # the timestamps file that aligned the OXTS clock with times.txt
    T_base_imu: np.ndarray | None  # None: no raw calibration, messages in base_frame

    def stamps(self) -> np.ndarray:
        return self.data.stamps_ns + self.offset_ns


def prepare_oxts(
    seq: KittiSequence,
    folder: Path,
    raw_start: int | None,
    start_time: float,
    camera_height: float,
) -> OxtsInput:
    """Read a raw drive's ``oxts/`` (or the drive folder's) and align it with the sequence.

    The sequence's frame 0 is drive frame ``raw_start`` (None: the odometry devkit's
    table). Its raw time is line ``raw_start`` of ``<drive>/image_02/timestamps.txt``,
    else of ``oxts/timestamps.txt`` (the synced drive's OXTS sample i is frame i's);
    OXTS samples keep their own times relative to it, on the bag's clock
    (``start_time`` + times.txt). The IMU's mount comes from the date folder's raw
    calibration, when all three files are there.
    """
    if not (folder / "timestamps.txt").is_file() and (folder / "oxts").is_dir():
        folder = folder / "oxts"  # the drive folder itself was given
    data = read_oxts(folder)
    if raw_start is None:
        raw_start = raw_start_frame(seq.name, folder)
    clock = folder.parent / "image_02" / "timestamps.txt"
    if not clock.is_file():
        clock = folder / "timestamps.txt"
    raw = read_raw_timestamps(clock)
    if len(raw) < raw_start + len(seq):
        raise KittiError(
            f"{clock} has {len(raw)} frames, but the sequence's {len(seq)} frames start at "
            f"drive frame {raw_start}: not the drive of {seq.root} (or a wrong --raw-start)"
        )
    ref = raw[raw_start]
    if ref is None:
        raise KittiError(f"{clock}:{raw_start + 1}: no time for the sequence's first frame")
    offset = int(round((start_time + float(seq.times[0])) * 1e9)) - ref
    T_cam0_imu = imu_to_rectified_cam0(folder.resolve().parent.parent)
    T_base_imu = None if T_cam0_imu is None else base_from_cam0(seq, camera_height) @ T_cam0_imu
    return OxtsInput(data, offset, raw_start, clock, T_base_imu)


# ====================================================================== images
def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise ConversionFailed(f"unreadable image {path}: {exc}") from exc


def _encode(path: Path, rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    if fmt == "png" and path.suffix.lower() == ".png":
        data = path.read_bytes()  # KITTI's own PNG, verbatim (already decoded once: valid)
        return data
    from PIL import Image as PILImage

    buf = io.BytesIO()
    if fmt == "png":
        PILImage.fromarray(rgb).save(buf, format="PNG")
    else:
        PILImage.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def check_image_headers(seq: KittiSequence, frames: np.ndarray) -> tuple[int, int]:
    """Open every selected image's header: same size everywhere. Returns (width, height)."""
    from PIL import Image as PILImage

    size = None
    for files in seq.images.values():
        for i in frames:
            try:
                with PILImage.open(files[i]) as img:
                    this = img.size
            except Exception as exc:
                raise KittiError(f"unreadable image {files[i]}: {exc}") from exc
            if size is None:
                size, first = this, files[i]
            elif this != size:
                raise KittiError(
                    f"image {files[i]} is {this[0]}x{this[1]} but {first} is "
                    f"{size[0]}x{size[1]}: all images must have one size"
                )
    assert size is not None
    return size


# ====================================================================== conversion
def select_frames(n: int, start: int, stride: int, max_frames: int | None) -> np.ndarray:
    if start < 0 or start >= n:
        raise KittiError(f"--start {start} is outside the sequence's {n} frames")
    frames = np.arange(start, n, stride)
    return frames[:max_frames] if max_frames else frames


def convert(
    seq: KittiSequence,
    output: Path,
    frames: np.ndarray,
    *,
    storage: str = "mcap",
    compressed: str | None = None,
    jpeg_quality: int = 90,
    start_time: float = KITTI_DAY,
    namespace: str = "/kitti",
    base_frame: str = "base_link",
    camera_height: float = 1.65,
    gt_frame: str = "map",
    gt_tf: bool = False,
    gt_child_frame: str = "base_link_gt",
    oxts: OxtsInput | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write the bag; returns {topic: message count}. Removes the bag if it fails.

    ``oxts``: also NavSatFix and Imu, every OXTS sample within the written frames' span.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from tqdm import tqdm

    width, height = check_image_headers(seq, frames)
    ns_ = namespace.rstrip("/")
    msgs = Messages()
    mounts = camera_mounts(seq, camera_height)
    stamps = [int(round((start_time + float(seq.times[i])) * 1e9)) for i in frames]
    baseline = stereo_baseline(seq.P("image_2"), seq.P("image_3")) if seq.stereo else 0.0
    gt = ground_truth_base(seq, frames, mounts["image_2"]) if seq.poses is not None else None
    oxts_ns = np.zeros(0, dtype=np.int64)
    oxts_values = np.zeros((0, 0))
    imu_frame = base_frame
    if oxts is not None:
        all_ns = oxts.stamps()
        keep = (all_ns >= stamps[0] - OXTS_MARGIN_NS) & (all_ns <= stamps[-1] + OXTS_MARGIN_NS)
        oxts_ns, oxts_values = all_ns[keep], oxts.data.values[keep]
        if not oxts_ns.size:
            raise KittiError(
                f"no OXTS sample of {oxts.data.folder} falls within the written frames' "
                "time span: the wrong drive, or a wrong --raw-start?"
            )
        if oxts.T_base_imu is not None:
            imu_frame = IMU_FRAME

    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    created = _make_parents(output.parent)
    writer = Writer(output, version=9, storage_plugin=plugin)
    counts: dict[str, int] = {}
    try:
        writer.open()
        conns = {}

        def connect(key: str, topic: str, msgtype: str, latched: bool = False) -> None:
            conn = writer.add_connection(
                topic, msgtype, typestore=msgs.store, offered_qos_profiles=_qos(latched)
            )
            conns[key] = (topic, conn)

        def write(key: str, ns: int, msg) -> None:
            topic, conn = conns[key]
            writer.write(conn, ns, msgs.serialize(msg))
            counts[topic] = counts.get(topic, 0) + 1

        connect("tf_static", "/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
        for cam, name in CAMERAS.items():
            if cam not in seq.images:
                continue
            if compressed:
                connect(
                    cam, f"{ns_}/{name}/image_raw/compressed", "sensor_msgs/msg/CompressedImage"
                )
            else:
                connect(cam, f"{ns_}/{name}/image_raw", "sensor_msgs/msg/Image")
            connect(cam + "_info", f"{ns_}/{name}/camera_info", "sensor_msgs/msg/CameraInfo")
        if gt is not None:
            connect("gt_path", f"{ns_}/ground_truth/path", "nav_msgs/msg/Path", latched=True)
            connect("gt_pose", f"{ns_}/ground_truth/pose", "geometry_msgs/msg/PoseStamped")
            if gt_tf:
                connect("tf", "/tf", "tf2_msgs/msg/TFMessage")
        if oxts is not None:
            connect("gps", f"{ns_}/{OXTS_TOPICS['gps']}", "sensor_msgs/msg/NavSatFix")
            connect("imu", f"{ns_}/{OXTS_TOPICS['imu']}", "sensor_msgs/msg/Imu")

        # the first message: the earliest OXTS sample may come a few ms before frame 0
        t0 = min(stamps[0], int(oxts_ns[0])) if oxts_ns.size else stamps[0]
        statics = [msgs.transform(t0, base_frame, CAMERAS[cam], T) for cam, T in mounts.items()]
        if oxts is not None and oxts.T_base_imu is not None:
            statics.append(msgs.transform(t0, base_frame, IMU_FRAME, oxts.T_base_imu))
        write("tf_static", t0, msgs.tf(statics))
        pending = 0  # the next OXTS sample: written in time order with the frames

        def write_oxts(until_ns: int) -> None:
            nonlocal pending
            while pending < len(oxts_ns) and oxts_ns[pending] <= until_ns:
                ns, v = int(oxts_ns[pending]), oxts_values[pending]
                write("gps", ns, msgs.navsatfix(ns, imu_frame, v))
                write("imu", ns, msgs.imu(ns, imu_frame, v))
                pending += 1

        write_oxts(stamps[0] - 1)
        if gt is not None:
            poses = [msgs.pose(ns, gt_frame, T) for ns, T in zip(stamps, gt, strict=True)]
            write("gt_path", stamps[0], msgs.path(stamps[0], gt_frame, poses))

        infos = {}
        for cam in seq.images:
            P = seq.P(cam)
            tx = -P[0, 0] * baseline if cam == "image_3" else 0.0
            infos[cam] = (P[:, :3].copy(), tx)

        with tqdm(
            total=len(frames),
            unit="frame",
            desc=f"KITTI {seq.name} -> {output.name}",
            disable=not progress,
            file=sys.stderr,
        ) as bar:
            for k, (i, ns) in enumerate(zip(frames, stamps, strict=True)):
                write_oxts(ns)
                if gt is not None:
                    write("gt_pose", ns, msgs.pose(ns, gt_frame, gt[k]))
                    if gt_tf:
                        write(
                            "tf", ns, msgs.tf([msgs.transform(ns, gt_frame, gt_child_frame, gt[k])])
                        )
                for cam, files in seq.images.items():
                    frame_id = CAMERAS[cam]
                    rgb = _load_rgb(files[i])
                    if (rgb.shape[1], rgb.shape[0]) != (width, height):
                        raise ConversionFailed(f"image {files[i]} changed size while converting")
                    K, tx = infos[cam]
                    write(cam + "_info", ns, msgs.camera_info(ns, frame_id, width, height, K, tx))
                    if compressed:
                        data = _encode(files[i], rgb, compressed, jpeg_quality)
                        write(cam, ns, msgs.compressed(ns, frame_id, data, compressed))
                    else:
                        write(cam, ns, msgs.image(ns, frame_id, rgb))
                bar.update(1)
            write_oxts(stamps[-1] + OXTS_MARGIN_NS)
        writer.close()
    except BaseException:
        try:
            writer.close()
        except Exception:
            pass
        shutil.rmtree(output, ignore_errors=True)
        for folder in reversed(created):  # the parents this run made, if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return counts


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents (``--output bags/kitti_00`` with no
    ``bags/`` yet); returns the folders created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConversionFailed(f"cannot create the output folder {folder}: {exc}") from exc
    return missing


def _prepare_output(output: Path, overwrite: bool) -> None:
    if not output.exists():
        if output.parent.exists() and not output.parent.is_dir():
            raise KittiError(f"output folder's parent {output.parent} is not a folder")
        return  # missing parents are created by convert(), once the input has been checked
    is_bag = output.is_dir() and ((output / "metadata.yaml").is_file() or not any(output.iterdir()))
    if not overwrite:
        raise KittiError(f"output {output} exists (use --overwrite to replace a bag)")
    if not is_bag:
        raise KittiError(f"output {output} exists and is not a bag folder: not removing it")
    shutil.rmtree(output)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scal3r_kitti_to_bag",
        description="Convert a KITTI odometry sequence folder (sequences/NN) into a ROS 2 bag.",
    )
    p.add_argument("sequence", type=Path, help="the sequence folder, e.g. dataset/sequences/00")
    p.add_argument(
        "-o", "--output", type=Path, default=None, help="bag folder to create (default: ./kitti_NN)"
    )
    p.add_argument(
        "--poses",
        type=Path,
        default=None,
        help="ground truth (default: <dataset>/poses/NN.txt if present)",
    )
    p.add_argument("--no-ground-truth", action="store_true", help="do not write ground truth")
    p.add_argument("--left-only", action="store_true", help="ignore image_3 (right camera)")
    p.add_argument("--start", type=int, default=0, help="first frame index (default 0)")
    p.add_argument("--stride", type=int, default=1, help="keep every N-th frame (default 1)")
    p.add_argument("--max-frames", type=int, default=None, help="write at most N frames")
    p.add_argument(
        "--compressed",
        choices=("png", "jpeg"),
        default=None,
        help="write sensor_msgs/CompressedImage on .../image_raw/compressed "
        "(png: KITTI's own files, lossless; jpeg: smaller)",
    )
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument(
        "--start-time",
        type=float,
        default=KITTI_DAY,
        help="stamp (s since the epoch) of times.txt's 0 (default %(default).0f, 2011-09-30)",
    )
    p.add_argument("--namespace", default="/kitti", help="topic prefix (default /kitti)")
    p.add_argument("--base-frame", default="base_link")
    p.add_argument(
        "--camera-height",
        type=float,
        default=1.65,
        help="left camera height above base_link in m (default 1.65)",
    )
    p.add_argument("--gt-frame", default="map", help="frame of the ground truth (default map)")
    p.add_argument(
        "--gt-tf",
        action="store_true",
        help="also write ground truth on /tf as <gt-frame> -> base_link_gt",
    )
    p.add_argument(
        "--oxts",
        type=Path,
        default=None,
        metavar="DIR",
        help="the sequence's KITTI raw drive's oxts folder (<date>/<date>_drive_NNNN_sync/oxts, "
        "or the drive folder): "
        "also write GNSS (NavSatFix) and IMU (Imu); with the date folder's "
        "calib_imu_to_velo.txt, calib_velo_to_cam.txt and calib_cam_to_cam.txt, "
        "/tf_static gets base_link -> imu_link",
    )
    p.add_argument(
        "--raw-start",
        type=int,
        default=None,
        metavar="N",
        help="the drive frame of the sequence's frame 0 (default: from the odometry devkit's "
        "table for sequences 00-10, else 0)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _oxts_summary(oxts: OxtsInput, base_frame: str) -> str:
    lines = [
        f"OXTS from {oxts.data.folder}: the sequence's frame 0 is drive frame "
        f"{oxts.raw_start}, clocks aligned by {oxts.clock}"
    ]
    if oxts.T_base_imu is not None:
        lines.append(f"  {base_frame} -> {IMU_FRAME} on /tf_static from the raw calibration")
    else:
        lines.append(
            f"  no raw calibration ({', '.join(RAW_CALIB_FILES)}) in "
            f"{oxts.data.folder.resolve().parent.parent}: NavSatFix and Imu are in "
            f"{base_frame} (the OXTS is mounted roughly level, x forward)"
        )
    skipped = oxts.data.skipped
    if skipped:
        path, why = skipped[0]
        lines.append(
            f"  skipped {len(skipped)} OXTS sample(s) of the drive that cannot be used "
            f"(first: {path}: {why})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.stride < 1:
        parser.error("--stride must be >= 1")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be >= 1")
    if not 1 <= args.jpeg_quality <= 100:
        parser.error("--jpeg-quality must be in 1..100")
    try:
        if args.poses is not None and args.no_ground_truth:
            raise KittiError("--poses and --no-ground-truth contradict each other")
        if args.raw_start is not None and args.oxts is None:
            raise KittiError("--raw-start needs --oxts")
        if args.raw_start is not None and args.raw_start < 0:
            raise KittiError("--raw-start must be >= 0")
        seq = load_sequence(args.sequence, poses=args.poses, right=not args.left_only)
        if args.no_ground_truth:
            seq.poses = None
        output = args.output or Path(f"kitti_{seq.name}")
        frames = select_frames(len(seq), args.start, args.stride, args.max_frames)
        oxts = None
        if args.oxts is not None:
            oxts = prepare_oxts(seq, args.oxts, args.raw_start, args.start_time, args.camera_height)
        _prepare_output(output, args.overwrite)
        counts = convert(
            seq,
            output,
            frames,
            storage=args.storage,
            compressed=args.compressed,
            jpeg_quality=args.jpeg_quality,
            start_time=args.start_time,
            namespace=args.namespace,
            base_frame=args.base_frame,
            camera_height=args.camera_height,
            gt_frame=args.gt_frame,
            gt_tf=args.gt_tf,
            oxts=oxts,
            progress=not args.quiet,
        )
    except (KittiError, ConversionFailed) as exc:
        print(f"scal3r_kitti_to_bag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scal3r_kitti_to_bag: interrupted; the partial bag was removed", file=sys.stderr)
        return 130
    cams = "stereo (image_2 + image_3)" if seq.stereo else "left camera (image_2)"
    gt = f"ground truth from {seq.poses_path}" if seq.poses is not None else "no ground truth"
    print(f"wrote {output} ({args.storage}): {len(frames)} frames, {cams}, {gt}")
    if oxts is not None:
        print(_oxts_summary(oxts, args.base_frame))
    for topic, n in counts.items():
        print(f"  {topic}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
