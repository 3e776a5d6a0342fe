"""The policy protocol shared by AV policies and worlds, and their registries.

A policy is built from a ``PolicyContext`` and then used as::

    state = policy.reset(scene, generator)
    action, state = policy.act(scene, state, generator)

``act`` returns an ``Action`` for the rows it controls, chosen by the role:

- ``"av"``: the AV's row (an AV policy, from ``POLICIES``);
- ``"world"``: every other row, plus the next light states. A rule-based
  world drops agents beyond ``radius_m`` of the AV and may bring in new ones
  (the rules of a trip, docs/FORMATS.md);
- ``"all"``: every row, the AV's included, plus the lights: the WOSAC
  evaluation protocol, where the world simulates every agent of a scene
  window and the AV is one more agent. The rows are the window's: nobody is
  dropped for distance (a window keeps its agents after they leave the
  radius) and nobody is brought in.

Worlds (``WORLDS``) take ``"world"`` or ``"all"``. Policies keep nothing on
``self`` after construction; everything that changes lives in the returned state.

An AV policy may also offer its plan, and a world may take it (the learned
world inpaints the AV's future from it, SceneDiffuser's AV constraint)::

    plan = av.plan(scene, av_state, world.plan_horizon)   # Plan: the next K poses
    world_state = world.observe_plan(world_state, plan)

A plan's first pose is exactly the policy's next action; the closed loop
(``simgen.sim.rollout``) hands it over before both act.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from simgen.registry import Registry
from simgen.sim.env import hold_action
from simgen.types import DT_S, Action, RoadMap, SceneState

Role = Literal["av", "world", "all"]


@dataclass(frozen=True)
class PolicyContext:
    roadmap: RoadMap
    role: Role
    seed: int = 0
    log: SceneState | None = None  # the reference log; only log_replay may read its future
    route_lanes: torch.Tensor | None = None  # [K] the AV's A->B lane path
    reference: Any = None  # simgen.traffic.ReferenceTrip, for the sumo world
    map_source: Any = None  # simgen.maps.MapSource
    radius_m: float = 60.0  # agents farther than this from the AV leave the scene


@dataclass(frozen=True)
class Plan:
    """An AV policy's intended poses for steps ``t + 1 ... t + K`` (world frame): ``x, y, heading [K]`` (m, rad)."""

    x: torch.Tensor
    y: torch.Tensor
    heading: torch.Tensor


class Policy(Protocol):
    def reset(self, scene: SceneState, generator: torch.Generator) -> Any: ...

    def act(self, scene: SceneState, state: Any, generator: torch.Generator) -> tuple[Action, Any]: ...


POLICIES: Registry[type] = Registry("AV policy")
WORLDS: Registry[type] = Registry("world")


def make_policy(name: str, ctx: PolicyContext, **options: Any) -> Policy:
    registry = POLICIES if ctx.role == "av" else WORLDS
    return registry.get(name)(ctx, **options)


def controlled_rows(scene: SceneState, role: Role) -> torch.Tensor:
    """``[A]`` bool: the AV's row for ``av``, all other rows for ``world``, every row for ``all``."""
    if role == "all":
        return torch.ones_like(scene.meta.is_av)
    return scene.meta.is_av.clone() if role == "av" else ~scene.meta.is_av


def within_radius(scene: SceneState, x: torch.Tensor, y: torch.Tensor, radius_m: float) -> torch.Tensor:
    """``[A]`` bool: next-step positions within ``radius_m`` of the AV's next position, predicted at constant
    velocity (the AV acts at the same time as the world), as logs define the scene at each step."""
    i, t = scene.av_index, scene.step
    traj = scene.traj
    av_x = traj.x[i, t] + traj.vel_x[i, t] * DT_S
    av_y = traj.y[i, t] + traj.vel_y[i, t] * DT_S
    return torch.hypot(x - av_x, y - av_y) <= radius_m


def coast_action(scene: SceneState, role: Role) -> Action:
    """Every row of ``role`` keeps its current velocity and heading for one step."""
    t = scene.step
    traj = scene.traj
    hold = hold_action(scene, controlled_rows(scene, role))
    return hold.replace(x=traj.x[:, t] + traj.vel_x[:, t] * DT_S, y=traj.y[:, t] + traj.vel_y[:, t] * DT_S)


def as_world(ctx: PolicyContext, scene: SceneState, action: Action) -> Action:
    """For a rule-based world: run the static signal programs and, in role ``world``, drop agents beyond
    ``radius_m`` of the AV."""
    if ctx.role == "av":
        return action
    return leave_radius(ctx, scene, action).replace(light_state=program_lights(ctx.roadmap, scene))


def leave_radius(ctx: PolicyContext, scene: SceneState, action: Action) -> Action:
    """In role ``world``, the agents of ``action`` beyond ``radius_m`` of the AV leave the scene (as logs define it)."""
    if ctx.role != "world":
        return action
    return action.replace(valid=action.valid & within_radius(scene, action.x, action.y, ctx.radius_m))


def program_lights(roadmap: RoadMap, scene: SceneState) -> torch.Tensor:
    """Next light states ``[S]`` of the scene's light slots from the map's static signal programs."""
    if scene.lights.num_slots == 0:
        return torch.zeros(0, dtype=torch.int8)
    signal_id = scene.lights.signal_id[:, scene.step].long()
    return roadmap.signal_state_at(scene.start_step + scene.step + 1)[signal_id]
