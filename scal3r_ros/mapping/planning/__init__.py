"""Planner outputs computed from the map: metric scale, sensor-frame clouds, occupancy grid."""
