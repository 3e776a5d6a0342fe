"""Closed-loop rollouts: the loop itself (``closed_loop``) and a whole scenario run (``run_scenario``).

The loop is the only place where the AV policy and the world meet. Each sees
the executed past only (the state), acts, and ``step`` merges their actions.
Any world that follows the policy protocol plugs in without changing it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from simgen.agents import PolicyContext, make_policy
from simgen.agents.lanes import lane_edge_id, locate, plan_route
from simgen.sim.env import step as env_step
from simgen.threads import torch_threads
from simgen.types import Rollout, SceneState


def mask_future(log: SceneState) -> SceneState:
    """The log with every step after ``log.step`` erased (zeros, invalid): what a non-peeking actor may see."""
    keep = torch.arange(log.num_steps) <= log.step

    def erase(t: torch.Tensor, _axes) -> torch.Tensor:
        return torch.where(keep, t, torch.zeros((), dtype=t.dtype)) if t.shape[-1] == log.num_steps else t

    return log.replace(traj=log.traj.map_tensors(erase),
                       lights=log.lights.replace(state=erase(log.lights.state, None),
                                                 valid=erase(log.lights.valid, None)))


def closed_loop(initial: SceneState, av, world, steps: int, generator: torch.Generator,
                on_step: Callable[[int], None] | None = None, num_threads: int = 1) -> SceneState:
    """Run ``steps`` steps from ``initial`` (whose ``step`` is the last history step)."""
    if initial.step + steps >= initial.num_steps:
        raise ValueError(f"the state holds {initial.num_steps} steps; cannot run {steps} after step {initial.step}")
    with torch_threads(num_threads):
        return _loop(initial, av, world, steps, generator, on_step)


def _loop(initial, av, world, steps, generator, on_step) -> SceneState:
    state = initial
    av_state = av.reset(state, generator)
    world_state = world.reset(state, generator)
    horizon = getattr(world, "plan_horizon", 0)  # the world inpaints the AV's plan (agents/base.py)
    plan = getattr(av, "plan", None) if horizon else None
    for k in range(steps):
        if plan is not None:
            world_state = world.observe_plan(world_state, plan(state, av_state, horizon))
        av_action, av_state = av.act(state, av_state, generator)
        world_action, world_state = world.act(state, world_state, generator)
        state = env_step(state, [av_action, world_action])
        if on_step is not None:
            on_step(k)
    close = getattr(world, "close", None)
    if close is not None:
        close(world_state)
    return state


def route_lanes_for(roadmap, scene: SceneState, route_edges: list[str]) -> torch.Tensor:
    """Lane path of the AV from its current pose along SUMO ``route_edges``."""
    i, t = scene.av_index, scene.step
    edges = set(route_edges)
    candidates = torch.tensor([k for k, lane in enumerate(roadmap.lane_ids)
                               if lane_edge_id(lane) in edges or roadmap.lane_is_junction[k]])
    hit = locate(roadmap, float(scene.traj.x[i, t]), float(scene.traj.y[i, t]), float(scene.traj.heading[i, t]),
                 candidates)
    if hit is None:
        raise ValueError("the AV is not on a lane of its route at the last history step")
    start_edge = lane_edge_id(roadmap.lane_ids[hit[0]])
    remaining = route_edges[route_edges.index(start_edge):] if start_edge in route_edges else route_edges
    return torch.tensor(plan_route(roadmap, hit[0], remaining), dtype=torch.int32)


def run_scenario(scenario, workdir: Path, progress: bool = True) -> tuple[Rollout, Any, dict[str, Any]]:
    """Map -> SUMO reference trip -> closed loop. Returns (rollout, map source, info with timings)."""
    from simgen.maps import resolve_map
    from simgen.progress import progress_bar
    from simgen.traffic import Demand, reference_trip

    timings: dict[str, float] = {}
    tic = time.perf_counter()
    source = resolve_map(scenario.map, seed=scenario.seed, **scenario.map_options)
    timings["map_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    route = scenario.av.route
    av_route = None if route.from_edge == "auto" and route.to_edge == "auto" else (route.from_edge, route.to_edge)
    traffic = scenario.traffic
    demand = Demand(vehicles_per_hour_per_km=traffic.vehicles_per_hour_per_km,
                    pedestrians_per_hour_per_km=traffic.pedestrians_per_hour_per_km,
                    cyclists_per_hour_per_km=traffic.cyclists_per_hour_per_km)
    ref = reference_trip(source, seed=scenario.seed, steps=scenario.steps, av_route=av_route, demand=demand,
                         radius_m=scenario.scene.radius_m, max_agents=scenario.scene.num_agents_max,
                         warmup_s=traffic.warmup_s, workdir=workdir)
    timings["reference_s"] = time.perf_counter() - tic

    roadmap = source.roadmap
    log = ref.scene
    steps = log.num_steps - 1 - log.step
    route_lanes = route_lanes_for(roadmap, log, ref.route_edges)
    common = dict(roadmap=roadmap, seed=scenario.seed, log=log, route_lanes=route_lanes, reference=ref,
                  map_source=source, radius_m=scenario.scene.radius_m)
    tic = time.perf_counter()
    av = make_policy(scenario.av.policy, PolicyContext(role="av", **common))
    world_options = scenario.world_model.model_dump() if scenario.world == "world_model" else {}
    world = make_policy(scenario.world, PolicyContext(role="world", **common), **world_options)
    timings["load_s"] = time.perf_counter() - tic  # policies: checkpoints, schedulers, map caches
    generator = torch.Generator().manual_seed(scenario.seed)
    tic = time.perf_counter()
    with progress_bar("closed loop", total=steps, enabled=progress) as advance:
        final = closed_loop(mask_future(log), av, world, steps, generator, on_step=lambda _k: advance())
    timings["simulate_s"] = time.perf_counter() - tic
    info = {"timings": timings, "reference": ref.info, "route_edges": ref.route_edges,
            "steps": steps, "agent_steps": int(final.traj.valid[:, log.step + 1:].sum())}
    return Rollout(state=final, route_lanes=route_lanes, history_steps=log.step + 1), source, info
