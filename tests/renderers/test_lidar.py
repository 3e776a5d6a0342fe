"""Lidar: range-image layout on a synthetic wall, Embree against the slow twin, determinism, points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from simgen.renderers.lidar import lidar_sweep
from simgen.renderers.lidar_reference import reference_returns
from simgen.renderers.rig import load_rig
from simgen.renderers.scene3d import (
    STATIC_INSTANCE_BASE,
    Mesh,
    SemanticClass,
    StaticScene,
    Tracer,
    tracer_for,
)

from simgen.types import AgentMeta, AgentTrajectory, SceneState, TrafficLights
from tests.renderers.conftest import make_scene, quiet

WALL_X_M, WALL_BOTTOM_M, WALL_TOP_M, LIDAR_Z_M = 10.0, -5.0, 2.0, 2.2


@pytest.fixture(scope="module")
def top():
    return quiet(load_rig("default").lidars[0])


def lone_av_state() -> SceneState:
    """Only the AV, at the world origin, heading +x (east)."""
    traj = AgentTrajectory.zeros(1, 1)
    traj = traj.replace(length=torch.full((1, 1), 4.5), width=torch.full((1, 1), 2.0),
                        height=torch.full((1, 1), 1.5), valid=torch.ones(1, 1, dtype=torch.bool))
    lights = TrafficLights(*(torch.zeros(0, 1, dtype=d) for d in (torch.int32, torch.int32, torch.float32,
                                                                  torch.float32, torch.int8, torch.bool)))
    meta = AgentMeta(object_id=torch.tensor([0]), agent_type=torch.tensor([1], dtype=torch.int8),
                     is_av=torch.tensor([True]))
    return SceneState(traj, meta, lights, step=0)


def wall_frame():
    """A wall at x = 10 m spanning y in [0, 20] m (left of the AV only) and z in [-5, 2] m, nothing else."""
    vertices = [(WALL_X_M, 0.0, WALL_BOTTOM_M), (WALL_X_M, 20.0, WALL_BOTTOM_M), (WALL_X_M, 20.0, WALL_TOP_M),
                (WALL_X_M, 0.0, WALL_TOP_M)]
    wall = Mesh.of(vertices, [(0, 1, 2), (0, 2, 3)], SemanticClass.BUILDING, instance=100_000)
    static = StaticScene(wall, np.zeros(2), np.zeros((0, 3), np.float32), np.zeros(0, np.int32), 0)
    return Tracer(static).frame(lone_av_state(), 0)


def test_range_image_layout_on_wall(top):
    sweep = lidar_sweep(wall_frame(), top, np.zeros(4))
    image = sweep.range_image
    assert image.shape == (64, 2650, 4) and image.dtype == np.float32
    incl = np.radians(top.inclinations_deg)
    azimuth = math.pi - 2 * math.pi * (np.arange(2650) + 0.5) / 2650
    # expected: beams below the wall top (it is 0.2 m under the lidar) hit where the azimuth looks at y in (0, 20)
    hit_z = LIDAR_Z_M + np.tan(incl)[:, None] * WALL_X_M / np.cos(azimuth)[None, :]
    hit_y = WALL_X_M * np.tan(azimuth)[None, :].repeat(64, 0)
    expected = ((np.cos(azimuth) > 0)[None] & (hit_y > 0.01) & (hit_y < 19.99) & (hit_z > WALL_BOTTOM_M)
                & (hit_z < WALL_TOP_M - 0.01))
    ambiguous = ~expected & (np.cos(azimuth) > 0)[None] & (hit_y > -0.01) & (hit_y < 20.01) & (hit_z > -0.01) \
        & (hit_z < WALL_TOP_M + 0.01)
    valid = image[..., 3] == 1
    assert np.array_equal(valid[~ambiguous], expected[~ambiguous])
    assert not valid[0].any() and valid[-1].any(), "row 0 must be the top beam (it passes over the wall)"
    centre = 2650 // 2
    assert valid[-1, centre - 50] and not valid[-1, centre + 50], "columns left of the middle look left"
    want = WALL_X_M / (np.cos(incl)[:, None] * np.cos(azimuth)[None, :])
    assert np.allclose(image[..., 0][valid], want[valid], atol=2e-3)
    assert np.all(image[~valid][:, :3] == -1.0) and np.all(image[~valid][:, 3] == 0.0)
    first = np.flatnonzero(valid[-1])
    assert np.all(np.diff(image[-1, first, 0]) < 0), "range falls towards the middle column (azimuth order)"


def test_points_match_range_image(small_grid, top):
    frame = tracer_for(small_grid).frame(make_scene(small_grid), 1)
    av_pose = make_scene(small_grid).av_pose()[1].numpy()
    sweep = lidar_sweep(frame, top, av_pose)
    image = sweep.range_image
    assert len(sweep.xyz) == int((image[..., 3] == 1).sum())
    assert np.allclose(np.linalg.norm(sweep.xyz, axis=1), image[sweep.row, sweep.col, 0], rtol=1e-5)
    assert 0.8 < (image[..., 3] == 1).mean() <= 1.0
    world = sweep.xyz_world()
    road = sweep.semantic == SemanticClass.ROAD
    assert np.abs(world[road, 2]).max() < 0.05, "road returns lie on the z = 0 road surface"


def test_embree_agrees_with_slow_twin(small_grid, top):
    state = make_scene(small_grid)
    frame = tracer_for(small_grid).frame(state, 1)
    av_pose = state.av_pose()[1].numpy()
    sweep = lidar_sweep(frame, top, av_pose)
    rng = np.random.default_rng(0)
    valid = sweep.range_image[..., 3] == 1
    pick = rng.choice(np.flatnonzero((sweep.instance > 0) & (sweep.instance < STATIC_INSTANCE_BASE)), 60)
    rows = np.concatenate([rng.integers(0, 64, 140), sweep.row[pick]])
    cols = np.concatenate([rng.integers(0, 2650, 140), sweep.col[pick]])
    range_m, semantic, instance = reference_returns(frame, top, sweep.world_from_lidar, rows, cols)
    fast = sweep.range_image[rows, cols, 0]
    assert np.array_equal(valid[rows, cols], range_m > 0)
    assert np.abs(fast - range_m).max() < 0.01
    both = range_m > 0
    assert (semantic[both] == sweep_semantic(sweep, rows, cols)[both]).mean() > 0.97
    assert set(instance[-60:]) == set(sweep.instance[pick]), "the agents' rays hit the same agents"


def sweep_semantic(sweep, rows, cols) -> np.ndarray:
    lookup = np.zeros(sweep.range_image.shape[:2], np.uint8)
    lookup[sweep.row, sweep.col] = sweep.semantic
    return lookup[rows, cols]


def test_sweep_is_deterministic_under_seed(small_grid):
    spec = load_rig("default").lidars[0]  # with its ray drop and range noise
    state = make_scene(small_grid)
    tracer = tracer_for(small_grid)
    pose = state.av_pose()[1].numpy()
    a = lidar_sweep(tracer.frame(state, 1), spec, pose, seed=7, step=1)
    b = lidar_sweep(tracer.frame(state, 1), spec, pose, seed=7, step=1)
    c = lidar_sweep(tracer.frame(state, 1), spec, pose, seed=8, step=1)
    for key, value in a.arrays().items():
        assert np.array_equal(value, b.arrays()[key]), key
    assert not np.array_equal(a.range_image, c.range_image)
    noise = a.range_image[..., 0] - c.range_image[..., 0]
    both = (a.range_image[..., 3] == 1) & (c.range_image[..., 3] == 1)
    assert 0.01 < np.std(noise[both]) < 0.05  # two draws of 2 cm noise differ by about 2.8 cm


def test_agent_ray_culling_loses_no_return(small_grid, top, monkeypatch):
    """The agents' pass skips rays that cannot reach an agent; sending every ray gives the same sweep."""
    from simgen.renderers import lidar

    others = [(ahead, lateral, 4.5, 2.0, 1.6, 1) for ahead, lateral in ((4.0, 3.5), (9.0, -3.0), (-6.0, 4.0))]
    state = make_scene(small_grid, others=[*others, (25.0, 0.0, 12.0, 2.5, 3.4, 1), (3.0, 6.5, 0.6, 0.6, 1.8, 2)])
    frame = tracer_for(small_grid).frame(state, 1)
    pose = state.av_pose()[1].numpy()
    culled = lidar_sweep(frame, top, pose)
    monkeypatch.setattr(lidar, "_agent_near_t", lambda *args: None)
    full = lidar_sweep(frame, top, pose)
    assert ((culled.instance > 0) & (culled.instance < STATIC_INSTANCE_BASE)).sum() > 1000
    for key, value in culled.arrays().items():
        assert np.array_equal(value, full.arrays()[key]), key
