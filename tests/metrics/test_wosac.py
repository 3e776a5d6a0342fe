"""WOSAC 2025 metrics: hand-made scenes with known answers, the log against itself, the fast path against its
slow twin on SUMO scenes, bad input, and a golden value."""

import math

import pytest
import torch

from simgen.maps.netfile import pad
from simgen.metrics.features import scene_features, signed_distance_to_rings
from simgen.metrics.wosac import WOSAC_2025, score_scene, score_scene_reference
from simgen.types import (
    AgentMeta,
    AgentTrajectory,
    AgentType,
    LaneKind,
    LightState,
    RoadMap,
    SceneState,
    TrafficLights,
)

T, STEP = 91, 10  # window steps, last history step
F = T - STEP - 1
LANE_Y = -1.75  # eastbound lane centre of the straight road, m
STOP_X = 0.0  # stop line of the eastbound light slot, m


# --- a straight two-lane road with one signalised junction ------------------------------------------------

@pytest.fixture(scope="module")
def road() -> RoadMap:
    """Road |y| <= 5 m for x in [-200, 200]; lanes: 0 approach (to the stop line at x = 0), 1 junction, 2 exit,
    3 westbound; one light slot (0 -> 1 -> 2)."""
    lanes = [[(-200.0, LANE_Y), (STOP_X, LANE_Y)], [(STOP_X, LANE_Y), (10.0, LANE_Y)],
             [(10.0, LANE_Y), (200.0, LANE_Y)], [(200.0, 1.75), (-200.0, 1.75)]]
    lane_xy, lane_valid = pad(lanes)
    edge_xy, edge_valid = pad([[(-200.0, -5.0), (200.0, -5.0), (200.0, 5.0), (-200.0, 5.0), (-200.0, -5.0)]])
    empty_xy, empty_valid = pad([[(0.0, 0.0)] * 4])
    return RoadMap(
        lane_xy=lane_xy, lane_point_valid=lane_valid, lane_width_m=torch.full((4,), 3.5),
        lane_speed_limit_mps=torch.full((4,), 13.9), lane_length_m=torch.tensor([200.0, 10.0, 190.0, 400.0]),
        lane_kind=torch.full((4,), int(LaneKind.DRIVING), dtype=torch.int8),
        lane_is_junction=torch.tensor([False, True, False, False]),
        lane_neighbors=torch.full((4, 2), -1, dtype=torch.int32),
        lane_succ=torch.tensor([[0, 1], [1, 2]], dtype=torch.int32),
        road_edge_xy=edge_xy, road_edge_valid=edge_valid,
        crosswalk_xy=empty_xy, crosswalk_valid=empty_valid & False, junction_xy=empty_xy,
        junction_valid=empty_valid & False,
        signal_lane=torch.tensor([0], dtype=torch.int32), signal_via_lane=torch.tensor([1], dtype=torch.int32),
        signal_to_lane=torch.tensor([2], dtype=torch.int32), signal_stop_xy=torch.tensor([[STOP_X, LANE_Y]]),
        signal_tls=torch.tensor([0], dtype=torch.int32), signal_link=torch.tensor([0], dtype=torch.int32),
        signal_cycle=torch.tensor([[int(LightState.STOP)]], dtype=torch.int8),
        signal_cycle_len=torch.tensor([1], dtype=torch.int32),
        name="straight", lane_ids=("e0_0", ":j_0", "e1_0", "w0_0"), tls_ids=("j",),
    ).validate()


def trajectory(rows: list[dict]) -> AgentTrajectory:
    """``rows``: per agent ``x``, ``y`` ([T] or scalars), optional ``heading``, ``length``, ``width``, ``valid``."""
    fields = {f: torch.zeros(len(rows), T, dtype=torch.float64) for f in AgentTrajectory.tensor_fields()
              if f != "valid"}
    valid = torch.zeros(len(rows), T, dtype=torch.bool)
    for a, row in enumerate(rows):
        valid[a] = row.get("valid", torch.ones(T, dtype=torch.bool))
        for field, default in (("x", 0.0), ("y", 0.0), ("heading", 0.0), ("length", 4.5), ("width", 2.0),
                               ("height", 1.5)):
            fields[field][a] = torch.as_tensor(row.get(field, default), dtype=torch.float64)
    fields = {f: torch.where(valid, v, 0.0) for f, v in fields.items()}
    return AgentTrajectory(**fields, valid=valid)


def meta(types: list[AgentType]) -> AgentMeta:
    return AgentMeta(object_id=torch.arange(len(types)), agent_type=torch.tensor([int(t) for t in types],
                                                                                   dtype=torch.int8),
                     is_av=torch.arange(len(types)) == 0)


def light(state: LightState) -> TrafficLights:
    """The eastbound slot, in ``state`` at every step. ``[1, T]``."""
    return TrafficLights(signal_id=torch.zeros(1, T, dtype=torch.int32), lane_id=torch.zeros(1, T, dtype=torch.int32),
                         stop_x=torch.full((1, T), STOP_X), stop_y=torch.full((1, T), LANE_Y),
                         state=torch.full((1, T), int(state), dtype=torch.int8), valid=torch.ones(1, T, dtype=torch.bool))


def features(road, rows, types, state=LightState.GO):
    traj = trajectory(rows)
    return scene_features(road, traj.map_tensors(lambda t, _axes: t[None]), meta(types), light(state))


def driving(x0: float, speed: float, y: float = LANE_Y) -> dict:
    """Eastbound at constant speed (m/s) from ``x0`` at step 0."""
    return {"x": x0 + speed * 0.1 * torch.arange(T, dtype=torch.float64), "y": y}


V, P = AgentType.VEHICLE, AgentType.PEDESTRIAN


# --- hand-made scenes with known answers -------------------------------------------------------------------

def test_overlapping_boxes_collide_with_negative_distance(road):
    f = features(road, [{"x": 0.0, "y": LANE_Y}, {"x": 3.0, "y": LANE_Y}, {"x": 60.0, "y": LANE_Y},
                        {"x": 70.0, "y": LANE_Y}], [V, V, V, V])
    # 4.5 m boxes 3 m apart overlap by 1.5 m face to face; 10 m apart they are 5.5 m apart
    assert torch.allclose(f["distance_to_nearest_object"][0, :2], torch.tensor(-1.5, dtype=torch.float64))
    assert torch.allclose(f["distance_to_nearest_object"][0, 2:], torch.tensor(5.5, dtype=torch.float64))
    assert f["collision_indication"][0, :2].all() and not f["collision_indication"][0, 2:].any()


def test_rounded_corners_keep_diagonal_neighbours_apart(road):
    # corner to corner, 0.2 m apart diagonally: the rounded boxes (official corner rounding) are farther apart
    f = features(road, [{"x": 0.0, "y": 0.0}, {"x": 4.5 + 0.2, "y": 2.0 + 0.2}], [V, V])
    assert (f["distance_to_nearest_object"][0, 0] > 0.2 * math.sqrt(2)).all()
    assert not f["collision_indication"].any()


def test_agent_beyond_the_road_edge_is_offroad(road):
    f = features(road, [{"x": 0.0, "y": 8.0}, {"x": 50.0, "y": 0.0}], [V, P])
    # the edge is y = 5: the outside box's top corners are 4 m beyond it, the inside box's are 4 m within
    assert torch.allclose(f["distance_to_road_edge"][0, 0], torch.tensor(4.0, dtype=torch.float64))
    assert torch.allclose(f["distance_to_road_edge"][0, 1], torch.tensor(-4.0, dtype=torch.float64))
    assert f["offroad_indication"][0, 0].all() and not f["offroad_indication"][0, 1].any()


@pytest.mark.parametrize("state, violates", [(LightState.STOP, True), (LightState.GO, False),
                                             (LightState.CAUTION, False)])
def test_crossing_the_stop_line(road, state, violates):
    # 10 m/s, the centre passes x = 0 between steps 60 and 61 (future step 50)
    f = features(road, [driving(-60.5, 10.0), driving(-30.5, 10.0), {"x": -5.0, "y": LANE_Y}], [V, P, V], state)
    expected = torch.zeros(F, dtype=torch.bool)
    expected[50] = violates
    assert torch.equal(f["traffic_light_violation"][0, 0], expected)
    assert not f["traffic_light_violation"][0, 1:].any()  # a pedestrian, a stopped vehicle
    assert f["traffic_light_violation_valid"][0, 0].all() and not f["traffic_light_violation_valid"][0, 1].any()


def test_crossing_on_another_lane_is_no_violation(road):
    # a wrong-way driver on the westbound lane passes the stop line's x, but its nearest lane is not the slot's
    f = features(road, [driving(-60.5, 10.0, y=1.75)], [V], LightState.STOP)
    assert not f["traffic_light_violation"].any()


def test_constant_speed_has_zero_accelerations(road):
    heading = 0.3
    k = torch.arange(T, dtype=torch.float64)
    row = {"x": 12.0 * 0.1 * k * math.cos(heading), "y": -3.0 + 12.0 * 0.1 * k * math.sin(heading),
           "heading": heading}
    f = features(road, [row], [V])
    defined = f["linear_acceleration_valid"][0, 0]
    assert defined[:-2].all() and not defined[-2:].any()  # the last two steps lack a neighbour
    assert torch.allclose(f["linear_speed"][0, 0, :-1], torch.tensor(12.0, dtype=torch.float64))
    for name in ("linear_acceleration", "angular_speed", "angular_acceleration"):
        values = f[name][0, 0][f[f"{name}_valid"][0, 0]]
        assert values.abs().max() < 1e-9, name


def test_time_to_collision_with_slower_leader(road):
    # follower at 10 m/s, leader at 5 m/s starting 15 m ahead (centre to centre): gap 10.5 m at step 11
    f = features(road, [driving(0.0, 10.0), driving(15.0, 5.0)], [V, V])
    gap = 15.0 + 5.0 * 1.1 - 10.0 * 1.1 - 4.5
    assert torch.allclose(f["time_to_collision"][0, 0, 0], torch.tensor(gap / 5.0, dtype=torch.float64))
    assert (f["time_to_collision"][0, 1] == 5.0).all()  # nobody ahead of the leader, or faster
    assert f["time_to_collision"][0, 0, -1] == 5.0  # the speed is undefined at the window's last step


def test_lights_per_rollout_match_shared_lights(road):
    traj = trajectory([driving(-60.5, 10.0)]).map_tensors(lambda t, _axes: t[None].expand(3, *t.shape))
    shared = scene_features(road, traj, meta([V]), light(LightState.STOP))
    per_rollout = scene_features(road, traj, meta([V]), light(LightState.STOP).map_tensors(
        lambda t, _axes: t[None].expand(3, *t.shape)))
    assert all(torch.equal(shared[k].nan_to_num(), per_rollout[k].nan_to_num()) for k in shared)
    assert shared["traffic_light_violation"].sum() == 3


# --- scoring on hand-made scenes ----------------------------------------------------------------------------

def small_scene(state=LightState.GO) -> SceneState:
    rows = [driving(-80.5, 10.0), driving(-100.0, 8.0), {**driving(100.0, -9.0, 1.75), "heading": math.pi},
            {"x": 30.0 + 0.13 * torch.arange(T, dtype=torch.float64), "y": 6.0, "length": 0.5, "width": 0.5}]
    return SceneState(traj=trajectory(rows), meta=meta([V, V, V, P]), lights=light(state), step=STEP)


def rollouts(scene: SceneState, count: int, seed: int, sigma_m: float = 0.5, heading_sigma: float = 0.0,
             shift_m: float = 0.0) -> AgentTrajectory:
    """``count`` copies of the log whose future drifts: a random lateral offset growing to ``sigma_m`` over 8 s,
    heading noise, and a constant shift (m, along +y)."""
    g = torch.Generator().manual_seed(seed)
    traj = scene.traj.map_tensors(lambda t, _axes: t[None].expand(count, *t.shape).clone())
    future = (torch.arange(T) > scene.step).float()
    ramp = future * (torch.arange(T) - scene.step).clamp_min(0) / F
    drift = torch.randn(count, scene.num_agents, 1, generator=g) * sigma_m * ramp
    wobble = torch.randn(count, scene.num_agents, T, generator=g) * heading_sigma * future
    heading = torch.remainder(traj.heading + wobble + math.pi, 2 * math.pi) - math.pi
    valid = traj.valid
    return traj.replace(x=torch.where(valid, traj.x - drift * torch.sin(traj.heading), 0.0),
                        y=torch.where(valid, traj.y + drift * torch.cos(traj.heading) + shift_m * future, 0.0),
                        heading=torch.where(valid, heading, 0.0))


def constant_velocity(scene: SceneState, count: int, seed: int) -> AgentTrajectory:
    """``count`` rollouts that keep every agent's last logged velocity, scaled by a random factor (sd 0.3),
    and its box; they collide, leave the road and run red lights."""
    g = torch.Generator().manual_seed(seed)
    log, t0 = scene.traj, scene.step
    future = torch.arange(T) > t0
    elapsed = (torch.arange(T) - t0).clamp_min(0) * 0.1  # s
    factor = 1 + 0.3 * torch.randn(count, scene.num_agents, 1, generator=g)
    valid = torch.where(future, log.valid[:, t0, None], log.valid).expand(count, -1, -1)
    fields = {f: torch.where(future, getattr(log, f)[:, t0, None], getattr(log, f)).expand(count, -1, -1)
              for f in AgentTrajectory.tensor_fields() if f != "valid"}
    fields["x"] = fields["x"] + torch.where(future, log.vel_x[:, t0, None] * elapsed * factor, 0.0)
    fields["y"] = fields["y"] + torch.where(future, log.vel_y[:, t0, None] * elapsed * factor, 0.0)
    return AgentTrajectory(**{f: torch.where(valid, v, 0.0) for f, v in fields.items()}, valid=valid)


def test_score_counts_offroad_and_violations(road):
    scene = small_scene(LightState.STOP)  # agent 0 runs the red light at step 81, the pedestrian walks offroad
    sim = rollouts(scene, 4, seed=0, sigma_m=0.0)
    on_road = (torch.arange(scene.num_agents) == 3)[:, None] & (torch.arange(T) > STEP)
    sim = sim.replace(y=torch.where(on_road, -4.0, sim.y))  # the rollouts' pedestrian walks on the road
    score = score_scene(road, scene, sim)
    agree, miss = 4.001 / 4.002, 0.001 / 4.002  # smoothed probability of the logged outcome, 4 rollouts
    assert score.likelihoods["offroad_indication"] == pytest.approx((agree ** 3 * miss) ** (1 / 4))
    assert score.rates["offroad"] == 0.0
    assert score.likelihoods["traffic_light_violation"] == pytest.approx(agree)
    assert score.rates["traffic_light_violation"] == pytest.approx(0.25)
    assert score.likelihoods["collision_indication"] == pytest.approx(agree) and score.rates["collision"] == 0.0
    assert score.min_ade == pytest.approx(10.0 / 4)  # the pedestrian moved 10 m, over 4 agents
    assert score.num_agents == 4 and score.num_rollouts == 4


def test_golden_meta_metric(road):
    scene = small_scene()
    sim = rollouts(scene, 4, seed=7, sigma_m=1.5, heading_sigma=0.05)
    score = score_scene(road, scene, sim)
    assert score.meta_metric == pytest.approx(GOLDEN_META_METRIC, abs=1e-6)
    assert score_scene_reference(road, scene, sim).meta_metric == pytest.approx(GOLDEN_META_METRIC, abs=1e-6)


GOLDEN_META_METRIC = 0.8113333563885085  # recorded from this seed; tolerance 1e-6


# --- real SUMO scenes ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sumo_logs(tmp_path_factory):
    from simgen.io import load_logs
    from simgen.traffic import Demand
    from simgen.traffic.logs import generate_logs

    out = generate_logs("grid", tmp_path_factory.mktemp("wosac") / "logs", scenes=3, seed=1, progress=False,
                        warmup_s=60.0, demand=Demand(vehicles_per_hour_per_km=250.0, pedestrians_per_hour_per_km=60.0,
                                                     cyclists_per_hour_per_km=20.0))
    logs = load_logs(out)
    return logs.roadmap(), [logs.scene(i) for i in range(len(logs))]


def test_fast_path_matches_the_slow_twin(sumo_logs):
    roadmap, scenes = sumo_logs
    events = {name: 0.0 for name in ("collision", "offroad", "traffic_light_violation")}
    for k, scene in enumerate(scenes):
        for sim in (rollouts(scene, 8, seed=k, sigma_m=2.0, heading_sigma=0.05), constant_velocity(scene, 4, k)):
            fast, slow = score_scene(roadmap, scene, sim), score_scene_reference(roadmap, scene, sim)
            assert fast.meta_metric == pytest.approx(slow.meta_metric, abs=1e-5)
            for name in fast.likelihoods:
                assert fast.likelihoods[name] == pytest.approx(slow.likelihoods[name], abs=1e-5), (k, name)
            assert fast.min_ade == pytest.approx(slow.min_ade, abs=1e-9)
            assert fast.rates == pytest.approx(slow.rates, abs=1e-12)
            assert (fast.num_agents, fast.num_rollouts) == (slow.num_agents, slow.num_rollouts)
            events = {name: events[name] + fast.rates[name] for name in events}
    assert all(rate > 0 for rate in events.values()), events  # every event type was compared


def test_log_copies_score_the_maximum(sumo_logs):
    roadmap, scenes = sumo_logs
    scene = scenes[0]
    copies = score_scene(roadmap, scene, rollouts(scene, 32, seed=0, sigma_m=0.0))
    for name in ("collision_indication", "offroad_indication", "traffic_light_violation"):
        assert copies.likelihoods[name] == pytest.approx(32.001 / 32.002)
    assert copies.min_ade == 0.0

    shifted = score_scene(roadmap, scene, rollouts(scene, 32, seed=0, sigma_m=0.0, shift_m=2.0))
    assert shifted.likelihoods["distance_to_road_edge"] < copies.likelihoods["distance_to_road_edge"] - 0.02
    assert shifted.min_ade == pytest.approx(2.0)
    wobbly = score_scene(roadmap, scene, rollouts(scene, 32, seed=0, sigma_m=0.0, heading_sigma=0.1))
    for name in ("angular_speed", "angular_acceleration"):
        assert wobbly.likelihoods[name] < copies.likelihoods[name] - 0.05, name
    assert wobbly.likelihoods["linear_speed"] == pytest.approx(copies.likelihoods["linear_speed"])
    for other in (shifted, wobbly):
        assert other.meta_metric < copies.meta_metric


def test_road_edge_fast_path_equals_the_roadmap_query(sumo_logs):
    roadmap, scenes = sumo_logs
    centre = torch.stack([scenes[0].traj.x[0, STEP], scenes[0].traj.y[0, STEP]]).double()
    points = centre + torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 60
    a, b = (s.double() - centre for s in roadmap.road_edge_segments)
    fast = signed_distance_to_rings(points - centre, a, b)
    reference = roadmap.signed_distance_to_road_edge(points.float()).double()
    assert (fast - reference).abs().max() < 1e-3  # the RoadMap query runs in float32 world coordinates


# --- bad input ----------------------------------------------------------------------------------------------

def test_bad_input_names_the_problem(road):
    scene = small_scene()
    sim = rollouts(scene, 2, seed=0)
    cases = {
        "sim_traj: shape": sim.index_axis("A", slice(0, 3)),
        "sim_traj: shape .*91 steps": sim.index_axis("T", slice(0, 90)),
        r"sim_traj: expected fields \[R, A, T\]": scene.traj,
        "sim_traj: AgentTrajectory.x: contains NaN": sim.replace(x=sim.x.clone().index_fill_(2, torch.tensor([50]),
                                                                                           math.nan)),
        "sim_traj.heading: .*radians": sim.replace(heading=torch.where(sim.valid, 90.0, 0.0)),
        "sim_traj.x: history differs": sim.replace(x=sim.x + 1.0 * sim.valid),
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            score_scene(road, scene, bad)
    empty = scene.replace(traj=scene.traj.replace(valid=scene.traj.valid & (torch.arange(T) > STEP)))
    with pytest.raises(ValueError, match="empty scene"):
        score_scene(road, empty, rollouts(empty, 2, seed=0))
    with pytest.raises(ValueError, match="sim_lights: shape"):
        score_scene(road, scene, sim, sim_lights=light(LightState.GO))
    with pytest.raises(ValueError, match="empty scene"):
        score_scene_reference(road, empty, rollouts(empty, 2, seed=0))


def test_config_matches_the_2025_weights():
    weights = {spec.name: spec.weight for spec in WOSAC_2025.features}
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["collision_indication"] == weights["offroad_indication"] == 0.25
    assert WOSAC_2025.bernoulli_smoothing == 0.001 and WOSAC_2025.histogram_smoothing == 0.1
