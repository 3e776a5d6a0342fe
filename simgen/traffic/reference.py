"""The reference trip: SUMO traffic around an inserted AV driving from edge A to edge B.

``reference_trip`` runs SUMO with a demand, inserts the vehicle ``"av"``
(SUMO's ``DEFAULT_VEHTYPE``: vClass passenger, 5 m x 1.8 m x 1.5 m) at the end
of the warm-up, and records the trip that follows it (``simgen.traffic.scenes``,
trip rules): 11 history steps from the first step it is on the map and moving,
then ``steps`` more. If the AV reaches its destination earlier, the trip ends
there and is shorter (``info["arrived_early"]``). SUMO's state is saved at the
last history step, so ``SumoCoSim`` or ``load_branch`` can continue the same
traffic from that scene.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libsumo
import numpy as np

from simgen.traffic.demand import Demand, write_demand
from simgen.traffic.scenes import TripFollower
from simgen.traffic.sumo import (MOVING_MPS, Frame, SumoRecorder, close_run, current_step, open_run,
                                 sumo_args)
from simgen.types import DT_S, NUM_HISTORY_STEPS, LaneKind, RoadMap, SceneState

if TYPE_CHECKING:
    from simgen.maps import MapSource

AV_ID = "av"
AV_TYPE = "DEFAULT_VEHTYPE"
AV_ROUTE_SPEED_MPS = 10.0  # a random AV route should be long enough for the trip at this speed
AV_DEPART_TIMEOUT_S = 90.0  # the AV must be on the map and moving this long after insertion


class TrafficError(ValueError):
    """The scenario's traffic and route give SUMO no trip to record (the message names the keys to change)."""


@dataclass(frozen=True)
class ReferenceTrip:
    """A SUMO trip following the AV, and what is needed to continue it (``SumoCoSim``)."""

    scene: SceneState  # T = history_steps + recorded steps, step = history_steps - 1, AV in row 0
    route_edges: list[str]  # SUMO edges of the AV's route, A to B
    sumo_ids: list[str]  # SUMO id per scene row ("" for an empty row)
    state_file: Path  # SUMO state saved at the last history step (absolute step scene.start_step + scene.step)
    history_steps: int = NUM_HISTORY_STEPS
    info: dict[str, Any] = field(default_factory=dict)  # counts and wall times, see reference_trip
    route_files: tuple[Path, ...] = ()  # the demand's route files (SUMO -r), to keep traffic flowing on reload
    radius_m: float = 60.0  # agents are valid while within this distance of the AV


def drivable_edges(roadmap: RoadMap) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Non-internal SUMO edges with driving lanes -> (start xy, end xy) of their first lane, m."""
    lanes = np.flatnonzero(((roadmap.lane_kind == LaneKind.DRIVING) & ~roadmap.lane_is_junction).numpy())
    edges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for lane in lanes:
        points = roadmap.lane_xy[lane][roadmap.lane_point_valid[lane]].numpy().astype(np.float64)
        edges.setdefault(roadmap.lane_ids[lane].rsplit("_", 1)[0], (points[0], points[-1]))
    return edges


def check_av_route(roadmap: RoadMap, av_route: tuple[str, str]) -> None:
    """``TrafficError`` naming the key, and the nearest edge ids, for a route end that is not a drivable edge."""
    keys = ("av.route.from", "av.route.to")
    if "auto" in av_route:
        raise TrafficError(f"{keys[av_route.index('auto')]}: auto, but the other end is an edge id; set both "
                           "av.route.from and av.route.to to edge ids, or both to auto")
    edges = drivable_edges(roadmap)
    for key, edge in zip(keys, av_route):
        if edge not in edges:
            near = difflib.get_close_matches(edge, list(edges), n=3)
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            raise TrafficError(f"{key}: {edge!r} is not an edge with driving lanes on map {roadmap.name!r}.{hint} "
                               "Or set av.route.from and av.route.to to auto.")


def choose_av_route(roadmap: RoadMap, rng: np.random.Generator, min_length_m: float,
                    num_starts: int = 16, num_targets: int = 8) -> list[str]:
    """A long drivable route for the AV, from the open SUMO run's router.

    Samples ``num_starts`` start edges at random and tries those farthest from
    the map's centre first; for each it routes to the farthest reachable of
    ``num_targets`` edges (by beeline). Returns the first route of at least
    ``min_length_m``, else the longest found.
    """
    edges = drivable_edges(roadmap)
    names = sorted(edges)
    if not names:
        raise ValueError(f"map {roadmap.name!r} has no driving lanes for the AV")
    start_xy = np.stack([edges[n][0] for n in names])
    end_xy = np.stack([edges[n][1] for n in names])
    centre = (roadmap.bounds[:2] + roadmap.bounds[2:]).numpy() / 2
    starts = rng.permutation(len(names))[:num_starts]
    starts = starts[np.argsort(-np.hypot(*(start_xy[starts] - centre).T), kind="stable")]
    best_length, best_edges = 0.0, []
    for s in starts:
        for target in np.argsort(-np.hypot(*(start_xy - end_xy[s]).T), kind="stable")[:num_targets]:
            try:
                route = libsumo.simulation.findRoute(names[s], names[target], vType=AV_TYPE)
            except libsumo.TraCIException:  # e.g. a bus- or tram-only start edge the AV may not depart on
                break
            if route.edges:
                if route.length > best_length:
                    best_length, best_edges = route.length, list(route.edges)
                break
        if best_length >= min_length_m:
            break
    if not best_edges:
        raise RuntimeError(f"map {roadmap.name!r}: found no drivable route for the AV")
    return best_edges


def insert_av(route_edges: list[str]) -> None:
    """Add the AV to the open SUMO run, departing now on the best lane at the highest safe speed."""
    libsumo.route.add("av_route", route_edges)
    libsumo.vehicle.add(AV_ID, "av_route", typeID=AV_TYPE, depart="now", departLane="best", departSpeed="max")


class AvTrip:
    """Feeds frames to a TripFollower once the AV is on the map and moving; saves state at the last history step.

    ``done`` when ``history + steps`` steps are recorded or the AV has left the map.
    """

    def __init__(self, recorder: SumoRecorder, roadmap: RoadMap, *, steps: int, radius_m: float, max_agents: int,
                 state_file: Path):
        self.recorder = recorder
        self.roadmap = roadmap
        self.total_steps = NUM_HISTORY_STEPS + steps
        self.radius_m = radius_m
        self.max_agents = max_agents
        self.state_file = state_file
        self.follower: TripFollower | None = None
        self.arrived_early = False
        self.inserted_step = current_step()

    @property
    def done(self) -> bool:
        return self.arrived_early or (self.follower is not None and self.follower.num_steps == self.total_steps)

    def feed(self, frame: Frame) -> None:
        if self.follower is None:
            av = self.recorder.registry.index.get(AV_ID, -1)
            moving = (frame.object_id == av) & (frame.speed_mps > MOVING_MPS)
            if not moving.any():
                if (frame.step - self.inserted_step) * DT_S > AV_DEPART_TIMEOUT_S:
                    raise TrafficError(
                        f"SUMO could not insert the AV and get it moving within {AV_DEPART_TIMEOUT_S:.0f} s: the first "
                        "edge of its route stayed jammed. Lower traffic.vehicles_per_hour_per_km, or change "
                        "av.route.from, seed or traffic.warmup_s")
                return
            self.follower = TripFollower(av, self.roadmap, max_steps=self.total_steps, radius_m=self.radius_m,
                                         max_agents=self.max_agents)
        if not self.follower.add(frame):
            if self.follower.num_steps < NUM_HISTORY_STEPS:
                raise RuntimeError("the AV left the map during its history steps")
            self.arrived_early = True
        elif self.follower.num_steps == NUM_HISTORY_STEPS:
            libsumo.simulation.saveState(str(self.state_file))

    def scene(self, map_name: str) -> tuple[SceneState, list[str]]:
        assert self.follower is not None and self.done
        return self.follower.scene(self.recorder.registry, map_name)


def reference_trip(source: MapSource, *, seed: int, steps: int, av_route: tuple[str, str] | None,
                   demand: Demand, radius_m: float = 60.0, max_agents: int = 256, warmup_s: float = 60.0,
                   workdir: Path) -> ReferenceTrip:
    """Run SUMO on ``source`` and record the AV's trip (see the module docstring).

    ``av_route`` is (from edge, to edge), routed by SUMO; ``None`` draws a
    route with ``seed`` (``choose_av_route``) long enough for the trip at
    10 m/s where the map allows. ``workdir`` receives the demand's route files
    and the saved state. The same arguments give the same arrays, bit for bit.

    ``info``: ``arrived_early``, ``steps_recorded`` (after the history),
    ``rows_used``, ``dropped_agents`` (came within the radius with every row
    taken), ``vehicles_on_map`` / ``persons_on_map`` when the AV was inserted,
    ``av_insert_step`` (absolute), ``route_length_m``, ``teleports``,
    ``collisions``, and wall times ``demand_s`` (randomTrips.py), ``sumo_s``
    (inside SUMO's step, warm-up included), ``record_s`` (reading agents and
    lights), ``total_s``.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    roadmap = source.roadmap
    if av_route is not None:
        check_av_route(roadmap, av_route)  # before SUMO's warm-up
    horizon_s = warmup_s + AV_DEPART_TIMEOUT_S + (NUM_HISTORY_STEPS + steps) * DT_S
    route_files = write_demand(source.net_file, workdir / "demand", seed=seed, end_s=horizon_s, demand=demand)
    demand_s = time.perf_counter() - t_start
    open_run(sumo_args(source.net_file, route_files, seed))
    try:
        recorder = SumoRecorder(roadmap)
        recorder.warm_up(warmup_s)
        if av_route is None:
            min_length_m = (NUM_HISTORY_STEPS + steps) * DT_S * AV_ROUTE_SPEED_MPS
            route_edges = choose_av_route(roadmap, np.random.default_rng(seed), min_length_m)
        else:
            route_edges = list(libsumo.simulation.findRoute(*av_route, vType=AV_TYPE).edges)
            if not route_edges:
                raise TrafficError(f"av.route from {av_route[0]!r} to {av_route[1]!r}: SUMO finds no route between "
                                   "these edges; pick edges connected in the network, or set both to auto")
        on_map = {"vehicles_on_map": len(libsumo.vehicle.getIDList()),
                  "persons_on_map": len(libsumo.person.getIDList())}  # getIDCount also counts persons yet to depart
        insert_av(route_edges)
        state_file = workdir / "reference_state.xml"
        trip = AvTrip(recorder, roadmap, steps=steps, radius_m=radius_m, max_agents=max_agents,
                      state_file=state_file)
        while not trip.done:
            trip.feed(recorder.step())
        route_length_m = sum(libsumo.lane.getLength(f"{e}_0") for e in route_edges)
    finally:
        close_run()
    scene, sumo_ids = trip.scene(source.name)
    stats = recorder.stats
    info = {
        "arrived_early": trip.arrived_early, "steps_recorded": scene.num_steps - NUM_HISTORY_STEPS,
        "rows_used": trip.follower.tracks.table.num_used, "dropped_agents": trip.follower.dropped, **on_map,
        "av_insert_step": trip.inserted_step, "route_length_m": route_length_m, "teleports": stats.teleports,
        "collisions": stats.collisions, "demand_s": demand_s, "sumo_s": stats.sumo_s, "record_s": stats.record_s,
        "total_s": time.perf_counter() - t_start,
    }
    return ReferenceTrip(scene=scene, route_edges=route_edges, sumo_ids=sumo_ids, state_file=state_file,
                         info=info, route_files=route_files, radius_m=radius_m)
