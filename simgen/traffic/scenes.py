"""Cutting recorded SUMO frames into scenes: windows around an AV, and trips that follow one.

Both produce a ``SceneState`` with a fixed number of rows (``max_agents``; empty
rows have object_id -1 and are never valid), the AV in row 0, and
``step = 10`` (the last of the 11 history steps). Per docs/FORMATS.md:

- **window** (``cut_window``, T = 91): the agents within ``radius_m`` of the AV
  at the last history step, nearest first, valid at every step they are on
  the map (also after leaving the radius); lights: every light slot whose stop
  point is within ``radius_m`` of the AV at that step, valid at all 91 steps.
- **trip** (``TripFollower``, T = 11 + steps): agents get a row when they
  first come within ``radius_m`` of the AV (nearest first among those arriving
  in the same step) and are valid while on the map and within the radius.
  When all rows are taken, later agents are dropped and counted. Lights: every
  light slot whose stop point comes within ``radius_m`` of the AV at some step
  of the trip, valid at every step (SUMO's state is known everywhere).

Object ids are the run's ``AgentRegistry`` indices, unique within a log; each
scene also returns its rows' SUMO ids (``""`` for empty rows).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from simgen.traffic.sumo import AgentRegistry, Frame
from simgen.types import NUM_HISTORY_STEPS, AgentMeta, AgentTrajectory, RoadMap, SceneState, TrafficLights


class RowTable:
    """Assigns agents (registry indices) to rows: first come first served, nearest first, never reused."""

    def __init__(self, capacity: int):
        self.object_id = np.full(capacity, -1, dtype=np.int64)  # [A] registry index per row
        self.num_used = 0
        self.dropped: set[int] = set()  # agents that found no free row
        self._row_of = np.full(0, -1, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return len(self.object_id)

    def rows(self, object_ids: np.ndarray) -> np.ndarray:
        """Row of each agent, -1 where it has none."""
        need = int(object_ids.max(initial=-1)) + 1
        if need > len(self._row_of):
            self._row_of = np.concatenate([self._row_of, np.full(max(need, 2 * len(self._row_of)) - len(self._row_of),
                                                                  -1, dtype=np.int64)])
        return self._row_of[object_ids]

    def admit(self, object_ids: np.ndarray, distance: np.ndarray) -> None:
        """Give rows to the agents that have none, nearest first, while rows are free."""
        new = self.rows(object_ids) < 0
        order = np.argsort(distance[new], kind="stable")
        candidates = object_ids[new][order]
        take = candidates[: self.capacity - self.num_used]
        self.dropped.update(candidates[len(take):].tolist())
        rows = np.arange(self.num_used, self.num_used + len(take))
        self.object_id[rows] = take
        self._row_of[take] = rows
        self.num_used += len(take)


class Tracks:
    """Per-row, per-step boxes of one scene under construction (``[A, T]``)."""

    def __init__(self, num_rows: int, num_steps: int):
        self.table = RowTable(num_rows)
        self.pose = np.zeros((num_rows, num_steps, 6), dtype=np.float32)  # x, y, z, heading, vel_x, vel_y
        self.valid = np.zeros((num_rows, num_steps), dtype=bool)

    def write(self, t: int, frame: Frame, mask: np.ndarray | None = None) -> None:
        """Store step ``t`` of every agent in ``frame`` that has a row (and ``mask``)."""
        rows = self.table.rows(frame.object_id)
        keep = rows >= 0 if mask is None else (rows >= 0) & mask
        self.pose[rows[keep], t] = frame.pose[keep]
        self.valid[rows[keep], t] = True

    def scene(self, registry: AgentRegistry, roadmap: RoadMap, slots: np.ndarray, light_state: np.ndarray,
              num_steps: int, start_step: int, map_name: str) -> tuple[SceneState, list[str]]:
        """The first ``num_steps`` steps as a SceneState (row 0 is the AV), plus each row's SUMO id.

        ``slots`` ``[S]`` are RoadMap light slots, ``light_state`` ``[T, S]`` their states.
        """
        obj = self.table.object_id
        used = obj >= 0
        agent_type = np.zeros(len(obj), dtype=np.int8)
        size = np.zeros((len(obj), 3))
        agent_type[used] = registry.agent_type[obj[used]]
        size[used] = registry.size[obj[used]]
        pose = torch.from_numpy(self.pose[:, :num_steps].copy())
        valid = torch.from_numpy(self.valid[:, :num_steps].copy())
        # docs/FORMATS.md: every agent value is 0 where the agent is not valid
        size_t = torch.from_numpy(size.astype(np.float32))[:, None, :] * valid[..., None]
        traj = AgentTrajectory(x=pose[..., 0], y=pose[..., 1], z=pose[..., 2], heading=pose[..., 3],
                               vel_x=pose[..., 4], vel_y=pose[..., 5], length=size_t[..., 0],
                               width=size_t[..., 1], height=size_t[..., 2], valid=valid)
        is_av = torch.zeros(len(obj), dtype=torch.bool)
        is_av[0] = True
        meta = AgentMeta(object_id=torch.from_numpy(obj.copy()), agent_type=torch.from_numpy(agent_type),
                         is_av=is_av)
        scene = SceneState(traj=traj, meta=meta, lights=light_slots(roadmap, slots, light_state[:num_steps]),
                           step=NUM_HISTORY_STEPS - 1, start_step=start_step, map_name=map_name)
        sumo_ids = [registry.sumo_ids[o] if o >= 0 else "" for o in obj]
        return scene, sumo_ids


def light_slots(roadmap: RoadMap, slots: np.ndarray, state: np.ndarray) -> TrafficLights:
    """TrafficLights ``[S, T]`` of RoadMap light slots ``slots`` ``[S]`` with states ``state`` ``[T, S]``."""
    num_steps = state.shape[0]
    idx = torch.from_numpy(np.asarray(slots, dtype=np.int64))

    def per_step(values: torch.Tensor) -> torch.Tensor:
        return values[:, None].expand(-1, num_steps).contiguous()

    stop = roadmap.signal_stop_xy[idx].to(torch.float32)
    return TrafficLights(
        signal_id=per_step(idx.to(torch.int32)), lane_id=per_step(roadmap.signal_lane[idx].to(torch.int32)),
        stop_x=per_step(stop[:, 0]), stop_y=per_step(stop[:, 1]),
        state=torch.from_numpy(np.ascontiguousarray(state.T, dtype=np.int8)),
        valid=torch.ones(len(idx), num_steps, dtype=torch.bool))


def slots_near(roadmap: RoadMap, xy: np.ndarray, radius_m: float) -> np.ndarray:
    """Bool ``[G]``: light slots whose stop point is within ``radius_m`` of ``xy`` ``[2]``."""
    stop = roadmap.signal_stop_xy.numpy().astype(np.float64)
    return np.hypot(*(stop - xy).T) <= radius_m


def cut_window(frames: Sequence[Frame], av: int, registry: AgentRegistry, roadmap: RoadMap, *,
               radius_m: float, max_agents: int, map_name: str) -> tuple[SceneState, list[str]]:
    """A scene window (T = len(frames)) around agent ``av``, who must be on the map at every step."""
    now = frames[NUM_HISTORY_STEPS - 1]
    av_xy = now.xy[now.object_id == av][0]
    distance = np.hypot(*(now.xy - av_xy).T)
    near = distance <= radius_m
    tracks = Tracks(max_agents, len(frames))
    tracks.table.admit(np.array([av]), np.zeros(1))
    tracks.table.admit(now.object_id[near], distance[near])
    for t, frame in enumerate(frames):
        tracks.write(t, frame)
    slots = np.flatnonzero(slots_near(roadmap, av_xy, radius_m))
    light_state = np.stack([f.light_state[slots] for f in frames])
    return tracks.scene(registry, roadmap, slots, light_state, len(frames), frames[0].step, map_name)


class TripFollower:
    """Builds a trip scene step by step, following agent ``av`` (row 0)."""

    def __init__(self, av: int, roadmap: RoadMap, *, max_steps: int, radius_m: float, max_agents: int):
        self.av = av
        self.roadmap = roadmap
        self.radius_m = radius_m
        self.tracks = Tracks(max_agents, max_steps)
        self.tracks.table.admit(np.array([av]), np.zeros(1))
        self.num_steps = 0
        self.start_step = -1
        self._slots_seen = np.zeros(roadmap.num_signals, dtype=bool)
        self._light_state: list[np.ndarray] = []

    @property
    def dropped(self) -> int:
        return len(self.tracks.table.dropped)

    def add(self, frame: Frame) -> bool:
        """Record ``frame`` as the next step; False (nothing recorded) if the AV is not on the map."""
        is_av = frame.object_id == self.av
        if not is_av.any():
            return False
        av_xy = frame.xy[is_av][0]
        distance = np.hypot(*(frame.xy - av_xy).T)
        near = distance <= self.radius_m
        self.tracks.table.admit(frame.object_id[near], distance[near])
        self.tracks.write(self.num_steps, frame, near)
        self._slots_seen |= slots_near(self.roadmap, av_xy, self.radius_m)
        self._light_state.append(frame.light_state)
        if self.num_steps == 0:
            self.start_step = frame.step
        self.num_steps += 1
        return True

    def scene(self, registry: AgentRegistry, map_name: str) -> tuple[SceneState, list[str]]:
        slots = np.flatnonzero(self._slots_seen)
        light_state = np.stack(self._light_state)[:, slots]
        return self.tracks.scene(registry, self.roadmap, slots, light_state, self.num_steps, self.start_step,
                                 map_name)
