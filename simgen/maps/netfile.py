"""Read a SUMO network (``.net.xml`` / ``.net.xml.gz``) into a ``RoadMap``.

The net is parsed with ``xml.etree`` (berlin's 5 MB parse in ~0.4 s); the
geometry is built with shapely. Everything is in SUMO's world frame, metres.

Lanes
    Every lane, internal (``:``-prefixed, ``lane_is_junction``) ones included,
    classified by its edge function and permissions (``LaneKind``): crossings
    and walking areas by function; otherwise DRIVING if any road motor vehicle
    class may use it, BIKE if bicycles may, SIDEWALK if pedestrians may. Lanes
    for none of these (rail, tram, ship, ...) are skipped. ``lane_xy`` holds the
    centerline, except for walking areas, whose SUMO shape is their outline.
    Missing widths get SUMO's default of 3.2 m.

Lane graph
    ``lane_succ`` holds one edge per SUMO connection between vehicle lanes
    (DRIVING or BIKE): from lane -> via (internal) lane, or from lane -> to lane
    when the connection has no via. SUMO also lists connections that leave
    internal lanes, so internal chains (split junction lanes) come out whole.

Drivable area
    (junction polygons - walking areas) + DRIVING lane polygons (centerline
    lengthened by 10 cm at both ends, so end points of dead-end lanes lie
    inside, then buffered by width/2 with flat caps). Gaps under 0.5 m are
    closed (+-25 cm mitre buffering) and holes under 2 m² dropped: both are
    seams between SUMO's lane and junction shapes, not kerbs. Rings are
    simplified by 10 cm. A junction counts when a driving lane enters or
    crosses it and it is not a dead end. ``road_edge_xy`` holds the boundary
    rings, exteriors counter-clockwise and islands clockwise.

Signals
    One light slot per connection that a traffic light controls, between two
    DRIVING lanes (pedestrian crossing links are not slots). Their static
    program is the tlLogic SUMO runs: the *last* one in the file for each tls
    id (checked against libsumo on the Ingolstadt net, which has 17 programs for
    one light). Actuated, delay-based and NEMA programs are read as static:
    each phase lasts its ``duration``.

Signal timing (checked against libsumo at 10 Hz, see tests/maps)
    SUMO's program runs on absolute time: at time t it is at position
    ``(t - offset) mod cycle``. A phase switch due at time t executes at the
    start of the step from t to t + DT_S, so the state libsumo reports once
    ``simulation.getTime() == k * DT_S`` is the program's state at
    ``(k - 1) * DT_S - offset``. ``signal_cycle`` stores exactly that state, so
    ``RoadMap.signal_state_at(k)`` equals what a 10 Hz libsumo log records at
    step k (``--step-length 0.1``). The one exception is a run's very first
    state, before any step, which is the program's state at ``-offset``.
"""

from __future__ import annotations

import gzip
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import shapely
import torch
from shapely.geometry.polygon import orient
from sumolib.net.lane import SUMO_ROAD_MOTOR_CLASSES, SUMO_VEHICLE_CLASSES

from simgen.types import DT_S, LaneKind, RoadMap, light_states_from_sumo

DEFAULT_LANE_WIDTH_M = 3.2  # SUMO's default when a lane has no width attribute
CLOSE_GAPS_M = 0.25  # +- buffer (mitre joins keep corners) that closes gaps under 0.5 m between lane polygons
EXTEND_LANES_M = 0.1  # lane polygons reach this far past the lane ends, so lane end points lie inside
MIN_HOLE_AREA_M2 = 2.0  # smaller holes in the drivable area are gaps between lane and junction shapes
SIMPLIFY_M = 0.1  # tolerance for road-edge rings
MIN_JUNCTION_AREA_M2 = 0.5  # smaller junction shapes are degenerate
VEHICLE_KINDS = (LaneKind.DRIVING, LaneKind.BIKE)


class MapError(ValueError):
    """Bad map input. The message names the file or spec and says how to fix it."""


# --- parsing ---------------------------------------------------------------

def read_net_xml(path: Path) -> ET.Element:
    """Parse a ``.net.xml`` or ``.net.xml.gz`` file -> the ``<net>`` root element."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            root = ET.parse(f).getroot()
    except (ET.ParseError, OSError, EOFError) as err:
        raise MapError(f"{path}: not a readable SUMO network ({err}); regenerate it or check that the "
                       "file is complete (e.g. not truncated by an interrupted download)") from err
    if root.tag != "net":
        raise MapError(f"{path}: root element is <{root.tag}>, a SUMO network has <net>; "
                       "convert other formats with netconvert (or pass a .osm/.xodr file)")
    return root


def parse_shape(text: str) -> np.ndarray:
    """SUMO ``"x,y[,z] x,y[,z] ..."`` -> ``[N, 2]`` float64, m (z dropped)."""
    return np.array([[float(v) for v in p.split(",")[:2]] for p in text.split()], dtype=np.float64).reshape(-1, 2)


def allowed_classes(lane: ET.Element) -> set[str]:
    """The vehicle classes a lane admits, from its ``allow`` / ``disallow`` attributes."""
    allow, disallow = lane.get("allow"), lane.get("disallow")
    if allow is not None:
        return SUMO_VEHICLE_CLASSES if allow == "all" else set(allow.split())
    if disallow is not None:
        return set() if disallow == "all" else SUMO_VEHICLE_CLASSES - set(disallow.split())
    return SUMO_VEHICLE_CLASSES


def lane_kind(function: str, lane: ET.Element) -> LaneKind | None:
    """Classify a lane (see the module docstring); None for lanes simgen ignores."""
    if function == "crossing":
        return LaneKind.CROSSING
    if function == "walkingarea":
        return LaneKind.WALKINGAREA
    allowed = allowed_classes(lane)
    if allowed & SUMO_ROAD_MOTOR_CLASSES:
        return LaneKind.DRIVING
    if "bicycle" in allowed:
        return LaneKind.BIKE
    if "pedestrian" in allowed:
        return LaneKind.SIDEWALK
    return None


def pad(polylines: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of ``[n_i, 2]`` -> padded float32 ``[N, P, 2]`` and bool mask ``[N, P]``."""
    width = max((len(p) for p in polylines), default=1)
    xy = np.zeros((len(polylines), width, 2), dtype=np.float32)
    valid = np.zeros((len(polylines), width), dtype=bool)
    for i, p in enumerate(polylines):
        xy[i, :len(p)] = p
        valid[i, :len(p)] = True
    return torch.from_numpy(xy), torch.from_numpy(valid)


def closed_rings(polygons) -> list[np.ndarray]:
    """Polygons -> their rings as closed ``[n, 2]`` arrays, exterior CCW and holes CW."""
    rings = []
    for polygon in polygons:
        polygon = orient(polygon, 1.0)
        rings += [np.asarray(r.coords)[:, :2] for r in (polygon.exterior, *polygon.interiors)]
    return rings


def lane_polygons(xy: list[np.ndarray], width_m: np.ndarray) -> np.ndarray:
    """Centerlines buffered by width/2 with flat caps -> shapely polygons ``[N]``."""
    lines = np.array([shapely.LineString(p if len(p) > 1 else np.repeat(p, 2, 0)) for p in xy], dtype=object)
    return shapely.buffer(lines, width_m / 2, cap_style="flat")


def extend_ends(xy: np.ndarray, d_m: float) -> np.ndarray:
    """Polyline ``[n, 2]`` lengthened by ``d_m`` along its first and last non-zero segments."""
    seg = np.diff(xy, axis=0)
    norm = np.linalg.norm(seg, axis=1)
    moving = np.flatnonzero(norm > 1e-6)
    if len(moving) == 0:
        return xy
    head, tail = seg[moving[0]] / norm[moving[0]], seg[moving[-1]] / norm[moving[-1]]
    return np.vstack([xy[0] - d_m * head, xy, xy[-1] + d_m * tail])


def polygon_parts(geometry) -> list:
    """A (multi)polygon or collection -> its non-empty polygons."""
    return [g for g in shapely.get_parts(geometry) if isinstance(g, shapely.Polygon) and not g.is_empty]


def outlines(geometries) -> list[np.ndarray]:
    """Shapely geometries -> the closed CCW exterior ring ``[n, 2]`` of each of their polygons."""
    return [np.asarray(orient(p, 1.0).exterior.coords)[:, :2] for g in geometries for p in polygon_parts(g)]


# --- the RoadMap -----------------------------------------------------------

class _Lanes:
    """Lane table in file order: id -> index, with per-lane attributes as lists."""

    def __init__(self, root: ET.Element):
        self.ids: list[str] = []
        self.xy: list[np.ndarray] = []
        self.kind: list[LaneKind] = []
        self.width, self.speed, self.length = [], [], []
        self.is_junction: list[bool] = []
        self.edge_lane: list[tuple[str, int]] = []  # (edge id, SUMO lane index)
        for edge in root.iter("edge"):
            function = edge.get("function", "normal")
            for lane in edge.iter("lane"):
                kind = lane_kind(function, lane)
                if kind is None:
                    continue
                self.ids.append(lane.get("id"))
                self.xy.append(parse_shape(lane.get("shape", "")))
                self.kind.append(kind)
                self.width.append(float(lane.get("width", DEFAULT_LANE_WIDTH_M)))
                self.speed.append(float(lane.get("speed")))
                self.length.append(float(lane.get("length")))
                self.is_junction.append(function == "internal")
                self.edge_lane.append((edge.get("id"), int(lane.get("index"))))
        self.index = {lane_id: i for i, lane_id in enumerate(self.ids)}

    def neighbors(self) -> np.ndarray:
        """``[L, 2]`` (left, right): the adjacent SUMO lane index +1 / -1 on the same edge, if same kind."""
        out = np.full((len(self.ids), 2), -1, dtype=np.int32)
        by_edge_lane = {key: i for i, key in enumerate(self.edge_lane)}
        for i, (edge, k) in enumerate(self.edge_lane):
            for side, other in ((0, k + 1), (1, k - 1)):
                j = by_edge_lane.get((edge, other), -1)
                if j >= 0 and self.kind[j] == self.kind[i]:
                    out[i, side] = j
        return out

    def of(self, edge: str, lane: str | None) -> int:
        """Index of SUMO lane ``edge_lane``, -1 if it is not in the map."""
        return self.index.get(f"{edge}_{lane}", -1)


def _lane_graph(root: ET.Element, lanes: _Lanes) -> np.ndarray:
    """``[E, 2]`` int32 (from lane, to lane) over vehicle connections, deduplicated, file order."""
    edges: dict[tuple[int, int], None] = {}
    for c in root.iter("connection"):
        a = lanes.of(c.get("from"), c.get("fromLane"))
        via = c.get("via")
        b = lanes.index.get(via, -1) if via else lanes.of(c.get("to"), c.get("toLane"))
        if a >= 0 and b >= 0 and lanes.kind[a] in VEHICLE_KINDS and lanes.kind[b] in VEHICLE_KINDS:
            edges[(a, b)] = None
    return np.array(list(edges), dtype=np.int32).reshape(-1, 2)


def _junction_polygons(root: ET.Element, lanes: _Lanes) -> list:
    """Shapely polygons of junctions that vehicles use, skipping dead ends and degenerate shapes."""
    polygons = []
    for j in root.iter("junction"):
        if j.get("type") in ("internal", "dead_end"):
            continue
        used = (j.get("incLanes", "") + " " + j.get("intLanes", "")).split()
        if not any(lanes.kind[lanes.index[u]] == LaneKind.DRIVING for u in used if u in lanes.index):
            continue
        shape = parse_shape(j.get("shape", ""))
        if len(shape) < 3:
            continue
        polygon = shapely.make_valid(shapely.Polygon(shape))
        polygons += [p for p in polygon_parts(polygon) if p.area >= MIN_JUNCTION_AREA_M2]
    return polygons


def _drivable_area(lanes: _Lanes, junctions: list) -> list:
    """(junctions - walking areas) + DRIVING lane polygons -> simplified polygons."""
    kind = np.array(lanes.kind)
    driving = np.flatnonzero(kind == LaneKind.DRIVING)
    walking = np.flatnonzero(kind == LaneKind.WALKINGAREA)
    roads = lane_polygons([extend_ends(lanes.xy[i], EXTEND_LANES_M) for i in driving], np.array(lanes.width)[driving])
    corners = [shapely.make_valid(shapely.Polygon(lanes.xy[i])) for i in walking if len(lanes.xy[i]) >= 3]
    area = shapely.difference(shapely.union_all(junctions), shapely.union_all(corners))
    area = shapely.union_all([area, *roads])
    area = area.buffer(CLOSE_GAPS_M, join_style="mitre").buffer(-CLOSE_GAPS_M, join_style="mitre")
    return [shapely.Polygon(p.exterior, [h for h in p.interiors if shapely.Polygon(h).area >= MIN_HOLE_AREA_M2])
            for p in polygon_parts(area.simplify(SIMPLIFY_M, preserve_topology=True))]


def _tls_cycles(root: ET.Element, path: Path) -> dict[str, np.ndarray]:
    """tls id -> int8 ``[Y, links]``: LightState of every link at absolute step k mod Y (module docstring)."""
    programs = {tl.get("id"): tl for tl in root.iter("tlLogic")}  # the last program per id is the one SUMO runs
    cycles = {}
    for tls_id, tl in programs.items():
        phases = [(round(float(p.get("duration")) / DT_S), p.get("state")) for p in tl.iter("phase")]
        if len({len(s) for _, s in phases}) != 1 or sum(n for n, _ in phases) < 1:
            raise MapError(f"{path}: traffic light '{tls_id}' has no phases, phases of zero total duration or "
                           "state strings of different lengths; fix its <tlLogic> (e.g. in netedit)")
        per_phase = np.array([light_states_from_sumo(s) for _, s in phases], dtype=np.int8)
        at_position = np.repeat(per_phase, [n for n, _ in phases], axis=0)  # [Y, links]
        offset = round(float(tl.get("offset", "0")) / DT_S)
        steps = np.arange(len(at_position))
        cycles[tls_id] = at_position[(steps - 1 - offset) % len(at_position)]
    return cycles


def _signals(root: ET.Element, lanes: _Lanes, path: Path) -> dict:
    """Light slots: one per tls-controlled connection between two DRIVING lanes, file order."""
    cycles = _tls_cycles(root, path)
    tls_ids = list(cycles)
    tls_index = {t: i for i, t in enumerate(tls_ids)}
    rows = []  # (from, via, to, tls, link)
    for c in root.iter("connection"):
        tls = c.get("tl")
        if tls is None:
            continue
        a, b = lanes.of(c.get("from"), c.get("fromLane")), lanes.of(c.get("to"), c.get("toLane"))
        if a < 0 or b < 0 or lanes.kind[a] != LaneKind.DRIVING or lanes.kind[b] != LaneKind.DRIVING:
            continue
        if tls not in cycles:
            raise MapError(f"{path}: connection {c.get('from')} -> {c.get('to')} names traffic light '{tls}', "
                           "which has no <tlLogic>; rebuild the net with netconvert")
        link = int(c.get("linkIndex"))
        if link >= cycles[tls].shape[1]:
            raise MapError(f"{path}: traffic light '{tls}' has {cycles[tls].shape[1]} links in its states, "
                           f"but a connection uses linkIndex {link}; rebuild the net with netconvert")
        rows.append((a, lanes.index.get(c.get("via"), -1), b, tls_index[tls], link))
    table = np.array(rows, dtype=np.int32).reshape(-1, 5)
    lengths = np.array([len(cycles[tls_ids[t]]) for t in table[:, 3]], dtype=np.int32)
    cycle = np.zeros((len(rows), max(lengths, default=1)), dtype=np.int8)
    for g, (t, link) in enumerate(table[:, 3:]):
        cycle[g, :lengths[g]] = cycles[tls_ids[t]][:, link]
    stop_xy = np.array([lanes.xy[a][-1] for a in table[:, 0]], dtype=np.float32).reshape(-1, 2)
    return dict(
        signal_lane=torch.from_numpy(table[:, 0].copy()), signal_via_lane=torch.from_numpy(table[:, 1].copy()),
        signal_to_lane=torch.from_numpy(table[:, 2].copy()), signal_stop_xy=torch.from_numpy(stop_xy),
        signal_tls=torch.from_numpy(table[:, 3].copy()), signal_link=torch.from_numpy(table[:, 4].copy()),
        signal_cycle=torch.from_numpy(cycle), signal_cycle_len=torch.from_numpy(lengths),
        tls_ids=tuple(tls_ids),
    )


def roadmap_from_net(path: str | os.PathLike, name: str = "") -> RoadMap:
    """Build a validated ``RoadMap`` from a SUMO ``.net.xml`` (or ``.net.xml.gz``); see the module docstring.

    Raises MapError when the file is unreadable, not a SUMO net, malformed, or has no drivable lanes.
    """
    path = Path(path)
    root = read_net_xml(path)
    try:
        return _build(root, path, name).validate()
    except MapError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise MapError(f"{path}: malformed SUMO network ({type(err).__name__}: {err}); rebuild it with "
                       "netconvert (e.g. netconvert -s IN.net.xml -o OUT.net.xml)") from err


def _build(root: ET.Element, path: Path, name: str) -> RoadMap:
    lanes = _Lanes(root)
    if LaneKind.DRIVING not in lanes.kind:
        raise MapError(f"{path}: the network has no lanes that cars may use; check the lane permissions "
                       "(allow/disallow) or the netconvert type map it was built with")
    junctions = _junction_polygons(root, lanes)
    lane_xy, lane_valid = pad(lanes.xy)
    edge_xy, edge_valid = pad(closed_rings(_drivable_area(lanes, junctions)))
    kind = np.array(lanes.kind)
    crossings = np.flatnonzero(kind == LaneKind.CROSSING)
    crosswalks = lane_polygons([lanes.xy[i] for i in crossings], np.array(lanes.width)[crossings])
    cross_xy, cross_valid = pad(outlines(crosswalks))
    junction_xy, junction_valid = pad(outlines(junctions))
    return RoadMap(
        lane_xy=lane_xy, lane_point_valid=lane_valid,
        lane_width_m=torch.tensor(lanes.width, dtype=torch.float32),
        lane_speed_limit_mps=torch.tensor(lanes.speed, dtype=torch.float32),
        lane_length_m=torch.tensor(lanes.length, dtype=torch.float32),
        lane_kind=torch.from_numpy(kind.astype(np.int8)),
        lane_is_junction=torch.tensor(lanes.is_junction, dtype=torch.bool),
        lane_neighbors=torch.from_numpy(lanes.neighbors()),
        lane_succ=torch.from_numpy(_lane_graph(root, lanes)),
        road_edge_xy=edge_xy, road_edge_valid=edge_valid,
        crosswalk_xy=cross_xy, crosswalk_valid=cross_valid,
        junction_xy=junction_xy, junction_valid=junction_valid,
        **_signals(root, lanes, path),
        name=name, lane_ids=tuple(lanes.ids), net_file=str(path),
    )
