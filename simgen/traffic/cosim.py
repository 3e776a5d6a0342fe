"""``SumoCoSim``: live SUMO as the world around an AV that simgen drives.

SUMO drives everyone except the AV, and the traffic lights. The co-simulation
starts from the reference trip's saved state at its last history step, so
SUMO's traffic continues from the same scene. Each ``step`` places the AV
(SUMO vehicle ``"av"``) at the given pose with ``moveToXY``, advances SUMO one
0.1 s step, and reports every row of the trip's layout.

``moveToXY(..., keepRoute=2)``: bit 1 set places the vehicle at exactly the
given position and angle (including its lateral offset); bit 0 clear maps it
to the closest lane of the whole network (not only of its route), replacing
its route by that lane's edge when it leaves the route. So SUMO's drivers see
the AV on the lane it is really on, wherever the AV policy drives. SUMO sets
the AV's speed from the distance between consecutive placements.

Timing: the pose given to ``step`` is where SUMO holds the AV during the step
it advances (the AV policy and the world act on the same state, so the world
sees the AV's pose of step t while moving everyone to t+1). The first step
after loading repeats the AV's saved pose, so SUMO sees the AV stand still for
that one step.

Rows: the trip's rows keep their SUMO ids; an agent of another id gets the
next free row when it first comes within ``radius_m`` of the AV, with a new
object id (counting up from the trip's largest); rows are never reused, and
agents beyond capacity are dropped (``info["dropped_agents"]``). A row is valid
while its agent is on the map and within ``radius_m`` of the AV's given pose;
the AV's row while SUMO has the AV on the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import libsumo
import numpy as np
import torch

from simgen.traffic.reference import AV_ID, ReferenceTrip
from simgen.traffic.scenes import RowTable
from simgen.traffic.sumo import (AgentRegistry, SumoRecorder, close_run, front_from_centre, load_branch,
                                 sumo_angle_from_heading)

if TYPE_CHECKING:
    from simgen.maps import MapSource


@dataclass(frozen=True)
class CoSimStep:
    """Every row after one co-simulation step. Agent fields ``[A]``, ``light_state`` ``[S]``."""

    x: torch.Tensor  # float32 box centre, world frame, m
    y: torch.Tensor
    heading: torch.Tensor  # float32 rad, CCW from +x
    valid: torch.Tensor  # bool: on the map and within radius_m of the AV
    length: torch.Tensor  # float32 m
    width: torch.Tensor
    height: torch.Tensor
    agent_type: torch.Tensor  # int8 AgentType
    object_id: torch.Tensor  # int64, -1 for an empty row
    light_state: torch.Tensor  # int8 LightState of the trip scene's light slots, same order as scene.lights
    step: int  # absolute 10 Hz SUMO step reached
    # length, width, height, agent_type and object_id are set for every used row, valid or not


def _f32(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


class SumoCoSim:
    """SUMO continuing a ``ReferenceTrip`` with the AV under simgen's control (see the module docstring).

    libsumo holds one simulation per process: a co-simulation replaces any
    other open run in this process; ``close()`` ends it.
    """

    def __init__(self, trip: ReferenceTrip, source: MapSource, seed: int):
        scene = trip.scene
        if trip.sumo_ids[0] != AV_ID:
            raise ValueError(f"SumoCoSim: row 0 of the trip is {trip.sumo_ids[0]!r}, expected the AV {AV_ID!r}")
        self.radius_m = trip.radius_m
        self.info = {"dropped_agents": 0, "new_rows": 0}
        used = np.flatnonzero(scene.meta.object_id.numpy() >= 0)
        if not (used == np.arange(len(used))).all():
            raise ValueError("SumoCoSim: the trip's used rows must come first (as reference_trip writes them)")
        t = scene.step
        # box size per row (0 at steps where a row is not valid, so take the largest over the trip)
        size = torch.stack([scene.traj.length, scene.traj.width, scene.traj.height], -1).amax(1).numpy()
        registry = AgentRegistry()
        for row in used:
            registry.register(trip.sumo_ids[row], int(scene.meta.agent_type[row]), tuple(size[row].tolist()))
        self._table = RowTable(scene.num_agents)
        self._table.admit(np.arange(len(used)), np.arange(len(used), dtype=np.float64))  # the trip's row order
        self._trip_object_id = scene.meta.object_id.numpy()[used]
        self._next_object_id = int(self._trip_object_id.max()) + 1
        self._av_length = float(size[0, 0])
        self._slots = scene.lights.signal_id[:, 0].numpy().astype(np.int64)
        load_branch(source.net_file, trip.state_file, seed, scene.start_step + t, trip.route_files)
        self.recorder = SumoRecorder(source.roadmap, registry)

    def step(self, av_x: float, av_y: float, av_heading: float) -> CoSimStep:
        """Hold the AV at box centre (``av_x``, ``av_y``) m, ``av_heading`` rad; advance SUMO one step."""
        centre = np.array([[av_x, av_y]], dtype=np.float64)
        front = front_from_centre(centre, np.array([av_heading]), np.array([self._av_length]))[0]
        if AV_ID in libsumo.vehicle.getIDList():
            libsumo.vehicle.moveToXY(AV_ID, "", -1, float(front[0]), float(front[1]),
                                     sumo_angle_from_heading(av_heading), keepRoute=2)
        frame = self.recorder.step()
        distance = np.hypot(*(frame.xy - centre[0]).T)
        near = distance <= self.radius_m
        before = self._table.num_used
        self._table.admit(frame.object_id[near], distance[near])
        self.info["new_rows"] += self._table.num_used - before
        self.info["dropped_agents"] = len(self._table.dropped)
        rows = self._table.rows(frame.object_id)
        av = frame.object_id == self.recorder.registry.index[AV_ID]
        keep = (rows >= 0) & (near | av)
        num_rows = self._table.capacity
        pose = np.zeros((num_rows, 3))  # x, y, heading
        valid = np.zeros(num_rows, dtype=bool)
        pose[rows[keep]] = frame.pose[keep][:, [0, 1, 3]]
        valid[rows[keep]] = True
        obj = self._table.object_id
        used = obj >= 0
        size = np.zeros((num_rows, 3))
        agent_type = np.zeros(num_rows, dtype=np.int8)
        size[used] = self.recorder.registry.size[obj[used]]
        agent_type[used] = self.recorder.registry.agent_type[obj[used]]
        n_trip = len(self._trip_object_id)
        object_id = np.where(obj < n_trip, self._trip_object_id[np.clip(obj, 0, n_trip - 1)],
                             self._next_object_id + obj - n_trip)
        object_id[~used] = -1
        return CoSimStep(x=_f32(pose[:, 0]), y=_f32(pose[:, 1]), heading=_f32(pose[:, 2]),
                         valid=torch.from_numpy(valid), length=_f32(size[:, 0]), width=_f32(size[:, 1]),
                         height=_f32(size[:, 2]), agent_type=torch.from_numpy(agent_type),
                         object_id=torch.from_numpy(object_id.astype(np.int64)),
                         light_state=torch.from_numpy(frame.light_state[self._slots].copy()), step=frame.step)

    def close(self) -> None:
        close_run()
