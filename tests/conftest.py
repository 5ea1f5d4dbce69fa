"""Shared fixtures."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread, and do not fight other processes for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray with 2 CPUs for a test module; the module's tests are skipped without the distributed extra."""
    from tests.support import NO_RAY
    ray = pytest.importorskip("ray", reason=NO_RAY)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()
