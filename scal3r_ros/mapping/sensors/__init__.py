"""What the robot already knows, as measurements the pose graph can use (no ROS).

``stamped_poses`` interpolates an odometry stream at image stamps, ``gnss`` turns fixes into
local ENU positions with sigmas, ``gravity`` levels the map from accelerometer samples.
"""
