"""scal3r_ros: online 3D mapping with the Scal3R network, packaged as a ROS 2 node.

Layers (imports point downwards only): ``ros`` and ``tools`` use ``mapping``, which
uses ``model``. ``model`` and ``mapping`` never import ROS, so they run with torch and
numpy alone (GPU machines, notebooks, tests).
"""

__version__ = "0.1.0"
