"""Stand-in of `launch_ros` for tests."""
