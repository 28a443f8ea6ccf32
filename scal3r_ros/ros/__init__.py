"""The ROS 2 adapter: node, QoS profiles, message conversions, TF, services."""
