"""Trip-level JSDs (SceneDiffuser++): divergence properties, hand-made trips with known per-window values, the
oriented-box test against shapely, offroad and collisions against slow twins, and sim-vs-log ordering on a real
SUMO trip."""

import math
import time

import pytest
import shapely
import torch
from shapely import affinity

from simgen.metrics.trip import (TRIP_BINS, TRIP_FEATURES, _offroad, boxes_overlap, js_divergence, trip_jsd,
                                 trip_window_features)
from simgen.types import AgentMeta, AgentTrajectory, AgentType, LightState, SceneState, TrafficLights

T = 101  # two windows with the defaults: steps [0, 91) and [10, 101)


@pytest.fixture(scope="module")
def roadmap(grid_map):
    return grid_map.roadmap


def make_trip(xy, valid, *, heading=None, length=4.0, width=2.0, types=None, lights=None, map_name="grid"):
    """A trip from ``xy`` ``[A, T, 2]`` and ``valid`` ``[A, T]``; row 0 is the AV. Zero at invalid steps."""
    num_agents, num_steps = valid.shape
    heading = torch.zeros(num_agents, num_steps) if heading is None else heading
    zero = torch.zeros(num_agents, num_steps)

    def at_valid(value):
        return torch.where(valid, torch.as_tensor(value, dtype=torch.float32).expand(num_agents, num_steps), zero)

    traj = AgentTrajectory(x=at_valid(xy[..., 0]), y=at_valid(xy[..., 1]), z=zero, heading=at_valid(heading),
                           vel_x=zero, vel_y=zero, length=at_valid(length), width=at_valid(width),
                           height=at_valid(1.5), valid=valid)
    types = torch.full((num_agents,), int(AgentType.VEHICLE)) if types is None else torch.as_tensor(types)
    meta = AgentMeta(object_id=torch.arange(num_agents), agent_type=types.to(torch.int8),
                     is_av=torch.arange(num_agents) == 0)
    if lights is None:
        empty = torch.zeros(0, num_steps)
        lights = TrafficLights(signal_id=empty.int(), lane_id=empty.int(), stop_x=empty, stop_y=empty,
                               state=empty.to(torch.int8), valid=empty.bool())
    return SceneState(traj=traj, meta=meta, lights=lights, step=10, map_name=map_name).validate()


def steps_mask(num_agents_steps: list[tuple[int, int]]) -> torch.Tensor:
    """``[(first, stop), ...]`` per row -> valid ``[A, T]`` over steps [first, stop)."""
    t = torch.arange(T)
    return torch.stack([(t >= a) & (t < b) for a, b in num_agents_steps])


# --- divergences --------------------------------------------------------------------

def test_js_divergence_properties():
    gen = torch.Generator().manual_seed(0)
    p, q = torch.rand(200, 12, generator=gen), torch.rand(200, 12, generator=gen)
    q[:50, :6] = 0.0
    assert torch.equal(js_divergence(p, p), torch.zeros(200))
    assert torch.allclose(js_divergence(p, q), js_divergence(q, p), atol=1e-15)
    assert ((js_divergence(p, q) >= 0) & (js_divergence(p, q) <= 1)).all()
    disjoint = js_divergence(torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 3.0, 0.5]))
    assert disjoint.item() == pytest.approx(1.0, abs=1e-12)
    # two coins, fair against certain: H(1/4, 3/4) - 1/2 bits
    coins = js_divergence(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))
    assert coins.item() == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)) - 0.5)
    with pytest.raises(ValueError, match="zero mass"):
        js_divergence(torch.zeros(3), torch.ones(3))


def test_bins_are_fixed_and_documented():
    from simgen.metrics import trip

    assert TRIP_FEATURES == (*TRIP_BINS, "light_transitions") and len(TRIP_FEATURES) == 10
    for name, edges in TRIP_BINS.items():
        assert (edges[1:] > edges[:-1]).all(), name
        assert f"``{name}``" in trip.__doc__ or name.split("_")[0] in trip.__doc__, name


# --- hand-made trips -------------------------------------------------------------------

def test_entering_exiting_counts_distances_and_speed(roadmap):
    # AV at the origin; row 1 at 10 m leaves at k=50; row 2 at 20 m enters at k=5; row 3 at 50 m enters at
    # k=60 and leaves at k=95; row 4 stays and drives 5 m/s along y = -10 m. Window 0 holds transitions 1..90,
    # window 1 holds 11..100.
    valid = steps_mask([(0, T), (0, 50), (5, T), (60, 95), (0, T)])
    xy = torch.zeros(5, T, 2)
    xy[1, :, 0] = 10.0
    xy[2, :, 1] = 20.0
    xy[3] = torch.tensor([30.0, 40.0])
    xy[4, :, 0] = 5.0 + 0.5 * torch.arange(T)
    xy[4, :, 1] = -10.0
    f = trip_window_features(roadmap, make_trip(xy, valid))
    assert f["entering_agents"].tolist() == [2, 1]
    assert f["exiting_agents"].tolist() == [1, 2]
    assert f["entering_distance_m"].tolist() == pytest.approx([(20 + 50) / 2, 50])
    assert f["exiting_distance_m"].tolist() == pytest.approx([10, (10 + 50) / 2])
    assert f["valid_agents"].tolist() == pytest.approx([(50 + 86 + 31 + 91) / 91, (40 + 91 + 35 + 91) / 91])
    # row 4 moves 0.5 m per step; tracked transitions: rows 1-4 give 49+85+30+90 (window 0), 39+90+34+90
    assert f["speed_mps"].tolist() == pytest.approx([90 * 5 / 254, 90 * 5 / 253])
    assert f["collision_rate"].tolist() == [0.0, 0.0]
    assert f["light_transitions"].shape == (2, 4, 4) and f["light_transitions"].sum() == 0

    quiet = trip_window_features(roadmap, make_trip(xy[:1], valid[:1]))
    assert torch.isnan(quiet["entering_distance_m"]).all() and torch.isnan(quiet["speed_mps"]).all()
    assert quiet["entering_agents"].tolist() == [0, 0]


def test_collision_rate(roadmap):
    # a 5 m x 2 m AV at the origin; row 1 overlaps it (centres 3 m apart) at steps 0..40, then is 20 m away
    valid = steps_mask([(0, T), (0, T)])
    xy = torch.zeros(2, T, 2)
    xy[1, :, 0] = torch.where(torch.arange(T) <= 40, 3.0, 20.0)
    f = trip_window_features(roadmap, make_trip(xy, valid, length=5.0))
    assert f["collision_rate"].tolist() == pytest.approx([2 * 41 / (2 * 91), 2 * 31 / (2 * 91)])


def lane_pose(roadmap, lane: int, fraction: float = 0.5):
    """A point on ``lane``'s centreline and the unit direction of the segment it lies on."""
    points = roadmap.lane_xy[lane][roadmap.lane_point_valid[lane]].double()
    i = int(fraction * (len(points) - 1))
    i = min(i, len(points) - 2)
    d = points[i + 1] - points[i]
    return (points[i] + points[i + 1]) / 2, d / d.norm()


def test_offroad_rate(roadmap):
    lanes = torch.nonzero(roadmap.vehicle_lanes & ~roadmap.lane_is_junction).flatten()
    lane = int(lanes[roadmap.lane_length_m[lanes].argmax()])
    centre, u = lane_pose(roadmap, lane)
    far = roadmap.bounds[2:].double() + 50.0  # beyond every lane
    xy = torch.stack([centre.expand(T, 2), far.expand(T, 2), far.expand(T, 2)])
    heading = torch.atan2(u[1], u[0]).float().expand(3, T)
    valid = steps_mask([(0, T), (0, 30), (0, T)])
    pedestrian = int(AgentType.PEDESTRIAN)
    f = trip_window_features(roadmap, make_trip(xy, valid, heading=heading, length=5.0, width=1.8,
                                                types=[1, 1, pedestrian]))
    # vehicle-steps: the AV on its lane (on road) and row 1 far away for steps 0..29; pedestrians do not count
    assert f["offroad_rate"].tolist() == pytest.approx([30 / (91 + 30), 20 / (91 + 20)])


def test_offroad_matches_the_roadmap_query(roadmap):
    gen = torch.Generator().manual_seed(1)
    low, high = roadmap.bounds[:2], roadmap.bounds[2:]
    points = low - 20 + torch.rand(9000, 2, generator=gen) * (high - low + 40)
    assert torch.equal(_offroad(roadmap, points), ~roadmap.is_drivable(points))


def light_trip(roadmap, state: LightState, lateral_m: float = 0.0, crossing_step: int = 5):
    """The AV drives 5 m/s along a signalised approach lane and its front bumper passes the stop point between
    steps ``crossing_step - 1`` and ``crossing_step``; the light slot holds ``state`` throughout."""
    g = 0
    lane = int(roadmap.signal_lane[g])
    stop = roadmap.signal_stop_xy[g].double()
    points = roadmap.lane_xy[lane][roadmap.lane_point_valid[lane]].double()
    u = (points[-1] - points[-2]) / (points[-1] - points[-2]).norm()
    normal = torch.stack([-u[1], u[0]])
    along = 0.5 * (torch.arange(T, dtype=torch.float64) - crossing_step + 0.5)  # front bumper, m past the stop
    length = 4.0
    xy = stop + (along - length / 2)[:, None] * u + lateral_m * normal  # [T, 2] box centre
    heading = torch.atan2(u[1], u[0]).float().expand(1, T)
    per_step = torch.ones(1, T)
    lights = TrafficLights(signal_id=(per_step * g).int(), lane_id=(per_step * lane).int(),
                           stop_x=(per_step * stop[0]).float(), stop_y=(per_step * stop[1]).float(),
                           state=(per_step * int(state)).to(torch.int8), valid=per_step.bool())
    return make_trip(xy[None], torch.ones(1, T, dtype=torch.bool), heading=heading, length=length, lights=lights)


def test_light_violations(roadmap):
    red = trip_window_features(roadmap, light_trip(roadmap, LightState.STOP))
    assert red["light_violation_rate"].tolist() == [1.0, 0.0]  # the crossing is in window 0 only
    green = trip_window_features(roadmap, light_trip(roadmap, LightState.GO))
    assert green["light_violation_rate"].tolist() == [0.0, 0.0]
    next_lane = trip_window_features(roadmap, light_trip(roadmap, LightState.STOP, lateral_m=3.2))
    assert next_lane["light_violation_rate"].tolist() == [0.0, 0.0]
    assert red["light_transitions"][0].tolist() == [[0, 0, 0, 0], [0, 90, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_light_violations_match_a_loop(roadmap):
    """Vehicles drive through the stop points of the map's first light slots (several share an approach lane)
    with lateral offsets and speeds drawn at random, under random light states; the vectorized test agrees
    with a loop over vehicles, transitions and slots."""
    from simgen.metrics.trip import STOP_LINE_LATERAL_M, _light_violations

    gen = torch.Generator().manual_seed(5)
    num_vehicles, num_slots = 24, 9
    slots = torch.arange(num_slots)
    u = roadmap.lane_end_direction[roadmap.signal_lane[slots].long()]  # [S, 2]
    stop = roadmap.signal_stop_xy[slots].double()
    lane_of = torch.randint(num_slots, (num_vehicles,), generator=gen)
    speed = 2 + 13 * torch.rand(num_vehicles, 1, generator=gen).double()  # m/s
    along = -10 + speed * 0.1 * torch.arange(T)  # [V, T] front bumper past the stop point, m
    lateral = (torch.rand(num_vehicles, 1, generator=gen).double() - 0.5) * 6
    direction, normal = u[lane_of], torch.stack([-u[lane_of, 1], u[lane_of, 0]], -1)  # [V, 2]
    length = 4.0
    centre_along = (along - length / 2)[..., None]  # [V, T, 1] box centre past the stop point, m
    xy = stop[lane_of, None] + centre_along * direction[:, None] + lateral[..., None] * normal[:, None]
    heading = torch.atan2(direction[:, 1], direction[:, 0])[:, None].expand(num_vehicles, T).float()
    valid = torch.rand(num_vehicles, T, generator=gen) < 0.9
    valid[0] = True
    per_step = torch.ones(num_slots, T)
    states = torch.tensor([int(LightState.STOP)] * 6 + [int(LightState.CAUTION), int(LightState.GO)])
    lights = TrafficLights(
        signal_id=(per_step * slots[:, None]).int(), lane_id=(per_step * roadmap.signal_lane[slots, None]).int(),
        stop_x=(per_step * stop[:, :1]).float(), stop_y=(per_step * stop[:, 1:]).float(),
        state=states[torch.randint(len(states), (num_slots, T), generator=gen)].to(torch.int8),
        valid=torch.rand(num_slots, T, generator=gen) < 0.95)
    trip = make_trip(xy.float(), valid, heading=heading, length=length, lights=lights)
    fast = _light_violations(roadmap, trip, torch.arange(num_vehicles))

    traj = trip.traj
    expected = torch.zeros(num_vehicles, T - 1, dtype=torch.bool)
    crossings = 0
    for v in range(num_vehicles):
        h = float(traj.heading[v, 0])
        for k in range(1, T):
            if not (valid[v, k - 1] and valid[v, k]):
                continue
            front = [(float(traj.x[v, t]) + length / 2 * math.cos(h), float(traj.y[v, t]) + length / 2 * math.sin(h))
                     for t in (k - 1, k)]
            crossed_states = []
            for g in range(num_slots):
                if not lights.valid[g, k - 1]:
                    continue
                qx, qy = float(lights.stop_x[g, k - 1]), float(lights.stop_y[g, k - 1])
                ux, uy = float(u[g, 0]), float(u[g, 1])
                s0 = (front[0][0] - qx) * ux + (front[0][1] - qy) * uy
                s1 = (front[1][0] - qx) * ux + (front[1][1] - qy) * uy
                d0 = (front[0][0] - qx) * uy - (front[0][1] - qy) * ux
                if s0 < 0 <= s1 and abs(d0) <= STOP_LINE_LATERAL_M:
                    crossed_states.append(int(lights.state[g, k - 1]))
            crossings += bool(crossed_states)
            expected[v, k - 1] = bool(crossed_states) and all(s == LightState.STOP for s in crossed_states)
    assert torch.equal(fast, expected)
    assert crossings >= 10 and 3 <= expected.sum() < crossings


def test_light_transition_counts(roadmap):
    trip = light_trip(roadmap, LightState.STOP)
    state = torch.full((1, T), int(LightState.STOP), dtype=torch.int8)
    state[0, 50:] = int(LightState.GO)
    trip = trip.replace(lights=trip.lights.replace(state=state))
    counts = trip_window_features(roadmap, trip)["light_transitions"]
    stop, go = int(LightState.STOP), int(LightState.GO)
    assert counts[0, stop, stop] == 49 and counts[0, stop, go] == 1 and counts[0, go, go] == 40
    assert counts[1, stop, stop] == 39 and counts[1, stop, go] == 1 and counts[1, go, go] == 50
    assert counts.sum().item() == 2 * 90


def test_transition_jsd_is_weighted_by_log_rows(roadmap):
    log = light_trip(roadmap, LightState.STOP)
    flicker = log.lights.state.clone()
    flicker[0, 1::2] = int(LightState.GO)  # STOP <-> GO every step
    sim = log.replace(lights=log.lights.replace(state=flicker))
    score = trip_jsd(roadmap, [log], [sim])
    assert score.jsd["light_transitions"] > 0.3
    assert trip_jsd(roadmap, [log], [log]).jsd["light_transitions"] == 0.0


# --- oriented boxes ------------------------------------------------------------------

def box(x, y, heading, length, width):
    return torch.tensor([x, y, heading, length, width], dtype=torch.float64)


def test_boxes_overlap_known_answers():
    a = box(0, 0, 0, 4, 2)
    assert not boxes_overlap(a, box(4, 0, 0, 4, 2))  # touching end to end
    assert not boxes_overlap(a, box(0, 2, 0, 4, 2))  # touching side by side
    assert boxes_overlap(a, box(3.99, 0, 0, 4, 2))
    diamond = box(0, 0, math.pi / 4, 2, 2)  # corners at (±√2, 0) and (0, ±√2)
    assert boxes_overlap(diamond, box(2.3, 0, 0, 2, 2))  # the corner pokes 0.11 m into the square
    assert not boxes_overlap(diamond, box(2.5, 0, 0, 2, 2))
    assert not boxes_overlap(diamond, box(2.1, 2.1, 0, 2, 2))  # bounding boxes overlap, the boxes do not
    assert not boxes_overlap(a, box(30, -5, 1.0, 4, 2))
    assert boxes_overlap(a, box(0, 0, 1.0, 0.5, 0.5))  # one inside the other


def shapely_box(b):
    x, y, heading, length, width = b.tolist()
    rect = shapely.box(-length / 2, -width / 2, length / 2, width / 2)
    return affinity.translate(affinity.rotate(rect, heading, use_radians=True, origin=(0, 0)), x, y)


def test_boxes_overlap_matches_shapely():
    gen = torch.Generator().manual_seed(2)
    n = 3000
    boxes = torch.cat([torch.rand(2, n, 2, generator=gen) * 8,
                       (torch.rand(2, n, 1, generator=gen) - 0.5) * 4 * math.pi,
                       0.3 + torch.rand(2, n, 2, generator=gen) * 5], -1).double()  # [2, n, 5]
    fast = boxes_overlap(boxes[0], boxes[1])
    checked = 0
    for i in range(n):
        a, b = shapely_box(boxes[0, i]), shapely_box(boxes[1, i])
        area, gap = a.intersection(b).area, a.distance(b)
        if area < 1e-9 and gap < 1e-9:
            continue  # touching within rounding: either answer is right
        assert bool(fast[i]) == (area > 0), (i, boxes[:, i])
        checked += 1
    assert checked > 0.99 * n and 0.2 < fast.double().mean() < 0.8


def test_collisions_match_a_loop_over_pairs(roadmap):
    gen = torch.Generator().manual_seed(3)
    num_agents = 12
    xy = torch.rand(num_agents, T, 2, generator=gen) * 15
    heading = (torch.rand(num_agents, T, generator=gen) - 0.5) * 2 * math.pi
    valid = torch.rand(num_agents, T, generator=gen) < 0.8
    valid[0] = True
    trip = make_trip(xy, valid, heading=heading, length=4.5, width=1.9, types=[1] * 6 + [2] * 6)
    traj = trip.traj
    colliding = torch.zeros(num_agents, T, dtype=torch.bool)
    for t in range(T):
        shapes = {i: shapely_box(torch.tensor([traj.x[i, t], traj.y[i, t], traj.heading[i, t], traj.length[i, t],
                                               traj.width[i, t]])) for i in range(num_agents) if valid[i, t]}
        for i, shape in shapes.items():
            colliding[i, t] = any(shape.intersection(other).area > 1e-9 for j, other in shapes.items() if j != i)
    starts = [0, 10]
    expected = [colliding[:, s:s + 91].sum().item() / valid[:, s:s + 91].sum().item() for s in starts]
    assert trip_window_features(roadmap, trip)["collision_rate"].tolist() == pytest.approx(expected)


def test_a_long_busy_trip_scores_fast(roadmap):
    gen = torch.Generator().manual_seed(4)
    num_agents, num_steps = 60, 611
    lanes = torch.nonzero(roadmap.vehicle_lanes).flatten()
    start = roadmap.lane_xy[lanes[torch.randint(len(lanes), (num_agents,), generator=gen)], 0].double()
    drift = torch.randn(num_agents, num_steps, 2, generator=gen).double().cumsum(1) * 0.3
    xy = start[:, None] + drift
    valid = torch.rand(num_agents, 1, generator=gen) < torch.linspace(0, 1, num_steps)  # rows enter over time
    valid[0] = True
    lights_idx = torch.arange(roadmap.num_signals)[:80]
    stop = roadmap.signal_stop_xy[lights_idx].float()
    phase = torch.arange(num_steps) % roadmap.signal_cycle_len[lights_idx, None].long()  # [80, T]
    state = roadmap.signal_cycle[lights_idx].gather(1, phase)
    per_step = torch.ones(len(lights_idx), num_steps)
    lights = TrafficLights(signal_id=(per_step * lights_idx[:, None]).int(),
                           lane_id=(per_step * roadmap.signal_lane[lights_idx, None]).int(),
                           stop_x=per_step * stop[:, :1], stop_y=per_step * stop[:, 1:], state=state.to(torch.int8),
                           valid=per_step.bool())
    trip = make_trip(xy.float(), valid, length=4.5, width=1.9, lights=lights)
    trip_window_features(roadmap, trip)
    tic = time.perf_counter()
    score = trip_jsd(roadmap, [trip], [trip])
    elapsed = time.perf_counter() - tic
    assert score.num_windows_log == score.num_windows_sim == 53 and score.composite == 0.0
    # about 0.1 s on an idle 2-core machine; the bound only catches a blow-up, not load from other processes
    assert elapsed < 5.0, f"{elapsed:.2f} s for a 600-step, 60-row trip against itself (two passes)"


# --- bad input -------------------------------------------------------------------------

def test_bad_input_is_named(roadmap):
    valid = steps_mask([(0, T), (0, 50)])
    trip = make_trip(torch.zeros(2, T, 2), valid)
    with pytest.raises(ValueError, match="log_trips: expected a non-empty list"):
        trip_jsd(roadmap, [], [trip])
    with pytest.raises(ValueError, match="sim_trips: expected a non-empty list"):
        trip_jsd(roadmap, [trip], trip)
    short = trip.window(0, 60)
    with pytest.raises(ValueError, match=r"sim_trips\[1\]: 60 steps, shorter than one window of 91"):
        trip_jsd(roadmap, [trip], [trip, short])
    with pytest.raises(ValueError, match="recorded on map 'berlin', but the roadmap is 'grid'"):
        trip_jsd(roadmap, [trip.replace(map_name="berlin")], [trip])
    lost = trip.replace(traj=trip.traj.replace(valid=valid.flip(0)))  # the AV row leaves at step 50
    with pytest.raises(ValueError, match="the AV .* must be valid at every step"):
        trip_window_features(roadmap, lost)
    no_av = trip.replace(meta=trip.meta.replace(is_av=torch.zeros(2, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"log_trips\[0\]: expected exactly one AV row"):
        trip_jsd(roadmap, [no_av], [trip])
    with pytest.raises(ValueError, match="stride=0"):
        trip_jsd(roadmap, [trip], [trip], stride=0)


# --- a real SUMO trip ------------------------------------------------------------------

GRID = {"map": "grid", "seed": 5, "duration_s": 20.0,
        "traffic": {"warmup_s": 60.0, "vehicles_per_hour_per_km": 200.0, "pedestrians_per_hour_per_km": 60.0},
        "scene": {"radius_m": 60.0, "num_agents_max": 128}, "av": {"policy": "log_replay"}}


@pytest.fixture(scope="module")
def sumo_trips(tmp_path_factory):
    """The reference trip of a small grid scenario and rollouts of it by two worlds (same logged AV)."""
    from simgen import scenario
    from simgen.sim.rollout import run_scenario
    from simgen.traffic import Demand, reference_trip

    tmp = tmp_path_factory.mktemp("trip-metric")
    rollouts = {}
    for world in ("log_replay", "constant_velocity"):
        s = scenario.parse({**GRID, "world": world}, "test")
        rollout, source, _ = run_scenario(s, tmp / world, progress=False)
        rollouts[world] = rollout.state
    traffic = GRID["traffic"]
    demand = Demand(vehicles_per_hour_per_km=traffic["vehicles_per_hour_per_km"],
                    pedestrians_per_hour_per_km=traffic["pedestrians_per_hour_per_km"])
    log = reference_trip(source, seed=GRID["seed"], steps=200, av_route=None, demand=demand, radius_m=60.0,
                         max_agents=128, warmup_s=traffic["warmup_s"], workdir=tmp / "ref").scene
    return source.roadmap, log, rollouts


def test_sim_against_log_ordering(sumo_trips):
    roadmap, log, rollouts = sumo_trips
    assert log.num_steps == 211 and (log.meta.object_id >= 0).sum() > 5, "the trip should see traffic"
    itself = trip_jsd(roadmap, [log], [log])
    assert set(itself.jsd) == set(TRIP_FEATURES) and all(v == 0.0 for v in itself.jsd.values())
    assert itself.composite == 0.0 and itself.num_windows_log == 13
    replay = trip_jsd(roadmap, [log], [rollouts["log_replay"]])
    coasting = trip_jsd(roadmap, [log], [rollouts["constant_velocity"]])
    assert replay.composite < 1e-9 and coasting.composite > 0.05
    assert all(0.0 <= v <= 1.0 for v in coasting.jsd.values())
