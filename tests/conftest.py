"""Shared fixtures: maps are built once per test session into a temporary cache."""

import pytest


@pytest.fixture(scope="session")
def map_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("map-cache")


@pytest.fixture(scope="session")
def grid_map(map_cache):
    from simgen.maps import resolve_map

    return resolve_map("grid", cache_dir=map_cache)
