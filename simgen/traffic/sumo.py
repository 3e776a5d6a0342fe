"""SUMO through libsumo: starting a run, reading every agent each 0.1 s step, branching.

libsumo is SUMO linked into this process (traci over a socket is ~100x
slower). It holds ONE simulation per process: opening a run replaces the one
that is open. Parallel runs need separate processes (see ``simgen.traffic.logs``).

SUMO conventions and how they are converted (docs/FORMATS.md, "Words"):

- A vehicle's position is the middle of its **front bumper**. A walking
  person's position is also its front in walking direction (SUMO's striping
  pedestrian model keeps a person's extent ``[pos - length, pos]`` along the
  walking direction; the default person is 0.215 m long, so the shift is
  ~0.11 m). Both are converted to the box centre:
  ``centre = front - length / 2 * (cos h, sin h)``.
- Angles are degrees clockwise from north: ``heading = pi/2 - radians(angle)``,
  wrapped to (-pi, pi]. SUMO's angle is the direction from the vehicle's back
  to its front along its lanes (plus the yaw of lateral motion), so the box
  centre is the midpoint of that chord, also in turns.
- Speed is along the heading: ``vel = speed * (cos h, sin h)``.
- ``z`` is SUMO's 3-D position height (0 on flat networks), used as ground height.
- A vehicle that is teleporting (SUMO removes a vehicle stuck for
  ``--time-to-teleport`` and re-inserts it downstream) is absent for those steps.

Run options (``SUMO_OPTIONS``), chosen for logs that look like driving:

- ``--step-length 0.1``: 10 Hz, simgen's rate.
- ``--lateral-resolution 0.8`` (the sublane model): lateral motion is
  continuous (SUMO's default lane change is an instantaneous ~3 m jump), and
  cars pass cyclists within a lane. The lighter ``--lanechange.duration 2``
  also makes lane changes continuous, but a vehicle that starts a lane change
  while its back is still in a junction gets its angle from the new lane's
  start (SUMO's ``getBackPosition``): on the grid maps ~1 vehicle-step in
  7000 had its heading jump by up to 60 degrees, and a bus centre by 6 m.
  The sublane model had none, at about twice SUMO's step time.
- ``--time-to-teleport 120``: a vehicle blocked for 2 min is teleported. ``-1``
  (never) risks a gridlock that freezes the whole run. Teleports are counted
  (``RunStats``; ``workers_info`` in logs.json): none on the grid maps at the
  default demand, ~1 per 2 min of simulation on ``berlin``.
- ``--collision.action warn``: collisions are reported, nobody is removed or
  teleported, so a log has no agents vanishing after a collision.
- ``--max-depart-delay 60``: a vehicle that cannot enter the network within a
  minute is dropped, so a congested map does not build an unbounded backlog.
- ``--save-state.precision 8``: saved states keep positions to 1e-8 m (the
  default rounding makes cars jump ~3 cm on reload).
- ``--save-state.transportables true``: saved states keep pedestrians; without
  it every person vanishes from a branch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import libsumo
import numpy as np
import sumo

from simgen.types import DT_S, AgentType, RoadMap, light_states_from_sumo

SUMO_BINARY = str(Path(sumo.SUMO_HOME) / "bin" / "sumo")
SUMO_OPTIONS = (
    "--step-length", str(DT_S),
    "--lateral-resolution", "0.8",
    "--time-to-teleport", "120",
    "--collision.action", "warn",
    "--max-depart-delay", "60",
    "--save-state.precision", "8",
    "--save-state.transportables", "true",  # keep pedestrians in saved states (branches would lose them)
    "--no-step-log", "true",
    "--no-warnings", "true",
    "--xml-validation", "never",
)
MOVING_MPS = 1.0  # an agent faster than this is "moving"

# SUMO state character (as a byte) -> LightState, the table of simgen.types.light_states_from_sumo
_LIGHT_LUT = np.array(light_states_from_sumo("".join(map(chr, range(256)))), dtype=np.int8)


# --- opening runs --------------------------------------------------------------

def sumo_args(net_file: str | os.PathLike, route_files: Sequence[str | os.PathLike], seed: int,
              *extra: str) -> list[str]:
    """Command-line options of a simgen SUMO run (without the binary)."""
    args = ["-n", str(net_file), "--seed", str(int(seed)), *SUMO_OPTIONS]
    if route_files:
        args += ["-r", ",".join(str(f) for f in route_files)]
    return args + list(extra)


def open_run(args: Sequence[str]) -> None:
    """Start SUMO with ``args``, replacing the simulation this process has open (if any)."""
    if libsumo.simulation.isLoaded():
        libsumo.load(list(args))
    else:
        libsumo.start([SUMO_BINARY, *args])


def close_run() -> None:
    if libsumo.simulation.isLoaded():
        libsumo.close()


def load_branch(net_file: str | os.PathLike, state_file: str | os.PathLike, seed: int, begin_step: int,
                route_files: Sequence[str | os.PathLike] = (), *extra: str) -> None:
    """Continue a run from a saved state, with a new SUMO seed (takes ~0.04 s).

    ``begin_step`` is the absolute 10 Hz step the state was saved at (a scene's
    ``start_step + step``). The state holds every agent on the map plus the
    vehicles SUMO had already read ahead from the route files (``--route-steps``,
    200 s); pass the run's ``route_files`` to keep the demand flowing beyond that.
    A reload never reproduces the original continuation exactly (SUMO's random
    streams restart); with the same seed it is reproducible, and seeds differ
    by centimetres over a few seconds unless the agents' parameters are redrawn.
    Extra SUMO options go in ``extra``.
    """
    open_run(sumo_args(net_file, route_files, seed, "--load-state", str(state_file),
                       "--begin", f"{begin_step * DT_S:.1f}", *extra))


def current_step() -> int:
    """Absolute 10 Hz step of the simulation time SUMO is at."""
    return round(libsumo.simulation.getTime() / DT_S)


# --- conventions -----------------------------------------------------------------

def wrap_angle(rad: np.ndarray) -> np.ndarray:
    """Wrap to (-pi, pi]."""
    return np.pi - np.mod(np.pi - rad, 2 * np.pi)


def heading_from_sumo_angle(angle_deg: np.ndarray) -> np.ndarray:
    """SUMO angle (deg clockwise from north) -> heading (rad counter-clockwise from +x)."""
    return wrap_angle(np.pi / 2 - np.radians(angle_deg))


def sumo_angle_from_heading(heading: float) -> float:
    """Heading (rad counter-clockwise from +x) -> SUMO angle in [0, 360) deg clockwise from north."""
    return float(np.mod(90.0 - np.degrees(heading), 360.0))


def centre_from_front(front_xy: np.ndarray, heading: np.ndarray, length: np.ndarray) -> np.ndarray:
    """``[N, 2]`` front bumper -> ``[N, 2]`` box centre, m."""
    return front_xy - (length / 2)[:, None] * np.stack([np.cos(heading), np.sin(heading)], -1)


def front_from_centre(centre_xy: np.ndarray, heading: np.ndarray, length: np.ndarray) -> np.ndarray:
    """``[N, 2]`` box centre -> ``[N, 2]`` front bumper, m."""
    return centre_xy + (length / 2)[:, None] * np.stack([np.cos(heading), np.sin(heading)], -1)


# --- recording ---------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """Every agent SUMO has on the map after one 10 Hz step, in simgen's conventions."""

    step: int  # absolute 10 Hz step (SUMO time / 0.1 s)
    object_id: np.ndarray  # int64 [N] index into the run's AgentRegistry
    pose: np.ndarray  # float64 [N, 6]: box centre x, y, z (world frame, m), heading (rad), vel_x, vel_y (m/s)
    light_state: np.ndarray  # int8 [G] LightState of every light slot of the map

    @property
    def xy(self) -> np.ndarray:  # [N, 2]
        return self.pose[:, :2]

    @property
    def speed_mps(self) -> np.ndarray:  # [N]
        return np.hypot(self.pose[:, 4], self.pose[:, 5])


class AgentRegistry:
    """The agents of one run: a stable index per SUMO id (its object id), with type and box size.

    Indices count up in order of first appearance; a SUMO id keeps its index
    for the whole run. Sizes come from the agent's vType (fixed per agent).
    """

    def __init__(self) -> None:
        self.sumo_ids: list[str] = []
        self.index: dict[str, int] = {}
        self._type = np.zeros(64, dtype=np.int8)
        self._size = np.zeros((64, 3))

    def __len__(self) -> int:
        return len(self.sumo_ids)

    def register(self, sumo_id: str, agent_type: int, size: tuple[float, float, float]) -> int:
        """Index of ``sumo_id``; a new id is appended (an id seen before keeps its entry)."""
        idx = self.index.get(sumo_id)
        if idx is None:
            idx = self.index[sumo_id] = len(self.sumo_ids)
            self.sumo_ids.append(sumo_id)
            if idx == len(self._type):
                self._type = np.concatenate([self._type, np.zeros_like(self._type)])
                self._size = np.concatenate([self._size, np.zeros_like(self._size)])
            self._type[idx] = agent_type
            self._size[idx] = size
        return idx

    @property
    def agent_type(self) -> np.ndarray:
        """int8 ``[O]`` AgentType per registered agent."""
        return self._type[:len(self)]

    @property
    def size(self) -> np.ndarray:
        """float64 ``[O, 3]`` length, width, height per registered agent, m."""
        return self._size[:len(self)]


@dataclass
class RunStats:
    """Counters and wall times of one recorded SUMO run."""

    steps: int = 0
    agent_steps: int = 0
    sumo_s: float = 0.0  # inside libsumo.simulationStep
    record_s: float = 0.0  # reading and converting agents and lights
    teleports: int = 0
    collisions: int = 0


class SumoRecorder:
    """Steps the open SUMO run and reads every vehicle, person and light after each step.

    Each step reads position, angle and speed of every agent on the map
    (``getIDList``: departed, not teleporting) with libsumo's getters; type
    and size are read once, when an agent is first seen. Getters were
    measured ~20% faster than libsumo subscriptions for the whole step
    (libsumo has no socket round trip to save, and SUMO builds every
    subscription's result map inside ``simulationStep``), and need no
    re-subscribing after a load. Light slots are the RoadMap's ``signal_*``
    tables: slot g shows character ``signal_link[g]`` of
    ``tls_ids[signal_tls[g]]``'s ``getRedYellowGreenState``.
    """

    def __init__(self, roadmap: RoadMap, registry: AgentRegistry | None = None):
        self.registry = registry if registry is not None else AgentRegistry()
        self.stats = RunStats()
        self._tls_ids = tuple(roadmap.tls_ids)
        self._signal_tls = roadmap.signal_tls.numpy().astype(np.int64)
        self._signal_link = roadmap.signal_link.numpy().astype(np.int64)
        self._signal_offset: np.ndarray | None = None  # slot -> index into the joined tls state strings

    def warm_up(self, seconds: float) -> None:
        """Run SUMO to ``seconds`` of simulation time without recording."""
        t0 = time.perf_counter()
        libsumo.simulationStep(seconds)
        self.stats.sumo_s += time.perf_counter() - t0

    def step(self) -> Frame:
        """Advance SUMO by one step and return the new frame."""
        t0 = time.perf_counter()
        libsumo.simulationStep()
        self.stats.sumo_s += time.perf_counter() - t0
        self.stats.steps += 1
        self.stats.teleports += libsumo.simulation.getStartingTeleportNumber()
        self.stats.collisions += libsumo.simulation.getCollidingVehiclesNumber()
        return self.read()

    def read(self) -> Frame:
        """The frame of the step SUMO is at."""
        t0 = time.perf_counter()
        index, vehicle, person = self.registry.index, libsumo.vehicle, libsumo.person
        rows = [(index[v] if v in index else self._register_vehicle(v), *vehicle.getPosition3D(v),
                 vehicle.getAngle(v), vehicle.getSpeed(v)) for v in vehicle.getIDList()]
        rows += [(index[p] if p in index else self._register_person(p), *person.getPosition3D(p),
                  person.getAngle(p), person.getSpeed(p)) for p in person.getIDList()]
        raw = np.array(rows, dtype=np.float64).reshape(-1, 6)
        object_id = raw[:, 0].astype(np.int64)
        heading = heading_from_sumo_angle(raw[:, 4])
        length = self.registry.size[object_id, 0]
        pose = np.empty((len(raw), 6))
        pose[:, :2] = centre_from_front(raw[:, 1:3], heading, length)
        pose[:, 2] = raw[:, 3]
        pose[:, 3] = heading
        pose[:, 4] = raw[:, 5] * np.cos(heading)
        pose[:, 5] = raw[:, 5] * np.sin(heading)
        frame = Frame(step=current_step(), object_id=object_id, pose=pose, light_state=self._lights())
        self.stats.agent_steps += len(raw)
        self.stats.record_s += time.perf_counter() - t0
        return frame

    def _lights(self) -> np.ndarray:
        states = [libsumo.trafficlight.getRedYellowGreenState(t) for t in self._tls_ids]
        if self._signal_offset is None:  # a tls's state has one character per link it controls, fixed by the net
            starts = np.concatenate([[0], np.cumsum([len(s) for s in states])[:-1]]).astype(np.int64)
            self._signal_offset = starts[self._signal_tls] + self._signal_link
        return _LIGHT_LUT[np.frombuffer("".join(states).encode("ascii"), dtype=np.uint8)[self._signal_offset]]

    def _register_vehicle(self, v: str) -> int:
        kind = AgentType.CYCLIST if libsumo.vehicle.getVehicleClass(v) == "bicycle" else AgentType.VEHICLE
        return self.registry.register(v, int(kind), (libsumo.vehicle.getLength(v), libsumo.vehicle.getWidth(v),
                                                     libsumo.vehicle.getHeight(v)))

    def _register_person(self, p: str) -> int:
        return self.registry.register(p, int(AgentType.PEDESTRIAN), (libsumo.person.getLength(p),
                                                                    libsumo.person.getWidth(p),
                                                                    libsumo.person.getHeight(p)))
