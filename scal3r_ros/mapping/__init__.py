"""The streaming mapping engine (ROS-free): windows, GCS state, Sim(3) alignment,
loop closure, pose graph, map store and export."""
