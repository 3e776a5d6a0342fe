"""A 60 s closed-loop city trip with the learned world (tiny seeded checkpoint) and the ``idm_route`` AV: the AV's
plan is inpainted, the road kept and no agent moved into a collision in every executed frame."""

import json
import math

import pytest
import torch

from simgen.agents import PolicyContext, make_policy
from simgen.maps import resolve_map
from simgen.sim.rollout import closed_loop, mask_future, route_lanes_for
from simgen.traffic import Demand, reference_trip
from simgen.types import AgentType
from simgen.world.constraints import OnRoad, overlapping_pairs, push_apart


class Recorder:
    """Wraps a world and keeps every action it returns (the model's executed frames, the AV's row included)."""

    def __init__(self, world):
        self.world, self.actions = world, []
        self.plan_horizon = world.plan_horizon

    def observe_plan(self, state, plan):
        return self.world.observe_plan(state, plan)

    def reset(self, scene, generator):
        return self.world.reset(scene, generator)

    def act(self, scene, state, generator):
        action, state = self.world.act(scene, state, generator)
        self.actions.append(action)
        return action, state


@pytest.fixture(scope="module")
def trip(tiny_checkpoint, tmp_path_factory):
    source = resolve_map("grid", seed=3)
    ref = reference_trip(source, seed=3, steps=600, av_route=None, demand=Demand(vehicles_per_hour_per_km=120.0),
                         radius_m=60.0, max_agents=96, warmup_s=30.0, workdir=tmp_path_factory.mktemp("trip"))
    log = ref.scene
    ctx = dict(roadmap=source.roadmap, log=log, route_lanes=route_lanes_for(source.roadmap, log, ref.route_edges),
               radius_m=60.0)
    av = make_policy("idm_route", PolicyContext(role="av", **ctx))
    world = Recorder(make_policy("world_model", PolicyContext(role="world", **ctx), checkpoint=str(tiny_checkpoint)))
    steps = log.num_steps - 1 - log.step
    final = closed_loop(mask_future(log), av, world, steps, torch.Generator().manual_seed(0))
    return source.roadmap, log, final, world.actions


def test_the_av_plan_is_inpainted_in_every_executed_frame(trip):
    _, log, final, actions = trip
    av, t0 = final.av_index, log.step
    assert len(actions) == 600
    err = torch.stack([torch.hypot(a.x[av] - final.traj.x[av, t0 + 1 + k], a.y[av] - final.traj.y[av, t0 + 1 + k])
                       for k, a in enumerate(actions)])
    assert err.max() < 1e-3, f"the model's AV frame left the AV's executed pose by {err.max():.4f} m"


def test_vehicles_keep_the_road_and_nothing_is_nan_over_the_trip(trip):
    roadmap, log, final, _ = trip
    on_road = OnRoad(roadmap)
    t0 = log.step
    traj = final.traj
    world_rows = ~final.meta.is_av
    assert torch.isfinite(traj.x[traj.valid]).all() and torch.isfinite(traj.heading[traj.valid]).all()
    was_off = torch.zeros(final.num_agents, dtype=torch.bool)  # logged agents that entered off the road
    was_off[:] = on_road.outside_boxes(traj.x[:, t0], traj.y[:, t0], traj.heading[:, t0], traj.length[:, t0],
                                       traj.width[:, t0]) > 0
    violations = 0
    for t in range(t0 + 1, final.num_steps):
        v = traj.valid[:, t] & world_rows & (final.meta.agent_type == AgentType.VEHICLE) & ~was_off
        d = on_road.outside_boxes(traj.x[v, t], traj.y[v, t], traj.heading[v, t], traj.length[v, t], traj.width[v, t])
        violations += int((d > 0).sum())
    assert violations == 0
    counts = traj.valid[world_rows, t0 + 1:].sum(0)
    assert counts.max() <= 60, "spawning is bounded by the free rows the model may use"


def test_the_world_never_moves_an_agent_into_a_collision(trip):
    _, log, final, _ = trip
    traj, av = final.traj, final.av_index
    new_collisions = 0
    for t in range(log.step + 1, final.num_steps):
        box = (traj.length[:, t], traj.width[:, t])
        now = overlapping_pairs(traj.x[:, t], traj.y[:, t], traj.heading[:, t], *box, traj.valid[:, t])
        before = overlapping_pairs(traj.x[:, t - 1], traj.y[:, t - 1], traj.heading[:, t - 1], *box,
                                   traj.valid[:, t - 1])
        for i, j in (now & ~before).nonzero().tolist():
            other = j if i == av else i
            still = (traj.valid[other, t - 1] and traj.x[other, t] == traj.x[other, t - 1]
                     and traj.y[other, t] == traj.y[other, t - 1])
            new_collisions += not ((i == av or j == av) and still)  # only the AV may drive into a held agent
    assert new_collisions == 0


def _cars(count: int) -> torch.Tensor:
    """Clean tokens ``[1, count, 4, 11]`` of 4.5 m x 1.9 m cars facing +x, all at the origin, valid at 4 frames."""
    from simgen.world.tokenizer import COS, SIZE, TYPE, VALID

    x0 = torch.zeros(1, count, 4, 11)
    x0[..., VALID] = 1.0
    x0[..., COS] = 1.0
    x0[..., TYPE] = -1.0
    x0[..., TYPE.start] = 1.0
    x0[..., SIZE] = torch.tensor([0.125, 0.375, 0.0])
    return x0


def test_push_apart_separates_boxes_and_leaves_given_rows_alone():
    from simgen.world.tokenizer import DELTA_SCALE_M, X, Y

    x0 = _cars(3)
    x0[0, 1, :, X] = 3.0 / DELTA_SCALE_M  # 3 m ahead of row 0: overlapping
    x0[0, 2, :, Y] = 30.0 / DELTA_SCALE_M  # 30 m to the side: free
    ref = torch.zeros(1, 3, 4, 2, dtype=torch.float64)
    movable = torch.tensor([[False, True, True]])
    out = push_apart(x0, ref, movable)
    assert torch.equal(out[0, 0], x0[0, 0]) and torch.equal(out[0, 2], x0[0, 2])
    gap = (out[0, 1, :, X] - out[0, 0, :, X]) * DELTA_SCALE_M  # m between centres
    assert (gap > 4.5).all(), gap  # no longer overlapping along the lane


def test_the_executed_frame_check_counts_corner_overlaps_as_collisions():
    """Two 4.5 m x 1.9 m cars whose corners overlap by 10 cm x 10 cm collide (the trip metric's exact boxes; WOSAC's
    rounded corners miss it); 10 cm apart they do not."""
    from simgen.metrics.features import CORNER_ROUNDING_FACTOR, BoxShape, rounded_box_signed_distance

    x, y = torch.tensor([0.0, 4.4, 0.0]), torch.tensor([0.0, 1.8, -2.05])
    heading, length, width = torch.zeros(3), torch.full((3,), 4.5), torch.full((3,), 1.9)
    pairs = overlapping_pairs(x, y, heading, length, width, torch.tensor([True, True, True]))
    assert pairs[0, 1] and pairs[1, 0] and not pairs[0, 2] and not pairs[1, 2]
    car = BoxShape(cos=torch.ones(1, dtype=torch.float64), sin=torch.zeros(1, dtype=torch.float64),
                   half_length=torch.full((1,), 2.25, dtype=torch.float64),
                   half_width=torch.full((1,), 0.95, dtype=torch.float64),
                   shrink=torch.full((1,), CORNER_ROUNDING_FACTOR * 0.95, dtype=torch.float64))
    wosac = rounded_box_signed_distance(torch.tensor([4.4], dtype=torch.float64),
                                        torch.tensor([1.8], dtype=torch.float64), car, car)
    assert wosac > 0, "WOSAC's rounded corners do not collide here"


def test_push_apart_moves_a_proposal_out_of_present_agents_way_never_them():
    """A free row's proposal (not ``solid``) gives way to a present agent it overlaps, which does not move."""
    from simgen.world.tokenizer import DELTA_SCALE_M, X

    x0 = _cars(2)
    x0[0, 1, :, X] = 3.0 / DELTA_SCALE_M  # the proposal, 3 m ahead of the present agent
    ref = torch.zeros(1, 2, 4, 2, dtype=torch.float64)
    movable, solid = torch.tensor([[True, True]]), torch.tensor([[True, False]])
    out = push_apart(x0, ref, movable, solid)
    assert torch.equal(out[0, 0], x0[0, 0])
    assert ((out[0, 1, :, X] - out[0, 0, :, X]) * DELTA_SCALE_M > 4.5).all()
    both = push_apart(x0, ref, movable)  # both present: each takes half
    assert (both[0, 0, :, X] < 0).all() and (both[0, 1, :, X] > x0[0, 1, :, X]).all()


def test_rollout_reports_trip_realism_against_reference_logs(world_logs, tmp_path):
    from tests.test_cli import simgen

    config = tmp_path / "grid.yaml"
    config.write_text("map: grid\nseed: 3\nduration_s: 10\nworld: idm\ntraffic: {warmup_s: 20}\n")
    out = tmp_path / "out"
    result = simgen("rollout", str(config), "--out", str(out), "--no-video", "--ref-logs", str(world_logs))
    assert result.returncode == 0, result.stderr
    realism = json.loads((out / "summary.json").read_text())["realism"]
    assert 0 <= realism["composite"] <= 1 and realism["windows_sim"] >= 1
    assert set(realism["jsd"]) >= {"valid_agents", "light_transitions"}
    empty = tmp_path / "no-trips"
    empty.mkdir()
    (empty / "logs.json").write_text(json.dumps({**json.loads((world_logs / "logs.json").read_text()), "trips": []}))
    result = simgen("rollout", str(config), "--out", str(tmp_path / "out2"), "--ref-logs", str(empty))
    assert result.returncode == 2 and "--trip-seconds" in result.stderr and not (tmp_path / "out2").exists()


def test_kinematic_limits_bound_acceleration_speed_and_turning():
    from simgen.world.constraints import ACCEL_LIMIT, SPEED_LIMIT, YAW_RATE_LIMIT, kinematic_limits

    g = torch.Generator().manual_seed(0)
    n = 200
    prev = torch.randn(n, 2, generator=g) * 50
    kind = torch.randint(1, 4, (n,), generator=g)
    direction = torch.nn.functional.normalize(torch.randn(n, 2, generator=g), dim=-1)
    prev_vel = direction * (torch.rand(n, 1, generator=g) * 0.9 * SPEED_LIMIT[kind][:, None])  # under the limit
    proposal = prev + prev_vel * 0.1 + torch.randn(n, 2, generator=g) * 3  # jittery: up to ~30 m/s² apart
    heading = torch.rand(n, generator=g) * 6
    x, y, h = kinematic_limits(proposal[:, 0], proposal[:, 1], heading + torch.randn(n, generator=g), prev[:, 0],
                               prev[:, 1], heading, prev_vel, kind)
    velocity = (torch.stack([x, y], -1) - prev) / 0.1
    assert ((velocity - prev_vel).norm(dim=-1) <= ACCEL_LIMIT[kind] * 0.1 + 1e-3).all()
    assert (velocity.norm(dim=-1) <= SPEED_LIMIT[kind] + 1e-3).all()
    assert ((h - heading).abs() <= YAW_RATE_LIMIT[kind] * 0.1 + 1e-5).all()
    # a feasible proposal (constant velocity) is kept as it is
    x2, y2, _ = kinematic_limits(prev[:, 0] + prev_vel[:, 0] * 0.1, prev[:, 1] + prev_vel[:, 1] * 0.1, heading,
                                 prev[:, 0], prev[:, 1], heading, prev_vel, kind)
    assert torch.allclose(x2, prev[:, 0] + prev_vel[:, 0] * 0.1, atol=1e-4)


def test_track_follows_a_smooth_plan_exactly_and_averages_out_plan_noise():
    from simgen.world.constraints import TRACK_FRAMES, track

    g = torch.Generator().manual_seed(0)
    n = 500
    prev = torch.randn(n, 2, generator=g, dtype=torch.float64) * 50
    vel = torch.randn(n, 2, generator=g, dtype=torch.float64) * 5
    accel = torch.randn(n, 2, generator=g, dtype=torch.float64)
    heading, yaw_rate, yaw_accel = (torch.randn(n, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.arange(1, TRACK_FRAMES + 1, dtype=torch.float64) * 0.1
    plan = prev[:, None] + vel[:, None] * t[:, None] + accel[:, None] * (t * t / 2)[:, None]  # [n, K, 2]
    plan_heading = heading[:, None] + yaw_rate[:, None] * t + yaw_accel[:, None] * t * t / 2
    x, y, h = track(plan[..., 0], plan[..., 1], plan_heading, prev[:, 0], prev[:, 1], heading, vel, yaw_rate)
    assert torch.allclose(x, plan[:, 0, 0]) and torch.allclose(y, plan[:, 0, 1])
    assert torch.allclose(h, plan_heading[:, 0])
    # 5 cm of independent noise per planned frame: executing frame 1 as planned would be an acceleration error of
    # about 0.05 / 0.1² = 5 m/s²; following the plan's fit is many times smaller
    noisy = plan + torch.randn(n, TRACK_FRAMES, 2, generator=g, dtype=torch.float64) * 0.05
    x, y, _ = track(noisy[..., 0], noisy[..., 1], plan_heading, prev[:, 0], prev[:, 1], heading, vel, yaw_rate)
    error = ((torch.stack([x, y], -1) - plan[:, 0]) / 0.01).norm(dim=-1)  # m/s² error of the executed step
    direct = ((noisy[:, 0] - plan[:, 0]) / 0.01).norm(dim=-1)
    assert error.mean() < direct.mean() / 10


def test_projection_turns_lanes_to_the_known_heading_not_a_noisy_token():
    from simgen.world.constraints import _nearest_lane
    from simgen.world.tokenizer import AGENT_CHANNELS, COS

    x0 = torch.zeros(1, 1, 3, AGENT_CHANNELS)
    x0[..., COS] = -1.0  # a noisy token facing backwards
    lanes = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])  # one lane point, direction +x (cos, sin)
    ref = torch.zeros(1, 1, 3, 2, dtype=torch.float64)
    valid = torch.ones(1, 1, dtype=torch.bool)
    assert (_nearest_lane(x0, ref, lanes, valid)[..., 3] == -1).all()  # unknown heading: the token's side
    known = torch.tensor([[[0.9, 0.1]]])  # the agent drives +x now
    assert (_nearest_lane(x0, ref, lanes, valid, known)[..., 3] == 1).all()


def test_soft_clip_fades_unlikely_tokens_but_leaves_free_rows_where_the_model_put_them():
    """Soft clipping scales a token's features by ``clamp(valid + 1, 0, 1)``, except the positions of rows without an
    anchor: those are absolute, and scaling them would pull a would-be new agent onto the AV."""
    from simgen.world.constraints import soft_clip
    from simgen.world.tokenizer import AGENT_CHANNELS, SIZE, VALID, X, Y

    x0 = torch.zeros(1, 2, 3, AGENT_CHANNELS)
    x0[..., VALID] = -0.5
    x0[..., X], x0[..., Y], x0[..., SIZE] = 4.0, -2.0, 1.0
    out = soft_clip(x0, torch.tensor([[True, False]]))
    assert torch.equal(out[..., VALID], x0[..., VALID])
    assert torch.allclose(out[0, 0, :, X:Y + 1], torch.tensor([2.0, -1.0]))  # anchored: faded with the token
    assert torch.allclose(out[0, 1, :, X:Y + 1], torch.tensor([4.0, -2.0]))  # free: kept
    assert torch.allclose(out[..., SIZE], torch.tensor(0.5))


def test_toward_lanes_moves_a_pose_across_onto_the_lane_it_faces():
    """``toward_lanes`` (the on-road check's third choice): weight 1 puts a pose at the foot of the perpendicular on
    the nearest lane with the lane's direction on the side it faces; weight 0 leaves it; nothing moves along the
    lane."""
    from simgen.world.constraints import toward_lanes

    xs = torch.arange(0.0, 21.0, dtype=torch.float64)
    lanes = torch.stack([xs, torch.zeros_like(xs), torch.ones_like(xs), torch.zeros_like(xs)], -1)  # along +x at y 0
    x, y = torch.tensor([5.3, 5.3, 5.3]), torch.tensor([1.0, 1.0, -0.8])
    heading = torch.tensor([0.3, 0.3, math.pi - 0.2])
    mx, my, mh = toward_lanes(x, y, heading, lanes)(torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(mx.float(), x, atol=1e-4)  # no move along the lane
    assert torch.allclose(my.float(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-4)
    assert abs(float(mh[0])) < 1e-6 and abs(float(mh[1]) - 0.3) < 1e-6
    assert abs(abs(float(mh[2])) - math.pi) < 1e-6  # facing -x: the lane's direction turned to that side
