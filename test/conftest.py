"""Session-wide test setup: markers' skip rules, an isolated ROS domain, and the shared
fixture ``drive`` (helpers for drives, engines and test data are in test/helpers.py)."""

import os
import random

import pytest

# A private DDS domain per test session, so parallel runs (or a running robot) never
# see each other's topics. Set before any test imports rclpy.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))

# One axis of the CPU kernel matrix (test/model/test_kernel_matrix.py): torch with oneDNN off.
if os.environ.get("SCAL3R_TEST_MKLDNN") == "0":
    import torch

    torch.backends.mkldnn.enabled = False


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def drive(request):
    """The module's synthetic drive, as its ``DRIVE = dict(n_frames=..., ...)`` names it."""
    from helpers import make_drive

    config = getattr(request.module, "DRIVE", None)
    if config is None:
        pytest.fail(f"{request.module.__name__} uses the drive fixture but sets no DRIVE")
    return make_drive(**config)
