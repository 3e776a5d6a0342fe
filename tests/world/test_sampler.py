"""Sampler contracts on a tiny seeded checkpoint: one denoiser call per step (amortized) against K (full),
determinism, the WOSAC protocol's fixed rows, hard constraints in every executed frame, and checkpoint
integrity."""

import math
from dataclasses import replace

import pytest
import torch

from simgen.agents import PolicyContext, make_policy
from simgen.io import load_logs
from simgen.sim.env import step as env_step
from simgen.sim.rollout import mask_future
from simgen.metrics.features import light_violations
from simgen.types import DT_S, AgentType, LightState
from simgen.world.constraints import KERB_BAND_M, RIDER_SLACK_M, OnRoad, RedLights
from simgen.world.sampler import CheckpointError, FixedAgents, SamplerOptions, WorldModel, WorldSampler

STEPS = 12


@pytest.fixture(scope="module")
def scene(world_logs):
    logs = load_logs(world_logs)
    return logs.roadmap(), logs.scene(0)


def run(model, roadmap, start, options, steps=STEPS, seed=0, fixed=None, count=2):
    sampler = WorldSampler(model, roadmap, options, fixed=fixed)
    g = torch.Generator().manual_seed(seed)
    scenes = [start] * count
    carry = sampler.start(scenes, g)
    calls = [carry.calls]
    for _ in range(steps):
        actions, carry = sampler.step(scenes, carry, g)
        scenes = [env_step(s, [a]) for s, a in zip(scenes, actions)]
        calls.append(carry.calls)
    return scenes, calls


def test_amortized_makes_one_call_per_step_and_full_makes_k(tiny_checkpoint, scene):
    model = WorldModel.load(tiny_checkpoint)
    roadmap, log = scene
    start = mask_future(log)
    _, amortized = run(model, roadmap, start, SamplerOptions(kind="amortized", full_steps=4, spawn=False,
                                                              drive_av=True))
    _, full = run(model, roadmap, start, SamplerOptions(kind="full", full_steps=4, spawn=False, drive_av=True))
    assert amortized[0] == 4, "warm-up is one full denoise"
    assert all(b - a == 1 for a, b in zip(amortized, amortized[1:]))
    assert all(b - a == 4 for a, b in zip(full, full[1:]))


def test_rollouts_are_deterministic_and_keep_the_protocol_rows(tiny_checkpoint, scene):
    model = WorldModel.load(tiny_checkpoint)
    roadmap, log = scene
    options = SamplerOptions(spawn=False, drive_av=True)
    a, _ = run(model, roadmap, mask_future(log), options, seed=3)
    b, _ = run(model, roadmap, mask_future(log), options, seed=3)
    c, _ = run(model, roadmap, mask_future(log), options, seed=4)
    assert torch.equal(a[0].traj.x, b[0].traj.x) and torch.equal(a[1].traj.y, b[1].traj.y)
    assert not torch.equal(a[0].traj.x, c[0].traj.x)
    t0 = log.step
    rows = log.traj.valid[:, t0]
    for s in a:
        assert s.traj.valid[rows, t0 + 1:t0 + STEPS + 1].all(), "every agent of the window is simulated"
        assert not s.traj.valid[~rows, t0 + 1:].any(), "no agent is brought in"
        assert torch.isfinite(s.traj.x[rows]).all()
        assert torch.equal(s.traj.x[:, :t0 + 1], log.traj.x[:, :t0 + 1]), "history is untouched"


def _moved_sideways(on_road: OnRoad, traj, row: int, t: int, outside: float):
    """``traj`` with ``row``'s frames up to step ``t`` moved sideways (the normal of its heading at ``t``) so that
    its box there is ``outside`` m off the road (within 5 mm; negative: inside)."""
    shift = torch.linspace(-4.0, 4.0, 1601)
    normal = torch.stack([-torch.sin(traj.heading[row, t]), torch.cos(traj.heading[row, t])])
    n = len(shift)
    d = on_road.outside_boxes(traj.x[row, t] + shift * normal[0], traj.y[row, t] + shift * normal[1],
                              traj.heading[row, t].expand(n), traj.length[row, t].expand(n),
                              traj.width[row, t].expand(n))
    best = shift[(d - outside).abs().argmin()]
    x, y = traj.x.clone(), traj.y.clone()
    x[row, :t + 1] += best * normal[0]
    y[row, :t + 1] += best * normal[1]
    return replace(traj, x=x, y=y)


def test_vehicles_and_riding_cyclists_stay_on_the_road_in_every_executed_frame(tiny_checkpoint, scene):
    model = WorldModel.load(tiny_checkpoint)  # barely trained: it proposes off-road boxes all the time
    roadmap, log = scene
    on_road = OnRoad(roadmap)
    t0 = log.step
    logged_off = on_road.outside_boxes(log.traj.x[:, t0], log.traj.y[:, t0], log.traj.heading[:, t0],
                                       log.traj.length[:, t0], log.traj.width[:, t0]) > 0
    riders = (log.traj.valid[:, t0] & ~logged_off & ~log.meta.is_av).nonzero().flatten()[:4]  # ride on the road now
    assert len(riders) >= 4
    # half ride 6 cm inside the road's edge (in their lane: they keep inside it), half 1 cm (at the kerb: they may
    # graze it by RIDER_SLACK_M)
    at_kerb = torch.arange(len(riders)) % 2 == 1
    start = mask_future(log)
    traj = start.traj
    for row, kerb in zip(riders.tolist(), at_kerb.tolist()):
        traj = _moved_sideways(on_road, traj, row, t0, -0.01 if kerb else -0.06)
    edge = on_road.outside_boxes(traj.x[riders, t0], traj.y[riders, t0], traj.heading[riders, t0],
                                 traj.length[riders, t0], traj.width[riders, t0])
    assert torch.equal(edge >= -KERB_BAND_M, at_kerb) and (edge < 0).all()
    start = replace(start, traj=traj, meta=replace(start.meta, agent_type=start.meta.agent_type.index_fill(
        0, riders, int(AgentType.CYCLIST))))
    rider_slack = torch.zeros(log.num_agents).index_put((riders,), torch.where(at_kerb, RIDER_SLACK_M, 0.0))
    scenes, _ = run(model, roadmap, start, SamplerOptions(spawn=True, drive_av=False))
    for s in scenes:
        road_user = (s.meta.agent_type == AgentType.VEHICLE).index_fill(0, riders, True)  # not spawned cyclists
        for t in range(t0 + 1, t0 + STEPS + 1):
            v = s.traj.valid[:, t] & road_user & ~logged_off
            d = on_road.outside_boxes(s.traj.x[v, t], s.traj.y[v, t], s.traj.heading[v, t], s.traj.length[v, t],
                                      s.traj.width[v, t])
            slack = torch.where(s.meta.agent_type[v] == AgentType.VEHICLE, 0.0, rider_slack[v])
            assert (d <= slack).all(), f"vehicle or riding cyclist off the road at step {t}: {(d - slack).max():.3f} m"
            off = s.traj.valid[:, t] & s.traj.valid[:, t - 1] & (s.meta.agent_type == AgentType.VEHICLE) & logged_off
            now, before = (on_road.outside_boxes(s.traj.x[off, k], s.traj.y[off, k], s.traj.heading[off, k],
                                                 s.traj.length[off, k], s.traj.width[off, k]) for k in (t, t - 1))
            assert ((now <= 0) | (now <= before)).all(), "a vehicle already off the road moved farther off"
            back = s.traj.valid[:, t] & ~s.traj.valid[:, t - 1] & s.traj.valid[:, :t - 1].any(-1)
            assert not back.any(), f"an agent that left came back at step {t} (rows are never reused)"


def test_vehicles_never_run_a_red_light_in_an_executed_frame(tiny_checkpoint, scene):
    model = WorldModel.load(tiny_checkpoint)  # barely trained: its lights and its vehicles ignore each other
    roadmap, log = scene
    t0 = log.step
    scenes, _ = run(model, roadmap, mask_future(log), SamplerOptions(spawn=False, drive_av=True), steps=40)
    red = 0
    for s in scenes:
        traj = s.traj.index_axis("T", torch.arange(t0, t0 + 41))
        origin = torch.stack([traj.x[traj.valid].double().mean(), traj.y[traj.valid].double().mean()])
        moving = (traj.valid[:, 1:] & traj.valid[:, :-1] & (s.meta.agent_type == AgentType.VEHICLE)[:, None])[None]
        lights = s.lights.index_axis("T", torch.arange(t0, t0 + 41))
        x, y = (traj.x.double() - origin[0])[None], (traj.y.double() - origin[1])[None]
        assert not light_violations(roadmap, x, y, moving, lights, 1, origin).any(), "a vehicle ran a red light"
        red += int((lights.valid[:, 1:] & (lights.state[:, 1:] == LightState.STOP)).sum())
    assert red > 0, "the model's lights showed red"


def test_red_light_check_equals_the_violation_metric(scene):
    roadmap, log = scene
    check = RedLights(roadmap)
    g = torch.Generator().manual_seed(0)
    found = 0
    for t in range(log.step, log.num_steps - 1, 2):
        lights = log.lights.index_axis("T", torch.tensor([t, t + 1]))
        v = log.traj.valid[:, t] & log.traj.valid[:, t + 1] & (log.meta.agent_type == AgentType.VEHICLE)
        before = torch.stack([log.traj.x[v, t], log.traj.y[v, t]], -1).double()
        after = before + 4 * torch.randn(before.shape, generator=g, dtype=torch.float64)  # some cross a line
        origin = before.mean(0)
        xy = torch.stack([before, after], 1) - origin
        metric = light_violations(roadmap, xy[None, ..., 0], xy[None, ..., 1],
                                  torch.ones(1, len(before), 1, dtype=torch.bool), lights, 1, origin)[0, :, 0]
        assert torch.equal(check.runs(lights, before, after), metric)
        found += int(metric.sum())
    assert found >= 3


def test_fixed_agents_follow_their_trajectories_exactly(tiny_checkpoint, scene):
    model = WorldModel.load(tiny_checkpoint)
    roadmap, log = scene
    rows = torch.tensor([1])
    fixed = FixedAgents(rows=rows, x=log.traj.x[rows] + 0.5, y=log.traj.y[rows], heading=log.traj.heading[rows],
                        valid=log.traj.valid[rows])
    scenes, _ = run(model, roadmap, mask_future(log), SamplerOptions(spawn=True, drive_av=False), fixed=fixed)
    t0 = log.step
    steps = slice(t0 + 1, t0 + STEPS + 1)
    for s in scenes:
        assert torch.equal(s.traj.x[1, steps], (log.traj.x[1, steps] + 0.5).float())
        assert torch.equal(s.traj.y[1, steps], log.traj.y[1, steps])
        assert torch.equal(s.traj.valid[1, steps], log.traj.valid[1, steps])


def test_world_model_world_and_checkpoint_integrity(tiny_checkpoint, scene, tmp_path):
    roadmap, log = scene
    world = make_policy("world_model", PolicyContext(roadmap=roadmap, role="all", log=log),
                        checkpoint=str(tiny_checkpoint))
    out = world.rollouts(mask_future(log), 2, 3, torch.Generator().manual_seed(0))
    assert len(out) == 2 and out[0].step == log.step + 3
    bad = tmp_path / "world.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes())
    (tmp_path / "world.sha256").write_text("0" * 64 + "  world.pt\n")
    with pytest.raises(CheckpointError, match="SHA-256"):
        WorldModel.load(bad)
    with pytest.raises(ValueError, match="sampler"):
        make_policy("world_model", PolicyContext(roadmap=roadmap, role="all"), checkpoint=str(tiny_checkpoint),
                    sampler="fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="world_model.device: cpu"):
            make_policy("world_model", PolicyContext(roadmap=roadmap, role="all"), checkpoint=str(tiny_checkpoint),
                        device="cuda")


def test_the_network_runs_on_its_threads_and_the_loop_keeps_its_own(tiny_checkpoint, scene, monkeypatch):
    """The denoiser call uses ``SamplerOptions.threads``; the rule-based code around it keeps the loop's count."""
    from simgen.threads import torch_threads
    from simgen.world.denoiser import Denoiser

    roadmap, log = scene
    seen = []
    forward = Denoiser.forward
    monkeypatch.setattr(Denoiser, "forward", lambda self, batch: (seen.append(torch.get_num_threads()),
                                                                  forward(self, batch))[1])
    model = WorldModel.load(tiny_checkpoint)
    sampler = WorldSampler(model, roadmap, SamplerOptions(spawn=False, drive_av=True, threads=2))
    with torch_threads(1):
        carry = sampler.start([mask_future(log)], torch.Generator().manual_seed(0))
        sampler.step([mask_future(log)], carry, torch.Generator().manual_seed(1))
        assert torch.get_num_threads() == 1
    assert seen and set(seen) == {2}


def test_agents_beyond_the_radius_leave_the_world_models_scene(tiny_checkpoint, scene):
    roadmap, log = scene
    start = mask_future(log)
    t, traj, av = start.step, start.traj, start.av_index
    distance = torch.hypot(traj.x[:, t] - traj.x[av, t], traj.y[:, t] - traj.y[av, t])
    radius = float(distance[traj.valid[:, t]].median())  # about half the agents are beyond it now
    assert (traj.valid[:, t] & (distance > radius + 2.0)).any()
    world = make_policy("world_model", PolicyContext(roadmap=roadmap, role="world", log=log, radius_m=radius),
                        checkpoint=str(tiny_checkpoint))
    generator = torch.Generator().manual_seed(0)
    action, _ = world.act(start, world.reset(start, generator), generator)
    moved = action.valid & action.controlled
    assert moved.any()
    assert (torch.hypot(action.x - traj.x[av, t], action.y - traj.y[av, t])[moved] <= radius + 1.0).all()


def test_eval_scores_a_checkpoint_and_names_samplers(tiny_checkpoint, world_logs):
    from simgen.metrics.evaluate import EvalError, evaluate_worlds, world_spec

    table = evaluate_worlds(world_logs, [str(tiny_checkpoint)], rollouts=2, scenes=1, progress=False)
    assert 0 < table["worlds"][str(tiny_checkpoint)]["meta_metric"] < 1
    assert world_spec(f"{tiny_checkpoint}@full") == ("world_model", {"checkpoint": str(tiny_checkpoint),
                                                                     "sampler": "full"})
    with pytest.raises(EvalError, match="does not exist"):
        evaluate_worlds(world_logs, ["missing/world.pt"], rollouts=2, scenes=1, progress=False)
    with pytest.raises(EvalError, match="only the world model"):
        evaluate_worlds(world_logs, ["idm@full"], rollouts=2, scenes=1, progress=False)


def test_initialize_generates_a_valid_scene_on_the_road(tiny_checkpoint, scene):
    from simgen.sim.rollout import closed_loop

    model = WorldModel.load(tiny_checkpoint)
    roadmap, log = scene
    sampler = WorldSampler(model, roadmap, SamplerOptions(full_steps=4))
    pose = torch.stack([log.traj.x[0, log.step], log.traj.y[0, log.step], log.traj.heading[0, log.step]])
    init = sampler.initialize(pose, torch.Generator().manual_seed(0), num_agents=8, num_steps=20)
    init.validate()
    assert init.step == 10 and init.meta.is_av[0] and init.traj.valid[0, :11].all()
    assert abs(float(init.traj.x[0, 10]) - float(pose[0])) < 1e-3, "the AV is placed at its pose"
    assert abs(float(init.traj.y[0, 10]) - float(pose[1])) < 1e-3
    from simgen.world.constraints import BOX_SIZES

    for row in init.traj.valid[:, 10].nonzero().flatten().tolist():  # every box is one of the corpus's of its type
        box = [float(v[row, 10]) for v in (init.traj.length, init.traj.width, init.traj.height)]
        assert any(max(abs(u - c) for u, c in zip(box, b)) < 1e-5
                   for b in BOX_SIZES[AgentType(int(init.meta.agent_type[row]))]), (row, box)
    on_road = OnRoad(roadmap)
    t = torch.arange(11)
    for row in (init.traj.valid[:, 10] & (init.meta.agent_type == AgentType.VEHICLE)).nonzero().flatten()[1:]:
        d = on_road.outside_boxes(init.traj.x[row, t], init.traj.y[row, t], init.traj.heading[row, t],
                                  init.traj.length[row, t], init.traj.width[row, t])
        assert (d <= 0).all()
    world = make_policy("world_model", PolicyContext(roadmap=roadmap, role="world"), checkpoint=str(tiny_checkpoint))
    out = closed_loop(init, _Still(), world, 3, torch.Generator().manual_seed(0))
    assert out.step == 13


class _Still:
    """An AV that holds its pose (enough to drive the closed loop here)."""

    def reset(self, scene, generator):
        return None

    def act(self, scene, state, generator):
        from simgen.sim.env import hold_action

        return hold_action(scene, scene.meta.is_av), None


def test_sumo_program_lights_follow_the_signal_programs(tiny_checkpoint, scene):
    model = WorldModel.load(tiny_checkpoint)
    roadmap, log = scene
    scenes, _ = run(model, roadmap, mask_future(log), SamplerOptions(spawn=False, drive_av=True, model_lights=False),
                    steps=4, count=1)
    lights = scenes[0].lights
    assert lights.num_slots > 0
    for t in range(log.step + 1, log.step + 5):
        expected = roadmap.signal_state_at(log.start_step + t)[lights.signal_id[:, t].long()]
        assert torch.equal(lights.state[:, t], expected)


def test_the_shipped_checkpoint_loads_and_matches_its_digest():
    from simgen.agents.world_model import DEFAULT_CHECKPOINT

    model = WorldModel.load(DEFAULT_CHECKPOINT)
    assert model.sha256 == DEFAULT_CHECKPOINT.with_suffix(".sha256").read_text().split()[0]
    assert model.future == 16 and sum(p.numel() for p in model.denoiser.parameters()) > 1_000_000


def test_on_road_check_has_the_exact_sign(scene):
    """``outside_boxes`` takes the raster's value only where it cannot fall on the other side of the edge, or of
    any threshold the checks compare with (a kerb cyclist's slack, the kerb band), than the exact distance."""
    from simgen.metrics.features import signed_distance_to_rings
    from simgen.world.constraints import KERB_BAND_M, RIDER_SLACK_M, box_corners

    roadmap, log = scene
    on_road = OnRoad(roadmap)
    g = torch.Generator().manual_seed(0)
    a, _ = roadmap.road_edge_segments
    centre = a[torch.randint(len(a), (3000,), generator=g)].double()
    centre = centre + 2 * torch.randn(3000, 2, generator=g, dtype=torch.float64)
    heading = torch.rand(3000, generator=g, dtype=torch.float64) * 6.3
    length = 0.5 + 4 * torch.rand(3000, generator=g, dtype=torch.float64)
    width = length / 2.4
    fast = on_road.outside_boxes(centre[:, 0], centre[:, 1], heading, length, width)
    corners = box_corners(centre[:, 0], centre[:, 1], heading, length / 2, width / 2).reshape(-1, 2)
    exact = signed_distance_to_rings(corners, on_road.a, on_road.b).reshape(-1, 4).amax(-1)
    for threshold in (0.0, RIDER_SLACK_M, -KERB_BAND_M):
        assert ((fast > threshold) == (exact > threshold)).all()
    assert 0.2 < (exact > 0).float().mean() < 0.8  # boxes on both sides of the edge were tested
    assert (exact.abs() < 0.75).float().mean() > 0.1  # many of them where the raster alone could be wrong


def test_raster_distance_is_within_its_error_bound_on_every_tile(scene):
    """The bilinear raster, read from many tiles in one call, stays within ``CELL_M / sqrt(2)`` of the exact signed
    distance (the bound ``RASTER_SURE_M`` relies on): each point reads its own tile's grid."""
    from simgen.metrics.features import signed_distance_to_rings
    from simgen.world.constraints import CELL_M, TILE_M

    roadmap, _ = scene
    on_road = OnRoad(roadmap)
    g = torch.Generator().manual_seed(2)
    near = on_road.a[torch.randint(len(on_road.a), (3000,), generator=g)]
    points = near + 3.0 * torch.randn(3000, 2, generator=g, dtype=torch.float64)
    far = on_road.a.amax(0) + 5 * TILE_M + 100 * torch.rand(50, 2, generator=g, dtype=torch.float64)  # off the map
    points = torch.cat([points, far])
    raster = on_road.raster_distance(points).double()  # builds the tiles
    exact = signed_distance_to_rings(points, on_road.a, on_road.b)
    assert len(torch.unique(torch.floor(points / TILE_M), dim=0)) >= 4  # one call spanning several tiles
    assert (raster - exact).abs().max() <= CELL_M / math.sqrt(2) + 1e-4  # float32 grids
    assert torch.equal(on_road.raster_distance(points).double(), raster)  # built: the tile table, and beyond it
    assert torch.equal(on_road.raster_distance(points[:-50]).double(), raster[:-50])  # the table alone


def test_on_roads_exact_distance_from_each_tiles_own_segments_equals_the_whole_maps(scene):
    """``OnRoad.exact_distance`` (a tile's own segments and its raster corner's side) gives exactly the signed
    distance of the whole map's computation, near the edges and away from them."""
    from simgen.metrics.features import signed_distance_to_rings

    roadmap, _ = scene
    on_road = OnRoad(roadmap)
    g = torch.Generator().manual_seed(1)
    near = on_road.a[torch.randint(len(on_road.a), (2000,), generator=g)]
    points = torch.cat([near + 0.3 * torch.randn(2000, 2, generator=g, dtype=torch.float64),
                        near + 5.0 * torch.randn(2000, 2, generator=g, dtype=torch.float64)])
    exact = signed_distance_to_rings(points, on_road.a, on_road.b)
    assert torch.equal(on_road.exact_distance(points), exact)
    assert 0.2 < (exact > 0).float().mean() < 0.8 and (exact.abs() < 0.5).float().mean() > 0.2


def test_on_road_projection_moves_offroad_tokens_by_a_bisection_of_the_way_to_their_lane(scene):
    """Each vehicle token off the road moves a fraction w = k / 2^BISECTION_STEPS of the way to its nearest lane: w
    itself keeps it ``ROAD_MARGIN_M`` inside the road (or w = 1), and one step less does not (or w is the first
    step): the bisection's bracket, whose 63 candidate blends ``project`` looks up in one call."""
    from simgen.world.constraints import BISECTION_STEPS, ROAD_MARGIN_M, _blend, _nearest_lane
    from simgen.world.data import MapContext
    from simgen.world.tokenizer import X, Y, encode_agents, map_features

    roadmap, log = scene
    on_road = OnRoad(roadmap)
    t = log.step
    av = log.meta.is_av.nonzero().item()
    pose = torch.stack([log.traj.x[av, t], log.traj.y[av, t], log.traj.heading[av, t]]).double()[None]
    vehicles = (log.traj.valid[:, t] & (log.meta.agent_type == AgentType.VEHICLE)).nonzero().flatten()
    shift = torch.linspace(-10.0, 10.0, 41, dtype=torch.float64)  # sideways, m: frames on and off the road
    heading = log.traj.heading[vehicles, t].double()
    x = log.traj.x[vehicles, t].double()[:, None] - torch.sin(heading)[:, None] * shift
    y = log.traj.y[vehicles, t].double()[:, None] + torch.cos(heading)[:, None] * shift
    A, F = x.shape
    size = torch.stack([log.traj.length[vehicles, t], log.traj.width[vehicles, t],
                        log.traj.height[vehicles, t]], -1)[:, None].expand(A, F, 3)
    ref = torch.zeros(1, A, F, 2, dtype=torch.float64)
    x0 = encode_agents(x[None], y[None], heading[None, :, None].expand(1, A, F), size[None],
                       log.meta.agent_type[vehicles][None], torch.ones(1, A, F, dtype=torch.bool), pose, ref).float()
    feats, map_valid = map_features(MapContext.of(roadmap).bank, pose)
    lanes = feats[..., :4].reshape(1, -1, 4)
    lane_valid = (map_valid[..., None] & (feats[..., 4] > 0.5)).reshape(1, -1)
    movable = torch.ones(1, A, dtype=torch.bool)
    out = on_road.project(x0, pose, ref, lanes, lane_valid, movable)
    off = on_road.outside(x0, pose, ref) > -ROAD_MARGIN_M
    assert 40 < off.sum() < off.numel() - 40, "frames on and off the road"
    target = _nearest_lane(x0, ref, lanes, lane_valid)
    way = (target[..., :2] - x0[..., X:Y + 1]).double()
    w = ((out[..., X:Y + 1] - x0[..., X:Y + 1]).double() * way).sum(-1) / (way * way).sum(-1).clamp_min(1e-12)
    steps = 2 ** BISECTION_STEPS
    k = (w * steps).round()
    assert ((w * steps - k)[off].abs() < 1e-3).all() and (k[off] >= 1).all() and (k[off] <= steps).all()

    def margin(fraction):  # how far inside the margin the blends are (m, > 0: farther out than the margin)
        return on_road.outside(_blend(x0, target, fraction.float()), pose, ref) + ROAD_MARGIN_M

    inside, before = margin(k / steps), margin((k - 1) / steps)
    sure = 1e-3  # float rounding between the test's call and the projection's
    assert (inside[off & (k < steps)] <= sure).all(), "w keeps the token inside the margin"
    assert (before[off & (k > 1)] > -sure).all(), "one step less does not"


def test_on_road_projection_looks_up_only_the_road_of_held_tokens(scene):
    """Invalid tokens far away (a free row's noise) build no raster tile: a tile is built from the whole map on first
    use, and looking up every token made a step twice as slow with a further-trained checkpoint."""
    from simgen.world.constraints import TILE_M
    from simgen.world.tokenizer import COS, DELTA_SCALE_M, TYPE, VALID, X

    roadmap, _ = scene
    on_road = OnRoad(roadmap)
    pose = torch.cat([on_road.a[0], torch.zeros(1, dtype=torch.float64)])[None]  # on a road edge
    x0 = torch.zeros(1, 2, 3, 11)
    x0[..., VALID], x0[..., COS], x0[..., TYPE.start] = 1.0, 1.0, 1.0  # two vehicles, three frames
    x0[:, 1, :, VALID] = -1.0  # the second is not there ...
    x0[:, 1, :, X] = 2000.0 / DELTA_SCALE_M  # ... and its channels point 2 km away
    lanes = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])
    out = on_road.project(x0, pose, torch.zeros(1, 2, 3, 2), lanes, torch.ones(1, 1, dtype=torch.bool),
                          torch.ones(1, 2, dtype=torch.bool))
    assert torch.equal(out[:, 1], x0[:, 1]), "an invalid token is not moved"
    tiles = torch.tensor(list(on_road.index), dtype=torch.float64) * TILE_M
    assert len(tiles), "the vehicle's road was looked up"
    assert ((tiles - pose[0, :2]).norm(dim=-1) < 2 * TILE_M).all(), "no tile near the far token"


def _step_with_plan(sampler, start, carry, x, y, heading, valid, size=None, agent_type=None):
    """One executed frame of ``start`` whose plan holds every row at ``x, y, heading [A]`` (world frame) over the next
    ``TRACK_FRAMES`` frames (or puts them at ``[A, TRACK_FRAMES]``), with validity ``valid [A, TRACK_FRAMES]``
    (+1 / -1), and the rows' boxes ``size [A, 3]`` and types ``agent_type [A]`` (default: the scene's)."""
    from simgen.world import constraints as C
    from simgen.world.tokenizer import VALID, encode_agents

    t, traj, K = start.step, start.traj, C.TRACK_FRAMES
    keep = lambda v: v.double()[:, None].expand(-1, K) if v.ndim == 1 else v.double()  # noqa: E731
    if size is None:
        size = torch.stack([traj.length[:, t], traj.width[:, t], traj.height[:, t]], -1)
    agent_type = start.meta.agent_type if agent_type is None else agent_type
    plan = encode_agents(keep(x), keep(y), keep(heading), size[:, None].expand(-1, K, 3), agent_type,
                         torch.ones(start.num_agents, K, dtype=torch.bool), carry.pose[0], carry.ref[0, :, :K]).float()
    plan[..., VALID] = valid
    return sampler._action(0, start, plan, torch.zeros(start.lights.num_slots, 3), torch.arange(start.num_agents),
                           carry.pose[0], carry.ref[0, :, :K], carry.pose[0], carry, None,
                           torch.zeros(start.num_agents, dtype=torch.bool))


def _lane_pose(sampler, start, distance=20.0):
    """x, y, heading of the driving-lane point nearest ``distance`` m or more from the AV, facing along its lane."""
    t, traj, av = start.step, start.traj, start.av_index
    lanes = sampler.lanes
    away = (lanes[:, :2] - torch.stack([traj.x[av, t], traj.y[av, t]]).double()).norm(dim=-1)
    point = lanes[int(torch.where(away >= distance, away, math.inf).argmin())]
    return float(point[0]), float(point[1]), float(torch.atan2(point[3], point[2]))


def test_agents_enter_and_leave_on_the_plans_next_half_second_not_a_one_frame_blip(tiny_checkpoint, scene):
    """A free row whose plan is valid only in its next frame is not spawned; one valid over the next 0.5 s is. An
    agent whose plan drops it for one frame stays; one the plan has gone for 0.5 s leaves."""
    roadmap, log = scene
    sampler = WorldSampler(WorldModel.load(tiny_checkpoint), roadmap,
                           SamplerOptions(spawn=True, on_road=False, no_overlap=False))
    start = mask_future(log)
    t, traj = start.step, start.traj
    present = traj.valid[:, t] & ~start.meta.is_av
    free = ~traj.valid[:, :t + 1].any(-1)
    stay, leave = present.nonzero().flatten()[:2].tolist()
    blip, enter = free.nonzero().flatten()[:2].tolist()
    carry = sampler.start([start], torch.Generator().manual_seed(0))
    valid = torch.ones(start.num_agents, 5)
    valid[[stay, leave, blip, enter]] = torch.tensor([[-1.0, 1, 1, 1, 1], [1.0, -1, -1, -1, -1],
                                                      [1.0, -1, -1, -1, -1], [1.0, 1, 1, 1, 1]])
    x, y, heading = (v[:, t].clone() for v in (traj.x, traj.y, traj.heading))
    x[[blip, enter]], y[[blip, enter]], heading[[blip, enter]] = (torch.tensor(v) for v in _lane_pose(sampler, start))
    action = _step_with_plan(sampler, start, carry, x, y, heading, valid)
    assert action.valid[stay] and not action.valid[leave]
    assert action.valid[enter] and not action.valid[blip]


def test_on_trips_new_agents_enter_only_at_the_windows_edge(tiny_checkpoint, scene):
    """With ``enter_beyond_m`` and ``enter_within_m`` (the world model's trips: ``radius_m - ENTRY_BAND_M`` and
    ``radius_m``), a free row the plan makes valid 20 m or 70 m from the AV is not spawned; one 58 m away is, where
    the plan puts it."""
    roadmap, log = scene
    sampler = WorldSampler(WorldModel.load(tiny_checkpoint), roadmap,
                           SamplerOptions(spawn=True, on_road=False, no_overlap=False, enter_beyond_m=55.0,
                                          enter_within_m=60.0))
    start = mask_future(log)
    t, traj, av = start.step, start.traj, start.av_index
    near, far, beyond = (~traj.valid[:, :t + 1].any(-1)).nonzero().flatten()[:3].tolist()
    x, y, heading = (v[:, t].clone() for v in (traj.x, traj.y, traj.heading))
    for row, distance in ((near, 20.0), (far, 58.0), (beyond, 70.0)):
        x[row] = x[av] + distance * torch.cos(heading[av])
        y[row] = y[av] + distance * torch.sin(heading[av])
        heading[row] = heading[av]
    carry = sampler.start([start], torch.Generator().manual_seed(0))
    action = _step_with_plan(sampler, start, carry, x, y, heading, torch.ones(start.num_agents, 5))
    assert action.valid[far] and not action.valid[near] and not action.valid[beyond]
    assert abs(float(torch.hypot(action.x[far] - x[av], action.y[far] - y[av])) - 58.0) < 1e-3


def _trip_sampler(checkpoint, roadmap, start):
    sampler = WorldSampler(WorldModel.load(checkpoint), roadmap,
                           SamplerOptions(spawn=True, enter_beyond_m=55.0, enter_within_m=60.0))
    return sampler, sampler.start([start], torch.Generator().manual_seed(0))


def test_a_free_row_joins_the_window_empty_whatever_it_held(tiny_checkpoint, scene):
    """A free row the model did not compute last step (rows beyond the first ``SPARE_ROWS`` free ones) holds stale
    noise. When it joins, it starts as an empty row at the window's levels: nothing of what it held survives (it
    used to join as a nearly clean agent wherever the stale values put it, hundreds of metres away on a trip)."""
    from simgen.world.tokenizer import VALID, X, Y

    roadmap, log = scene
    start = mask_future(log)
    sampler, carry = _trip_sampler(tiny_checkpoint, roadmap, start)
    row = int(carry.rows[~start.traj.valid[carry.rows, :start.step + 1].any(-1)][0])  # a free row it computes
    carry.rows = carry.rows[carry.rows != row]  # as if it had not computed it
    carry.agents[:, row, :, X:Y + 1] = 90.0  # 450 m away
    carry.agents[:, row, :, VALID] = 1.0
    _, after = sampler.step([start], carry, torch.Generator().manual_seed(1))
    window = after.agents[0, row]  # frames 2..W of the joined row, then a fresh noise frame
    assert row in after.rows.tolist()
    assert window[:, X:Y + 1].abs().max() < 10.0, window[:, X:Y + 1]
    assert (window[:3, VALID] < 0).all(), "its near frames still say no agent"


def test_a_proposal_waiting_beyond_the_window_too_long_restarts_empty(tiny_checkpoint, scene):
    """A free row whose proposal has waited beyond the window for ``STALE_WAIT_S`` joins again empty, so a long trip
    does not drain: its free rows used to hold far-off proposals (450 m behind the AV) for minutes, and the default
    4-minute city trip had no agent for 150 s. A proposal in the entry band, or one that has not waited that
    long, is left alone."""
    from simgen.types import DT_S
    from simgen.world.sampler import STALE_WAIT_S
    from simgen.world.tokenizer import VALID, X, Y

    roadmap, log = scene
    start = mask_future(log)
    t, traj = start.step, start.traj
    limit = round(STALE_WAIT_S / DT_S)
    sampler, carry = _trip_sampler(tiny_checkpoint, roadmap, start)
    free = carry.rows[~traj.valid[carry.rows, :t + 1].any(-1)]
    far, near = int(free[0]), int(free[1])
    av = start.meta.is_av.nonzero().item()
    x, y, heading = traj.x[:, t].clone(), traj.y[:, t].clone(), traj.heading[:, t].clone()
    x[far] = traj.x[av, t] + 200.0  # beyond the window (60 m)
    x[near], y[near] = traj.x[av, t] + 57.0, traj.y[av, t]  # in the entry band (55-60 m)
    valid = torch.where(traj.valid[:, t], 1.0, -1.0)[:, None].expand(-1, 5).clone()
    valid[[far, near]] = 1.0
    carry.waited[0, [far, near]] = limit - 1
    _step_with_plan(sampler, start, carry, x, y, heading, valid)
    assert carry.waited[0, far] == limit and carry.waited[0, near] == 0
    carry.waited[0, free[2]] = limit - 1  # one step short: not restarted
    carry.agents[:, [far, int(free[2])], :, VALID] = 1.0
    carry.agents[:, [far, int(free[2])], :, X:Y + 1] = 40.0  # 200 m away
    _, after = sampler.step([start], carry, torch.Generator().manual_seed(1))
    window = after.agents[0, far]  # frames 2..W of the restarted row, then a fresh noise frame
    assert window[:, X:Y + 1].abs().max() < 10.0 and (window[:3, VALID] < 0).all()
    assert after.agents[0, free[2], :3, X:Y + 1].abs().min() > 20.0, "one step short of the wait: kept"


def test_a_waiting_proposal_changes_no_present_agents_plan(tiny_checkpoint, scene):
    """A free row's proposal is masked out of the other rows' attention and pushes no one: whatever it holds, the
    present agents' executed frames are the same."""
    from simgen.world.tokenizer import VALID, X, Y

    roadmap, log = scene
    start = mask_future(log)
    present = start.traj.valid[:, start.step]
    actions = []
    for value in (0.0, 1.0):
        sampler, carry = _trip_sampler(tiny_checkpoint, roadmap, start)
        free = carry.rows[~start.traj.valid[carry.rows, :start.step + 1].any(-1)]
        carry.agents[:, free, :, VALID] = 1.0
        carry.agents[:, free, :, X:Y + 1] = value  # on top of the AV, or 5 m ahead of it
        action, _ = sampler.step([start], carry, torch.Generator().manual_seed(1))
        actions.append(action[0])
    for name in ("x", "y", "heading", "valid"):
        assert torch.equal(getattr(actions[0], name)[present], getattr(actions[1], name)[present]), name


def test_a_new_agent_enters_at_its_plans_speed_not_from_rest(tiny_checkpoint, scene):
    """A new agent has one executed frame and so no measured velocity. It enters at the speed of its plan, and its
    next frame follows a plan at that speed exactly; taken as zero, the acceleration limit held it to 0.6 m/s."""
    from simgen.world.constraints import TRACK_FRAMES

    roadmap, log = scene
    sampler = WorldSampler(WorldModel.load(tiny_checkpoint), roadmap,
                           SamplerOptions(spawn=True, on_road=False, no_overlap=False))
    now = mask_future(log)
    t, traj, av = now.step, now.traj, now.av_index
    row = int((~traj.valid[:, :t + 1].any(-1)).nonzero()[0])
    speed, heading = 10.0, float(traj.heading[av, t])
    x0 = float(traj.x[av, t]) + 30.0 * torch.cos(torch.tensor(heading))
    y0 = float(traj.y[av, t]) + 30.0 * torch.sin(torch.tensor(heading))
    carry = sampler.start([now], torch.Generator().manual_seed(0))
    valid = torch.where(traj.valid[:, t:t + 1], 1.0, -1.0).expand(-1, TRACK_FRAMES).clone()
    valid[row] = 1.0
    for step in range(2):  # the row is planned along the AV's heading at 10 m/s: frames `step + 1 ..`
        k = torch.arange(step + 1, step + 1 + TRACK_FRAMES, dtype=torch.float64) * speed * DT_S
        x = traj.x[:, now.step].double()[:, None].repeat(1, TRACK_FRAMES)
        y = traj.y[:, now.step].double()[:, None].repeat(1, TRACK_FRAMES)
        h = traj.heading[:, now.step].double()[:, None].repeat(1, TRACK_FRAMES)
        x[row], y[row], h[row] = x0 + k * math.cos(heading), y0 + k * math.sin(heading), heading
        action = _step_with_plan(sampler, now, carry, x, y, h, valid)
        assert action.valid[row]
        now = env_step(now, [action])
        traj = now.traj
    moved = float(torch.hypot(traj.x[row, now.step] - traj.x[row, now.step - 1],
                              traj.y[row, now.step] - traj.y[row, now.step - 1])) / DT_S
    assert abs(moved - speed) < 0.05, f"entered at {moved:.2f} m/s, planned {speed} m/s"


def test_on_trips_agents_leave_only_through_the_windows_edge(tiny_checkpoint, scene):
    """On trips, an agent leaves the window as in the logs, by crossing its edge: its last frame is at least
    ``radius_m - ENTRY_BAND_M`` from the AV. The tiny model's validity alone removes agents anywhere."""
    from simgen.sim.rollout import closed_loop
    from simgen.world.sampler import ENTRY_BAND_M

    roadmap, log = scene
    ctx = PolicyContext(roadmap=roadmap, role="world", log=log, radius_m=40.0)
    world = make_policy("world_model", ctx, checkpoint=str(tiny_checkpoint))
    av = make_policy("log_replay", replace(ctx, role="av"))
    start = mask_future(log)
    out = closed_loop(start, av, world, 20, torch.Generator().manual_seed(0))
    steps, traj, av = slice(start.step, out.step + 1), out.traj, out.av_index
    others = traj.valid[:, steps].clone()
    others[av] = False
    distance = torch.hypot(traj.x[:, steps] - traj.x[av, steps], traj.y[:, steps] - traj.y[av, steps])
    assert others[:, 0].sum() >= 3
    left = others[:, :-1] & ~others[:, 1:]
    assert (distance[:, :-1][left] >= 40.0 - ENTRY_BAND_M).all(), distance[:, :-1][left]


def test_a_vehicle_heading_off_the_road_is_steered_back_onto_its_lane_not_held(tiny_checkpoint, scene):
    """A moving vehicle turned 30 degrees toward the kerb, whose plan keeps going straight, reaches the road's edge
    within a second. Every executed frame stays on the road, and it keeps moving instead of freezing at the kerb
    (the on-road check's third choice: steered toward its lane)."""
    roadmap, log = scene
    sampler = WorldSampler(WorldModel.load(tiny_checkpoint), roadmap, SamplerOptions(spawn=False, no_overlap=False))
    scene_now = mask_future(log)
    t, traj = scene_now.step, scene_now.traj
    speed = torch.hypot(traj.vel_x[:, t], traj.vel_y[:, t])
    moving = traj.valid[:, t] & ~scene_now.meta.is_av & (scene_now.meta.agent_type == AgentType.VEHICLE) & (speed > 3)
    agent = int(moving.nonzero()[0])
    turned = traj.heading[agent, t] + 0.5
    on_road = OnRoad(roadmap)
    carry = sampler.start([scene_now], torch.Generator().manual_seed(0))
    x, y = traj.x[:, t].clone(), traj.y[:, t].clone()
    heading = traj.heading[:, t].clone()
    heading[agent] = turned
    steps, moved = 20, []
    for _ in range(steps):
        # the plan: every other row holds its pose; the agent drives straight on along ``turned`` at its speed
        px, py, ph = x.clone(), y.clone(), heading.clone()
        px[agent] = x[agent] + speed[agent] * DT_S * torch.cos(turned)
        py[agent] = y[agent] + speed[agent] * DT_S * torch.sin(turned)
        ph[agent] = turned
        action = _step_with_plan(sampler, scene_now, carry, px, py, ph, torch.ones(scene_now.num_agents, 5))
        scene_now = env_step(scene_now, [action])
        d = on_road.outside_boxes(action.x[agent:agent + 1], action.y[agent:agent + 1],
                                  action.heading[agent:agent + 1], action.length[agent:agent + 1],
                                  action.width[agent:agent + 1])
        assert float(d) <= 0, f"off the road by {float(d):.3f} m"
        moved.append(float(torch.hypot(action.x[agent] - x[agent], action.y[agent] - y[agent])))
        x, y, heading = action.x.clone(), action.y.clone(), action.heading.clone()
    assert min(moved) > 0.1, f"held at the kerb: steps of {min(moved):.3f} m"


def test_every_box_of_the_sumo_logs_is_in_the_catalogue_new_agents_take(world_logs):
    """``BOX_SIZES`` are the training corpus's boxes: SUMO's default vType sizes of the demand's classes. Every agent
    of a SUMO log has one of them (a change of SUMO's defaults or of the demand's classes fails here)."""
    from simgen.world.constraints import BOX_SIZES

    logs = load_logs(world_logs)
    seen = set()
    for scene in [logs.scene(i) for i in range(len(logs))] + [logs.trip(0)]:
        traj, valid = scene.traj, scene.traj.valid
        box = torch.stack([traj.length[valid], traj.width[valid], traj.height[valid]], -1)
        kind = scene.meta.agent_type[:, None].expand_as(valid)[valid]
        seen |= {(AgentType(k), *(round(v, 3) for v in b)) for k, b in zip(kind.tolist(), box.tolist())}
    missing = [(k, *b) for k, *b in seen
               if not any(max(abs(u - v) for u, v in zip(b, c)) < 1e-3 for c in BOX_SIZES.get(k, ()))]
    assert not missing, missing
    assert {AgentType.VEHICLE, AgentType.PEDESTRIAN, AgentType.CYCLIST} <= {k for k, *_ in seen}


def test_a_new_agent_takes_the_catalogue_box_of_its_type_nearest_the_models(tiny_checkpoint, scene):
    """The model's box for a spawned row is half-formed (on the default city trip: 0.46 m x 1.12 m vehicles, 4 m
    pedestrians). A new agent takes the ``BOX_SIZES`` entry of its type nearest it: a 0.5 m x 1.1 m vehicle is a
    passenger car, a 6.8 m x 2.3 m one a truck, a 4 m x 1.6 m pedestrian a pedestrian."""
    roadmap, log = scene
    sampler = WorldSampler(WorldModel.load(tiny_checkpoint), roadmap,
                           SamplerOptions(spawn=True, on_road=False, no_overlap=False))
    start = mask_future(log)
    t, traj, av = start.step, start.traj, start.av_index
    rows = (~traj.valid[:, :t + 1].any(-1)).nonzero().flatten()[:3]
    x, y, heading = (v[:, t].clone() for v in (traj.x, traj.y, traj.heading))
    size = torch.stack([traj.length[:, t], traj.width[:, t], traj.height[:, t]], -1)
    agent_type = start.meta.agent_type.clone()
    boxes = [(0.5, 1.1, 1.0), (6.8, 2.3, 2.0), (4.0, 1.6, 1.6)]
    kinds = [AgentType.VEHICLE, AgentType.VEHICLE, AgentType.PEDESTRIAN]
    for k, (row, box, kind) in enumerate(zip(rows.tolist(), boxes, kinds)):
        x[row], y[row], heading[row] = x[av] + 10.0 * (k + 1), y[av], heading[av]
        size[row], agent_type[row] = torch.tensor(box), kind
    carry = sampler.start([start], torch.Generator().manual_seed(0))
    action = _step_with_plan(sampler, start, carry, x, y, heading, torch.ones(start.num_agents, 5), size, agent_type)
    got = [(round(float(action.length[r]), 3), round(float(action.width[r]), 3)) for r in rows]
    assert got == [(5.0, 1.8), (7.1, 2.4), (0.215, 0.478)]
    assert [AgentType(int(action.agent_type[r])) for r in rows] == kinds


def test_a_new_vehicle_enters_only_facing_along_its_lane(tiny_checkpoint, scene):
    """A free row planned on a driving lane enters facing the lane's direction, and not facing against it (the
    model proposed 3 of 7 new vehicles against a one-way street on the default city trip, which then stood nose to
    nose with the AV). The wrong-way proposal restarts empty at the next step."""
    from simgen.world.sampler import STALE_WAIT_S

    roadmap, log = scene
    sampler = WorldSampler(WorldModel.load(tiny_checkpoint), roadmap,
                           SamplerOptions(spawn=True, on_road=False, no_overlap=False))
    start = mask_future(log)
    t, traj = start.step, start.traj
    along, against = (~traj.valid[:, :t + 1].any(-1)).nonzero().flatten()[:2].tolist()
    px, py, direction = _lane_pose(sampler, start)
    x, y, heading = (v[:, t].clone() for v in (traj.x, traj.y, traj.heading))
    agent_type = start.meta.agent_type.clone()
    for row, h in ((along, direction), (against, direction + math.pi)):
        x[row], y[row], heading[row], agent_type[row] = px, py, h, AgentType.VEHICLE
    size = torch.stack([traj.length[:, t], traj.width[:, t], traj.height[:, t]], -1)
    size[[along, against]] = torch.tensor([5.0, 1.8, 1.5])
    carry = sampler.start([start], torch.Generator().manual_seed(0))
    action = _step_with_plan(sampler, start, carry, x, y, heading, torch.ones(start.num_agents, 5), size, agent_type)
    assert action.valid[along] and not action.valid[against]
    assert carry.waited[0, against] >= round(STALE_WAIT_S / DT_S) and carry.waited[0, along] == 0
