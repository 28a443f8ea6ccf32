"""Named QoS profiles, so every publisher/subscriber states its contract once.

- Camera input: SensorDataQoS (best effort, small depth) by default, as camera drivers
  publish; "reliable" for bag players that publish reliably and must not lose frames.
- /tf: reliable, volatile, depth 100 (tf2_ros's TransformBroadcaster).
- /tf_static, ~/map, ~/path: reliable + transient local, so RViz or a planner started
  later still receives the last message (latched).
"""

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

TF = QoSProfile(
    depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
)
TF_STATIC = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
RELIABLE_OUTPUT = QoSProfile(
    depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
)


def input_profile(kind: str, depth: int) -> QoSProfile:
    """QoS of the image subscriptions ('sensor_data' or 'reliable')."""
    if kind == "sensor_data":
        profile = QoSProfile(
            **{
                k: getattr(qos_profile_sensor_data, k)
                for k in ("reliability", "durability", "history")
            },
            depth=depth,
        )
        return profile
    if kind == "reliable":
        return QoSProfile(
            depth=depth,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
    raise ValueError(f"unknown input QoS {kind!r}")


SENSOR_DEPTH = 200  # odometry, GNSS, IMU: a 100-200 Hz IMU between two executor turns


def sensor_profile(kind: str) -> QoSProfile:
    """QoS of the odometry, GNSS and IMU subscriptions: the images' kind (``input_qos``;
    best effort by default, which matches best-effort and reliable publishers)."""
    return input_profile(kind, SENSOR_DEPTH)
