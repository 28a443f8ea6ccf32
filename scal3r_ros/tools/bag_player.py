"""`scal3r_play_bag`: replay a ROS 2 bag with /clock, where `ros2 bag play` is missing.

    scal3r_play_bag kitti_00                      # real time, /clock at 40 Hz
    scal3r_play_bag kitti_00 --rate 2 --loop --start-offset 10
    scal3r_play_bag kitti_00 --topics /kitti/camera_color_left/image_raw /tf_static

Reads the bag (mcap or sqlite3 rosbag2 folder, or a bare .mcap file) with `rosbags`
and publishes each message's recorded CDR bytes as is with rclpy (the message class,
imported by its type name, gives the publisher its type; the first message of each
topic is deserialized with rclpy once to check that it matches). Options follow
`ros2 bag play` where it has one:

- ``--rate`` factor of the recorded timing; ``--start-offset`` seconds into the bag;
  ``--loop`` replays from the start offset again (time jumps back, as with
  ``ros2 bag play --loop``: a node using sim time sees the jump);
- ``/clock`` (rosgraph_msgs/Clock) is published at every message's time and at
  ``--clock`` Hz in between (default 40), so nodes with ``use_sim_time`` run;
  ``--no-clock`` turns it off; a /clock recorded in the bag is not replayed;
- ``/tf_static`` is published once, latched (reliable, transient local), before
  playback; other topics recorded as transient local are latched too; data topics use
  ``--qos reliable`` (default, matches any subscriber) or ``best_effort``;
- ``--wait-for [TOPIC ...]`` waits until these topics (bare flag: every image topic)
  have a subscriber before playing, so a node started alongside misses no frame.

Checks, because a mapping node fed a bag it cannot use waits forever without a word:

- a bag (or ``--topics`` selection) without a ``sensor_msgs/Image`` or
  ``CompressedImage`` topic is played with a warning, or refused (exit 2) with
  ``--require-images``; a bare ``--wait-for`` (which waits for image topics) is refused;
- every message is deserialized as its recorded type (and must re-serialize to its
  size) before it is published; failures are not published and are counted per topic;
- a topic whose recorded messages cannot be read at all (the type in metadata.yaml and
  in the storage differ: rosbags then yields none) is reported.

Exit codes: 0 played; 2 refused before playing (bad options or bag, nothing to play,
``--require-images`` without images); 1 played, but a topic played no message although
it had some (all failed to deserialize, unreadable) or a ``--topics`` topic played none.
Ctrl-C stops cleanly (exit 0); a summary of what was published is printed at the end.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

NS = 1_000_000_000
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CDR_PADDING = 3  # a recorded CDR buffer may end with up to 3 bytes of alignment padding


class PlayerError(Exception):
    """A bag or an option the player cannot use (exit code 2)."""


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' (or 'sensor_msgs/Image') -> the rclpy message class."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ImportError(f"not a message type name: {msgtype!r}")
    module = importlib.import_module(f"{parts[0]}.{parts[1]}")
    try:
        return getattr(module, parts[2])
    except AttributeError:
        raise ImportError(f"{parts[0]}.{parts[1]} has no {parts[2]}") from None


@dataclass
class Topic:
    name: str
    msgtype: str
    connections: list
    latched: bool
    publisher: object = None
    cls: type | None = None

    @property
    def recorded(self) -> int:
        return sum(c.msgcount for c in self.connections)


def check_message(raw: bytes, cls) -> str | None:
    """Why ``raw`` is not a CDR message of type ``cls`` (None when it is).

    Deserializing alone accepts a longer message of another type (rclpy reads what the
    type needs and ignores the rest: an Odometry bag relabelled Imu "plays"), so the
    message must also serialize back to the recorded size (give or take end padding).
    """
    from rclpy.serialization import deserialize_message, serialize_message

    try:
        size = len(serialize_message(deserialize_message(raw, cls)))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not 0 <= len(raw) - size <= CDR_PADDING:
        return f"{len(raw)} bytes recorded, {size} as {cls.__name__} (another type?)"
    return None


def _recorded_latched(connection) -> bool:
    from rosbags.interfaces import QosDurability

    profiles = getattr(connection.ext, "offered_qos_profiles", None) or []
    return any(getattr(p, "durability", None) == QosDurability.TRANSIENT_LOCAL for p in profiles)


def open_bag(path: Path):
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise PlayerError(f"no bag at {path}")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:
        raise PlayerError(
            f"cannot open {path} as a ROS 2 bag (a rosbag2 folder with "
            f"metadata.yaml, or an .mcap file): {exc}"
        ) from exc
    return reader


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scal3r_play_bag",
        description="Replay a ROS 2 bag with /clock (a `ros2 bag play` replacement).",
    )
    p.add_argument("bag", type=Path, help="rosbag2 folder (mcap or sqlite3) or .mcap file")
    p.add_argument("-r", "--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument("-l", "--loop", action="store_true", help="play again from the start")
    p.add_argument(
        "--start-offset", type=float, default=0.0, help="start this many seconds into the bag"
    )
    p.add_argument(
        "--topics", nargs="+", default=None, metavar="TOPIC", help="play only these topics"
    )
    p.add_argument(
        "--qos",
        choices=("reliable", "best_effort"),
        default="reliable",
        help="reliability of the data publishers (default reliable)",
    )
    p.add_argument("--qos-depth", type=int, default=100, help="history depth of data topics")
    p.add_argument(
        "--clock",
        type=float,
        nargs="?",
        const=40.0,
        default=40.0,
        metavar="HZ",
        help="publish /clock at HZ between messages (default 40)",
    )
    p.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    p.add_argument(
        "--wait-for",
        nargs="*",
        default=None,
        metavar="TOPIC",
        help="wait until these topics have a subscriber (bare flag: every image "
        "topic) before playing",
    )
    p.add_argument(
        "--require-images",
        action="store_true",
        help="refuse (exit 2) a bag or --topics selection without a "
        "sensor_msgs/Image or CompressedImage topic (default: warn)",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=30.0,
        help="seconds --wait-for waits at most (then plays anyway)",
    )
    p.add_argument(
        "-d", "--delay", type=float, default=0.0, help="sleep this many seconds before playing"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    return p


class Player:
    def __init__(self, args, reader) -> None:
        self.args = args
        self.reader = reader
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()  # messages that do not deserialize as recorded
        self.first_failure: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.unreadable: dict[str, int] = {}  # topic -> recorded messages none of which read
        self.loops = 0
        self.clock_msgs = 0
        self.topics: dict[str, Topic] = {}
        self._select_topics()

    # ------------------------------------------------------------ setup
    def _select_topics(self) -> None:
        by_topic: dict[str, list] = {}
        for c in self.reader.connections:
            by_topic.setdefault(c.topic, []).append(c)
        wanted = self.args.topics
        if wanted:
            missing = [t for t in wanted if t not in by_topic]
            if missing:
                raise PlayerError(
                    f"topics not in the bag: {', '.join(missing)} (the bag has: "
                    f"{', '.join(sorted(by_topic))})"
                )
        for name, conns in sorted(by_topic.items()):
            if wanted and name not in wanted:
                continue
            if name == "/clock" and not self.args.no_clock:
                self.skipped[name] = "replaced by the player's own /clock"
                continue
            types = {c.msgtype for c in conns}
            if len(types) > 1:
                self.skipped[name] = f"several types {sorted(types)}"
                continue
            fmt = getattr(conns[0].ext, "serialization_format", "cdr")
            if fmt != "cdr":
                self.skipped[name] = f"serialization {fmt!r}, not cdr"
                continue
            latched = name == "/tf_static" or any(_recorded_latched(c) for c in conns)
            self.topics[name] = Topic(name, types.pop(), conns, latched)
        if not self.topics:
            why = "; ".join(f"{t}: {why}" for t, why in self.skipped.items())
            raise PlayerError(f"nothing to play: {why or 'empty bag'}")

    def create_publishers(self, node) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        data_qos = QoSProfile(
            depth=self.args.qos_depth,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE
            if self.args.qos == "reliable"
            else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.VOLATILE,
        )
        for name, topic in list(self.topics.items()):
            try:
                cls = message_class(topic.msgtype)
            except Exception as exc:  # not installed here: say so, play the rest
                self.skipped[name] = f"{topic.msgtype}: {type(exc).__name__}: {exc}"
                del self.topics[name]
                continue
            if (
                topic.recorded
                and next(self.reader.messages(connections=topic.connections), None) is None
            ):
                self.unreadable[name] = topic.recorded
                self.skipped[name] = (
                    f"the bag records {topic.recorded} {topic.msgtype} message(s) but none can "
                    "be read (its metadata and its storage disagree on the topic's type?)"
                )
                del self.topics[name]
                continue
            topic.cls = cls
            if topic.latched:
                n = sum(c.msgcount for c in topic.connections)
                qos = QoSProfile(
                    depth=max(1, min(n, 1000)),
                    history=HistoryPolicy.KEEP_LAST,
                    reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.TRANSIENT_LOCAL,
                )
            else:
                qos = data_qos
            topic.publisher = node.create_publisher(cls, name, qos)
        if not self.topics:
            raise PlayerError(
                "no topic of the bag can be played: "
                + "; ".join(f"{t}: {why}" for t, why in self.skipped.items())
            )
        self._check_images()

    def _check_images(self) -> None:
        """A mapping node needs images: say so before playing a bag without any."""
        if any(t.msgtype in IMAGE_TYPES for t in self.topics.values()):
            return
        played = ", ".join(f"{t.name} [{t.msgtype}]" for t in self.topics.values())
        what = "--topics selection" if self.args.topics else "bag"
        msg = (
            f"no image topic (sensor_msgs/msg/Image or CompressedImage) in the {what}; "
            f"playing: {played}: a mapping node gets no frame from it"
        )
        if self.args.require_images:
            raise PlayerError(msg + " (--require-images)")
        if self.args.wait_for is not None and not self.args.wait_for:
            raise PlayerError(
                msg + "; a bare --wait-for waits for image topics: name the topics to wait for"
            )
        print(f"[scal3r_play_bag] warning: {msg}", file=sys.stderr, flush=True)

    def _publish(self, topic: Topic, raw) -> None:
        """Publish one recorded message if it is what its topic says it is (else count it)."""
        raw = bytes(raw)
        why = check_message(raw, topic.cls) if topic.cls is not None else None
        if why is not None:
            self.failed[topic.name] += 1
            self.first_failure.setdefault(topic.name, why)
            return
        topic.publisher.publish(raw)
        self.counts[topic.name] += 1

    # ------------------------------------------------------------ playback
    def wait_for_subscribers(self) -> None:
        wanted = self.args.wait_for
        if wanted is None:
            return
        if not wanted:
            wanted = [t.name for t in self.topics.values() if t.msgtype in IMAGE_TYPES]
        unknown = [t for t in wanted if t not in self.topics and t != "/clock"]
        if unknown:
            raise PlayerError(f"--wait-for: not played: {', '.join(unknown)}")
        pubs = {t: (self.clock_pub if t == "/clock" else self.topics[t].publisher) for t in wanted}
        if any(p is None for p in pubs.values()):
            raise PlayerError("--wait-for /clock with --no-clock")
        deadline = time.monotonic() + self.args.wait_timeout
        while not self.stop.is_set():
            waiting = [t for t, p in pubs.items() if p.get_subscription_count() == 0]
            if not waiting:
                time.sleep(0.2)  # let discovery settle on the subscriber side too
                return
            if time.monotonic() > deadline:
                print(
                    f"[scal3r_play_bag] no subscriber on {', '.join(waiting)} after "
                    f"{self.args.wait_timeout:.0f} s; playing anyway",
                    file=sys.stderr,
                )
                return
            time.sleep(0.05)

    def _publish_clock(self, ns: int) -> None:
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock

        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=Time(sec=ns // NS, nanosec=ns % NS)))
            self.clock_msgs += 1

    def _sleep_until(self, wall_target: float, t_from: int, t_to: int, wall0: float) -> None:
        """Sleep to ``wall_target``, publishing /clock at the clock rate along the way."""
        period = (
            1.0 / self.args.clock if self.clock_pub is not None and self.args.clock > 0 else None
        )
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= wall_target:
                return
            if period is None:
                self.stop.wait(wall_target - now)
                continue
            self.stop.wait(min(period, wall_target - now))
            if time.monotonic() < wall_target:
                t_now = t_from + int((time.monotonic() - wall0) * self.args.rate * NS)
                if self._last_clock < t_now < t_to:
                    self._publish_clock(t_now)
                    self._last_clock = t_now

    def play(self, node) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self.clock_pub = None
        if not self.args.no_clock:
            self.clock_pub = node.create_publisher(
                Clock, "/clock", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            )
        self.create_publishers(node)
        start = self.reader.start_time + int(round(self.args.start_offset * NS))
        if start >= self.reader.end_time:
            raise PlayerError(
                f"--start-offset {self.args.start_offset} s is past the bag's "
                f"end ({self.reader.duration / NS:.3f} s)"
            )

        static = self.topics.get("/tf_static")
        if static is not None:  # latched, once, before anything else
            for _, _, raw in self.reader.messages(connections=static.connections):
                self._publish(static, raw)

        self.wait_for_subscribers()
        if self.args.delay > 0:
            self.stop.wait(self.args.delay)
        play_conns = [
            c for t in self.topics.values() if t.name != "/tf_static" for c in t.connections
        ]
        by_id = {c.id: self.topics[c.topic] for c in play_conns}
        total = sum(c.msgcount for c in play_conns)
        self.wall_start = time.monotonic()
        self.bag_span = 0
        progress_next = 0.0
        while not self.stop.is_set() and play_conns:
            wall0 = time.monotonic()
            t_first = None
            self._last_clock = -1
            sent = 0
            for conn, t, raw in self.reader.messages(connections=play_conns, start=start):
                if t_first is None:
                    t_first = t
                target = wall0 + (t - t_first) / NS / self.args.rate
                self._sleep_until(target, t_first, t, wall0)
                if self.stop.is_set():
                    break
                if t > self._last_clock:  # never backwards within one pass
                    self._publish_clock(t)
                    self._last_clock = t
                self._publish(by_id[conn.id], raw)
                sent += 1
                self.bag_span = max(self.bag_span, t - (t_first or t))
                if not self.args.quiet and time.monotonic() >= progress_next:
                    progress_next = time.monotonic() + 1.0
                    print(
                        f"\r[scal3r_play_bag] loop {self.loops + 1}: {sent}/{total} messages, "
                        f"bag time {(t - self.reader.start_time) / NS:8.3f} s",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
            if self.stop.is_set() or sent == 0:
                break
            self.loops += 1
            if not self.args.loop:
                break
        self.wall_s = time.monotonic() - self.wall_start
        if not self.args.quiet:
            print(file=sys.stderr)
        self.flush(1.0 if self.stop.is_set() else 5.0)

    def flush(self, seconds: float) -> None:
        """Wait (bounded) until reliable subscribers acknowledged everything, so the last
        messages are not lost when the process exits right after publishing them."""
        from rclpy.duration import Duration

        deadline = time.monotonic() + seconds
        pubs = [t.publisher for t in self.topics.values() if t.publisher is not None]
        for pub in [*pubs, self.clock_pub]:
            left = deadline - time.monotonic()
            if pub is None or left <= 0:
                continue
            pub.wait_for_all_acked(Duration(nanoseconds=int(left * NS)))
        time.sleep(0.1)  # best-effort writers: let the last samples leave

    def summary(self) -> str:
        lines = [
            f"[scal3r_play_bag] {'interrupted' if self.stop.is_set() else 'done'}: "
            f"{sum(self.counts.values())} messages on {len(self.counts)} topics, "
            f"{self.loops} complete pass(es), {getattr(self, 'wall_s', 0.0):.2f} s wall at "
            f"rate x{self.args.rate:g}, {self.clock_msgs} /clock messages"
        ]
        for name in sorted(self.topics):
            t = self.topics[name]
            failed = (
                f" ({self.failed[name]} not published: they do not deserialize as "
                f"{t.msgtype}; first: {self.first_failure[name]})"
                if self.failed[name]
                else ""
            )
            lines.append(
                f"  {name} [{t.msgtype}{', latched' if t.latched else ''}]: "
                f"{self.counts.get(name, 0)}{failed}"
            )
        for name, why in sorted(self.skipped.items()):
            lines.append(f"  {name}: not played ({why})")
        return "\n".join(lines)

    def problems(self) -> list[str]:
        """Why the playback failed its purpose (exit 1): topics that had messages but
        played none; after a complete pass, also a ``--topics`` topic that played none."""
        out = [
            f"{t}: {n} recorded message(s), none readable"
            for t, n in sorted(self.unreadable.items())
        ]
        out += [
            f"{t}: all {n} message(s) failed to deserialize as {self.topics[t].msgtype}"
            for t, n in sorted(self.failed.items())
            if n and not self.counts.get(t)
        ]
        if not self.stop.is_set():
            bad = {t.split(":")[0] for t in out}
            out += [
                f"{t}: requested with --topics, played no message"
                for t in self.args.topics or ()
                if not self.counts.get(t) and t not in bad
            ]
        return out


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if "--ros-args" in argv:  # everything after it is for rclpy (-r there is a remap)
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i:]
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be > 0")
    if args.start_offset < 0:
        parser.error("--start-offset must be >= 0")
    if args.clock is not None and args.clock < 0:
        parser.error("--clock HZ must be >= 0")

    try:
        reader = open_bag(args.bag)
    except PlayerError as exc:
        print(f"scal3r_play_bag: error: {exc}", file=sys.stderr)
        return 2

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    player = None
    rclpy.init(args=["scal3r_play_bag", *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("scal3r_play_bag")
    code = 0
    try:
        player = Player(args, reader)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: player.stop.set())
        player.play(node)
    except PlayerError as exc:
        print(f"scal3r_play_bag: error: {exc}", file=sys.stderr)
        code = 2
    finally:
        if player is not None and code == 0:
            print(player.summary(), flush=True)
            problems = player.problems()
            if problems:
                print("scal3r_play_bag: error: " + "; ".join(problems), file=sys.stderr)
                code = 1
        reader.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
