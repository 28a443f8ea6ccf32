"""Fixtures of the tool tests."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """The tiny network is fast on one thread; two OpenMP threads on a shared 2-core
    machine can be ten times slower (the bench tests assert no timings, only structure
    and the figures' consistency)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
