"""Shared fixtures: maps are built once per test session into a temporary cache."""

import pytest


@pytest.fixture(scope="session")
def map_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("map-cache")


@pytest.fixture(scope="session")
def grid_map(map_cache):
    from simgen.maps import resolve_map

    return resolve_map("grid", cache_dir=map_cache)


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    """Tests work on small tensors; one intra-op thread avoids hand-off overhead on 2 cores."""
    import torch

    torch.set_num_threads(1)
