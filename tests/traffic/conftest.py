"""SUMO runs shared by the traffic tests: one small grid, recorded once per session."""

from dataclasses import dataclass
from pathlib import Path

import libsumo
import numpy as np
import pytest

from simgen.traffic import Demand, reference_trip, write_demand
from simgen.traffic.sumo import AgentRegistry, Frame, RunStats, SumoRecorder, close_run, open_run, sumo_args

RECORD_S = 120.0  # long enough for every light slot to cycle
# busier than the default, so that the small map has agents around every AV
DEMAND = Demand(vehicles_per_hour_per_km=250.0, pedestrians_per_hour_per_km=60.0, cyclists_per_hour_per_km=20.0)


@pytest.fixture(scope="session")
def small_map(map_cache):
    from simgen.maps import resolve_map

    return resolve_map("grid", cache_dir=map_cache, blocks=2, block_length_m=120.0)


@dataclass
class RecordedRun:
    frames: list[Frame]
    registry: AgentRegistry
    stats: RunStats
    # after the last step, per SUMO id: SUMO's own position (front bumper), length, and lane_centre (below)
    sumo_view: dict[str, dict]


def lane_centre(vehicle: str):
    """SUMO's lane geometry for a vehicle fully on a straight edge lane, on its centreline and aligned with it:
    the lane point at its lane position (SUMO's lane position is the front bumper) minus half a length along
    the lane. None for other vehicles (the sublane model lets vehicles drift and yaw within their lane)."""
    lane, pos, length = (libsumo.vehicle.getLaneID(vehicle), libsumo.vehicle.getLanePosition(vehicle),
                         libsumo.vehicle.getLength(vehicle))
    shape = np.array(libsumo.lane.getShape(lane))
    if lane.startswith(":") or len(shape) != 2 or pos < length or \
            abs(libsumo.vehicle.getLateralLanePosition(vehicle)) > 1e-6:
        return None
    direction = (shape[1] - shape[0]) / np.linalg.norm(shape[1] - shape[0])
    angle = np.radians(libsumo.vehicle.getAngle(vehicle))  # clockwise from north
    if direction @ [np.sin(angle), np.cos(angle)] < 1 - 1e-9:
        return None
    edge, index = lane.rsplit("_", 1)
    front = np.array(libsumo.simulation.convert2D(edge, pos, int(index)))
    return front - length / 2 * direction


@pytest.fixture(scope="session")
def recorded_run(small_map, tmp_path_factory) -> RecordedRun:
    net = small_map.net_file
    routes = write_demand(net, tmp_path_factory.mktemp("demand"), seed=3, end_s=200.0, demand=DEMAND)
    open_run(sumo_args(net, routes, 3))
    try:
        recorder = SumoRecorder(small_map.roadmap)
        recorder.warm_up(30.0)
        frames = [recorder.step() for _ in range(round(RECORD_S * 10))]
        view = {v: {"front": libsumo.vehicle.getPosition(v), "length": libsumo.vehicle.getLength(v),
                    "lane_centre": lane_centre(v)} for v in libsumo.vehicle.getIDList()}
        view.update({p: {"front": libsumo.person.getPosition(p), "length": libsumo.person.getLength(p),
                         "lane_centre": None} for p in libsumo.person.getIDList()})
    finally:
        close_run()
    return RecordedRun(frames, recorder.registry, recorder.stats, view)


def run_reference(small_map, workdir: Path, steps: int = 60):
    return reference_trip(small_map, seed=7, steps=steps, av_route=None, demand=DEMAND, warmup_s=60.0,
                          workdir=workdir)


@pytest.fixture(scope="session")
def reference(small_map, tmp_path_factory):
    return run_reference(small_map, tmp_path_factory.mktemp("reference"))


def per_agent_steps(frames: list[Frame]):
    """Consecutive-step pairs of the same agent: (object id, pose at t, pose at t+1), stacked."""
    ids, before, after = [], [], []
    for a, b in zip(frames[:-1], frames[1:]):
        common, ia, ib = np.intersect1d(a.object_id, b.object_id, return_indices=True)
        ids.append(common)
        before.append(a.pose[ia])
        after.append(b.pose[ib])
    return np.concatenate(ids), np.concatenate(before), np.concatenate(after)
