"""Agent data: per-step trajectories ``[.., A, T]`` and per-slot metadata ``[.., A]``.

Frames and units: positions in the map's world frame (m), heading in radians
counter-clockwise from +x, velocities in m/s, box sizes in m. Positions are
box centres (SUMO's front-bumper positions are converted when logs are made).
One row (slot) holds one object for a whole log or rollout; it is never reused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

import torch

from simgen.types.base import TensorData

DT_S = 0.1  # simulation step, s (10 Hz everywhere in simgen)


class AgentType(enum.IntEnum):
    UNSET = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    CYCLIST = 3


@dataclass(frozen=True)
class AgentTrajectory(TensorData):
    """Per-step boxes. All fields ``[.., A, T]``."""

    x: torch.Tensor  # world frame, m (box centre)
    y: torch.Tensor
    z: torch.Tensor  # ground height, m
    heading: torch.Tensor  # rad, CCW from +x, wrapped to (-pi, pi]
    vel_x: torch.Tensor  # m/s, world frame
    vel_y: torch.Tensor
    length: torch.Tensor  # m
    width: torch.Tensor
    height: torch.Tensor
    valid: torch.Tensor  # bool

    _AXES: ClassVar = {f: ("A", "T") for f in
                       ("x", "y", "z", "heading", "vel_x", "vel_y", "length", "width", "height", "valid")}
    _DTYPES: ClassVar = {**{f: "float" for f in _AXES}, "valid": "bool"}

    @property
    def num_agents(self) -> int:
        return self.x.shape[-2]

    @property
    def num_steps(self) -> int:
        return self.x.shape[-1]

    @property
    def xy(self) -> torch.Tensor:  # [.., A, T, 2]
        return torch.stack([self.x, self.y], dim=-1)

    @property
    def speed_mps(self) -> torch.Tensor:  # [.., A, T]
        return torch.hypot(self.vel_x, self.vel_y)

    @classmethod
    def zeros(cls, num_agents: int, num_steps: int, batch: tuple[int, ...] = ()) -> "AgentTrajectory":
        shape = (*batch, num_agents, num_steps)
        floats = {f: torch.zeros(shape) for f in cls._AXES if f != "valid"}
        return cls(**floats, valid=torch.zeros(shape, dtype=torch.bool))


@dataclass(frozen=True)
class AgentMeta(TensorData):
    """Per-slot metadata. All fields ``[.., A]``."""

    object_id: torch.Tensor  # int64, unique within a log; -1 for an empty slot
    agent_type: torch.Tensor  # int8, AgentType
    is_av: torch.Tensor  # bool, exactly one True per scene

    _AXES: ClassVar = {"object_id": ("A",), "agent_type": ("A",), "is_av": ("A",)}
    _DTYPES: ClassVar = {"object_id": "int", "agent_type": "int", "is_av": "bool"}

    @classmethod
    def empty(cls, num_agents: int) -> "AgentMeta":
        return cls(
            object_id=torch.full((num_agents,), -1, dtype=torch.int64),
            agent_type=torch.zeros(num_agents, dtype=torch.int8),
            is_av=torch.zeros(num_agents, dtype=torch.bool),
        )

    def validate(self) -> "AgentMeta":
        super().validate()
        n_av = self.is_av.sum(-1)
        if (n_av > 1).any():
            raise ValueError("AgentMeta.is_av: more than one AV in a scene")
        return self


@dataclass(frozen=True)
class Action(TensorData):
    """What a policy or world proposes for the next step. Fields ``[.., A]``.

    ``controlled`` marks the rows this action speaks for; ``simgen.sim.step``
    merges the AV policy's action and the world's action by it. Box size, type
    and id are copied from the current state unless a world spawns an object
    into an empty row (it then sets them). ``light_state`` ``[.., S]`` carries
    the next traffic-light states when the actor drives the lights, else None.
    """

    x: torch.Tensor  # next box centre, world frame, m
    y: torch.Tensor
    heading: torch.Tensor  # rad
    valid: torch.Tensor  # bool
    controlled: torch.Tensor  # bool
    length: torch.Tensor
    width: torch.Tensor
    height: torch.Tensor
    agent_type: torch.Tensor  # int8
    object_id: torch.Tensor  # int64
    light_state: torch.Tensor | None = None  # int8 [.., S], LightState

    _AXES: ClassVar = {f: ("A",) for f in
                       ("x", "y", "heading", "valid", "controlled", "length", "width", "height",
                        "agent_type", "object_id")}
    _DTYPES: ClassVar = {"x": "float", "y": "float", "heading": "float", "valid": "bool",
                         "controlled": "bool", "length": "float", "width": "float", "height": "float",
                         "agent_type": "int", "object_id": "int"}
