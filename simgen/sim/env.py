"""The pure simulation step: ``step(state, actions) -> state``.

Each step takes the next pose (x, y, heading, valid) of every agent from the
actions (the AV policy's row and the world's rows, merged by ``controlled``)
and the next light states from whichever action carries them. Velocities are
finite differences of executed poses. Nothing is kept on any object: the same
inputs always give the same output tensors.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from simgen.types import DT_S, Action, AgentMeta, SceneState


def wrap_angle(a: torch.Tensor) -> torch.Tensor:
    """Wrap radians to (-pi, pi]; angles already inside come back bit for bit (so log replay is exact)."""
    wrapped = math.pi - torch.remainder(math.pi - a, 2 * math.pi)
    return torch.where((a > -math.pi) & (a <= math.pi), a, wrapped)


def merge_actions(actions: Sequence[Action]) -> Action:
    """Combine actions row-wise by ``controlled``; a row claimed twice is an error."""
    claimed = torch.stack([a.controlled for a in actions]).sum(0)
    if (claimed > 1).any():
        rows = torch.nonzero(claimed > 1).flatten().tolist()
        raise ValueError(f"rows {rows} are controlled by more than one actor")
    merged = actions[0]
    for other in actions[1:]:
        m = other.controlled
        merged = Action(**{f: torch.where(m, getattr(other, f), getattr(merged, f)) for f in Action._AXES},
                        light_state=merged.light_state if merged.light_state is not None else other.light_state)
    return merged


def step(state: SceneState, actions: Sequence[Action]) -> SceneState:
    """Execute one 0.1 s step. Rows no action controls become invalid."""
    t = state.step + 1
    if t >= state.num_steps:
        raise ValueError(f"state is at its last step ({state.step}); nothing left to execute")
    act = merge_actions(actions)
    traj, meta = state.traj, state.meta
    prev = t - 1
    valid = act.valid & act.controlled
    was_valid = traj.valid[:, prev]
    moving = valid & was_valid
    vel_x = torch.where(moving, (act.x - traj.x[:, prev]) / DT_S, torch.zeros_like(act.x))
    vel_y = torch.where(moving, (act.y - traj.y[:, prev]) / DT_S, torch.zeros_like(act.y))
    column = {
        "x": act.x, "y": act.y, "z": traj.z[:, prev], "heading": wrap_angle(act.heading),
        "vel_x": vel_x, "vel_y": vel_y, "length": act.length, "width": act.width, "height": act.height,
    }
    new_fields = {}
    for name, value in column.items():
        field = getattr(traj, name).clone()
        field[:, t] = torch.where(valid, value.to(field.dtype), torch.zeros_like(field[:, t]))
        new_fields[name] = field
    new_valid = traj.valid.clone()
    new_valid[:, t] = valid
    spawned = valid & ~traj.valid[:, :t].any(-1)  # a row's first step: its occupant is whoever the action says
    new_meta = AgentMeta(
        object_id=torch.where(spawned, act.object_id, meta.object_id),
        agent_type=torch.where(spawned, act.agent_type, meta.agent_type),
        is_av=meta.is_av,
    )
    lights = state.lights
    if act.light_state is not None and lights.num_slots:
        light_state = lights.state.clone()
        light_state[:, t] = act.light_state.to(light_state.dtype)
        light_valid = lights.valid.clone()
        light_valid[:, t] = True
        lights = lights.replace(state=light_state, valid=light_valid)
    return state.replace(traj=traj.replace(**new_fields, valid=new_valid), meta=new_meta, lights=lights, step=t)


def hold_action(state: SceneState, controlled: torch.Tensor) -> Action:
    """An action that keeps every row where it is (box, type and id copied from the current step)."""
    t = state.step
    traj = state.traj
    return Action(
        x=traj.x[:, t], y=traj.y[:, t], heading=traj.heading[:, t], valid=traj.valid[:, t] & controlled,
        controlled=controlled, length=traj.length[:, t], width=traj.width[:, t], height=traj.height[:, t],
        agent_type=state.meta.agent_type, object_id=state.meta.object_id,
    )
