"""The Scal3R network in PyTorch (ROS-free): presets, blocks, GCM, heads, checkpoints."""
