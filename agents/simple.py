"""Baseline actors that need no map reasoning: log replay and constant velocity."""

from __future__ import annotations

import torch

from simgen.agents.base import POLICIES, WORLDS, PolicyContext, as_world, coast_action, controlled_rows
from simgen.types import Action, SceneState


@POLICIES.register("log_replay")
@WORLDS.register("log_replay")
@WORLDS.register("log_copies")
class LogReplay:
    """Replays the reference log (the one actor allowed to read the logged future).

    ``log_copies`` is the same world under the name of its evaluation role: in
    role ``all`` every rollout is an identical copy of the log, the per-scene
    ceiling of the realism metrics (``simgen.metrics.evaluate``).
    """

    def __init__(self, ctx: PolicyContext):
        if ctx.log is None:
            raise ValueError("log_replay needs a reference log")
        self.ctx = ctx

    def reset(self, scene: SceneState, generator: torch.Generator) -> None:
        log = self.ctx.log
        if log.num_agents != scene.num_agents or log.num_steps < scene.num_steps:
            raise ValueError("log_replay: the log does not cover the scene's rows and steps")
        return None

    def act(self, scene: SceneState, state: None, generator: torch.Generator) -> tuple[Action, None]:
        t = scene.step + 1
        log = self.ctx.log.traj
        controlled = controlled_rows(scene, self.ctx.role)
        action = Action(
            x=log.x[:, t], y=log.y[:, t], heading=log.heading[:, t], valid=log.valid[:, t] & controlled,
            controlled=controlled, length=log.length[:, t], width=log.width[:, t], height=log.height[:, t],
            agent_type=self.ctx.log.meta.agent_type, object_id=self.ctx.log.meta.object_id,
            light_state=self.ctx.log.lights.state[:, t] if self.ctx.role != "av" else None,
        )
        return action, None


@POLICIES.register("constant_velocity")
@WORLDS.register("constant_velocity")
class ConstantVelocity:
    """Keeps every agent's last velocity and heading. As a world it also runs the static signal programs
    and drops agents that leave ``radius_m`` of the AV."""

    def __init__(self, ctx: PolicyContext):
        self.ctx = ctx

    def reset(self, scene: SceneState, generator: torch.Generator) -> None:
        return None

    def act(self, scene: SceneState, state: None, generator: torch.Generator) -> tuple[Action, None]:
        return as_world(self.ctx, scene, coast_action(scene, self.ctx.role)), None
