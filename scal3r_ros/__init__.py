"""scal3r_ros: online 3D mapping with the Scal3R network, packaged as a ROS 2 node.

Layers (imports point downwards only): ``ros`` and ``tools`` use ``mapping``, which
uses ``model``. ``model`` and ``mapping`` never import ROS, so they run with torch and
numpy alone (GPU machines, notebooks, tests).
"""

__version__ = "0.1.0"

import os as _os

# OpenMP threads that wait for work sleep instead of spinning. Why: the node shares the CPU
# with the robot's other processes, and its two worker threads (network, placement) run
# torch CPU ops side by side; spinning waiters then steal the cores the other is computing
# on (a 200-frame oracle engine run on 2 cores beside a test run: 4.6-11.0 s with the default
# policy, 3.2 s passive, 15.0 s active). Read when torch loads OpenMP: set before torch is
# imported, and only when the user has not chosen.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
