"""Traffic demand: who drives, cycles and walks on a map, generated with SUMO's randomTrips.py.

Demand scales with the map: every rate is *per hour per km of driving lane*
(the summed length of all non-internal lanes that admit passenger cars), so a
map twice as large gets twice the trips. Trip lengths are capped (beeline
between origin and destination edge), which keeps the vehicle density on large
maps close to that of small ones: density ~ rate x trip duration.

Measured after 20 min of simulation (densities in vehicles per lane-km):

| map | 60 vehicles/h/km | 120 vehicles/h/km |
|---|---|---|
| ``grid`` (5 x 5 blocks, 45.6 lane-km) | 3.5, flowing | 6.7, flowing |
| ``berlin`` (47.7 lane-km) | 4.4, 10 teleports | 15 and growing: congested, 84 teleports |

So the default is 60 (busy and flowing on a real city net); 250 congests
even the grid. Pedestrians walk up to ``max_walk_distance_m`` at ~1.3 m/s:
30/h/km keeps ~5 persons per lane-km on the map.

Three randomTrips.py streams are written per seed, each validated (routed) by
duarouter, so every trip in the files has a route SUMO can drive:

- vehicles (ids ``veh<n>``): type drawn from ``Demand.vehicle_mix`` (SUMO's
  default passenger / delivery / truck / bus geometries), depart on the best
  lane at the highest safe speed, most of them entering from the map's fringe;
- cyclists (ids ``bike<n>``): vClass ``bicycle``, sharing the roads;
- pedestrians (ids ``ped<n>``): persons walking along sidewalks and crossings
  (SUMO's default pedestrian type, speed as SUMO draws it).

Every vehicle type draws its speed factor (multiplier on the lane speed limit)
per vehicle from SUMO's ``normc(1, speed_factor_dev, 0.2, 2)``. The same
``(net, seed, end_s, demand)`` gives the same trips: randomTrips.py is seeded,
duarouter is deterministic.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import sumo
import sumolib

RANDOM_TRIPS = Path(sumo.SUMO_HOME) / "tools" / "randomTrips.py"


@dataclass(frozen=True)
class Demand:
    """Traffic demand of a SUMO run. Rates are trips per hour per km of driving lane."""

    vehicles_per_hour_per_km: float = 60.0  # busy city, see the module docstring
    pedestrians_per_hour_per_km: float = 30.0
    cyclists_per_hour_per_km: float = 10.0
    # (SUMO vClass, probability): each becomes a vType with SUMO's default size for that class
    vehicle_mix: tuple[tuple[str, float], ...] = (
        ("passenger", 0.82), ("delivery", 0.10), ("truck", 0.04), ("bus", 0.04))
    speed_factor_dev: float = 0.1  # std of the per-vehicle speed factor (SUMO's speedDev)
    fringe_factor: float = 10.0  # weight of fringe edges as origin/destination (randomTrips.py)
    min_trip_distance_m: float = 200.0  # beeline, origin to destination edge
    max_trip_distance_m: float = 1500.0
    max_walk_distance_m: float = 800.0

    def speed_factor(self) -> str:
        return f"normc(1,{self.speed_factor_dev},0.2,2)"


def driving_lane_km(net_file: str | os.PathLike) -> float:
    """Summed length of the net's non-internal lanes that admit passenger cars, km."""
    net = sumolib.net.readNet(str(net_file))
    return sum(lane.getLength() for edge in net.getEdges() for lane in edge.getLanes()
               if lane.allows("passenger")) / 1000.0


def write_demand(net_file: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int, end_s: float,
                 demand: Demand) -> tuple[Path, ...]:
    """Write the route files of ``demand`` for departures in ``[0, end_s)`` s into ``out_dir``.

    Returns the route files to hand to SUMO (``-r``); a stream whose rate is 0
    is left out. The three streams use seeds ``seed``, ``seed + 1``, ``seed + 2``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lane_km = driving_lane_km(net_file)
    types_file = out_dir / "vehicle_types.add.xml"
    types_file.write_text(
        '<additional>\n  <vTypeDistribution id="vehicle_mix">\n'
        + "".join(f'    <vType id="{vclass}" vClass="{vclass}" probability="{p}" '
                  f'speedFactor="{demand.speed_factor()}"/>\n' for vclass, p in demand.vehicle_mix)
        + "  </vTypeDistribution>\n</additional>\n")
    streams = (
        ("veh", demand.vehicles_per_hour_per_km, demand.max_trip_distance_m,
         ["-a", types_file, "--fringe-factor", demand.fringe_factor,
          "--trip-attributes", 'type="vehicle_mix" departLane="best" departSpeed="max"']),
        ("bike", demand.cyclists_per_hour_per_km, demand.max_trip_distance_m,
         ["--vehicle-class", "bicycle", "--fringe-factor", demand.fringe_factor,
          "--trip-attributes", f'speedFactor="{demand.speed_factor()}" departLane="best" departSpeed="max"']),
        ("ped", demand.pedestrians_per_hour_per_km, demand.max_walk_distance_m, ["--pedestrians"]),
    )
    env = {**os.environ, "SUMO_HOME": sumo.SUMO_HOME}
    runs = []  # the streams run side by side: randomTrips.py is mostly interpreter start-up and net parsing
    for offset, (prefix, per_km, max_distance, extra) in enumerate(streams):
        rate = per_km * lane_km
        if rate <= 0:
            continue
        route_file = out_dir / f"{prefix}.rou.xml"
        cmd = [sys.executable, RANDOM_TRIPS, "-n", net_file, "--seed", seed + offset, "-b", 0, "-e", end_s,
               "--insertion-rate", rate, "--random-depart", "--validate", "--prefix", prefix,
               "--min-distance", min(demand.min_trip_distance_m, max_distance), "--max-distance", max_distance,
               "-o", out_dir / f"{prefix}.trips.xml", "-r", route_file, *extra]
        runs.append((prefix, route_file, subprocess.Popen([str(c) for c in cmd], cwd=out_dir, env=env, text=True,
                                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for prefix, route_file, proc in runs:
        _, stderr = proc.communicate()
        if proc.returncode != 0 or not route_file.is_file():
            raise RuntimeError(f"randomTrips.py failed for the {prefix} stream of {net_file}:\n{stderr[-2000:]}")
    return tuple(route_file for _, route_file, _ in runs)
