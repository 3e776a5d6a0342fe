"""Shared scenes for the sensor tests: a small generated grid (one block, 2 x 2 junctions) and hand-placed agents."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from simgen.types import (
    AgentMeta,
    AgentTrajectory,
    AgentType,
    LaneKind,
    RoadMap,
    SceneState,
    TrafficLights,
)

# (offset ahead of the AV along its lane m, lateral offset to the left m, length, width, height, type)
AHEAD_CAR = (14.0, 0.0, 4.5, 2.0, 1.6, AgentType.VEHICLE)
TRUCK_BEHIND = (-16.0, 0.0, 10.0, 2.5, 3.4, AgentType.VEHICLE)
PEDESTRIAN_LEFT = (6.0, 6.5, 0.6, 0.6, 1.8, AgentType.PEDESTRIAN)


@pytest.fixture(scope="session")
def small_grid(map_cache) -> RoadMap:
    from simgen.maps import resolve_map

    return resolve_map("grid", cache_dir=map_cache, blocks=1).roadmap


def av_lane_pose(roadmap: RoadMap) -> tuple[np.ndarray, float]:
    """A point 40% along the longest straight driving lane outside junctions, and the lane's heading."""
    kind, junction = roadmap.lane_kind.numpy(), roadmap.lane_is_junction.numpy()
    lanes = np.flatnonzero((kind == LaneKind.DRIVING) & ~junction)
    lane = lanes[np.argmax(roadmap.lane_length_m.numpy()[lanes])]
    xy = roadmap.lane_xy[lane][roadmap.lane_point_valid[lane]].double().numpy()
    d = xy[-1] - xy[0]
    return xy[0] + 0.4 * d, math.atan2(d[1], d[0])


def make_scene(roadmap: RoadMap, others=(AHEAD_CAR, TRUCK_BEHIND, PEDESTRIAN_LEFT), steps: int = 2,
               light_state: int = 3, av: tuple[np.ndarray, float] | None = None) -> SceneState:
    """The AV (slot 0, 4.5 x 2 x 1.5 m) at ``av`` (xy, heading; default ``av_lane_pose``) driving 5 m/s, and
    ``others`` placed relative to it (slots 1..), every light slot of the map valid with ``light_state``."""
    av_xy, heading = av if av is not None else av_lane_pose(roadmap)
    forward, left = np.array([math.cos(heading), math.sin(heading)]), np.array([-math.sin(heading), math.cos(heading)])
    rows = [(0.0, 0.0, 4.5, 2.0, 1.5, AgentType.VEHICLE), *others]
    traj = AgentTrajectory.zeros(len(rows), steps)
    f = {k: getattr(traj, k).clone() for k in AgentTrajectory.tensor_fields()}
    for a, (ahead, lateral, length, width, height, _) in enumerate(rows):
        for k in range(steps):
            moved = 0.5 * k if a == 0 else 0.0
            xy = av_xy + (ahead + moved) * forward + lateral * left
            f["x"][a, k], f["y"][a, k], f["heading"][a, k] = float(xy[0]), float(xy[1]), heading
            f["length"][a, k], f["width"][a, k], f["height"][a, k] = length, width, height
        f["valid"][a] = True
    f["vel_x"][0], f["vel_y"][0] = 5 * math.cos(heading), 5 * math.sin(heading)
    meta = AgentMeta(object_id=torch.arange(len(rows)) + 100,
                     agent_type=torch.tensor([r[5] for r in rows], dtype=torch.int8),
                     is_av=torch.arange(len(rows)) == 0)
    g = roadmap.num_signals
    lights = TrafficLights(
        signal_id=torch.arange(g, dtype=torch.int32)[:, None].expand(g, steps).clone(),
        lane_id=roadmap.signal_lane[:, None].expand(g, steps).clone(),
        stop_x=roadmap.signal_stop_xy[:, 0:1].expand(g, steps).clone(),
        stop_y=roadmap.signal_stop_xy[:, 1:2].expand(g, steps).clone(),
        state=torch.full((g, steps), light_state, dtype=torch.int8), valid=torch.ones(g, steps, dtype=torch.bool))
    return SceneState(AgentTrajectory(**f), meta, lights, step=steps - 1, map_name=roadmap.name).validate()


def quiet(spec):
    """A lidar spec without ray drop and range noise (for exact comparisons)."""
    return replace(spec, ray_drop_probability=0.0, range_noise_std_m=0.0)
