"""``python -m scal3r_ros.tools.bench``: the `scal3r_bench` command."""

import sys

from scal3r_ros.tools.bench import main

sys.exit(main())
