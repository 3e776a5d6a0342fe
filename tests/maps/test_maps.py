"""simgen.maps: SUMO nets -> RoadMap. Maps are built once per session into ``map_cache`` (tests/conftest.py)."""

from __future__ import annotations

import gzip
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import shapely
import sumo
import sumolib
import torch
from sumolib.net.lane import SUMO_ROAD_MOTOR_CLASSES

from simgen.io import load_map, map_arrays
from simgen.maps import BUNDLED, GENERATORS, MapError, export_map, register_generator, resolve_map
from simgen.maps.generators import run_sumo_tool
from simgen.types import LaneKind, LightState, RoadMap, light_states_from_sumo

DATA = Path(__file__).parent / "data"
SMALL_GRID = dict(blocks=2, block_length_m=150.0)


@pytest.fixture(scope="session")
def berlin(map_cache):
    return resolve_map("berlin", cache_dir=map_cache)


def lane_points(roadmap: RoadMap, lanes: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` all valid centerline points of the selected lanes."""
    return roadmap.lane_xy[lanes][roadmap.lane_point_valid[lanes]]


def assert_cycles_stop_and_go(roadmap: RoadMap, min_fraction: float = 1.0) -> None:
    """At least ``min_fraction`` of the light slots show both STOP and GO during their cycle."""
    in_cycle = torch.arange(roadmap.signal_cycle.shape[1]) < roadmap.signal_cycle_len[:, None]
    shows = [((roadmap.signal_cycle == state) & in_cycle).any(1) for state in (LightState.STOP, LightState.GO)]
    assert roadmap.num_signals > 0 and (shows[0] & shows[1]).float().mean() >= min_fraction


# --- generated grid ----------------------------------------------------------

def test_grid_contents(grid_map):
    m = grid_map.roadmap
    kind = m.lane_kind
    assert grid_map.name == m.name == "grid" and grid_map.attribution == ""
    assert grid_map.net_file.is_file() and m.net_file == str(grid_map.net_file)
    assert (kind == LaneKind.DRIVING).sum() > 500 and m.lane_is_junction.sum() > 500
    assert (kind == LaneKind.SIDEWALK).sum() > 0 and (kind == LaneKind.WALKINGAREA).sum() > 0
    assert m.crosswalk_xy.shape[0] == (kind == LaneKind.CROSSING).sum() > 0
    assert m.junction_xy.shape[0] == 36 and len(m.tls_ids) == 36  # 5x5 blocks: 6x6 signalised junctions
    assert m.num_signals > 0
    # stop points end their approach lane; slots go approach -> via -> outgoing along the lane graph
    last = m.lane_point_valid.sum(1) - 1
    assert torch.equal(m.signal_stop_xy, m.lane_xy[m.signal_lane, last[m.signal_lane]])
    assert (m.lane_kind[m.signal_lane] == LaneKind.DRIVING).all() and not m.lane_is_junction[m.signal_lane].any()
    assert m.lane_is_junction[m.signal_via_lane].all()
    for a, via, b in zip(m.signal_lane.tolist(), m.signal_via_lane.tolist(), m.signal_to_lane.tolist()):
        assert via in m.successors(a).tolist()
        chain = [via]  # a split junction lane continues on further junction lanes
        while m.lane_is_junction[chain[-1]] and len(chain) < 5:
            chain.append(int(m.successors(chain[-1])[0]))
        assert chain[-1] == b
    assert_cycles_stop_and_go(m)
    # neighbours: same edge, same kind, left = next SUMO lane index
    left = m.lane_neighbors[:, 0]
    for i in torch.nonzero(left >= 0).flatten().tolist()[:50]:
        edge, k = m.lane_ids[i].rsplit("_", 1)
        assert m.lane_ids[left[i]] == f"{edge}_{int(k) + 1}" and m.lane_kind[left[i]] == m.lane_kind[i]


def test_lane_graph_matches_sumolib(grid_map):
    """Slow twin: the lane graph rebuilt from sumolib's connection objects."""
    m = grid_map.roadmap
    net = sumolib.net.readNet(str(grid_map.net_file), withInternal=True)
    vehicle = {m.lane_ids[i]: i for i in range(m.num_lanes) if m.lane_kind[i] in (LaneKind.DRIVING, LaneKind.BIKE)}
    expected = {(vehicle[lane.getID()], vehicle[c.getViaLaneID() or c.getToLane().getID()])
                for edge in net.getEdges(withInternal=True) for lane in edge.getLanes() for c in lane.getOutgoing()
                if lane.getID() in vehicle and (c.getViaLaneID() or c.getToLane().getID()) in vehicle}
    assert set(map(tuple, m.lane_succ.tolist())) == expected and len(expected) == m.lane_succ.shape[0]


def test_generators_registry(map_cache):
    assert {"grid", "spider", "random"} <= set(GENERATORS)
    with pytest.raises(ValueError, match="already registered"):
        register_generator("grid")(lambda net_file, *, seed=0: None)
    for name in ("spider", "random"):
        m = resolve_map(name, cache_dir=map_cache).roadmap
        assert m.num_signals > 0 and (m.lane_kind == LaneKind.CROSSING).any()


def test_determinism_and_cache(grid_map, map_cache, tmp_path):
    again = resolve_map("grid", cache_dir=tmp_path)  # built from scratch in another cache
    a, b = map_arrays(grid_map.roadmap), map_arrays(again.roadmap)
    assert a.keys() == b.keys()
    for key in a:
        if key != "net_file":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    cached = resolve_map("grid", cache_dir=map_cache)
    assert cached.net_file == grid_map.net_file
    assert torch.equal(cached.roadmap.signal_cycle, grid_map.roadmap.signal_cycle)
    other_seed = resolve_map("grid", seed=1, cache_dir=map_cache).roadmap  # seed only moves signal offsets
    assert torch.equal(other_seed.lane_xy, grid_map.roadmap.lane_xy)
    assert not torch.equal(other_seed.signal_cycle, grid_map.roadmap.signal_cycle)


# --- drivable area -----------------------------------------------------------

@pytest.mark.parametrize("name", ["grid_map", "berlin"])
def test_drivable_area(name, request):
    m = request.getfixturevalue(name).roadmap
    pts = lane_points(m, m.vehicle_lanes)[::4]  # a subsample keeps berlin's check to a few seconds
    assert m.is_drivable(pts).float().mean() >= 0.995
    assert (m.signed_distance_to_road_edge(pts[::5]) < 0).float().mean() >= 0.995
    # points 30 m from every lane are off-road
    lanes = shapely.MultiLineString([p.numpy() for p in (m.lane_xy[i][m.lane_point_valid[i]]
                                                         for i in range(m.num_lanes)) if len(p) > 1])
    xmin, ymin, xmax, ymax = m.bounds.tolist()
    probe = np.random.default_rng(0).uniform([xmin, ymin], [xmax, ymax], size=(4000, 2))
    far = probe[shapely.distance(shapely.points(probe), lanes) > 30.0]
    assert len(far) > 100
    assert not m.is_drivable(torch.from_numpy(far).float()).any()
    # closed rings; the outer boundary counter-clockwise (shoelace area > 0), islands clockwise
    rings = [m.road_edge_xy[r][m.road_edge_valid[r]].double().numpy() for r in range(m.road_edge_xy.shape[0])]
    assert all(len(ring) >= 4 and np.array_equal(ring[0], ring[-1]) for ring in rings)
    signed = np.array([np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2 for x, y in (ring.T for ring in rings)])
    assert signed[np.argmax(np.abs(signed))] > 0 and signed.sum() > 0
    if name == "grid_map":  # one network, one island per block
        assert (signed > 0).sum() == 1 and (signed < 0).sum() == 25


# --- signal programs vs libsumo ----------------------------------------------

# grid: seeded offsets test the offset's sign; ingolstadt: 17 programs for one light test which one SUMO runs
@pytest.mark.parametrize("spec, options", [("grid", dict(seed=3, **SMALL_GRID)), ("ingolstadt", {})])
def test_signal_program_matches_libsumo(spec, options, map_cache):
    libsumo = pytest.importorskip("libsumo")
    m = resolve_map(spec, cache_dir=map_cache, **options).roadmap
    if spec == "grid":
        offsets = {tl.get("offset") for tl in ET.parse(m.net_file).getroot().iter("tlLogic")}
        assert len(offsets) > 1, "the seeded offsets should differ, or the offset sign goes untested"
    libsumo.start([str(Path(sumo.SUMO_HOME) / "bin" / "sumo"), "-n", m.net_file, "--no-step-log", "--no-warnings",
                   "--begin", "0", "--step-length", "0.1"])
    try:
        for _ in range(1200):
            libsumo.simulationStep()
            k = round(libsumo.simulation.getTime() / 0.1)
            sumo_states = {t: light_states_from_sumo(libsumo.trafficlight.getRedYellowGreenState(t))
                           for t in m.tls_ids}
            expected = torch.tensor([sumo_states[m.tls_ids[t]][link] for t, link in
                                     zip(m.signal_tls.tolist(), m.signal_link.tolist())], dtype=torch.int8)
            assert torch.equal(m.signal_state_at(k), expected), f"step {k}"
    finally:
        libsumo.close()


# --- real maps and imports ---------------------------------------------------

def test_berlin(berlin):
    m = berlin.roadmap
    assert berlin.name == "berlin" and "OpenStreetMap" in berlin.attribution
    assert len(m.tls_ids) == 15 and m.num_signals > 100 and m.crosswalk_xy.shape[0] > 100
    assert_cycles_stop_and_go(m, 0.9)  # a few real slots are never red (e.g. joinedS_0 link 0)
    # every lane a passenger car may use is a DRIVING lane, found by its SUMO id (slow twin: sumolib)
    net = sumolib.net.readNet(str(BUNDLED["berlin"]), withInternal=True)
    motor = {lane.getID() for edge in net.getEdges(withInternal=True) for lane in edge.getLanes()
             if lane.getPermissions() & SUMO_ROAD_MOTOR_CLASSES}
    driving = {m.lane_ids[i] for i in torch.nonzero(m.vehicle_lanes).flatten().tolist()}
    assert driving == motor
    assert all(m.lane_ids[m.lane_index[lane]] == lane for lane in motor)


# braunschweig's one light belongs to a SUMO game: the player switches between 4 programs, and the one
# SUMO starts with holds every link on a single colour
@pytest.mark.parametrize("name, min_cycling", [("braunschweig", 0.0), ("ingolstadt", 0.9)])
def test_other_bundled_maps(name, min_cycling, map_cache):
    source = resolve_map(name, cache_dir=map_cache)
    m = source.roadmap
    assert m.num_lanes > 100 and m.num_signals > 0 and "OpenStreetMap" in source.attribution
    assert_cycles_stop_and_go(m, min_cycling)


def test_osm_import(map_cache):
    source = resolve_map(str(DATA / "crossroads.osm"), cache_dir=map_cache)
    m = source.roadmap
    assert source.name == "crossroads" and "OpenStreetMap" in source.attribution
    assert "1" in m.tls_ids  # the traffic_signals node
    assert m.num_signals > 0 and (m.lane_kind == LaneKind.CROSSING).any()
    assert_cycles_stop_and_go(m)


def test_opendrive_import(map_cache, tmp_path):
    small = resolve_map("grid", cache_dir=map_cache, **SMALL_GRID)
    xodr = tmp_path / "small_grid.xodr"
    run_sumo_tool("netconvert", ["--sumo-net-file", str(small.net_file), "--opendrive-output", str(xodr)], "test")
    m = resolve_map(str(xodr), cache_dir=map_cache).roadmap
    assert m.name == "small_grid"
    assert (m.lane_kind == LaneKind.DRIVING).sum() >= (small.roadmap.lane_kind == LaneKind.DRIVING).sum() // 2
    assert m.num_signals > 0 and (m.lane_kind == LaneKind.CROSSING).any()


def test_net_file_in_place(grid_map, map_cache, tmp_path):
    gz = tmp_path / "copy.net.xml.gz"
    gz.write_bytes(gzip.compress(grid_map.net_file.read_bytes()))
    source = resolve_map(str(gz), cache_dir=map_cache)
    assert source.net_file == gz and source.name == "copy"
    assert torch.equal(source.roadmap.lane_xy, grid_map.roadmap.lane_xy)


# --- bad input ---------------------------------------------------------------

def test_bad_input(grid_map, map_cache, tmp_path):
    with pytest.raises(MapError, match="unknown map name 'atlantis'.*berlin"):
        resolve_map("atlantis", cache_dir=map_cache)
    with pytest.raises(MapError, match="missing.net.xml.*does not exist"):
        resolve_map(str(tmp_path / "missing.net.xml"), cache_dir=map_cache)
    with pytest.raises(MapError, match="unsupported type '.shp'"):
        resolve_map("roads.shp", cache_dir=map_cache)
    truncated = tmp_path / "truncated.net.xml"
    truncated.write_bytes(grid_map.net_file.read_bytes()[:50_000])
    with pytest.raises(MapError, match="truncated.net.xml: not a readable SUMO network"):
        resolve_map(str(truncated), cache_dir=map_cache)
    with pytest.raises(MapError, match="unknown option.*valid options: blocks"):
        resolve_map("grid", cache_dir=map_cache, block_size=3)
    with pytest.raises(MapError, match="netgenerate failed.*lanenumber"):
        resolve_map("grid", cache_dir=map_cache, lanes=0)
    broken_osm = tmp_path / "broken.osm"
    broken_osm.write_text("<osm version='0.6'></osm>")
    with pytest.raises(MapError, match="netconvert failed on .*broken.osm"):
        resolve_map(str(broken_osm), cache_dir=map_cache)
    rail = tmp_path / "rail.net.xml"
    rail.write_text('<net version="1.20"><edge id="e" from="a" to="b"><lane id="e_0" index="0" allow="rail" '
                    'speed="30" length="100" shape="0,0 100,0"/></edge></net>')
    with pytest.raises(MapError, match="rail.net.xml: the network has no lanes that cars may use"):
        resolve_map(str(rail), cache_dir=map_cache)


# --- export ------------------------------------------------------------------

def test_export_map(map_cache, tmp_path):
    out = tmp_path / "exported"
    source = export_map("grid", out, cache_dir=map_cache, **SMALL_GRID)
    assert sorted(p.name for p in out.iterdir()) == ["map.json", "map.npz", "net.net.xml", "preview.png"]
    assert source.net_file == out / "net.net.xml"
    m = load_map(out / "map.npz")
    assert m.net_file == str(out / "net.net.xml") and torch.equal(m.lane_xy, source.roadmap.lane_xy)
    summary = json.loads((out / "map.json").read_text())
    assert summary["num_signals"] == m.num_signals and summary["num_tls"] == 9
    assert summary["driving_lane_km"] > 1 and summary["versions"]["sumo"].startswith("1.28")
