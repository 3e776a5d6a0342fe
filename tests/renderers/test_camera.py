"""Cameras: lidar/camera geometry agree, agents land in the right camera with their instance id, weather and
time of day change only the shading, and renders are deterministic under a seed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from simgen.renderers.camera import (
    Conditions,
    parse_time_of_day,
    render_cameras,
    sun_direction,
)
from simgen.renderers.lidar import lidar_sweep
from simgen.renderers.rig import load_rig
from simgen.renderers.scene3d import AGENT_INSTANCE_BASE, SemanticClass, tracer_for

from tests.renderers.conftest import make_scene, quiet

STEP = 1


@pytest.fixture(scope="module")
def scene(small_grid):
    state = make_scene(small_grid)
    return tracer_for(small_grid).frame(state, STEP), state, state.av_pose()[STEP].numpy()


@pytest.fixture(scope="module")
def rig():
    return load_rig("default")


@pytest.fixture(scope="module")
def clear(scene, rig):
    frame, _, av_pose = scene
    return render_cameras(frame, rig.cameras, av_pose, Conditions("clear", "12:00"), seed=3, step=STEP)


def camera_from_world(images, points_world: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(images.world_from_camera)
    return points_world @ inverse[:3, :3].T + inverse[:3, 3]


def test_lidar_points_project_onto_camera_depth(scene, rig):
    """Every lidar return lies on the camera's depth surface: within one pixel of its projection, some point
    has its depth (within 1%). The cameras sit at the lidar's origin so that no parallax hides a return."""
    frame, _, av_pose = scene
    lidar = quiet(rig.lidars[0])
    cameras = tuple(replace(cam, mount=replace(cam.mount, xyz_m=lidar.mount.xyz_m)) for cam in rig.cameras)
    sweep = lidar_sweep(frame, lidar, av_pose)
    points = sweep.xyz_world()
    checked = 0
    for name, images in render_cameras(frame, cameras, av_pose).items():
        p = camera_from_world(images, points)
        k = images.intrinsics
        h, w = images.depth_m.shape
        z = p[:, 2]
        u, v = k[0, 0] * p[:, 0] / np.maximum(z, 1e-6) + k[0, 2], k[1, 1] * p[:, 1] / np.maximum(z, 1e-6) + k[1, 2]
        inside = (z > 2.0) & (u >= 1) & (u < w - 1) & (v >= 1) & (v < h - 1)
        cols, rows, z = np.floor(u[inside]).astype(int), np.floor(v[inside]).astype(int), z[inside]
        near = np.stack([images.depth_m[rows + dr, cols + dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1)], -1)
        agree = (z >= 0.99 * near.min(-1)) & (z <= 1.01 * near.max(-1))
        assert agree.mean() > 0.995, f"{name}: only {agree.mean():.4f} of lidar points match the depth image"
        checked += inside.sum()
    assert checked > 0.5 * len(points), "the eight cameras see most of the lidar's returns"


@pytest.mark.parametrize("slot, seen_by, not_seen_by", [(1, "front", "rear"), (2, "rear", "front"),
                                                         (3, "front_left", "rear_right")])
def test_agent_in_lidar_and_right_camera_with_instance(scene, rig, clear, slot, seen_by, not_seen_by):
    frame, state, av_pose = scene
    instance = AGENT_INSTANCE_BASE + slot
    t = state.traj
    centre = np.array([float(t.x[slot, STEP]), float(t.y[slot, STEP]), float(t.height[slot, STEP]) / 2])
    images = clear[seen_by]
    p = camera_from_world(images, centre[None])[0]
    k = images.intrinsics
    u, v = int(k[0, 0] * p[0] / p[2] + k[0, 2]), int(k[1, 1] * p[1] / p[2] + k[1, 2])
    window = images.instance[max(v - 3, 0):v + 4, max(u - 3, 0):u + 4]
    assert (window == instance).mean() > 0.5, f"the agent's box centre projects onto its own pixels in {seen_by}"
    assert not (clear[not_seen_by].instance == instance).any()
    sweep = lidar_sweep(frame, quiet(rig.lidars[0]), av_pose)
    mine = sweep.xyz_world()[sweep.instance == instance]
    assert len(mine) > 20
    heading = float(t.heading[slot, STEP])
    offset = mine[:, :2] - centre[:2]
    along = offset @ np.array([np.cos(heading), np.sin(heading)])
    across = offset @ np.array([-np.sin(heading), np.cos(heading)])
    margin = 0.05
    assert np.all(np.abs(along) <= float(t.length[slot, STEP]) / 2 + margin)
    assert np.all(np.abs(across) <= float(t.width[slot, STEP]) / 2 + margin)
    assert np.all((mine[:, 2] >= -margin) & (mine[:, 2] <= float(t.height[slot, STEP]) + margin))


def test_weather_and_time_change_only_shading(scene, rig, clear):
    frame, _, av_pose = scene
    for conditions in (Conditions("rain", "12:00"), Conditions("clear", "22:30"), Conditions("fog", "07:00")):
        other = render_cameras(frame, rig.cameras, av_pose, conditions, seed=3, step=STEP)
        for name, images in clear.items():
            assert np.array_equal(images.depth_m, other[name].depth_m), (conditions, name)
            assert np.array_equal(images.semantic, other[name].semantic), (conditions, name)
            assert np.array_equal(images.instance, other[name].instance), (conditions, name)
            assert np.abs(images.rgb.astype(int) - other[name].rgb).mean() > 5, (conditions, name)
    night = render_cameras(frame, rig.cameras, av_pose, Conditions("clear", "23:00"), seed=3, step=STEP)
    assert night["front"].rgb.mean() < 0.6 * clear["front"].rgb.mean(), "night is darker"


def test_images_are_consistent(clear):
    front = clear["front"]
    assert front.rgb.shape == (320, 480, 3) and front.rgb.dtype == np.uint8
    sky = front.semantic == SemanticClass.NONE
    assert np.all(front.depth_m[sky] == 0) and np.all(front.depth_m[~sky] > 0)
    assert np.all(front.instance[sky] == 0)
    road = front.semantic == SemanticClass.ROAD
    assert road[-40:].mean() > 0.3, "the road fills the bottom of the front view"
    blue = front.rgb[:40][sky[:40]].astype(int)
    assert len(blue) and (blue[:, 2] > blue[:, 0]).all(), "a clear midday sky is blue"


def test_rendering_is_deterministic_under_seed(scene, rig):
    frame, _, av_pose = scene
    cams = rig.cameras[:2]
    rain = Conditions("rain", "16:00")
    a = render_cameras(frame, cams, av_pose, rain, seed=5, step=STEP)
    b = render_cameras(frame, cams, av_pose, rain, seed=5, step=STEP)
    c = render_cameras(frame, cams, av_pose, rain, seed=6, step=STEP)
    assert all(np.array_equal(a[n].rgb, b[n].rgb) for n in a)
    assert not np.array_equal(a["front"].rgb, c["front"].rgb), "rain streaks follow the seed"


def test_time_of_day_and_sun():
    assert parse_time_of_day("07:30") == 7.5
    for bad in ("25:00", "7h", "12:60", ""):
        with pytest.raises(ValueError, match="HH:MM"):
            Conditions("clear", bad)
    with pytest.raises(ValueError, match="clear, rain, fog"):
        Conditions("snow")
    noon, morning, midnight = sun_direction(12.0), sun_direction(8.0), sun_direction(0.0)
    assert noon[2] > 0.8 and noon[1] < 0, "the noon sun is high in the south"
    assert morning[0] > 0, "the morning sun is in the east"
    assert midnight[2] < 0


def test_agent_pixel_culling_loses_nothing(scene, rig, clear, monkeypatch):
    """Only pixels that can see an agent query the agents' BVH; sending every pixel gives the same images."""
    from simgen.renderers import camera

    frame, _, av_pose = scene
    monkeypatch.setattr(camera, "_agent_near_depth", lambda *args: None)
    full = render_cameras(frame, rig.cameras, av_pose, Conditions("clear", "12:00"), seed=3, step=STEP)
    assert sum((images.instance == AGENT_INSTANCE_BASE + 1).sum() for images in full.values()) > 100
    for name, images in clear.items():
        for key in ("depth_m", "semantic", "instance", "rgb"):
            assert np.array_equal(getattr(images, key), getattr(full[name], key)), (name, key)
