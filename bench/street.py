"""A street scene for the sensor benchmarks: a generated SUMO grid, the AV mid-block, agents on the lanes around it.

    roadmap, state = street_scene(blocks=4, agents=40)

The AV (slot 0) stands 40% along the driving lane closest to the map's centre, heading along it.
Other agents stand on driving lanes (vehicles: 85% cars, 15% trucks and buses) and sidewalks
(pedestrians, cyclists) within 60 m of it and 5 m apart, drawn under ``seed`` (fewer if they do not
fit). One step, every light slot GO.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
import torch

from simgen.maps import resolve_map
from simgen.types import (
    AgentMeta,
    AgentTrajectory,
    AgentType,
    LaneKind,
    RoadMap,
    SceneState,
    TrafficLights,
)


def street_scene(blocks: int = 4, agents: int = 40, seed: int = 0) -> tuple[RoadMap, SceneState]:
    roadmap = resolve_map("grid", blocks=blocks).roadmap
    rng = np.random.default_rng(seed)
    kind, junction = roadmap.lane_kind.numpy(), roadmap.lane_is_junction.numpy()
    lines = [xy[v].astype(np.float64) for xy, v in zip(roadmap.lane_xy.numpy(), roadmap.lane_point_valid.numpy())]
    centre = roadmap.bounds.double().numpy().reshape(2, 2).mean(0)
    driving = [i for i in np.flatnonzero((kind == LaneKind.DRIVING) & ~junction) if len(lines[i]) >= 2]
    av_lane = min(driving, key=lambda i: np.linalg.norm(lines[i].mean(0) - centre))
    rows = [(*_along(lines[av_lane], 0.4), 4.6, 2.0, 1.5, AgentType.VEHICLE)]
    av_xy = np.array(rows[0][:2])
    av_point = shapely.Point(av_xy)
    near = [i for i in range(len(lines)) if len(lines[i]) >= 2 and not junction[i]
            and kind[i] in (LaneKind.DRIVING, LaneKind.SIDEWALK)
            and shapely.LineString(lines[i]).distance(av_point) < 50]
    for _ in range(100 * agents):
        if len(rows) > agents:
            break
        lane = near[rng.integers(len(near))]
        x, y, heading = _along(lines[lane], rng.uniform(0.05, 0.95))
        if min(math.hypot(x - r[0], y - r[1]) for r in rows) < 5 or math.hypot(x - av_xy[0], y - av_xy[1]) > 60:
            continue
        if kind[lane] == LaneKind.SIDEWALK:
            size, agent_type = (((0.6, 0.6, 1.75), AgentType.PEDESTRIAN) if rng.random() < 0.7
                                else ((1.7, 0.65, 1.7), AgentType.CYCLIST))
        else:
            size, agent_type = ((12.0, 2.55, 3.2) if rng.random() < 0.15 else (4.6, 1.9, 1.5)), AgentType.VEHICLE
        rows.append((x, y, heading, *size, agent_type))
    return roadmap, _state(roadmap, rows)


def _along(line: np.ndarray, fraction: float) -> tuple[float, float, float]:
    seg = np.diff(line, axis=0)
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(seg, axis=1))])
    s = fraction * cum[-1]
    k = min(int(np.searchsorted(cum, s, side="right")) - 1, len(seg) - 1)
    t = (s - cum[k]) / max(cum[k + 1] - cum[k], 1e-9)
    x, y = line[k] + t * seg[k]
    return float(x), float(y), math.atan2(seg[k][1], seg[k][0])


def _state(roadmap: RoadMap, rows: list[tuple]) -> SceneState:
    n = len(rows)
    values = {name: torch.tensor([[float(r[i])] for r in rows]) for i, name in
              enumerate(("x", "y", "heading", "length", "width", "height"))}
    traj = AgentTrajectory.zeros(n, 1).replace(**values, valid=torch.ones(n, 1, dtype=torch.bool))
    meta = AgentMeta(object_id=torch.arange(n), agent_type=torch.tensor([int(r[6]) for r in rows], dtype=torch.int8),
                     is_av=torch.arange(n) == 0)
    g = roadmap.num_signals
    lights = TrafficLights(signal_id=torch.arange(g, dtype=torch.int32)[:, None], lane_id=roadmap.signal_lane[:, None],
                           stop_x=roadmap.signal_stop_xy[:, :1], stop_y=roadmap.signal_stop_xy[:, 1:],
                           state=torch.full((g, 1), 3, dtype=torch.int8), valid=torch.ones(g, 1, dtype=torch.bool))
    return SceneState(traj, meta, lights, step=0, map_name=roadmap.name).validate()
