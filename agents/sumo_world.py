"""The ``sumo`` world: SUMO co-simulation. SUMO drives everyone but the AV, and the lights.

Each step the AV is moved inside SUMO to its executed pose advanced one step at
constant velocity (the AV policy acts at the same time as the world), so SUMO
traffic reacts to it; SUMO then advances one step and reports every agent within the
scene radius. The policy state is a live ``SumoCoSim`` handle (libsumo holds
one simulation per process), so this world is deterministic under its seed but
not a pure function of its inputs; ``close`` ends the simulation.
"""

from __future__ import annotations

import torch

from simgen.agents.base import WORLDS, PolicyContext
from simgen.types import DT_S, Action, SceneState


@WORLDS.register("sumo")
class SumoWorld:
    def __init__(self, ctx: PolicyContext):
        if ctx.role != "world":
            raise ValueError("sumo can only drive the world, not the AV")
        if ctx.reference is None or ctx.map_source is None:
            raise ValueError("the sumo world needs the reference trip (saved SUMO state) and its map")
        self.ctx = ctx

    def reset(self, scene: SceneState, generator: torch.Generator):
        from simgen.traffic import SumoCoSim

        return SumoCoSim(self.ctx.reference, self.ctx.map_source, seed=self.ctx.seed)

    def act(self, scene: SceneState, sim, generator: torch.Generator) -> tuple[Action, object]:
        i, t = scene.av_index, scene.step
        traj = scene.traj
        # the AV acts at the same time as the world: SUMO gets its pose predicted one step ahead at constant
        # velocity, so SUMO's drivers and the scene radius see the AV where it will (nearly) be at t+1
        x, y = traj.x[i, t] + traj.vel_x[i, t] * DT_S, traj.y[i, t] + traj.vel_y[i, t] * DT_S
        out = sim.step(float(x), float(y), float(traj.heading[i, t]))
        controlled = ~scene.meta.is_av
        action = Action(x=out.x, y=out.y, heading=out.heading, valid=out.valid & controlled, controlled=controlled,
                        length=out.length, width=out.width, height=out.height, agent_type=out.agent_type,
                        object_id=out.object_id, light_state=out.light_state)
        return action, sim

    def close(self, sim) -> None:
        sim.close()
