"""Tokenizer round trips, the exact re-anchoring of noisy windows, the denoiser's masking and zero start, and
that training lowers the loss."""

import itertools
import math

import pytest
import torch

from simgen.io import load_logs
from simgen.types import LightState
from simgen.world.data import ClipDataset, MapContext, SizedBatches, collate, make_example
from simgen.world.denoiser import Denoiser, DenoiserConfig
from simgen.world.diffusion import add_noise, alpha_bar
from simgen.world.sampler import _reanchor
from simgen.world.tokenizer import (
    AGENT_COND, COS, HISTORY_OFFSETS, SIN, VALID, X, Y, agent_anchor, agent_velocity, decode_agents,
    decode_light_states, encode_agents, encode_light_states, reference,
)
from simgen.world.train import corrupt, loss_terms, lr_factor

from .conftest import FUTURE, TINY


def random_boxes(g, A=5, T=7):
    x = torch.rand(A, T, generator=g, dtype=torch.float64) * 200 + 1000
    y = torch.rand(A, T, generator=g, dtype=torch.float64) * 200 - 500
    heading = (torch.rand(A, T, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    size = torch.tensor([4.5, 1.9, 1.5]).expand(A, T, 3).clone()
    size[1] = torch.tensor([0.6, 0.6, 1.7])
    types = torch.tensor([1, 2, 3, 1, 1], dtype=torch.int8)[:A]
    valid = torch.rand(A, T, generator=g) > 0.2
    pose = torch.tensor([1100.0, -400.0, 0.7], dtype=torch.float64)
    return x, y, heading, size, types, valid, pose


def test_agents_round_trip_to_the_world_frame(generator):
    x, y, heading, size, types, valid, pose = random_boxes(generator)
    x[0] = 1000.0 + 1.2 * torch.arange(7, dtype=torch.float64)  # agent 0 cruises at 12 m/s along world x
    y[0] = -450.0
    valid[0] = True
    valid[1, 2], valid[1, 3] = False, True  # agent 1 enters now
    anchor = agent_anchor(x, y, valid, pose, current=3)
    velocity = agent_velocity(x, y, valid, pose, current=3)
    assert (anchor[~valid[:, 3]] == 0).all(), "agents absent now have no anchor"
    assert (velocity[~(valid[:, 2] & valid[:, 3])] == 0).all(), "no velocity without the frame before"
    assert torch.allclose(velocity[0].norm(), torch.tensor(12.0, dtype=torch.float64)), "m/s"
    entry = torch.tensor([3.0, 4.0], dtype=torch.float64).expand(len(x), 2)  # world frame, 5 m/s
    entered = agent_velocity(x, y, valid, pose, current=3, entry=entry)
    fresh = valid[:, 3] & ~valid[:, 2]
    assert torch.equal(entered[~fresh], velocity[~fresh]), "the entry velocity is only for agents entering now"
    heading_of = torch.atan2(entered[1, 1], entered[1, 0]) + pose[2]
    assert torch.allclose(entered[1].norm(), torch.tensor(5.0, dtype=torch.float64))
    assert torch.allclose(heading_of, torch.atan2(torch.tensor(4.0), torch.tensor(3.0)).double()), "AV frame"
    unknown = agent_velocity(x, y, valid, pose, current=3, entry=torch.full_like(entry, torch.nan))
    assert (unknown[1] == 0).all(), "an unknown (NaN) entry velocity is 0"
    ref = reference(anchor, velocity, torch.arange(7) - 3)
    channels = encode_agents(x, y, heading, size, types, valid, pose, ref)
    assert channels.shape == (5, 7, 11)
    assert (channels[..., 1:][~valid] == 0).all(), "features are zero where the agent is invalid"
    now = valid[:, 3]
    assert torch.allclose(channels[now, 3, X:Y + 1], torch.zeros(int(now.sum()), 2), atol=1e-6), \
        "positions are relative to the reference line, which passes through the anchor"
    assert channels[0, :, X:Y + 1].abs().max() < 1e-5, "a constant-velocity agent is 0 at every frame"
    back = decode_agents(channels, pose, ref)
    assert torch.equal(back.valid, valid)
    v = valid
    assert (back.x[v] - x[v]).abs().max() < 1e-4 and (back.y[v] - y[v]).abs().max() < 1e-4  # m
    assert torch.remainder(back.heading[v] - heading[v] + math.pi, 2 * math.pi).sub(math.pi).abs().max() < 1e-5
    assert torch.allclose(back.size[v], size[v], atol=1e-5)
    assert torch.equal(back.agent_type[v], types[:, None].expand(5, 7)[v])


def test_light_states_round_trip():
    state = torch.tensor([[LightState.STOP, LightState.CAUTION, LightState.GO, LightState.UNKNOWN]], dtype=torch.int8)
    channels = encode_light_states(state)
    assert (channels[0, 3] == 0).all(), "unknown states encode as zeros"
    assert torch.equal(decode_light_states(channels)[0, :3], state[0, :3])


def test_reanchoring_a_noisy_window_is_exact(generator):
    """Moving x_τ = sqrt(ᾱ) x0 + sqrt(1-ᾱ) ε to a new AV frame and new reference lines equals noising x0 in the
    new frame with the rotated noise."""
    x, y, heading, size, types, _, pose_a = random_boxes(generator, T=FUTURE)
    valid = torch.ones(5, FUTURE, dtype=torch.bool)
    pose_b = pose_a + torch.tensor([12.0, -3.0, 0.4], dtype=torch.float64)
    levels = torch.arange(1, FUTURE + 1) / FUTURE
    noise = torch.randn(1, 5, FUTURE, 11, generator=generator)
    frames = torch.arange(FUTURE)
    ref_a = reference(agent_anchor(x, y, valid, pose_a, current=1), agent_velocity(x, y, valid, pose_a, current=1),
                      frames - 1)
    ref_b = reference(agent_anchor(x, y, valid, pose_b, current=2), agent_velocity(x, y, valid, pose_b, current=2),
                      frames - 2)
    ref_b[2] = 0.0  # an agent that loses its anchor
    x_a = encode_agents(x, y, heading, size, types, valid, pose_a, ref_a)[None]
    x_b = encode_agents(x, y, heading, size, types, valid, pose_b, ref_b)[None]
    moved = _reanchor(add_noise(x_a, noise, levels[None]), pose_a[None], pose_b[None], levels, ref_a[None],
                      ref_b[None])
    dh = 0.4
    rotated = noise.clone()
    rotated[..., X] = math.cos(dh) * noise[..., X] + math.sin(dh) * noise[..., Y]
    rotated[..., Y] = -math.sin(dh) * noise[..., X] + math.cos(dh) * noise[..., Y]
    rotated[..., SIN] = math.cos(dh) * noise[..., SIN] - math.sin(dh) * noise[..., COS]
    rotated[..., COS] = math.sin(dh) * noise[..., SIN] + math.cos(dh) * noise[..., COS]
    expected = add_noise(x_b, rotated, levels[None])
    assert torch.allclose(moved, expected, atol=2e-5)
    assert alpha_bar(torch.tensor(0.0)) == 1.0


def test_the_amortized_staircase_shifts_onto_itself_and_executes_clean_frames():
    """One call takes frame k + 1 exactly to frame k's level before the next call (so the shift needs no re-noising),
    the frame about to be executed is clean on the schedule's grid, and the far end is pure noise."""
    from simgen.world.diffusion import staircase

    before, after = staircase(16), staircase(16, 0.0)
    assert torch.equal(after[1:], before[:-1])
    assert after[0] == 0 and before[-1] == 1
    assert (before.diff() > 0).all()
    noise_std = (1 - alpha_bar(before)).sqrt()
    assert noise_std[0] == 0, "the executed frame comes out of the previous call clean"
    assert noise_std[1] < 0.01 and noise_std[4] < 0.1, "the next half second is only refined"
    assert noise_std[-1] > 0.99


def test_prediction_with_a_data_scale_inverts_its_target_and_is_v_prediction_at_unit_scale(generator):
    """x̂_0 from the exact target is x_0 at every level and data scale; σ_d = 1 is plain v-prediction."""
    from simgen.world.diffusion import predict_clean, v_target

    x0 = torch.randn(2, 3, 6, 4, generator=generator, dtype=torch.float64) * 0.01
    noise = torch.randn(2, 3, 6, 4, generator=generator, dtype=torch.float64)
    level = torch.tensor([[0.0, 0.004, 0.016, 0.25, 0.9, 1.0]]).expand(2, 6)
    x_t = add_noise(x0, noise, level)
    for scale in (1.0, 0.003, torch.tensor([0.01, 0.02, 1.0, 3.0], dtype=torch.float64)):
        back, eps = predict_clean(x_t, v_target(x0, noise, level, scale), level, scale)
        assert torch.allclose(back, x0, atol=1e-9)
        assert torch.allclose(eps[:, :, 1:], noise[:, :, 1:], atol=1e-6), "the noise is recovered where there is some"
    a = alpha_bar(level)[:, None, :, None].double().sqrt()
    plain = a * noise - (1 - a * a).sqrt() * x0
    assert torch.allclose(v_target(x0, noise, level)[:, :, 1:], plain[:, :, 1:], atol=1e-6)


@pytest.fixture(scope="module")
def batch(world_logs):
    logs = load_logs(world_logs)
    context = MapContext.of(logs.roadmap())
    trip = logs.trip(0)
    return collate([make_example(trip, context, c, FUTURE) for c in (10, 40, 70)])


def test_examples_put_the_av_first_at_the_origin(batch):
    agents = batch["agents"]
    H = len(HISTORY_OFFSETS)
    assert batch["is_av"][:, 0].all()
    assert torch.allclose(agents[:, 0, H - 1, X:Y + 1], torch.zeros(3, 2), atol=1e-6)
    assert torch.allclose(agents[:, 0, H - 1, COS], torch.ones(3), atol=1e-6)
    assert (agents[:, 0, :, VALID] == 1).all()


def test_denoiser_starts_at_zero_and_ignores_padding(batch, generator):
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(**TINY))
    inp, _ = corrupt(batch, generator)
    agents_v, lights_v = model(inp)
    assert agents_v.shape == batch["agents"].shape and (agents_v == 0).all(), "AdaLN-Zero heads start at zero"
    for p in model.parameters():  # leave the zero start to test the masking of padded slots
        p.data.add_(torch.randn(p.shape, generator=generator) * 0.05)
    out, _ = model(inp)
    padded = inp.__class__(**{**inp.__dict__,
                              "agents": torch.cat([inp.agents, torch.randn_like(inp.agents[:, :2])], 1),
                              "agent_given": torch.cat([inp.agent_given, inp.agent_given[:, :2]], 1),
                              "agent_clean": torch.cat([inp.agent_clean, inp.agent_clean[:, :2]], 1),
                              "agent_mask": torch.cat([inp.agent_mask, torch.zeros_like(inp.agent_mask[:, :2])], 1),
                              "is_av": torch.cat([inp.is_av, torch.zeros_like(inp.is_av[:, :2])], 1),
                              "agent_cond": torch.cat([inp.agent_cond, torch.randn_like(inp.agent_cond[:, :2])], 1)})
    out_padded, _ = model(padded)
    A = inp.agents.shape[1]
    real = inp.agent_mask
    assert torch.allclose(out_padded[:, :A][real], out[real], atol=1e-5), "padding changed real slots' outputs"


def test_corrupt_gives_clean_context_and_supervises_the_rest(batch, generator):
    inp, targets = corrupt(batch, generator)
    H = len(HISTORY_OFFSETS)
    initialize = inp.noise_level[:, 0] > 0
    context = ~initialize
    assert (inp.noise_level[context, :H] == 0).all()
    assert inp.agent_given[context][:, :, :H][batch["agent_mask"][context]].all()
    assert not (targets["agent_loss"].any(-1) & inp.agent_given).any(), "given tokens are not supervised"
    invalid = batch["agents"][..., VALID] < 0
    assert not targets["agent_loss"][..., 1:][invalid].any(), "features of invalid tokens are not supervised"


def test_training_lowers_the_loss_on_a_fixed_batch(batch):
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(**TINY))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        terms = loss_terms(model, batch, torch.Generator().manual_seed(7))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_clip_dataset_splits_and_sizes(world_logs):
    train = ClipDataset([world_logs], FUTURE, "train")
    example = train[len(train) - 1]
    assert example["agents"].shape[1] == len(HISTORY_OFFSETS) + FUTURE
    with pytest.raises(ValueError, match="split"):
        ClipDataset([world_logs], FUTURE, "test")


def test_sized_batches_pad_less_than_random_batches(world_logs):
    train = ClipDataset([world_logs], FUTURE, "train")
    sized = list(itertools.islice(iter(SizedBatches(train, batch_size=4, pool=6, seed=1)), 6))
    again = list(itertools.islice(iter(SizedBatches(train, batch_size=4, pool=6, seed=1)), 6))
    assert all(torch.equal(a["agents"], b["agents"]) for a, b in zip(sized, again))  # seeded
    assert all(len(b["agents"]) == 4 for b in sized)
    agents = torch.cat([b["agent_mask"].sum(1) for b in sized])  # the round's 24 examples
    lights = torch.cat([b["light_mask"].sum(1) for b in sized])
    padded = sum(b["agent_mask"].numel() + b["light_mask"].numel() for b in sized)
    shuffled = torch.randperm(24, generator=torch.Generator().manual_seed(0)).view(6, 4)
    random_padded = sum(4 * int(agents[i].max() + lights[i].max()) for i in shuffled)
    assert padded < random_padded


def test_loader_workers_split_the_rounds_between_them(world_logs):
    """With N DataLoader workers, the first N rounds are the single-process run's first N rounds: no batch twice."""
    train = ClipDataset([world_logs], FUTURE, "train")
    alone = list(itertools.islice(iter(SizedBatches(train, batch_size=4, pool=3, seed=1)), 6))
    loader = torch.utils.data.DataLoader(SizedBatches(train, batch_size=4, pool=3, seed=1), batch_size=None,
                                         num_workers=2)
    parallel = list(itertools.islice(iter(loader), 6))
    key = sorted(b["agents"].sum().item() for b in alone)
    assert sorted(b["agents"].sum().item() for b in parallel) == key
    assert len(set(key)) == 6, "the six batches differ"


def test_time_budget_fits_the_decay_into_the_minutes_left(monkeypatch):
    """100 steps in 10 s with 48.2 s left (97 % of the minute): the run is re-planned to end at step 681; a slow
    stretch (a validation) lowers the plan only while it lasts; at the deadline the run stops."""
    from types import SimpleNamespace

    from simgen.world import train

    clock = [0.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: clock[0])
    budget = train.TimeBudget(minutes=1.0, every=100)
    module = SimpleNamespace(hparams=SimpleNamespace(total_steps=40000))
    trainer = SimpleNamespace(global_step=0, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(max_steps=40000)))

    def at(step, seconds):
        trainer.global_step, clock[0] = step, seconds
        budget.on_train_batch_end(trainer, module)
        return module.hparams.total_steps, trainer.fit_loop.epoch_loop.max_steps

    assert at(100, 0.0) == (40000, 40000)
    assert at(200, 10.0) == (681, 681)  # 10 steps/s, 48.2 s to the target
    assert at(300, 40.0) == (360, 360)  # a slow stretch: 3.3 steps/s, 18.2 s left
    assert at(400, 45.0) == (663, 663)  # back to 20 steps/s with 13.2 s left: the plan rises again
    assert lr_factor(662, 663) < lr_factor(662, 40000)
    trainer.should_stop = False
    at(401, 59.9)
    assert not trainer.should_stop
    at(402, 60.0)
    assert trainer.should_stop, "the deadline stops the run"


def test_learning_rate_warms_up_then_decays_to_zero_and_replans_on_resume():
    assert lr_factor(0, 1000) < lr_factor(19, 1000) == 1.0
    decay = [lr_factor(s, 1000) for s in range(20, 1001, 10)]
    assert all(a >= b for a, b in zip(decay, decay[1:])) and decay[-1] == 0.0
    assert lr_factor(800, 1000) < lr_factor(800, 3000)  # more --steps on resume: slower remaining decay


def golden_input():
    """A fixed, seeded input: 3 agents, 2 lights, 6 frames, 4 map polylines (one invalid)."""
    from simgen.world.denoiser import DenoiserInput

    g = torch.Generator().manual_seed(0)
    B, A, S, T, M, P = 1, 3, 2, 6, 4, 8
    return DenoiserInput(
        agents=torch.randn(B, A, T, 11, generator=g), agent_given=torch.arange(T).expand(B, A, T) < 2,
        agent_clean=torch.randn(B, A, T, 11, generator=g), agent_mask=torch.ones(B, A, dtype=torch.bool),
        is_av=torch.tensor([[True, False, False]]), agent_cond=torch.randn(B, A, AGENT_COND, generator=g),
        lights=torch.randn(B, S, T, 3, generator=g),
        light_given=torch.zeros(B, S, T, dtype=torch.bool), light_clean=torch.zeros(B, S, T, 3),
        light_cond=torch.randn(B, S, 4, generator=g), light_valid=torch.ones(B, S, T, dtype=torch.bool),
        light_mask=torch.ones(B, S, dtype=torch.bool), map_features=torch.randn(B, M, P, 13, generator=g),
        map_valid=torch.tensor([[True, True, True, False]]), noise_level=torch.linspace(0, 1, T)[None],
        frame_offsets=torch.arange(-1, T - 1))


def test_golden_output_of_a_tiny_seeded_denoiser():
    """Seeded init plus a seeded perturbation (AdaLN-Zero would give zeros): a stored slice, tolerance 1e-4."""
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(**TINY))
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.data.add_(torch.randn(p.shape, generator=g) * 0.1)
    agents_v, lights_v = model(golden_input())
    expected_agent_x = [-0.38512, 0.47289, -0.98625, 0.14629, -0.06771, 0.24841]
    expected_light_stop = [0.92259, 1.22377, 0.93575, 0.91166, 1.08623, 0.75407]
    assert torch.allclose(agents_v[0, 1, :, 1], torch.tensor(expected_agent_x), atol=1e-4)
    assert torch.allclose(lights_v[0, 0, :, 0], torch.tensor(expected_light_stop), atol=1e-4)


def test_warm_start_keeps_old_weights_and_zeroes_appended_inputs():
    """Fine-tuning from a checkpoint made before an input was appended: the network starts as the old one."""
    from simgen.world.train import warm_start

    torch.manual_seed(0)
    old = Denoiser(DenoiserConfig(**TINY))
    state = {k: v.clone() for k, v in old.state_dict().items()}
    state["agent_in.weight"] = state["agent_in.weight"][:, :-2]  # saved before two inputs were appended
    torch.manual_seed(1)
    new = Denoiser(DenoiserConfig(**TINY))
    assert warm_start(new, state) == ["agent_in.weight"]
    weight = new.state_dict()["agent_in.weight"]
    assert torch.equal(weight[:, :-2], state["agent_in.weight"]) and (weight[:, -2:] == 0).all()
    assert torch.equal(new.state_dict()["agent_in.bias"], state["agent_in.bias"])
    state["agent_in.bias"] = state["agent_in.bias"][:-1]
    with pytest.raises(ValueError, match="agent_in.bias"):
        warm_start(new, state)
