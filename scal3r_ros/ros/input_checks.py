"""What stands between the node's input callbacks and the worker queue.

The callbacks decode (`conversions`, with `ImageLimits`) and hand every frame to
`InputGate`, which decides with the stream's history whether it reaches the engine:

* **Stamps.** Invalid ones (zero, negative seconds, nanoseconds >= 1e9) and ones far
  ahead of the node's clock are dropped. A camera's time base -- its last accepted stamp
  -- moves only with evidence: a frame up to ``max_gap_s`` after it is accepted; any other
  frame (older, or a jump forward) is held, and only ``min_frames`` consecutive such
  frames (increasing, each within ``max_gap_s`` of the previous one) confirm a real jump.
  Forward (a pause, a skip): the held frames go on. Backward (a bag loop): with
  ``on_time_jump`` reset the map is reset and the held frames start the new one; with
  drop every older frame is dropped at once. A backward jump of the node's clock (a
  bag's /clock looping) is evidence enough by itself. Frames that no run confirms are
  dropped as ``stamp_outlier``: one bad stamp costs one frame, never the map, and never
  becomes the time base that later good frames are judged by. A new camera starts the
  same way, so a lone bad first stamp does not lock it either.
* **Size.** One image size per stream, for every backend (the oracle cannot mix sizes,
  and the network's input size is fixed by the first frame): the first frame that
  reaches the engine fixes it, ``reset()`` (``~/reset``) forgets it; frames of another
  size -- the same camera after a resolution change, or another frame_id on the same
  topic -- are dropped as ``size_changed``.
* **Cameras.** At most `MAX_CAMERAS` frame_ids (each holds a little state).

Plain numbers in, callbacks out (no ROS node), so every rule is unit-tested; the
callbacks run under the gate's lock, in arrival order. `ImageInput` is the node's side:
one callback per message type (a decode function each) that decodes, checks, counts
what it drops and submits `Frame`s with their camera's intrinsics: a camera's CameraInfo
(or, without one, the ``camera_k`` parameter) gives K; a distorted calibration is
undistorted first (``mapping.undistort``: maps made once per calibration), the frame's K
then the undistorted image's. Ks go to the engine in its pixel convention
(``undistort.to_pixel_edges``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from scal3r_ros.mapping.events import Frame
from scal3r_ros.mapping.undistort import Calibration, Undistorter, to_pixel_edges
from scal3r_ros.ros.conversions import ConversionError, ImageLimits

MAX_CAMERAS = 16
"""frame_ids one node keeps state for (stamps, intrinsics); frames of more are dropped."""

_NS = 1_000_000_000


@dataclass(frozen=True)
class StampPolicy:
    """The node's parameters on_time_jump, time_jump_min_frames, max_stamp_gap_s and
    max_future_stamp_s."""

    on_time_jump: str = "reset"  # reset | drop
    min_frames: int = 3  # consecutive frames that confirm a jump (1: any frame does)
    max_gap_s: float = 10.0  # the largest step of a stream's stamps that needs no evidence
    max_future_s: float = 300.0  # drop stamps further ahead of the node's clock (0: off)


@dataclass
class _Held:
    stamp_ns: int
    image: np.ndarray


@dataclass
class _Camera:
    last_ns: int | None = None  # time base: the last accepted stamp (None: not yet)
    held: list[_Held] = field(default_factory=list)  # the run of a possible jump


def _size(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[1]), int(image.shape[0])


class InputGate:
    """``offer`` each decoded frame; it calls ``submit(camera, stamp_ns, image)`` for the
    frames that go to the engine (in order), ``reset(message)`` before the frames of a
    confirmed backward jump (with ``on_time_jump`` reset) and ``drop(reason, detail)``
    for every frame that does not go on. See the module docstring for the rules."""

    def __init__(
        self,
        policy: StampPolicy,
        submit: Callable[[str, int, np.ndarray], None],
        reset: Callable[[str], None],
        drop: Callable[[str, str], None],
    ) -> None:
        self.policy = policy
        self._submit, self._reset, self._drop = submit, reset, drop
        self._lock = threading.Lock()
        self._cameras: dict[str, _Camera] = {}
        self._size: tuple[int, int] | None = None
        self._size_from = ""
        self._clock_back = False

    # ------------------------------------------------------------------ public
    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the stream, once its first frame went to the engine."""
        return self._size

    @property
    def held(self) -> int:
        """Frames held as evidence of a possible time jump."""
        with self._lock:
            return sum(len(c.held) for c in self._cameras.values())

    def offer(
        self, camera: str, sec: int, nanosec: int, image: np.ndarray, now_ns: int = 0
    ) -> None:
        """One decoded frame with its header stamp; ``now_ns`` is the node's clock
        (0 when it does not run yet, e.g. sim time before the first /clock)."""
        with self._lock:
            if sec < 0 or nanosec >= _NS or (sec == 0 and nanosec == 0):
                self._drop("invalid_stamp", f"{camera}: stamp sec={sec} nanosec={nanosec}")
                return
            stamp = int(sec) * _NS + int(nanosec)
            ahead = self.policy.max_future_s
            if ahead > 0 and now_ns > 0 and stamp > now_ns + ahead * 1e9:
                self._drop(
                    "future_stamp",
                    f"{camera}: stamp {stamp / 1e9:.3f} s is "
                    f"{(stamp - now_ns) / 1e9:.0f} s ahead of the node's clock (over "
                    "max_future_stamp_s: camera clock or use_sim_time?)",
                )
                return
            if self._size is not None and _size(image) != self._size:
                self._drop_size(camera, image)
                return
            cam = self._cameras.get(camera)
            if cam is None:
                if len(self._cameras) >= MAX_CAMERAS:
                    self._drop(
                        "too_many_cameras",
                        f"frame_id {camera!r}: this node already keeps {MAX_CAMERAS} cameras apart",
                    )
                    return
                cam = self._cameras[camera] = _Camera()
            self._stamp_rule(camera, cam, _Held(stamp, image))

    def reset(self) -> None:
        """``~/reset``: forget stamps, held frames and the stream's size."""
        with self._lock:
            for name, cam in self._cameras.items():
                for h in cam.held:
                    self._drop("cleared_by_reset", f"{name}: stamp {h.stamp_ns} held at ~/reset")
            self._cameras.clear()
            self._size = None
            self._clock_back = False

    def clock_jumped_back(self) -> None:
        """The node's clock jumped back (a bag's /clock looped): the next older frame
        is a real jump without waiting for more evidence."""
        with self._lock:
            self._clock_back = True

    # ------------------------------------------------------------------ rules
    def _stamp_rule(self, name: str, cam: _Camera, frame: _Held) -> None:
        p = self.policy
        gap = int(p.max_gap_s * 1e9)
        last, stamp = cam.last_ns, frame.stamp_ns
        if last is not None:
            if stamp == last:
                self._drop("duplicate_stamp", f"{name}: stamp {stamp} repeated")
                return
            if last < stamp <= last + gap:  # the stream goes on
                self._drop_held(name, cam)
                cam.last_ns = stamp
                self._release(name, [frame])
                return
            if stamp < last:
                if p.on_time_jump == "drop":
                    self._drop("stamp_backwards", f"{name}: {stamp} < {last} (on_time_jump drop)")
                    return
                if self._clock_back:  # the clock jumped back too: no need to wait
                    self._drop_held(name, cam)
                    self._jump_back(name, cam, [frame])
                    return
        # a candidate for a new time base: first frames, a jump forward, a jump back
        if cam.held:
            prev = cam.held[-1]
            if stamp == prev.stamp_ns:
                self._drop("duplicate_stamp", f"{name}: stamp {stamp} repeated")
                return
            if _size(prev.image) != _size(frame.image):  # a run has one size: a lone
                self._drop_held(name, cam, frame)  # odd first frame never fixes it
            elif not prev.stamp_ns < stamp <= prev.stamp_ns + gap:
                self._drop_held(name, cam)
        cam.held.append(frame)
        if len(cam.held) < p.min_frames:
            return
        run, cam.held = cam.held, []
        if last is not None and run[0].stamp_ns < last:
            self._jump_back(name, cam, run)
        else:
            cam.last_ns = run[-1].stamp_ns
            self._release(name, run)

    def _jump_back(self, name: str, cam: _Camera, run: list[_Held]) -> None:
        """A confirmed backward jump: reset, then the run starts the new map. Every
        camera starts a new time base (they jump together); the size stays."""
        back = (cam.last_ns - run[-1].stamp_ns) / 1e9
        why = "the clock jumped back too" if self._clock_back else f"{len(run)} frames in a row"
        self._reset(f"time jumped back on {name} ({back:.3f} s; {why}; bag loop?): resetting")
        self._clock_back = False
        for other in self._cameras.values():
            other.last_ns = None  # their held frames stay: a run of the new time base
        cam.last_ns = run[-1].stamp_ns
        self._release(name, run)

    def _release(self, name: str, frames: list[_Held]) -> None:
        for f in frames:
            if self._size is None:
                self._size, self._size_from = _size(f.image), name
                for other_name, other in self._cameras.items():  # runs of other sizes
                    if other.held and _size(other.held[0].image) != self._size:
                        for h in other.held:
                            self._drop_size(other_name, h.image)
                        other.held.clear()
            elif _size(f.image) != self._size:
                self._drop_size(name, f.image)
                continue
            self._submit(name, f.stamp_ns, f.image)

    def _drop_held(self, name: str, cam: _Camera, newer: _Held | None = None) -> None:
        """Drop the held run: a newer frame does not continue it (``newer``: by its size)."""
        n = self.policy.min_frames
        for h in cam.held:
            if newer is not None:
                (w, ht), (nw, nh) = _size(h.image), _size(newer.image)
                self._drop(
                    "size_changed",
                    f"{name} is {w}x{ht}, the frames after it "
                    f"{nw}x{nh} (a stream starts with {n} frames of one size)",
                )
            else:
                base = "none yet" if cam.last_ns is None else f"{cam.last_ns / 1e9:.3f} s"
                self._drop(
                    "stamp_outlier",
                    f"{name}: stamp {h.stamp_ns / 1e9:.3f} s fits "
                    f"neither the stream (last stamp: {base}) nor {n} frames in a "
                    f"row, each within max_stamp_gap_s of the previous",
                )
        cam.held.clear()

    def _drop_size(self, name: str, image: np.ndarray) -> None:
        w, h = _size(image)
        sw, sh = self._size or (0, 0)
        if name == self._size_from:
            why = "reset to accept the new size"
        else:
            why = f"set by frame_id {self._size_from!r}; one size per stream: give cameras of "
            why += "other sizes their own topic and node, or reset to start over"
        self._drop("size_changed", f"{name} is {w}x{h}, the stream is {sw}x{sh} ({why})")


# ====================================================================== CameraInfo
MIN_FOCAL_RATIO = 0.05
"""Smallest focal length as a fraction of the image's longer side (~170 deg field of view)."""
MAX_FOCAL_RATIO = 100.0
"""Largest focal length as a multiple of the image's longer side (~0.6 deg)."""


def camera_matrix(k: Sequence[float], width: int = 0, height: int = 0) -> np.ndarray:
    """The 3x3 K of a CameraInfo, or ValueError saying what is implausible about it:
    not finite, a last row other than [0, 0, 1], a non-zero K[1,0], focal lengths that are
    not positive or absurd for the image size (``width``/``height``; 0: unknown, then
    1 px .. 1e6 px) or a pixel aspect fx/fy outside [0.5, 2]."""
    K = np.asarray(k, dtype=np.float64)
    if K.size != 9:
        raise ValueError(f"K has {K.size} numbers, not 9")
    K = K.reshape(3, 3)
    if not np.isfinite(K).all():
        raise ValueError("K is not finite")
    if not np.array_equal(K[2], (0.0, 0.0, 1.0)) or K[1, 0] != 0.0:
        raise ValueError(
            f"K is not a camera matrix (rows [fx 0 cx] [0 fy cy] [0 0 1]): {K.ravel().tolist()}"
        )
    fx, fy = float(K[0, 0]), float(K[1, 1])
    side = max(int(width), int(height))
    lo, hi = (MIN_FOCAL_RATIO * side, MAX_FOCAL_RATIO * side) if side > 0 else (1.0, 1e6)
    for label, f in (("fx", fx), ("fy", fy)):
        if not lo <= f <= hi:
            raise ValueError(
                f"{label} = {f:g} px is implausible for a {width}x{height} image "
                f"(expected {lo:g} .. {hi:g})"
            )
    if not 0.5 <= fx / fy <= 2.0:
        raise ValueError(f"fx/fy = {fx / fy:g}: pixels are not that far from square")
    return K


def camera_k_matrix(camera_k: Sequence[float]) -> np.ndarray | None:
    """The K of the ``camera_k`` parameter ([fx, fy, cx, cy]; empty: None), or ValueError
    as `camera_matrix`."""
    if len(camera_k) == 0:
        return None
    if len(camera_k) != 4:
        raise ValueError(f"needs 4 numbers [fx, fy, cx, cy], got {len(camera_k)}")
    fx, fy, cx, cy = (float(v) for v in camera_k)
    return camera_matrix([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])


@dataclass
class _CameraModel:
    """One camera's calibration as the frames use it: K (CameraInfo convention) of the
    images as they go to the engine, the undistortion (None: images as they are) and
    why a distorted calibration cannot be undone ("": it can, or needs nothing)."""

    calibration: Calibration
    K: np.ndarray
    undistort: Undistorter | None
    problem: str = ""

    def fits(self, size: tuple[int, int]) -> bool:
        """The calibration is of images of ``size`` (width, height): its own size when it
        gives one, else a principal point inside the image (roughly)."""
        c = self.calibration
        if c.width > 0 and c.height > 0:
            return (c.width, c.height) == size
        return not (self.K[0, 2] * 2 > size[0] * 1.5 or self.K[1, 2] * 2 > size[1] * 1.5)


# ====================================================================== the node's side
class ImageInput:
    """The node's image and CameraInfo callbacks in front of the worker queue.

    ``decode(msg, limits)`` per message type (`image_to_rgb`, `compressed_to_rgb`);
    ``submit(frame)`` enqueues (False: the queue was full, ``queue_full`` is logged);
    ``reset_map()`` runs when a backward time jump resets the map; ``now_ns()`` is the
    node's clock; ``logger`` the node's (``warning(text, throttle_duration_sec=...)``).
    Drops (frames lost) and notices (events that are no frame: an ignored CameraInfo, a
    map reset after a time jump) are counted for the status (`counts`).
    """

    def __init__(
        self,
        policy: StampPolicy,
        limits: ImageLimits,
        submit: Callable[[Frame], bool],
        reset_map: Callable[[], None],
        now_ns: Callable[[], int],
        logger,
        queue_full: str,
        camera_k: Sequence[float] = (),
    ) -> None:
        """``camera_k``: [fx, fy, cx, cy] of cameras without CameraInfo (empty: none)."""
        self.limits = limits
        self._submit_frame, self._reset_map, self._now_ns = submit, reset_map, now_ns
        self._log, self._queue_full = logger, queue_full
        self._lock = threading.Lock()
        self._drops: dict[str, int] = {}
        self._notices: dict[str, int] = {}
        self._camera_k: dict[str, _CameraModel] = {}
        self._default_k = camera_k_matrix(camera_k)
        self.gate = InputGate(policy, self._submit, self._time_jump_reset, self._drop)

    def callback(self, decode: Callable[[object, ImageLimits], np.ndarray]) -> Callable:
        """The subscription callback of one image message type."""
        return lambda msg: self.on_image(msg, decode)

    def on_image(self, msg, decode: Callable[[object, ImageLimits], np.ndarray]) -> None:
        try:
            rgb = decode(msg, self.limits)
        except ConversionError as exc:
            self._drop(exc.reason, str(exc))
            return
        header = msg.header
        self.gate.offer(
            header.frame_id or "camera",
            int(header.stamp.sec),
            int(header.stamp.nanosec),
            rgb,
            self._now_ns(),
        )

    def on_camera_info(self, msg) -> None:
        """A camera's calibration: checked, and its undistortion maps made, when it is new
        or changed (CameraInfo usually comes with every image)."""
        cam = msg.header.frame_id
        calib = Calibration.of(
            msg.width, msg.height, msg.k, msg.d, msg.distortion_model, msg.r, msg.p
        )
        known = self._camera_k.get(cam)
        if known is not None and known.calibration == calib:
            return
        try:
            K = camera_matrix(msg.k, msg.width, msg.height)
        except ValueError as exc:
            self._notice("bad_camera_info", f"CameraInfo of {cam!r} ignored: {exc}")
            return
        if cam not in self._camera_k and len(self._camera_k) >= MAX_CAMERAS:
            self._notice(
                "bad_camera_info",
                f"CameraInfo of {cam!r} ignored: {MAX_CAMERAS} cameras known already",
            )
            return
        self._camera_k[cam] = self._camera_model(cam, calib, K)

    def _camera_model(self, cam: str, calib: Calibration, K: np.ndarray) -> _CameraModel:
        """The undistortion of a new calibration, or why there is none (warned once here;
        each frame used distorted is counted as ``distorted_as_is``)."""
        if not calib.distorted:
            return _CameraModel(calib, K, None)
        problem = ""
        if calib.width <= 0 or calib.height <= 0:
            problem = "it gives no image size"
        else:
            try:  # UnknownDistortion, coefficients that do not fit, OpenCV's own errors
                und = Undistorter(calib)
                return _CameraModel(
                    calib, camera_matrix(und.K.ravel(), calib.width, calib.height), und
                )
            except Exception as exc:
                problem = str(exc).strip() or type(exc).__name__
        self._log.warning(
            f"CameraInfo of {cam!r}: {problem}; its images go to the network distorted "
            "(counted as distorted_as_is); undistort them upstream (image_proc) or publish "
            "a plumb_bob, rational_polynomial or equidistant calibration"
        )
        return _CameraModel(calib, K, None, problem)

    def set_policy(self, policy: StampPolicy) -> None:
        """The dynamic parameter on_time_jump changed."""
        self.gate.policy = policy

    def reset(self) -> None:
        """``~/reset``: stamps and the stream's size start over (`InputGate.reset`)."""
        self.gate.reset()

    def clock_jumped_back(self) -> None:
        self.gate.clock_jumped_back()

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Copies of (frames dropped by reason, notices by kind)."""
        with self._lock:
            return dict(self._drops), dict(self._notices)

    def _count(self, table: dict[str, int], key: str) -> None:
        with self._lock:
            table[key] = table.get(key, 0) + 1

    def _drop(self, reason: str, detail: str) -> None:
        self._count(self._drops, reason)
        self._log.warning(f"dropped frame ({reason}): {detail}", throttle_duration_sec=5.0)

    def _notice(self, reason: str, detail: str) -> None:
        self._count(self._notices, reason)
        self._log.warning(detail, throttle_duration_sec=5.0)

    def _time_jump_reset(self, message: str) -> None:
        self._log.warning(message)
        self._count(self._notices, "time_jump_resets")
        self._reset_map()

    def _submit(self, cam: str, stamp: int, rgb: np.ndarray) -> None:
        """Enqueue one frame the gate let through, undistorted, with its camera's
        intrinsics (None: none known for images of this size)."""
        size = (rgb.shape[1], rgb.shape[0])
        model, K = self._camera_k.get(cam), None
        if model is not None and model.fits(size):  # else: CameraInfo of another resolution
            K = model.K
            if model.undistort is not None:
                rgb = model.undistort(rgb)
            elif model.problem:
                self._count(self._notices, "distorted_as_is")
        elif model is None and self._default_k is not None:
            K = self._default_k  # camera_k: no CameraInfo for this camera
            if K[0, 2] * 2 > size[0] * 1.5 or K[1, 2] * 2 > size[1] * 1.5:
                K = None
        if K is not None:
            K = to_pixel_edges(K)
        if not self._submit_frame(Frame(stamp_ns=stamp, camera_id=cam, image=rgb, intrinsics=K)):
            self._log.warning(self._queue_full, throttle_duration_sec=5.0)
