"""ros2 launch scal3r_ros mapping.launch.py [config:=kitti] [image_topic:=/cam/image_raw]
    [checkpoint:=/path/scal3r.pt] [use_sim_time:=true] [rviz:=true] [bag:=/path/to/bag]
    [map_file:=~/.ros/scal3r_ros/monday/session] [session_mode:=localisation]

Starts the mapping node with a parameter file from share/scal3r_ros/config (a name such as
"default", "low_latency", "kitti", "synthetic", or a path), optionally RViz with the
project's view and `ros2 bag play --clock` for a recorded bag (then use_sim_time:=true).
"""

from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "scal3r_ros"
SIGTERM_TIMEOUT_S = 45  # > the default shutdown_window_wait (30 s) plus a save


def generate_launch_description() -> LaunchDescription:
    config = LaunchConfiguration("config")
    share_config = PathJoinSubstitution([FindPackageShare(PACKAGE), "config"])
    # a bare name means config/<name>.yaml of this package; anything with a "/" is a path
    params_file = PythonExpression(
        [
            "'",
            config,
            "' if '/' in '",
            config,
            "' else '",
            share_config,
            "/' + '",
            config,
            "' + '.yaml'",
        ]
    )
    args = [
        DeclareLaunchArgument(
            "config",
            default_value="default",
            description="parameter file: name in share/scal3r_ros/config or a path",
        ),
        DeclareLaunchArgument(
            "image_topic",
            default_value="/camera/image_raw",
            description="camera topic (sensor_msgs/Image)",
        ),
        DeclareLaunchArgument(
            "checkpoint",
            default_value="",
            description="scal3r.pt; empty: ~/.cache/scal3r_ros/scal3r.pt",
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="false",
            description="use /clock (true when replaying a bag)",
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz"),
        DeclareLaunchArgument(
            "bag",
            default_value="",
            description="play this bag with --clock (set use_sim_time:=true)",
        ),
        DeclareLaunchArgument(
            "map_file",
            default_value="",
            description="saved session to start in (a save's folder or its session/); "
            "empty: an empty map",
        ),
        DeclareLaunchArgument(
            "session_mode",
            default_value="mapping",
            description="in a loaded map: mapping (extend it) or localisation",
        ),
    ]
    node = Node(
        package=PACKAGE,
        executable="scal3r_mapping",
        name="scal3r_mapping",
        output="screen",
        emulate_tty=True,
        parameters=[
            params_file,
            {
                "use_sim_time": ParameterValue(
                    LaunchConfiguration("use_sim_time"), value_type=bool
                ),
                "checkpoint": LaunchConfiguration("checkpoint"),
                "map_file": LaunchConfiguration("map_file"),
                "session_mode": LaunchConfiguration("session_mode"),
            },
        ],
        remappings=[("/camera/image_raw", LaunchConfiguration("image_topic"))],
        # Ctrl-C: the node waits up to shutdown_window_wait (30 s) for the window in
        # progress, then saves; launch's default SIGTERM after 5 s would cut that short
        sigterm_timeout=str(SIGTERM_TIMEOUT_S),
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", PathJoinSubstitution([share_config, "scal3r.rviz"])],
        parameters=[
            {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}
        ],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    bag = ExecuteProcess(
        cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock"],
        output="screen",
        condition=IfCondition(PythonExpression(["'", LaunchConfiguration("bag"), "' != ''"])),
    )
    return LaunchDescription([*args, node, rviz, bag])
