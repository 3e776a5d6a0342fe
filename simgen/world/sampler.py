"""Sampling loops of the world model, written out side by side: ``amortized``, ``full`` and ``initialize``.

All loops work on a batch of B scenes that share one step counter (B
rollouts of one scene window, or one trip), given as a list of
``SceneState`` (their executed history; nothing of the future). Each
simulation step returns, per scene, the next frame of every row the model
drives and the next light states.

Notation
--------

| symbol | meaning |
|---|---|
| W | future frames in the window (``WorldModel.future``) |
| K | denoising steps of a full denoise (``full_steps``, 16) |
| τ_k | noise level of future frame k = 1..W before a call |
| x̂_0, ε̂ | the clean sample and noise the denoiser's v implies |
| 𝒞 | the constraints (``simgen.world.constraints``), applied to x̂_0 in every call |

``amortized`` (SceneDiffuser++; the schedule is ours)
----------------------------------------------------

1. Warm-up: denoise the whole window from pure noise with K DDIM steps (each
   step applies 𝒞), then re-noise frame k to ``τ_k`` with fresh noise.
2. Every simulation step, **one** denoiser call: with the window at levels
   ``τ_k = (k / W)³`` (``diffusion.staircase``), predict x̂_0, apply 𝒞, and
   take each frame one DDIM step to ``((k - 1) / W)³``. Frame 1 reaches level
   0: it is clean and is executed.
3. Shift: frames 2..W become 1..W-1 (already at their new levels), and a
   pure-noise frame is appended as frame W.
4. The window lives in the AV frame of the step it was made at. Before a
   call it is moved to the AV's new pose; with ``x_τ = sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε``
   and isotropic ε, a rigid motion ``x -> R x + d`` of x_0 is exactly
   ``x_τ -> R x_τ + sqrt(ᾱ) d`` of the sample.

``full`` (the baseline: replanning)
-----------------------------------

Every ``replan_every`` steps, denoise a fresh pure-noise window with K DDIM
steps (diffusers' ``DDIMScheduler`` timesteps; 𝒞 at each), then execute its
frames one per step until the next replan. K denoiser calls per replan.

``initialize``
--------------

Generate a whole clip, context frames included, from noise with K steps:
agents and light states around the AV's pose, optionally with some agents
given (``inpaint``). The context frames become the initial scene's history.

Rows
----

The model computes only the rows it needs: rows valid at some context frame
(occupied) and, when it may spawn (``spawn=True``), ``SPARE_ROWS`` rows free
that no agent has ever used (rows are never reused, docs/FORMATS.md). A free
row joins the window empty: validity -1 and features 0 at every frame, noised
to the window's levels. (Before, a row the model had not computed kept its
warm-up noise and every step's re-anchoring shift, so it joined as a
nearly clean agent hundreds of metres away.)
Validity is read from the plan's next ``TRACK_FRAMES`` frames (0.5 s), like
the executed pose: a row is present when their mean validity is positive,
so a one-frame validity blip neither spawns nor removes an
agent. A spare row that turns valid is a new agent with a new object id, whose
type comes from the model and whose box is the corpus's box of that type
nearest the model's (a new vehicle must also face along its lane:
``constraints`` docstring, 8); rows that continue keep their logged
box size and type, and an agent that turns invalid has left for good (its
row stays empty). On trips (``enter_beyond_m``, set by the world-model world
to ``radius_m - ENTRY_BAND_M``, and ``enter_within_m`` = ``radius_m``) a new agent appears only at the window's
edge, as in the logs, which crop the city to the window: an agent enters it by
crossing its edge (Berlin trip 0: all 27 logged entries at 58-60 m from the
AV). The model's own proposals (a free row it makes valid) start 5-60 m from
the AV (median 20 m); agents popping up
near the AV made the trips' entering-distance JSD 0.92 and their collision
JSD 0.39 (the logged AV drives into them), against 0.014 and 0.061 with the
rule (4 Berlin trips, one run). A proposal outside the band waits: its row stays free, the model keeps planning
it, and it enters when it reaches the band (median 4.6 s later on the Berlin trips). One that has waited beyond
the window for ``STALE_WAIT_S`` restarts empty (``Carry.waited``): the model let such proposals drift hundreds
of metres behind the AV and hold every free row, and the default 4-minute city trip drained to no agent for
150 s (1.7 agents a step, SUMO's world 10.3; with the restart 10.5; 10 s restarted too often: the window filled
with 49 agents and the AV stood). Until then no one else
sees it: it is masked out of the other rows' attention (``agent_mask``) and gives way to present agents in
``push_apart`` without pushing them (``_solid``). With twice the training's ``SPARE_SLOTS`` free rows, a busy
street keeps more of its traffic: on the busy 60 s city trip of the model card, 10-11 agents from 15 s on, where 4
free rows drain it to 1-2 (SUMO's log: 25-36). Symmetrically, on trips an agent leaves only by crossing the
window's edge (``radius_m``, where the world removes it): rows with an agent now are kept valid (``keep_valid``).
The logs agree: 37 of the 38 exits on the two trips of ``simgen logs --map berlin --scenes 4 --seed 11 --workers 2
--trip-seconds 60`` are 58-60 m from the AV. A new agent enters at its plan's speed (``constraints`` docstring, 6);
the sampler keeps that velocity (``Carry.entry_velocity``) as the agent's velocity in the next call's context,
where its single executed frame cannot give one. With ``spawn=False`` (the WOSAC protocol) the rows are fixed and
kept valid.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from simgen.threads import torch_threads
from simgen.types import DT_S, Action, AgentType, LightState, RoadMap, SceneState
from simgen.world import constraints as C
from simgen.world.data import MAX_LIGHTS, SPARE_SLOTS, MapContext
from simgen.world.denoiser import Denoiser, DenoiserConfig, DenoiserInput
from simgen.world.diffusion import (
    add_noise,
    alpha_bar,
    ddim_step,
    level_of_timestep,
    make_scheduler,
    staircase,
    predict_clean,
)
from simgen.world.tokenizer import (
    AGENT_CHANNELS,
    COS,
    HISTORY_OFFSETS,
    LIGHT_CHANNELS,
    DELTA_SCALE_M,
    SIN,
    VALID,
    X,
    Y,
    agent_anchor,
    agent_condition,
    agent_velocity,
    decode_agents,
    decode_light_states,
    encode_agents,
    encode_light_states,
    light_condition,
    map_features,
    reference,
    sigma_data,
    wrap,
)

SamplerKind = Literal["amortized", "full"]
FULL_STEPS = 16
SPARE_ROWS = 2 * SPARE_SLOTS  # free rows a step computes when it may spawn (docstring, Rows; training has SPARE_SLOTS)
STOP_FRACTIONS = 256  # a vehicle held at a red light stops within 1/256 of its step behind the line
ENTRY_BAND_M = 5.0  # trips: new agents appear within this distance of the window's edge (docstring, Rows)
STALE_WAIT_S = 30.0  # trips: a free row whose proposal waited this long beyond the window restarts (docstring, Rows)


class CheckpointError(ValueError):
    pass


def device_problem(device: str) -> str | None:
    """Why the network cannot run on ``device`` here (``SamplerOptions.device``), or None if it can."""
    if device == "cpu" or (device.startswith("cuda") and torch.cuda.is_available()):
        return None
    return f"torch {torch.__version__} sees no CUDA device"


@dataclass(frozen=True)
class WorldModel:
    """A trained denoiser and the window it was trained for."""

    denoiser: Denoiser
    future: int
    sha256: str = ""

    @classmethod
    def load(cls, path: str | Path) -> WorldModel:
        """Load ``world.pt`` (``export_checkpoint``); a ``world.sha256`` beside it must match the file's digest."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"world-model checkpoint {path} does not exist")
        blob = path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        expected_file = path.with_suffix(".sha256")
        if expected_file.exists():
            expected = expected_file.read_text().split()[0]
            if expected != digest:
                raise CheckpointError(f"{path}: SHA-256 {digest} does not match {expected_file} ({expected}); "
                                      "the file is corrupt or was replaced: restore it from git")
        data = torch.load(path, map_location="cpu", weights_only=True)
        config = json.loads(data["config"])
        denoiser = Denoiser(DenoiserConfig(**config["denoiser"]))
        denoiser.load_state_dict(data["state_dict"])
        denoiser.eval()
        return cls(denoiser=denoiser, future=int(config["future"]), sha256=digest)


@dataclass(frozen=True)
class Context:
    """The executed history the model sees at one step, encoded (``WorldSampler._context``)."""

    agents: torch.Tensor  # [B, A, H, AGENT_CHANNELS] context frames of every row
    anchor: torch.Tensor  # [B, A, 2] float64 anchors: positions now, AV frame (m); 0 where not valid now
    velocity: torch.Tensor  # [B, A, 2] float64 velocities now, AV frame (m/s); 0 where not valid now and before
    ref: torch.Tensor  # [B, A, H + W, 2] float64 reference lines of the clip's frames (tokenizer docstring)
    anchored: torch.Tensor  # [B, A] valid now
    rider_slack: torch.Tensor  # [B, A] m: how far cyclists riding on the road now may graze its edge (constraints,
    # 4: decided when first seen, ``Carry.rider_slack``); NaN for the rows not held on it
    lights: torch.Tensor  # [B, S, H, LIGHT_CHANNELS]
    known: torch.Tensor  # [B, S, H] light state known


@dataclass
class Carry:
    """The amortized sampler's state between steps (per batch)."""

    agents: torch.Tensor  # [B, A, W, AGENT_CHANNELS] noisy window, AV frame of ``pose``, every scene row
    lights: torch.Tensor  # [B, S, W, LIGHT_CHANNELS]
    pose: torch.Tensor  # [B, 3] float64 world-frame AV pose the window is expressed in
    ref: torch.Tensor  # [B, A, W, 2] float64 reference lines (m, AV frame of ``pose``) the window is relative to
    plan: torch.Tensor | None = None  # full sampler: [B, A, W, C] clean plan and [B, S, W, 3] lights
    plan_lights: torch.Tensor | None = None
    plan_age: int = 0
    av_plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # x, y, heading [B, W] world frame
    next_object_id: int = 0
    calls: int = 0  # denoiser calls so far
    entry_velocity: torch.Tensor | None = None  # [B, A, 2] float64 world frame (m/s): new agents' velocity, NaN else
    rider_slack: torch.Tensor | None = None  # [B, A] m: each cyclist's slack, decided when first seen riding; NaN else
    rows: torch.Tensor | None = None  # rows the model computed last (their window is its plan; others hold noise)
    waited: torch.Tensor | None = None  # [B, A] steps each free row's proposal has waited beyond the window


@dataclass(frozen=True)
class FixedAgents:
    """User-fixed agents: scene ``rows [K]`` follow these world-frame trajectories ``[K, T]`` (scene steps;
    m, rad) exactly wherever ``valid``; the model plans everyone else around them."""

    rows: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    heading: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True)
class SamplerOptions:
    kind: SamplerKind = "amortized"
    full_steps: int = FULL_STEPS  # K
    replan_every: int = 1  # full sampler: steps executed per plan
    spawn: bool = True  # spare rows may become new agents (False: rows fixed and kept valid)
    drive_av: bool = False  # the model also drives the AV's row (WOSAC protocol)
    model_lights: bool = True  # False: light states are given (e.g. SUMO's programs), not generated
    on_road: bool = True
    no_overlap: bool = True
    enter_beyond_m: float = 0.0  # a new agent appears at least this far from the AV (the window's edge); 0: anywhere
    enter_within_m: float = math.inf  # ... and at most this far (the window's radius: the world removes it beyond)
    threads: int | None = None  # CPU threads of the denoiser call (None: torch's count when the sampler is made)
    device: str = "cpu"  # where the denoiser runs (cuda: the network only; constraints and the loop stay on the CPU)


class WorldSampler:
    """Runs the loops of the module docstring for one map."""

    def __init__(self, model: WorldModel, roadmap: RoadMap, options: SamplerOptions | None = None,
                 context: MapContext | None = None, fixed: FixedAgents | None = None):
        options = options or SamplerOptions()
        self.model = model
        self.fixed = fixed
        self.roadmap = roadmap
        self.options = options
        self.context = context or MapContext.of(roadmap)
        self.on_road = C.OnRoad(roadmap) if options.on_road else None
        self._lanes: torch.Tensor | None = None  # ``lanes``, built on first use
        self.red_lights = C.RedLights(roadmap)  # the executed frame's red-light check (``_stop_at_red``)
        # The network alone runs on several threads; the closed loop around it runs on one (``simgen.threads``).
        self.threads = options.threads or torch.get_num_threads()
        self.network = model.denoiser  # on ``options.device``: a copy where the model's weights live elsewhere
        if next(self.network.parameters()).device != torch.device(options.device):
            self.network = copy.deepcopy(model.denoiser).to(options.device)
        # diffusers' scheduler gives the DDIM timesteps of the warm-up, the full sampler and ``initialize``. Made here,
        # with the model: importing diffusers takes 1-2 s, a start-up cost like loading the weights, not a step's.
        self.scheduler = make_scheduler()
        W = model.future
        self.levels = staircase(W)  # τ_k before a call
        self.offsets = torch.tensor([*HISTORY_OFFSETS, *range(1, W + 1)])

    # --- inputs ------------------------------------------------------------------
    def _pose(self, scenes: list[SceneState]) -> torch.Tensor:
        t = scenes[0].step
        return torch.stack([torch.stack([s.traj.x[s.av_index, t], s.traj.y[s.av_index, t],
                                         s.traj.heading[s.av_index, t]]) for s in scenes]).double()

    def _context(self, scenes: list[SceneState], pose: torch.Tensor, carry: Carry | None = None) -> Context:
        """Context frames of every row (invalid before the scene's first step), their reference lines, and
        the lights with their known mask. An agent the sampler spawned at the last step has one executed frame;
        its velocity is the one it entered with (``Carry.entry_velocity``)."""
        t = scenes[0].step
        steps = torch.tensor([t + o for o in HISTORY_OFFSETS])
        inside = steps >= 0
        steps = steps.clamp_min(0)
        traj = [s.traj.index_axis("T", steps) for s in scenes]
        stack = {f: torch.stack([getattr(tr, f) for tr in traj]) for f in ("x", "y", "heading", "length", "width",
                                                                          "height", "valid")}
        size = torch.stack([stack["length"], stack["width"], stack["height"]], dim=-1)
        types = torch.stack([s.meta.agent_type for s in scenes])
        valid = stack["valid"] & inside
        now = len(HISTORY_OFFSETS) - 1
        anchor = agent_anchor(stack["x"].double(), stack["y"].double(), valid, pose, now)
        entry = torch.stack([torch.stack([s.traj.vel_x[:, t], s.traj.vel_y[:, t]], -1) for s in scenes])
        if carry is not None and carry.entry_velocity is not None:  # entered by the sampler: its entry velocity
            entry = torch.where(carry.entry_velocity.isnan(), entry.double(), carry.entry_velocity)
        velocity = agent_velocity(stack["x"].double(), stack["y"].double(), valid, pose, now, entry)
        ref = reference(anchor, velocity, self.offsets)
        agents = encode_agents(stack["x"].double(), stack["y"].double(), stack["heading"].double(), size, types,
                               valid, pose, ref[:, :, :len(HISTORY_OFFSETS)])
        state = torch.stack([s.lights.state[:, steps] for s in scenes])
        known = torch.stack([s.lights.valid[:, steps] for s in scenes]) & (state != LightState.UNKNOWN) & inside
        return Context(agents=agents, anchor=anchor, velocity=velocity, ref=ref, anchored=valid[..., now],
                       rider_slack=self._rider_slack(stack, types, valid[..., now], carry),
                       lights=encode_light_states(torch.where(known, state, 0)), known=known)

    def _rider_slack(self, frames: dict[str, torch.Tensor], types: torch.Tensor, now: torch.Tensor,
                     carry: Carry | None) -> torch.Tensor:
        """``Context.rider_slack [B, A]`` of the context ``frames``: cyclists valid ``now`` whose box is at most
        ``RIDER_SLACK_M`` off the road are held on it. A cyclist first seen within ``KERB_BAND_M`` of the edge (or
        beyond it) rides at the kerb and may graze it by ``RIDER_SLACK_M``; one first seen inside its lane keeps
        inside the edge (0). The first sight decides (kept in ``carry``), so a cyclist pushed to the edge does not
        become a kerb rider."""
        slack = torch.full(types.shape, torch.nan)
        riders = now & (types == AgentType.CYCLIST)
        if self.on_road is None or not riders.any():
            return slack
        b, a = riders.nonzero().unbind(-1)
        x, y, heading, length, width = (frames[f][b, a, -1] for f in ("x", "y", "heading", "length", "width"))
        outside = self.on_road.outside_boxes(x, y, heading, length, width)
        on = outside <= C.RIDER_SLACK_M
        seen = torch.where(outside >= -C.KERB_BAND_M, C.RIDER_SLACK_M, 0.0)
        if carry is not None and carry.rider_slack is not None:
            first = carry.rider_slack[b, a].isnan() & on
            carry.rider_slack[b[first], a[first]] = seen[first]
            seen = carry.rider_slack[b, a]
        slack[b, a] = torch.where(on, seen, torch.nan)
        return slack

    def _rows(self, scenes: list[SceneState], context: Context, fixed: torch.Tensor | None) -> torch.Tensor:
        """Scene rows the model computes this step (module docstring, "Rows")."""
        if fixed is not None:
            return fixed
        occupied = (context.agents[..., VALID] > 0).any(-1).any(0)  # [A]
        t = scenes[0].step  # rows are never reused: spawn only into rows no agent has used yet
        unused = ~torch.stack([s.traj.valid[:, :t + 1].any(-1) for s in scenes]).any(0)
        free = (unused & ~occupied).nonzero().flatten()[:SPARE_ROWS if self.options.spawn else 0]
        return torch.cat([occupied.nonzero().flatten(), free]).sort().values

    def _solid(self, context: Context, rows: torch.Tensor) -> torch.Tensor:
        """``[B, rows]`` rows other agents see (attend to, keep clear of): agents present now. A free row's proposal
        (docstring, "Rows") is not there yet."""
        return context.anchored[:, rows] | (not self.options.spawn)

    def _program(self, scene: SceneState, slots: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """SUMO's static signal programs: states ``[S, K]`` of light ``slots`` at scene ``steps``."""
        signal = scene.lights.signal_id[slots, scene.step].long()
        return torch.stack([self.roadmap.signal_state_at(scene.start_step + int(k))[signal] for k in steps], dim=-1)

    def _light_slots(self, scenes: list[SceneState], pose: torch.Tensor) -> torch.Tensor:
        lights = scenes[0].lights
        if lights.num_slots == 0:
            return torch.zeros(0, dtype=torch.long)
        t = scenes[0].step
        d = torch.hypot(lights.stop_x[:, t].double() - pose[0, 0], lights.stop_y[:, t].double() - pose[0, 1])
        return torch.argsort(d, stable=True)[:MAX_LIGHTS].sort().values

    def _input(self, scenes, pose, context: Context, agents_future, lights_future, levels_future, rows, slots,
               given) -> tuple[DenoiserInput, torch.Tensor, torch.Tensor]:
        """Assemble the denoiser input over ``rows`` and light ``slots``; also returns the lane points for
        on-road projection ``[B, N, 4]`` and their mask."""
        ctx_agents, ctx_lights, ctx_known = context.agents, context.lights, context.known
        B = len(scenes)
        H = len(HISTORY_OFFSETS)
        W = agents_future.shape[2]
        agents = torch.cat([ctx_agents[:, rows], agents_future[:, rows]], dim=2)
        agent_given = torch.zeros(B, len(rows), H + W, dtype=torch.bool)
        agent_given[:, :, :H] = True
        agent_clean = agents.clone()
        if given is not None:  # (mask [B, A, W], values [B, A, W, C]) of inpainted rows
            mask, values = given
            agent_given[:, :, H:] |= mask[:, rows]
            agent_clean[:, :, H:] = torch.where(mask[:, rows, :, None], values[:, rows], agent_clean[:, :, H:])
        is_av = torch.stack([s.meta.is_av[rows] for s in scenes])
        first = scenes[0]
        t = first.step
        lights_all = torch.cat([ctx_lights, lights_future], dim=2)[:, slots]
        light_given = torch.zeros(B, len(slots), H + W, dtype=torch.bool)
        light_given[:, :, :H] = True
        known_future = torch.ones(B, len(slots), W, dtype=torch.bool)
        light_clean = lights_all
        if not self.options.model_lights:  # SUMO's programs: the whole window is given
            light_given[:] = True
            program = self._program(first, slots, torch.arange(t + 1, t + W + 1))  # [S, W]
            light_clean = torch.cat([lights_all[:, :, :H], encode_light_states(program)[None].expand(B, -1, -1, -1)],
                                    dim=2)
        light_valid = torch.cat([ctx_known[:, slots], known_future], dim=2)
        signal = first.lights.signal_id[slots, t].long()
        stops = first.lights.index_axis("S", slots)
        cond = light_condition(stops.stop_x[:, t].double()[None], stops.stop_y[:, t].double()[None],
                               self.context.approach_heading[signal].double()[None], pose)
        feats, map_valid = map_features(self.context.bank, pose)
        levels = torch.cat([torch.zeros(B, H), levels_future.expand(B, W)], dim=1)
        inp = DenoiserInput(
            agents=agents, agent_given=agent_given, agent_clean=agent_clean,
            agent_mask=self._solid(context, rows), is_av=is_av,
            agent_cond=agent_condition(context.anchor[:, rows], context.velocity[:, rows], context.anchored[:, rows]),
            lights=lights_all,
            light_given=light_given, light_clean=light_clean, light_cond=cond,
            light_valid=light_valid, light_mask=torch.ones(B, len(slots), dtype=torch.bool),
            map_features=feats, map_valid=map_valid, noise_level=levels, frame_offsets=self.offsets)
        lanes = feats[..., :4].reshape(B, -1, 4)
        lane_valid = (map_valid[..., None] & (feats[..., 4] > 0.5)).reshape(B, -1)
        return inp, lanes, lane_valid

    def _given(self, scenes: list[SceneState], pose: torch.Tensor, ref: torch.Tensor, num_rows: int,
               av_plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        """Inpainted future tokens: (mask ``[B, A, W]``, values ``[B, A, W, C]``) of the fixed agents and the
        AV's plan (``x, y, heading [B, W]``, world frame, for steps t+1..t+W), or None. ``ref [B, A, W, 2]``:
        the future frames' reference lines."""
        if self.fixed is None and av_plan is None:
            return None
        B, W, t = len(scenes), self.model.future, scenes[0].step
        traj = scenes[0].traj
        mask = torch.zeros(B, num_rows, W, dtype=torch.bool)
        full = torch.zeros(B, num_rows, W, AGENT_CHANNELS)

        def put(rows: torch.Tensor, x, y, heading, valid, inside) -> None:  # x, y, heading, valid [B, K, W]
            size = torch.stack([traj.length[rows, t], traj.width[rows, t], traj.height[rows, t]], -1)
            full[:, rows] = encode_agents(x.double(), y.double(), heading.double(),
                                          size[None, :, None].expand(B, -1, W, 3), scenes[0].meta.agent_type[rows],
                                          valid, pose, ref[:, rows])
            mask[:, rows] = inside

        if self.fixed is not None:
            f = self.fixed
            steps = torch.arange(t + 1, t + W + 1).clamp_max(f.x.shape[1] - 1)
            inside = (torch.arange(t + 1, t + W + 1) < f.x.shape[1])[None, None].expand(B, len(f.rows), W)
            put(f.rows, *(v[:, steps][None].expand(B, -1, -1) for v in (f.x, f.y, f.heading)),
                f.valid[:, steps][None] & inside, inside)
        if av_plan is not None:
            av = torch.tensor([scenes[0].av_index])
            ones = torch.ones(B, 1, W, dtype=torch.bool)
            put(av, *(v[:, None] for v in av_plan), ones, ones)
        return mask, full

    # --- one denoiser call --------------------------------------------------------
    @torch.no_grad()
    def _denoise(self, scenes, pose, context: Context, carry: Carry, window_agents, window_lights, levels_future,
                 rows, slots) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x̂_0 and ε̂ of the future frames of ``rows`` and ``slots`` after 𝒞. Returns
        (agents x̂_0, agents ε̂, lights x̂_0, lights ε̂)."""
        H = len(HISTORY_OFFSETS)
        given = self._given(scenes, pose, context.ref[:, :, H:], window_agents.shape[1], carry.av_plan)
        inp, lanes, lane_valid = self._input(scenes, pose, context, window_agents, window_lights, levels_future,
                                             rows, slots, given)
        v_agents, v_lights = self._network(inp)
        carry.calls += 1
        B = len(scenes)
        levels = torch.cat([torch.zeros(B, H), levels_future.expand(B, -1)], dim=1)
        x0, eps = predict_clean(inp.agents, v_agents, levels, sigma_data(inp.agent_cond, self.offsets))
        l0, leps = predict_clean(inp.lights, v_lights, levels)
        x0, eps, l0, leps = x0[:, :, H:], eps[:, :, H:], l0[:, :, H:], leps[:, :, H:]
        movable = inp.is_av.logical_not() | self.options.drive_av  # [B, rows]
        if given is not None:
            movable &= ~given[0][:, rows].any(-1)
        x0 = self._constrain(x0, pose, context, rows, lanes, lane_valid, given, movable)
        if not self.options.model_lights:
            l0 = inp.light_clean[:, :, H:]
        return x0, eps, l0, leps

    @torch.inference_mode()
    def _network(self, inp: DenoiserInput) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's v for agents and lights, on ``SamplerOptions.device``; returned on the CPU."""
        with torch_threads(self.threads):
            v_agents, v_lights = self.network(inp.to(self.options.device))
        return v_agents.cpu(), v_lights.cpu()

    def _constrain(self, x0, pose, context: Context, rows, lanes, lane_valid, given, movable) -> torch.Tensor:
        """𝒞 on the future frames ``x0 [B, rows, W, C]`` (constraints docstring; the order matters: the given
        trajectories come last, so they hold exactly)."""
        H = len(HISTORY_OFFSETS)
        ref, anchored = context.ref[:, rows, H:], context.anchored[:, rows]
        now = context.agents[:, rows, H - 1]
        facing = torch.stack([now[..., COS], now[..., SIN]], -1) * anchored[..., None]
        if not self.options.spawn:
            x0 = C.keep_valid(x0, torch.ones(x0.shape[:2], dtype=torch.bool))
        edge = self.options.enter_beyond_m
        if edge > 0 and self.options.spawn:  # trips: agents enter and leave through the window's edge (docstring)
            x0 = C.keep_valid(x0, anchored)
        x0 = C.soft_clip(x0, anchored)
        if self.on_road is not None:
            x0 = self.on_road.project(x0, pose, ref, lanes, lane_valid, movable, context.rider_slack[:, rows],
                                      facing)
        if self.options.no_overlap:
            x0 = C.push_apart(x0, ref, movable, self._solid(context, rows))
        if given is not None:
            mask, values = given
            x0 = C.inpaint(x0, mask[:, rows], values[:, rows])
        return x0

    # --- loops ------------------------------------------------------------------------
    def start(self, scenes: list[SceneState], generator: torch.Generator) -> Carry:
        """Warm-up (amortized, step 1 of the docstring) or an empty plan (full)."""
        B, A, S = len(scenes), scenes[0].num_agents, scenes[0].lights.num_slots
        W = self.model.future
        pose = self._pose(scenes)
        carry = Carry(agents=torch.randn(B, A, W, AGENT_CHANNELS, generator=generator),
                      lights=torch.randn(B, S, W, LIGHT_CHANNELS, generator=generator), pose=pose,
                      ref=self._context(scenes, pose).ref[:, :, len(HISTORY_OFFSETS):],
                      next_object_id=int(torch.stack([s.meta.object_id for s in scenes]).max()) + 1,
                      entry_velocity=torch.full((B, A, 2), torch.nan, dtype=torch.float64),
                      rider_slack=torch.full((B, A), torch.nan), waited=torch.zeros(B, A, dtype=torch.long))
        if self.options.kind == "amortized":
            x0, l0 = self._full_denoise(scenes, carry, generator)
            carry.agents = _renoise(carry.agents, x0, self.levels, generator)
            carry.lights = _renoise(carry.lights, l0, self.levels, generator)
        return carry

    def _full_denoise(self, scenes, carry: Carry, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """K DDIM steps from pure noise over the whole window (constraints at each); clean agents and lights of
        every row ``[B, A, W, C]`` (rows the model did not compute stay as they were)."""
        pose = carry.pose
        B, A, W, _ = carry.agents.shape
        context = self._context(scenes, pose, carry)
        rows = self._rows(scenes, context, None if self.options.spawn else _protocol_rows(scenes))
        slots = self._light_slots(scenes, pose)
        agents = torch.randn(B, A, W, AGENT_CHANNELS, generator=generator)
        lights = torch.randn(B, carry.lights.shape[1], W, LIGHT_CHANNELS, generator=generator)
        self.scheduler.set_timesteps(self.options.full_steps)
        timesteps = self.scheduler.timesteps.tolist()
        for i, t in enumerate(timesteps):
            level = level_of_timestep(t).expand(W)
            nxt = level_of_timestep(timesteps[i + 1]).expand(W) if i + 1 < len(timesteps) else torch.zeros(W)
            x0, eps, l0, leps = self._denoise(scenes, pose, context, carry, agents, lights, level, rows, slots)
            agents[:, rows] = ddim_step(x0, eps, nxt[None].expand(B, W))
            lights[:, slots] = ddim_step(l0, leps, nxt[None].expand(B, W))
        carry.rows = rows
        return agents, lights

    def step(self, scenes: list[SceneState], carry: Carry, generator: torch.Generator
             ) -> tuple[list[Action], Carry]:
        """One simulation step: the next frame of every row the model drives, and the next light states."""
        pose = self._pose(scenes)
        B = len(scenes)
        W = self.model.future
        context = self._context(scenes, pose, carry)
        future_ref = context.ref[:, :, len(HISTORY_OFFSETS):]
        rows = self._rows(scenes, context, None if self.options.spawn else _protocol_rows(scenes))
        if self.options.kind == "amortized":
            carry.agents = _reanchor(carry.agents, carry.pose, pose, self.levels, carry.ref, future_ref)
            carry.pose, carry.ref = pose, future_ref
            fresh = rows[~torch.isin(rows, carry.rows)]  # free rows new to the window start empty (docstring, Rows)
            if len(fresh):
                window = carry.agents[:, fresh]
                carry.agents[:, fresh] = _renoise(window, _empty(window), self.levels, generator)
            stale = carry.waited >= round(STALE_WAIT_S / DT_S)  # restart empty too (docstring, Rows)
            if stale.any():
                window = carry.agents[stale][None]
                carry.agents[stale] = _renoise(window, _empty(window), self.levels, generator)[0]
                carry.waited[stale] = 0
            carry.rows = rows
            slots = self._light_slots(scenes, pose)
            x0, eps, l0, leps = self._denoise(scenes, pose, context, carry, carry.agents, carry.lights, self.levels,
                                              rows, slots)
            lower = staircase(W, 0.0)[None].expand(B, W)
            window = carry.agents.clone()
            window[:, rows] = ddim_step(x0, eps, lower)
            light_window = carry.lights.clone()
            light_window[:, slots] = ddim_step(l0, leps, lower)
            plan = window[:, :, :C.TRACK_FRAMES].clone()  # clean estimates of the next frames (frame 1: executed)
            plan[:, rows] = x0[:, :, :C.TRACK_FRAMES]
            light_frame, plan_pose, plan_ref = light_window[:, :, 0], pose, future_ref[:, :, :C.TRACK_FRAMES]
            carry.agents = torch.cat([window[:, :, 1:], torch.randn(*window.shape[:2], 1, AGENT_CHANNELS,
                                                                     generator=generator)], dim=2)
            carry.ref = torch.cat([future_ref[:, :, 1:], 2 * future_ref[:, :, -1:] - future_ref[:, :, -2:-1]], dim=2)
            carry.lights = torch.cat([light_window[:, :, 1:], torch.randn(*light_window.shape[:2], 1,
                                                                           LIGHT_CHANNELS, generator=generator)], 2)
        else:
            if carry.plan is None or carry.plan_age >= self.options.replan_every:
                carry.pose, carry.ref = pose, future_ref
                carry.plan, carry.plan_lights = self._full_denoise(scenes, carry, generator)
                carry.plan_age = 0
            rows = carry.rows  # the rows the plan holds (a spare row picked since is still noise)
            # the plan stays in the frame of the pose it was made at
            ahead = slice(carry.plan_age, carry.plan_age + C.TRACK_FRAMES)
            plan, light_frame, plan_pose, plan_ref = (carry.plan[:, :, ahead].clone(),
                                                      carry.plan_lights[:, :, carry.plan_age], carry.pose,
                                                      carry.ref[:, :, ahead])
            carry.plan_age += 1
        if not self.options.spawn:
            plan[..., VALID] = 1.0
        av = carry.av_plan
        actions = [self._action(b, scenes[b], plan[b], light_frame[b], rows, plan_pose[b], plan_ref[b], pose[b],
                                carry, None if av is None else tuple(v[b, 0] for v in av), context.rider_slack[b])
                   for b in range(B)]
        return actions, carry

    def _action(self, b: int, scene: SceneState, plan: torch.Tensor, light_frame: torch.Tensor, rows: torch.Tensor,
                plan_pose: torch.Tensor, plan_ref: torch.Tensor, av_pose: torch.Tensor, carry: Carry,
                av_next: tuple[torch.Tensor, ...] | None, rider_slack: torch.Tensor) -> Action:
        """The executed frame of scene ``b`` as an ``Action`` for its controlled rows, from the clean ``plan
        [A, K, C]`` of the next K frames (in the AV frame of ``plan_pose``, relative to ``plan_ref [A, K, 2]``; frame
        1 gives validity, type and size). ``av_next``: the AV's next pose (x, y, heading) from its plan;
        ``rider_slack [A]``: ``Context.rider_slack``."""
        t = scene.step
        decoded = decode_agents(plan, plan_pose, plan_ref)
        traj, meta = scene.traj, scene.meta
        controlled = torch.zeros(scene.num_agents, dtype=torch.bool)
        controlled[rows] = True
        if not self.options.drive_av:
            controlled &= ~meta.is_av
        used = traj.valid[:, :t + 1].any(-1)
        present = plan[:, :, VALID].mean(-1) > 0  # the plan's next 0.5 s, not a one-frame blip (docstring)
        valid = present & controlled & (traj.valid[:, t] | ~used)  # an agent that left stays gone
        new = valid & ~used  # a free row turned valid
        if self.options.enter_beyond_m > 0:  # new agents come in through the window's edge (docstring, Rows)
            distance = torch.hypot(decoded.x[:, 0] - av_pose[0], decoded.y[:, 0] - av_pose[1])
            waiting = (distance < self.options.enter_beyond_m) | (distance > self.options.enter_within_m)
            beyond = new & (distance > self.options.enter_within_m)
            carry.waited[b] = torch.where(beyond, carry.waited[b] + 1, 0)
            valid &= ~(new & waiting)
            new &= ~waiting
        wrong_way = new & (decoded.agent_type[:, 0] == AgentType.VEHICLE)  # (constraints docstring, 8)
        if wrong_way.any():
            w = wrong_way.nonzero().flatten()
            wrong_way[w] = ~C.along_lanes(decoded.x[w, 0], decoded.y[w, 0], decoded.heading[w, 0], self.lanes)
            valid &= ~wrong_way
            new &= ~wrong_way
            carry.waited[b] = torch.where(wrong_way, round(STALE_WAIT_S / DT_S), carry.waited[b])  # restarts
        object_id = meta.object_id.clone()
        spawned = new.nonzero().flatten()
        object_id[spawned] = torch.arange(carry.next_object_id, carry.next_object_id + len(spawned))
        carry.next_object_id += len(spawned)
        keep = ~new
        size = decoded.size[:, 0].float()
        size[new] = C.box_size(decoded.agent_type[new, 0], size[new])  # a new agent's box (constraints docstring, 8)
        x, y, heading = decoded.x[:, 0].float(), decoded.y[:, 0].float(), decoded.heading[:, 0].float()
        length = torch.where(keep, traj.length[:, t], size[:, 0])
        width = torch.where(keep, traj.width[:, t], size[:, 1])
        agent_type = torch.where(keep, meta.agent_type, decoded.agent_type[:, 0])
        if self.fixed is not None and t + 1 < self.fixed.x.shape[1]:  # exactly as given
            f = self.fixed
            x[f.rows], y[f.rows] = f.x[:, t + 1].float(), f.y[:, t + 1].float()
            heading[f.rows] = f.heading[:, t + 1].float()
            valid[f.rows] = f.valid[:, t + 1]
            controlled[f.rows] = True
        continuing = valid & traj.valid[:, t] & keep
        if self.fixed is not None:
            continuing[self.fixed.rows] = False
        c = continuing.nonzero().flatten()
        frame = (x.clone(), y.clone(), heading.clone())  # the plan's own next frame: the on-road check's 2nd choice
        if len(c):
            turned = traj.valid[c, max(t - 1, 0)] & (t > 0)
            yaw_rate = torch.where(turned, wrap(traj.heading[c, t] - traj.heading[c, max(t - 1, 0)]) / DT_S, 0.0)
            now = (traj.x[c, t], traj.y[c, t], traj.heading[c, t])
            velocity = torch.stack([traj.vel_x[c, t], traj.vel_y[c, t]], -1)
            entered = carry.entry_velocity[b, c]  # spawned at the last step: the velocity it entered with
            velocity = torch.where(~turned[:, None] & ~entered.isnan(), entered.float(), velocity)
            tracked = C.track(decoded.x[c].float(), decoded.y[c].float(), decoded.heading[c].float(), *now, velocity,
                              yaw_rate)
            x[c], y[c], heading[c] = C.kinematic_limits(*tracked, *now, velocity, agent_type[c])
        if self.on_road is not None:  # executed-frame check: a vehicle that would leave the road holds its pose
            road_user = valid & ((agent_type == AgentType.VEHICLE) | ~rider_slack.isnan())
            if self.fixed is not None:
                road_user[self.fixed.rows] = False
            slack = torch.where(agent_type == AgentType.VEHICLE, 0.0, rider_slack.nan_to_num(0.0))
            was = road_user & traj.valid[:, t]  # how far off the road (m) the road users were at step t; NaN if new
            before = torch.full((scene.num_agents,), torch.nan, dtype=torch.float64)
            before[was] = self.on_road.outside_boxes(traj.x[was, t], traj.y[was, t], traj.heading[was, t], length[was],
                                                     width[was])
            stuck = self._leaves_road(x, y, heading, length, width, road_user, slack, before)
            retry = stuck & continuing
            if retry.any():  # the tracked frame leaves the road: try the plan's next frame within the limits
                planned = [v.clone() for v in frame]
                for v, p in zip(planned, C.kinematic_limits(*(v[c] for v in frame), *now, velocity, agent_type[c])):
                    v[c] = p
                ok = retry & ~self._leaves_road(*planned, length, width, retry, slack, before)
                x, y, heading = (torch.where(ok, p, v) for p, v in zip(planned, (x, y, heading)))
                stuck &= ~ok
            rescue = stuck & continuing
            if rescue.any():  # third choice: the tracked frame steered toward its lane, the least that keeps the road
                x, y, heading, ok = self._steer_back(x, y, heading, length, width, rescue, slack, before)
                stuck &= ~ok
            hold = stuck & traj.valid[:, t]
            x, y, heading = (torch.where(hold, v[:, t], n) for v, n in ((traj.x, x), (traj.y, y),
                                                                        (traj.heading, heading)))
            valid = valid & ~(stuck & ~hold)
        light_state = scene.lights.state[:, t].clone()
        if scene.lights.num_slots and not self.options.model_lights:
            light_state = self._program(scene, torch.arange(scene.lights.num_slots), torch.tensor([t + 1]))[:, 0]
        elif scene.lights.num_slots:
            slots = self._light_slots([scene], av_pose[None])
            light_state[slots] = decode_light_states(light_frame[slots])
        if scene.lights.num_slots:  # a vehicle stops at a red light's stop line (constraints docstring, 7)
            moving = continuing & (agent_type == AgentType.VEHICLE)
            x, y, heading = self._stop_at_red(scene, t, x, y, heading, moving, light_state)
        if self.options.no_overlap:
            x, y, heading, valid = self._separate(scene, x, y, heading, length, width, valid, controlled, av_next)
        e = (new & valid).nonzero().flatten()  # a new agent enters at its plan's speed, along its heading
        fit = C.plan_velocity(decoded.x[e, 1:], decoded.y[e, 1:], decoded.x[e, 0], decoded.y[e, 0]).double()
        ahead = torch.stack([torch.cos(heading[e]), torch.sin(heading[e])], -1).double()
        speed = torch.minimum((fit * ahead).sum(-1).clamp_min(0), C.ENTRY_SPEED_LIMIT[agent_type[e].long()].double())
        carry.entry_velocity[b, e] = speed[:, None] * ahead
        return Action(x=x, y=y, heading=heading, valid=valid, controlled=controlled, length=length, width=width,
                      height=torch.where(keep, traj.height[:, t], size[:, 2]), agent_type=agent_type,
                      object_id=object_id, light_state=light_state)

    def _stop_at_red(self, scene: SceneState, t: int, x, y, heading, rows: torch.Tensor, light_state: torch.Tensor):
        """The poses ``x, y, heading [A]`` with each of ``rows`` that would run a red light (``constraints.RedLights``,
        the lights at ``t + 1`` being ``light_state [S]``) moved back along its step to the point ``STOP_LINE_GAP_M``
        behind the last of the fractions k / ``STOP_FRACTIONS`` of the step before the first that crosses the line."""
        r = rows.nonzero().flatten()
        if not len(r):
            return x, y, heading
        lights = scene.lights.index_axis("T", torch.tensor([t, t]))
        lights = replace(lights, state=torch.stack([lights.state[:, 0], light_state], 1))
        before = torch.stack([scene.traj.x[r, t], scene.traj.y[r, t]], -1).double()
        after = torch.stack([x[r], y[r]], -1).double()
        red = self.red_lights.runs(lights, before, after)
        if not red.any():
            return x, y, heading
        r, before, after = r[red], before[red], after[red]
        tries = STOP_FRACTIONS - 1  # the fractions k / STOP_FRACTIONS of the step, k = 1..tries, in one call
        fraction = torch.arange(1, tries + 1, dtype=torch.float64) / STOP_FRACTIONS
        points = before[:, None] + fraction[:, None] * (after - before)[:, None]  # [n, tries, 2]
        crosses = self.red_lights.runs(lights, before.repeat_interleave(tries, 0), points.reshape(-1, 2))
        crosses = torch.cat([crosses.reshape(len(r), tries), torch.ones(len(r), 1, dtype=torch.bool)], 1)
        lo = (crosses.to(torch.uint8).argmax(1, keepdim=True) / STOP_FRACTIONS).double()  # the last one before
        step = (after - before).norm(dim=-1, keepdim=True).clamp_min(1e-9)
        lo = (lo - C.STOP_LINE_GAP_M / step).clamp_min(0.0)  # a gap float32 poses cannot round across
        x, y, heading = x.clone(), y.clone(), heading.clone()
        xy = before + lo * (after - before)
        x[r], y[r] = xy[:, 0].to(x.dtype), xy[:, 1].to(y.dtype)
        turn = wrap(heading[r].double() - scene.traj.heading[r, t].double())
        heading[r] = (scene.traj.heading[r, t].double() + lo[:, 0] * turn).to(heading.dtype)
        return x, y, heading

    def _steer_back(self, x, y, heading, length, width, rows: torch.Tensor, slack: torch.Tensor,
                    before: torch.Tensor):
        """The on-road check's third choice (``constraints`` docstring, 4): the poses ``x, y, heading [A]`` of ``rows``
        moved toward their driving lane (``constraints.toward_lanes``) by the smallest blend k / 2^``BISECTION_STEPS``
        that keeps them on the road (``_leaving`` from ``before``; all blends checked in one call). Returns the poses
        and ``[A]`` which rows it saved."""
        r = rows.nonzero().flatten()
        tries = 2 ** C.BISECTION_STEPS
        weight = (torch.arange(1, tries + 1, dtype=torch.float64) / tries).expand(len(r), tries)
        moved = C.toward_lanes(x[r], y[r], heading[r], self.lanes)(weight)  # x, y, heading [n, tries]
        after = self.on_road.outside_boxes(*(v.flatten() for v in moved), length[r].repeat_interleave(tries),
                                           width[r].repeat_interleave(tries)).reshape(len(r), tries)
        fine = ~_leaving(after, before[r, None], slack[r, None])  # [n, tries]
        least = fine.to(torch.uint8).argmax(1, keepdim=True)  # the first blend that keeps the road
        ok = torch.zeros_like(rows)
        ok[r] = fine.any(1)
        out = [v.clone() for v in (x, y, heading)]
        for v, m in zip(out, moved):
            v[r] = torch.where(ok[r], m.gather(1, least)[:, 0].to(v.dtype), v[r])
        return (*out, ok)

    @property
    def lanes(self) -> torch.Tensor:
        """``[N, 4]`` every driving-lane point of the map and its unit direction (x, y, cos, sin; world frame, m)."""
        if self._lanes is None:
            bank = self.context.bank
            points = bank.points[bank.kind == 0].double()  # [N, P, 2]
            ahead = torch.cat([points[:, 1:] - points[:, :-1], points[:, -1:] - points[:, -2:-1]], dim=1)
            ahead = ahead / ahead.norm(dim=-1, keepdim=True).clamp_min(1e-9)
            self._lanes = torch.cat([points, ahead], dim=-1).reshape(-1, 4)
        return self._lanes

    def _leaves_road(self, x, y, heading, length, width, rows: torch.Tensor, slack: torch.Tensor,
                     before: torch.Tensor) -> torch.Tensor:
        """``[A]`` which of ``rows`` would leave the road at the poses ``x, y, heading [A]`` (``_leaving``, from
        ``before [A]``: how far off it they were at the last step)."""
        out = rows.clone()
        on = rows.nonzero().flatten()
        after = self.on_road.outside_boxes(x[on], y[on], heading[on], length[on], width[on])
        out[on] = _leaving(after, before[on], slack[on])
        return out

    def _separate(self, scene: SceneState, x, y, heading, length, width, valid, controlled, av_next):
        """Executed-frame no-overlap check (``constraints`` docstring, 5): rows the model moved into a new
        collision hold their previous pose (new agents are not spawned), until no new collision is left.
        Rows other actors move are placed at their next pose as far as it is known: the AV's plan, or now."""
        t, traj = scene.step, scene.traj
        others = ~controlled
        px, py, ph = (torch.where(others, now[:, t], v) for v, now in ((x, traj.x), (y, traj.y),
                                                                      (heading, traj.heading)))
        pv = torch.where(others, traj.valid[:, t], valid)
        av = scene.av_index
        if others[av] and av_next is not None:
            px[av], py[av], ph[av] = (v.float() for v in av_next)
        before = C.overlapping_pairs(traj.x[:, t], traj.y[:, t], traj.heading[:, t], length, width, traj.valid[:, t])
        movable = controlled & valid
        if self.fixed is not None:
            movable[self.fixed.rows] = False
        held = torch.zeros_like(valid)
        for _ in range(scene.num_agents):
            culprit = (C.overlapping_pairs(px, py, ph, length, width, pv) & ~before).any(1) & movable & ~held
            if not culprit.any():
                break
            existing = culprit & traj.valid[:, t]
            px, py, ph = (torch.where(existing, now[:, t], v) for v, now in ((px, traj.x), (py, traj.y),
                                                                            (ph, traj.heading)))
            pv = pv & ~(culprit & ~existing)
            held |= culprit
        return (torch.where(controlled, px, x), torch.where(controlled, py, y), torch.where(controlled, ph, heading),
                pv & controlled)

    @torch.no_grad()
    def initialize(self, pose: torch.Tensor, generator: torch.Generator, *, num_agents: int = 32,
                   num_steps: int = 91, radius_m: float = 60.0, map_name: str = "") -> SceneState:
        """A generated scene around the AV pose ``pose`` (x, y, heading; world frame, m, rad), from noise.

        Every frame of the clip (context and future) is denoised with K DDIM
        steps under the constraints, as in the ``initialize`` training task,
        with the AV's current frame inpainted at ``pose``; the context frames
        become the scene's history (steps 0..10, linearly interpolated between
        them; lights at the nearest context frame). Row 0
        is the AV. Returns a ``SceneState`` of ``num_steps`` steps whose
        ``step`` is the last history step, ready for ``closed_loop``.
        """
        from simgen.traffic.scenes import light_slots, slots_near
        from simgen.types import AgentMeta, AgentTrajectory

        H, W = len(HISTORY_OFFSETS), self.model.future
        T = H + W
        pose = pose.double().reshape(1, 3)
        near = slots_near(self.roadmap, pose[0, :2].numpy(), radius_m).nonzero()[0]
        stop = self.roadmap.signal_stop_xy[near].double()
        near = near[torch.argsort(torch.hypot(stop[:, 0] - pose[0, 0], stop[:, 1] - pose[0, 1]),
                                  stable=True)[:MAX_LIGHTS].numpy()] if len(near) else near
        cond = light_condition(self.roadmap.signal_stop_xy[near, 0].double()[None],
                               self.roadmap.signal_stop_xy[near, 1].double()[None],
                               self.context.approach_heading[near].double()[None], pose)
        feats, map_valid = map_features(self.context.bank, pose)
        lanes = feats[..., :4].reshape(1, -1, 4)
        lane_valid = (map_valid[..., None] & (feats[..., 4] > 0.5)).reshape(1, -1)
        S = len(near)
        agents = torch.randn(1, num_agents, T, AGENT_CHANNELS, generator=generator)
        lights = torch.randn(1, S, T, LIGHT_CHANNELS, generator=generator)
        is_av = torch.arange(num_agents)[None] == 0
        unanchored = torch.zeros(1, num_agents, 2, dtype=torch.float64)  # nothing is known: positions are absolute
        no_ref = torch.zeros(1, num_agents, T, 2, dtype=torch.float64)
        self.scheduler.set_timesteps(self.options.full_steps)
        timesteps = self.scheduler.timesteps.tolist()
        for i, t in enumerate(timesteps):
            level = level_of_timestep(t).expand(1, T)
            nxt = (level_of_timestep(timesteps[i + 1]) if i + 1 < len(timesteps) else torch.tensor(0.0)).expand(1, T)
            inp = DenoiserInput(
                agents=agents, agent_given=torch.zeros(1, num_agents, T, dtype=torch.bool), agent_clean=agents,
                agent_mask=torch.ones(1, num_agents, dtype=torch.bool), is_av=is_av,
                agent_cond=agent_condition(unanchored, unanchored, torch.zeros(1, num_agents, dtype=torch.bool)),
                lights=lights,
                light_given=torch.zeros(1, S, T, dtype=torch.bool), light_clean=lights, light_cond=cond,
                light_valid=torch.ones(1, S, T, dtype=torch.bool), light_mask=torch.ones(1, S, dtype=torch.bool),
                map_features=feats, map_valid=map_valid, noise_level=level,
                frame_offsets=self.offsets)
            v_agents, v_lights = self._network(inp)
            x0, eps = predict_clean(agents, v_agents, level, sigma_data(inp.agent_cond, self.offsets))
            l0, leps = predict_clean(lights, v_lights, level)
            x0 = C.soft_clip(C.keep_valid(x0, is_av), torch.zeros(1, num_agents, dtype=torch.bool))
            if self.on_road is not None:
                x0 = self.on_road.project(x0, pose, no_ref, lanes, lane_valid, ~is_av)
            x0[:, 0, H - 1, X:COS + 1] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # the AV is at ``pose`` now
            agents, lights = ddim_step(x0, eps, nxt), ddim_step(l0, leps, nxt)
        decoded = decode_agents(agents[0, :, :H], pose[0], no_ref[0, :, :H])  # [A, H] context frames
        offsets = torch.tensor(HISTORY_OFFSETS, dtype=torch.float64) - HISTORY_OFFSETS[0]  # steps 0..10
        steps = torch.arange(int(offsets[-1]) + 1, dtype=torch.float64)
        k = torch.searchsorted(offsets, steps, right=True).clamp(1, H - 1)
        w = ((steps - offsets[k - 1]) / (offsets[k] - offsets[k - 1]))[None]  # [1, 11]

        def interpolate(v: torch.Tensor) -> torch.Tensor:
            return v[:, k - 1] * (1 - w) + v[:, k] * w

        unwrapped = decoded.heading[:, 0:1] + torch.cumsum(torch.cat(
            [torch.zeros_like(decoded.heading[:, :1]),
             torch.remainder(decoded.heading.diff(dim=1) + torch.pi, 2 * torch.pi) - torch.pi], dim=1), dim=1)
        valid = decoded.valid[:, -1]  # agents present now; they are given the whole interpolated history
        valid[0] = True
        history = len(steps)
        x_h, y_h, heading_h = interpolate(decoded.x), interpolate(decoded.y), wrap(interpolate(unwrapped))
        agent_type = torch.where(is_av[0], int(AgentType.VEHICLE), decoded.agent_type[:, -1]).to(torch.int8)
        size = C.box_size(agent_type, decoded.size[:, -1].float())  # the corpus's boxes (constraints docstring, 8)
        if self.on_road is not None:  # exact check: a generated vehicle off the road at any history step is dropped
            vehicle = (agent_type == AgentType.VEHICLE) & valid
            off = self.on_road.outside_boxes(
                x_h.reshape(-1), y_h.reshape(-1), heading_h.reshape(-1),
                size[:, 0:1].expand(-1, history).reshape(-1), size[:, 1:2].expand(-1, history).reshape(-1))
            valid &= ~((off.reshape(num_agents, history) > 0).any(-1) & vehicle & ~is_av[0])
        traj = AgentTrajectory.zeros(num_agents, num_steps)
        fields = {"x": x_h.float(), "y": y_h.float(), "heading": heading_h.float()}
        vel = {"vel_x": fields["x"].diff(dim=1, append=fields["x"][:, -1:] * 2 - fields["x"][:, -2:-1]) / 0.1,
               "vel_y": fields["y"].diff(dim=1, append=fields["y"][:, -1:] * 2 - fields["y"][:, -2:-1]) / 0.1}
        updates = {}
        for name, value in {**fields, **vel, "length": size[:, :1].expand(-1, history),
                            "width": size[:, 1:2].expand(-1, history),
                            "height": size[:, 2:3].expand(-1, history)}.items():
            full = getattr(traj, name).clone()
            full[:, :history] = torch.where(valid[:, None], value, 0.0)
            updates[name] = full
        traj_valid = traj.valid.clone()
        traj_valid[:, :history] = valid[:, None]
        traj = traj.replace(**updates, valid=traj_valid)
        meta = AgentMeta(object_id=torch.where(valid, torch.arange(num_agents), -1),
                         agent_type=torch.where(valid, agent_type, 0).to(torch.int8), is_av=is_av[0].clone())
        state = torch.zeros(num_steps, S, dtype=torch.int8).numpy()
        context_state = decode_light_states(lights[0, :, :H])  # [S, H]
        nearest = torch.bucketize(steps, (offsets[1:] + offsets[:-1]) / 2)  # nearest context frame per step
        state[:history] = context_state[:, nearest].T.numpy()
        scene_lights = light_slots(self.roadmap, near, state)
        future = torch.arange(num_steps) >= history
        scene_lights = scene_lights.replace(valid=scene_lights.valid & ~future)
        return SceneState(traj=traj, meta=meta, lights=scene_lights, step=history - 1, map_name=map_name)


def _leaving(after: torch.Tensor, before: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
    """Which boxes leave the road, from how far off it (m) they are ``after`` a move and were ``before`` it (NaN for
    a new agent): more than ``slack`` off after it, unless they were already that far off and get no farther (e.g.
    out of a driveway)."""
    out = after > slack
    return torch.where(out & ~before.isnan(), (before <= slack) | (after > before), out)


def _protocol_rows(scenes: list[SceneState]) -> torch.Tensor:
    """Rows valid at the scenes' first recorded last-history step: the WOSAC protocol's simulated agents."""
    valid = torch.stack([s.traj.valid[:, s.step] for s in scenes]).any(0)
    return valid.nonzero().flatten()


def _renoise(window: torch.Tensor, x0: torch.Tensor, levels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Frame k of clean ``x0 [B, E, W, C]`` noised to ``levels[k]`` with fresh noise."""
    noise = torch.randn(x0.shape, generator=generator)
    return add_noise(x0, noise, levels[None].expand(x0.shape[0], -1))


def _empty(like: torch.Tensor) -> torch.Tensor:
    """The clean channels of rows with no agent at any frame (validity -1, features 0), shaped like ``like``."""
    out = torch.zeros_like(like)
    out[..., VALID] = -1.0
    return out


def _reanchor(window: torch.Tensor, old: torch.Tensor, new: torch.Tensor, levels: torch.Tensor,
              old_ref: torch.Tensor, new_ref: torch.Tensor) -> torch.Tensor:
    """Move a (noisy) window ``[B, A, W, C]`` at frame ``levels [W]`` from the AV frame ``old`` (its frames relative
    to the reference lines ``old_ref [B, A, W, 2]``, m) to ``new`` (``new_ref``); poses ``[B, 3]`` world frame.

    A position p = r + D x (reference r, ``DELTA_SCALE_M`` D) maps to ``R p + d`` with the relative rotation R
    and shift d, so x_new = R x + (R r_old + d - r_new) / D, and a noisy x_τ takes ``sqrt(ᾱ)`` of the shift.
    Heading vectors rotate by R.
    """
    dh = (new[:, 2] - old[:, 2])  # [B]
    cos, sin = torch.cos(dh)[:, None, None], torch.sin(dh)[:, None, None]
    dx, dy = (old[:, 0] - new[:, 0]), (old[:, 1] - new[:, 1])
    ch, sh = torch.cos(new[:, 2]), torch.sin(new[:, 2])
    rx, ry = old_ref[..., 0], old_ref[..., 1]  # [B, A, W]
    moved_x = cos * rx + sin * ry + (dx * ch + dy * sh)[:, None, None]  # old reference in the new frame
    moved_y = -sin * rx + cos * ry + (-dx * sh + dy * ch)[:, None, None]
    shift_x = ((moved_x - new_ref[..., 0]) / DELTA_SCALE_M).float()  # [B, A, W]
    shift_y = ((moved_y - new_ref[..., 1]) / DELTA_SCALE_M).float()
    cos, sin = cos.float(), sin.float()
    a = alpha_bar(levels).sqrt()[None, None]  # [1, 1, W]
    out = window.clone()
    x, y = window[..., X], window[..., Y]
    out[..., X] = cos * x + sin * y + a * shift_x
    out[..., Y] = -sin * x + cos * y + a * shift_y
    s, c = window[..., SIN], window[..., COS]
    out[..., SIN] = cos * s - sin * c
    out[..., COS] = sin * s + cos * c
    return out
