"""idm_route drives A->B on a signalised grid without collisions or red-light crossings; the idm world is
deterministic under its seed and keeps its vehicles on the road."""

import collections
import math

import pytest
import shapely
import torch

from simgen.agents import PolicyContext, make_policy
from simgen.agents.lanes import PathBatch, lane_polyline, path_polyline
from simgen.sim.rollout import closed_loop
from simgen.types import AgentMeta, AgentTrajectory, AgentType, LaneKind, LightState, SceneState, TrafficLights

HISTORY = 11


def farthest_route(roadmap, start: int, max_length_m: float = 300.0) -> list[int]:
    """Breadth-first over successors and lane changes to the last road lane reached, cut after
    ``max_length_m`` at a road lane."""
    succ = collections.defaultdict(list)
    for a, b in roadmap.lane_succ.tolist():
        succ[a].append(b)
    parent = {start: None}
    queue, order = collections.deque([start]), []
    while queue:
        a = queue.popleft()
        order.append(a)
        for b in succ[a] + [n for n in roadmap.lane_neighbors[a].tolist() if n >= 0]:
            if b not in parent:
                parent[b] = a
                queue.append(b)
    path = [next(l for l in reversed(order) if not roadmap.lane_is_junction[l])]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    path, total = path[::-1], 0.0
    for k, lane in enumerate(path):
        total += float(roadmap.lane_length_m[lane])
        if total > max_length_m and not roadmap.lane_is_junction[lane]:
            return path[:k + 1]
    return path


def scene_on_lanes(roadmap, placements, steps):
    """A scene whose rows stand on the given (lane, fraction along, speed m/s) for HISTORY steps."""
    A, T = len(placements), HISTORY + steps
    f = {k: torch.zeros(A, T) for k in AgentTrajectory.tensor_fields() if k != "valid"}
    valid = torch.zeros(A, T, dtype=torch.bool)
    for row, (lane, frac, speed) in enumerate(placements):
        xy = lane_polyline(roadmap, lane)
        p = xy[0] + (xy[-1] - xy[0]) * frac
        h = math.atan2(float(xy[-1, 1] - xy[0, 1]), float(xy[-1, 0] - xy[0, 0]))
        for key, value in dict(x=p[0], y=p[1], heading=h, vel_x=speed * math.cos(h), vel_y=speed * math.sin(h),
                               length=4.5, width=1.9, height=1.5).items():
            f[key][row, :HISTORY] = float(value)
        valid[row, :HISTORY] = True
    meta = AgentMeta(object_id=torch.arange(A), agent_type=torch.full((A,), int(AgentType.VEHICLE), dtype=torch.int8),
                     is_av=torch.arange(A) == 0)
    G = roadmap.num_signals
    shape = (G, T)
    lights = TrafficLights(
        signal_id=torch.arange(G, dtype=torch.int32)[:, None].expand(shape).clone(),
        lane_id=roadmap.signal_lane[:, None].expand(shape).clone(),
        stop_x=roadmap.signal_stop_xy[:, :1].expand(shape).clone(),
        stop_y=roadmap.signal_stop_xy[:, 1:].expand(shape).clone(),
        state=torch.where(torch.arange(T) < HISTORY, roadmap.signal_state_at(0)[:, None], 0).to(torch.int8),
        valid=(torch.arange(T) < HISTORY).expand(shape).clone())
    return SceneState(AgentTrajectory(**f, valid=valid), meta, lights, step=HISTORY - 1).validate()


def box(traj, row, t):
    x, y, h = float(traj.x[row, t]), float(traj.y[row, t]), float(traj.heading[row, t])
    l, w = float(traj.length[row, t]) / 2, float(traj.width[row, t]) / 2
    c, s = math.cos(h), math.sin(h)
    return shapely.Polygon([(x + c * dx - s * dy, y + s * dx + c * dy) for dx, dy in
                            ((l, w), (-l, w), (-l, -w), (l, -w))])


@pytest.fixture(scope="module")
def grid_run(grid_map):
    roadmap = grid_map.roadmap
    road = [i for i in range(roadmap.num_lanes) if roadmap.lane_kind[i] == LaneKind.DRIVING
            and not roadmap.lane_is_junction[i] and roadmap.lane_length_m[i] > 60]
    route = farthest_route(roadmap, road[0])
    g = torch.Generator().manual_seed(3)
    others = [road[int(i)] for i in torch.randperm(len(road), generator=g)[:24]]
    placements = [(route[0], 0.05, 5.0), (route[0], 0.6, 3.0)] + [(lane, 0.3, 8.0) for lane in others]
    steps = 500
    scene = scene_on_lanes(roadmap, placements, steps)
    common = dict(roadmap=roadmap, seed=0, route_lanes=torch.tensor(route), radius_m=1e9)
    av = make_policy("idm_route", PolicyContext(role="av", **common))
    world = make_policy("idm", PolicyContext(role="world", **common))
    final = closed_loop(scene, av, world, steps, torch.Generator().manual_seed(0))
    return roadmap, route, scene, final


def test_av_reaches_goal(grid_run):
    roadmap, route, _, final = grid_run
    polyline, _ = path_polyline(roadmap, route)
    end = polyline[-1]
    av = final.traj
    dist = math.hypot(float(av.x[0, -1]) - float(end[0]), float(av.y[0, -1]) - float(end[1]))
    assert dist < 10.0, f"AV stopped {dist:.1f} m from B"
    assert float(av.speed_mps[0, -1]) < 0.5


def test_no_collisions_involving_the_av(grid_run):
    _, _, _, final = grid_run
    traj = final.traj
    for t in range(HISTORY, final.num_steps):
        av_box = box(traj, 0, t)
        for row in torch.nonzero(traj.valid[1:, t]).flatten().tolist():
            assert not av_box.intersects(box(traj, row + 1, t)), f"AV collides with row {row + 1} at step {t}"


def test_no_red_light_crossing(grid_run):
    roadmap, route, _, final = grid_run
    polyline, lane_end_s = path_polyline(roadmap, route)
    path = PathBatch.stack([polyline])
    traj = final.traj
    s_av, _ = path.project(traj.xy[0].double())
    front = s_av[0] + traj.length[0].double() / 2
    stops = [(lane_end_s[k], g) for k, (a, b) in enumerate(zip(route[:-1], route[1:]))
             for g in range(roadmap.num_signals)
             if roadmap.signal_lane[g] == a and b in (roadmap.signal_via_lane[g], roadmap.signal_to_lane[g])]
    assert stops, "the route should pass signalised junctions"
    crossings = 0
    for s_stop, g in stops:
        for t in range(HISTORY - 1, final.num_steps - 1):
            if front[t] < s_stop <= front[t + 1]:
                crossings += 1
                assert final.lights.state[g, t] != LightState.STOP, f"AV ran a red light at step {t}"
    assert crossings >= 1


def test_world_is_deterministic_and_on_road(grid_run):
    roadmap, route, scene, final = grid_run
    traj = final.traj
    xy = traj.xy[traj.valid]
    assert roadmap.is_drivable(xy).float().mean() > 0.99
    assert traj.speed_mps[traj.valid].max() < 20.0
    common = dict(roadmap=roadmap, seed=0, route_lanes=torch.tensor(route), radius_m=1e9)
    av = make_policy("idm_route", PolicyContext(role="av", **common))
    world = make_policy("idm", PolicyContext(role="world", **common))
    again = closed_loop(scene, av, world, 60, torch.Generator().manual_seed(0))
    assert torch.equal(again.traj.x[:, :HISTORY + 60], traj.x[:, :HISTORY + 60])


def test_idm_world_refills_the_scene(grid_map):
    """Traffic does not vanish: vehicles that leave the radius are replaced by new ones entering it."""
    roadmap = grid_map.roadmap
    road = [i for i in range(roadmap.num_lanes) if roadmap.lane_kind[i] == LaneKind.DRIVING
            and not roadmap.lane_is_junction[i] and roadmap.lane_length_m[i] > 60]
    centre = roadmap.bounds.reshape(2, 2).mean(0).double()
    start = min(road, key=lambda lane: float(torch.linalg.norm(lane_polyline(roadmap, lane)[0] - centre)))
    route = farthest_route(roadmap, start, max_length_m=600.0)
    av_xy = lane_polyline(roadmap, route[0])[0]
    placements = [(route[0], 0.05, 5.0)]
    for lane in road:  # vehicles on other lanes at their point nearest the AV, if within 50 m
        p0, p1 = lane_polyline(roadmap, lane)[[0, -1]]
        frac = float(((av_xy - p0) @ (p1 - p0)) / ((p1 - p0) @ (p1 - p0))) if lane != route[0] else -1.0
        frac = min(max(frac, 0.1), 0.9)
        if lane != route[0] and torch.linalg.norm(p0 + frac * (p1 - p0) - av_xy) < 50 and len(placements) < 9:
            placements.append((lane, frac, 8.0))
    near = placements[1:]
    assert len(near) >= 4
    steps = 400
    scene = scene_on_lanes(roadmap, placements, steps)
    extra = 64  # empty rows for spawned vehicles
    scene = scene.replace(traj=scene.traj.pad_axis("A", scene.num_agents + extra),
                          meta=scene.meta.pad_axis("A", scene.num_agents + extra))
    scene = scene.replace(meta=scene.meta.replace(
        object_id=torch.where(torch.arange(scene.num_agents) < len(placements), scene.meta.object_id, -1)))
    common = dict(roadmap=roadmap, seed=0, route_lanes=torch.tensor(route), radius_m=60.0)
    av = make_policy("idm_route", PolicyContext(role="av", **common))
    world = make_policy("idm", PolicyContext(role="world", **common))
    final = closed_loop(scene, av, world, steps, torch.Generator().manual_seed(1))
    traj, meta = final.traj, final.meta
    spawned = torch.arange(final.num_agents) >= len(placements)
    assert traj.valid[spawned].any(-1).sum() >= 3, "new vehicles entered the scene"
    ids = meta.object_id[meta.object_id >= 0]
    assert ids.unique().numel() == ids.numel(), "spawned vehicles get fresh ids"
    assert (meta.agent_type[spawned & traj.valid.any(-1)] == AgentType.VEHICLE).all()
    late = traj.valid[1:, -100:].sum(0).float().mean()
    assert late >= 0.5 * len(near), f"scene emptied: {late:.1f} vehicles on average over the last 10 s"
    assert roadmap.is_drivable(traj.xy[traj.valid]).float().mean() > 0.99
