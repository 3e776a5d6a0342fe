"""The policy protocol shared by AV policies and worlds, and their registries.

A policy is built from a ``PolicyContext`` and then used as::

    state = policy.reset(scene, generator)
    action, state = policy.act(scene, state, generator)

``act`` returns an ``Action`` for the rows it controls: the AV's row for an
AV policy (``role="av"``), every other row for a world (``role="world"``).
A world also returns the next light states. Policies keep nothing on ``self``
after construction; everything that changes lives in the returned state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from simgen.registry import Registry
from simgen.sim.env import hold_action
from simgen.types import DT_S, Action, RoadMap, SceneState

Role = Literal["av", "world"]


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


class Policy(Protocol):
    def reset(self, scene: SceneState, generator: torch.Generator) -> Any: ...

    def act(self, scene: SceneState, state: Any, generator: torch.Generator) -> tuple[Action, Any]: ...


POLICIES: Registry[type] = Registry("AV policy")
WORLDS: Registry[type] = Registry("world")


def make_policy(name: str, ctx: PolicyContext, **options: Any) -> Policy:
    registry = POLICIES if ctx.role == "av" else WORLDS
    return registry.get(name)(ctx, **options)


def controlled_rows(scene: SceneState, role: Role) -> torch.Tensor:
    """``[A]`` bool: the AV's row for ``av``, all other rows for ``world``."""
    return scene.meta.is_av.clone() if role == "av" else ~scene.meta.is_av


def within_radius(scene: SceneState, x: torch.Tensor, y: torch.Tensor, radius_m: float) -> torch.Tensor:
    """``[A]`` bool: positions within ``radius_m`` of the AV's current position."""
    i, t = scene.av_index, scene.step
    return torch.hypot(x - scene.traj.x[i, t], y - scene.traj.y[i, t]) <= radius_m


def coast_action(scene: SceneState, role: Role) -> Action:
    """Every row of ``role`` keeps its current velocity and heading for one step."""
    t = scene.step
    traj = scene.traj
    hold = hold_action(scene, controlled_rows(scene, role))
    return hold.replace(x=traj.x[:, t] + traj.vel_x[:, t] * DT_S, y=traj.y[:, t] + traj.vel_y[:, t] * DT_S)


def as_world(ctx: PolicyContext, scene: SceneState, action: Action) -> Action:
    """For a rule-based world: drop agents beyond ``radius_m`` of the AV and run the static signal programs."""
    if ctx.role != "world":
        return action
    valid = action.valid & within_radius(scene, action.x, action.y, ctx.radius_m)
    return action.replace(valid=valid, light_state=program_lights(ctx.roadmap, scene))


def program_lights(roadmap: RoadMap, scene: SceneState) -> torch.Tensor:
    """Next light states ``[S]`` of the scene's light slots from the map's static signal programs."""
    if scene.lights.num_slots == 0:
        return torch.zeros(0, dtype=torch.int8)
    signal_id = scene.lights.signal_id[:, scene.step].long()
    return roadmap.signal_state_at(scene.start_step + scene.step + 1)[signal_id]
