"""SceneState (the simulator's state) and Rollout (a finished closed-loop run).

A SceneState holds the whole horizon ``T`` up front (Waymax style): steps
``<= step`` are observed or executed, later steps are unknown (valid=False)
until ``simgen.sim.step`` writes them. A log window is a SceneState whose
every step is filled; ``step`` then marks the last history step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from simgen.types.agents import DT_S, AgentMeta, AgentTrajectory
from simgen.types.lights import TrafficLights

NUM_HISTORY_STEPS = 11  # 1.1 s of history at 10 Hz (WOSAC)
NUM_FUTURE_STEPS = 80  # 8 s of future


@dataclass(frozen=True)
class SceneState:
    traj: AgentTrajectory  # [.., A, T]
    meta: AgentMeta  # [.., A]
    lights: TrafficLights  # [.., S, T]
    step: int  # index of the current (last observed or executed) step
    start_step: int = 0  # absolute 10 Hz step of index 0 in the reference SUMO run (for signal programs)
    map_name: str = ""

    @property
    def num_agents(self) -> int:
        return self.traj.num_agents

    @property
    def num_steps(self) -> int:
        return self.traj.num_steps

    @property
    def time_s(self) -> float:
        return self.step * DT_S

    @property
    def av_index(self) -> int:
        idx = torch.nonzero(self.meta.is_av.reshape(-1)).flatten()
        if idx.numel() != 1:
            raise ValueError(f"SceneState: expected exactly one AV, found {idx.numel()}")
        return int(idx[0])

    def av_pose(self) -> torch.Tensor:
        """``[T, 4]`` AV box centre x, y, z (m) and heading (rad) per step, world frame."""
        i = self.av_index
        t = self.traj
        return torch.stack([t.x[i], t.y[i], t.z[i], t.heading[i]], dim=-1)

    def replace(self, **changes) -> "SceneState":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "SceneState":
        self.traj.validate()
        self.meta.validate()
        self.lights.validate()
        if self.meta.object_id.shape[-1] != self.traj.num_agents:
            raise ValueError(
                f"SceneState: meta has {self.meta.object_id.shape[-1]} slots, traj has {self.traj.num_agents}")
        if self.lights.state.shape[-1] != self.traj.num_steps:
            raise ValueError(
                f"SceneState: lights have {self.lights.state.shape[-1]} steps, traj has {self.traj.num_steps}")
        if not 0 <= self.step < self.traj.num_steps:
            raise ValueError(f"SceneState.step={self.step} outside [0, {self.traj.num_steps})")
        return self

    def window(self, start: int, stop: int) -> "SceneState":
        """Steps ``[start, stop)`` as a new state; ``step`` is clamped into it."""
        return SceneState(
            traj=self.traj.index_axis("T", slice(start, stop)),
            meta=self.meta,
            lights=self.lights.index_axis("T", slice(start, stop)),
            step=min(max(self.step - start, 0), stop - start - 1),
            start_step=self.start_step + start,
            map_name=self.map_name,
        )


@dataclass(frozen=True)
class Rollout:
    """A finished run: the final state (every step executed) plus the AV's route."""

    state: SceneState
    route_lanes: torch.Tensor  # [K] int32 RoadMap lane indices of the AV's A->B route
    history_steps: int = NUM_HISTORY_STEPS  # steps copied from the log before closed loop began
