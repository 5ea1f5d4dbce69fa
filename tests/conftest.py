"""Shared fixtures."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread, and do not fight other processes for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gym_package(tmp_path_factory):
    """The name of a module written for the tests (tests.fakes.GYM_PACKAGE_SOURCE) and importable here and in
    subprocesses (sys.path, PYTHONPATH); importing it registers RlTest/Corridor-v0, RlTest/Catch-v0 and
    RlTest/DictObs-v0, so it works as a user's gym_packages entry."""
    from tests.fakes import GYM_PACKAGE, GYM_PACKAGE_SOURCE

    root = tmp_path_factory.mktemp("gym_package")
    (root / f"{GYM_PACKAGE}.py").write_text(GYM_PACKAGE_SOURCE)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
        yield GYM_PACKAGE


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray with 2 CPUs for a test module; the module's tests are skipped without the distributed extra."""
    from tests.support import NO_RAY
    ray = pytest.importorskip("ray", reason=NO_RAY)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()
