"""The 3D scene that lidar and cameras ray-cast: a static street built once per map, agents and lights per frame.

Every triangle carries a semantic class (``SemanticClass``, table below), an instance id, an albedo
and an emitter code, so a ray hit tells what it hit, which object it was and how it looks.

Semantic classes (uint8; ``CLASSES`` holds the palette, albedo, lidar reflectivity and wet gloss):

| id | name | what |
|---|---|---|
| 0 | none | sky: the ray hit nothing within range |
| 1 | road | the drivable area (``RoadMap.road_edge_*``) at z = 0 |
| 2 | lane_marking | white/yellow lines, 2 cm above the road |
| 3 | crosswalk | zebra stripes, 2 cm above the road |
| 4 | sidewalk | tops of sidewalks and walking areas, 15 cm up |
| 5 | curb | the sidewalks' vertical faces |
| 6 | terrain | flat ground under everything, 5 cm below the road |
| 7 | building | procedural blocks along the roads |
| 8 | pole | street-light poles, arms and lamps |
| 9 | vegetation | trees (trunk and crown) |
| 10 | traffic_light | signal heads and their lamps |
| 11 | car | vehicles shorter than ``TRUCK_LENGTH_M`` |
| 12 | truck | longer vehicles (trucks, buses) |
| 13 | pedestrian | |
| 14 | cyclist | bicycle and rider |
| 15 | other_agent | agents of unset type |

Instance ids (int32): 0 for stuff without instances (road, markings, sidewalk, terrain, sky);
``1 + slot`` for the agent in row ``slot`` of the scene (``AGENT_INSTANCE_BASE = 1``); and
``STATIC_INSTANCE_BASE + k`` for the k-th building, pole, tree or signal head of the map.

How it is built (``build_static_scene``), in the *local frame*: the world frame shifted by
``origin_xy`` (the map's bounding-box centre, whole metres) so float32 vertices keep millimetres:
    1. road: the even-odd union of the road-edge rings, triangulated (earcut);
    2. lane markings: the left edge of every driving lane outside junctions, dashed (3 m on, 6 m off)
       where a same-direction neighbour lies to the left, else solid yellow; the right edge of the
       rightmost lane solid white;
    3. crosswalks: stripes 0.6 m wide across each crosswalk polygon, along its longest side;
    4. sidewalks: sidewalk lanes and walking areas minus the road, extruded 0.15 m (tops: sidewalk,
       sides: curb); terrain: one quad 200 m beyond the map;
    5. buildings: the bundled SUMO maps ship without OSM building polygons (and polyconvert needs the
       OSM source), so every map gets procedural blocks: the land 2 m beyond roads and sidewalks is cut
       into lots, and rectangles of seeded frontage, depth and height line each lot's rings;
    6. street lights and trees alternate every 15 m along sidewalk lanes, on the curb side;
    7. one signal head per stop point, 5 m above it, facing the approaching lane, with red, yellow and
       green lamps (emitters). A head shows the most permissive state of its light slots.
Per frame (``Tracer.frame``) the agents become type-specific meshes (car with a cabin, truck, cyclist,
pedestrian; templates in a unit box scaled to each agent's box) in a small BVH of their own; the AV
itself is left out (its sensors sit on it). Lamp states come from the scene's lights.

Ray casting (``Frame.cast``): Embree (embreex) on two BVHs, the static one built once per map and the
agents' one per frame, and the nearer hit wins. The agents' BVH is queried with the static hit
distance as the far limit, so it only looks for hits in front of the street.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass, fields

import numpy as np
import shapely
import trimesh
from embreex import rtcore_scene
from embreex.mesh_construction import TriangleMesh
from shapely.geometry.polygon import orient
from shapely.ops import substring

from simgen.maps.netfile import lane_polygons, polygon_parts
from simgen.types import AgentType, LaneKind, RoadMap, SceneState


class SemanticClass(enum.IntEnum):
    NONE = 0
    ROAD = 1
    LANE_MARKING = 2
    CROSSWALK = 3
    SIDEWALK = 4
    CURB = 5
    TERRAIN = 6
    BUILDING = 7
    POLE = 8
    VEGETATION = 9
    TRAFFIC_LIGHT = 10
    CAR = 11
    TRUCK = 12
    PEDESTRIAN = 13
    CYCLIST = 14
    OTHER_AGENT = 15


@dataclass(frozen=True)
class ClassInfo:
    palette: tuple[int, int, int]  # colour in semantic visualisations
    albedo: tuple[float, float, float]  # linear RGB, 0..1
    reflectivity: float  # lidar return strength at normal incidence, 0..1
    wet_gloss: float  # how mirror-like the surface gets in rain, 0..1


CLASSES: dict[SemanticClass, ClassInfo] = {
    SemanticClass.NONE: ClassInfo((0, 0, 0), (0.0, 0.0, 0.0), 0.0, 0.0),
    SemanticClass.ROAD: ClassInfo((128, 64, 128), (0.13, 0.13, 0.14), 0.12, 0.7),
    SemanticClass.LANE_MARKING: ClassInfo((255, 255, 255), (0.85, 0.85, 0.82), 0.85, 0.4),
    SemanticClass.CROSSWALK: ClassInfo((200, 200, 255), (0.85, 0.85, 0.85), 0.8, 0.4),
    SemanticClass.SIDEWALK: ClassInfo((244, 35, 232), (0.42, 0.41, 0.39), 0.25, 0.4),
    SemanticClass.CURB: ClassInfo((196, 196, 196), (0.55, 0.55, 0.53), 0.3, 0.3),
    SemanticClass.TERRAIN: ClassInfo((152, 251, 152), (0.2, 0.3, 0.12), 0.35, 0.1),
    SemanticClass.BUILDING: ClassInfo((70, 70, 70), (0.5, 0.45, 0.4), 0.3, 0.1),
    SemanticClass.POLE: ClassInfo((153, 153, 153), (0.3, 0.3, 0.32), 0.4, 0.2),
    SemanticClass.VEGETATION: ClassInfo((107, 142, 35), (0.12, 0.28, 0.08), 0.45, 0.1),
    SemanticClass.TRAFFIC_LIGHT: ClassInfo((250, 170, 30), (0.08, 0.08, 0.08), 0.6, 0.2),
    SemanticClass.CAR: ClassInfo((0, 0, 142), (0.5, 0.5, 0.5), 0.5, 0.5),
    SemanticClass.TRUCK: ClassInfo((0, 0, 70), (0.6, 0.6, 0.6), 0.5, 0.5),
    SemanticClass.PEDESTRIAN: ClassInfo((220, 20, 60), (0.35, 0.25, 0.2), 0.3, 0.1),
    SemanticClass.CYCLIST: ClassInfo((119, 11, 32), (0.3, 0.2, 0.2), 0.35, 0.2),
    SemanticClass.OTHER_AGENT: ClassInfo((0, 60, 100), (0.4, 0.4, 0.4), 0.4, 0.3),
}
PALETTE = np.array([CLASSES[c].palette for c in SemanticClass], dtype=np.uint8)  # [16, 3]
REFLECTIVITY = np.array([CLASSES[c].reflectivity for c in SemanticClass], dtype=np.float32)
WET_GLOSS = np.array([CLASSES[c].wet_gloss for c in SemanticClass], dtype=np.float32)


class Emitter(enum.IntEnum):
    """Triangles that glow at night (and signal lamps, which glow when their state is shown)."""

    NONE = 0
    HEADLIGHT = 1
    TAILLIGHT = 2
    STREET_LAMP = 3
    SIGNAL_STOP = 4  # lit when the head shows LightState.STOP
    SIGNAL_CAUTION = 5
    SIGNAL_GO = 6


AGENT_INSTANCE_BASE = 1
STATIC_INSTANCE_BASE = 100_000
TRUCK_LENGTH_M = 6.5
ROAD_Z_M, MARKING_Z_M, SIDEWALK_Z_M, TERRAIN_Z_M = 0.0, 0.02, 0.15, -0.05
MARKING_WIDTH_M, DASH_ON_M, DASH_OFF_M = 0.15, 3.0, 6.0
CROSSWALK_STRIPE_M = 0.6
LOT_SETBACK_M = 2.0
FURNITURE_SPACING_M = 15.0
SIGNAL_HEAD_Z_M = 5.0  # bottom of a signal head above the ground
TERRAIN_MARGIN_M = 200.0


# --- meshes with per-triangle attributes --------------------------------------------------------

@dataclass(frozen=True)
class Mesh:
    """Triangles with attributes, local frame (m). All per-face arrays are ``[F]`` (albedo ``[F, 3]``)."""

    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int32
    semantic: np.ndarray  # [F] uint8 SemanticClass
    instance: np.ndarray  # [F] int32
    albedo: np.ndarray  # [F, 3] float32, linear RGB
    emitter: np.ndarray  # [F] uint8 Emitter
    head: np.ndarray  # [F] int32 signal head of a signal lamp, else -1

    @classmethod
    def empty(cls) -> Mesh:
        return cls(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), *_face_arrays(0))

    @classmethod
    def of(cls, vertices: np.ndarray, faces: np.ndarray, semantic: SemanticClass, instance: int = 0,
           albedo: tuple[float, float, float] | None = None, emitter: Emitter = Emitter.NONE,
           head: int = -1) -> Mesh:
        """One uniform part: every face gets the same attributes (albedo defaults to the class's)."""
        n = len(faces)
        colour = CLASSES[semantic].albedo if albedo is None else albedo
        return cls(np.asarray(vertices, np.float32), np.asarray(faces, np.int32),
                   np.full(n, semantic, np.uint8), np.full(n, instance, np.int32),
                   np.tile(np.asarray(colour, np.float32), (n, 1)), np.full(n, emitter, np.uint8),
                   np.full(n, head, np.int32))

    @classmethod
    def concat(cls, meshes: list[Mesh]) -> Mesh:
        meshes = [m for m in meshes if len(m.faces)]
        if not meshes:
            return cls.empty()
        offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
        faces = np.concatenate([m.faces + o for m, o in zip(meshes, offsets)]).astype(np.int32)
        per_face = {f.name: np.concatenate([getattr(m, f.name) for m in meshes])
                    for f in fields(cls) if f.name not in ("vertices", "faces")}
        return cls(np.concatenate([m.vertices for m in meshes]), faces, **per_face)

    def without_slivers(self, min_area_m2: float = 1e-6) -> Mesh:
        """The faces with an area of at least ``min_area_m2`` (triangulation leaves a few slivers)."""
        tri = self.vertices[self.faces].astype(np.float64)
        keep = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) >= 2 * min_area_m2
        per_face = {f.name: getattr(self, f.name)[keep] for f in fields(self) if f.name != "vertices"}
        return Mesh(self.vertices, **per_face)

    def face_normals(self) -> np.ndarray:
        """``[F, 3]`` unit normals (winding order; shading flips them towards the ray)."""
        tri = self.vertices[self.faces]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        return (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _face_arrays(n: int) -> tuple[np.ndarray, ...]:
    return (np.zeros(n, np.uint8), np.zeros(n, np.int32), np.zeros((n, 3), np.float32), np.zeros(n, np.uint8),
            np.full(n, -1, np.int32))


def _trimesh_part(mesh: trimesh.Trimesh, semantic: SemanticClass, **kwargs) -> Mesh:
    return Mesh.of(mesh.vertices, mesh.faces, semantic, **kwargs)


def _flat_polygon(polygon: shapely.Polygon, z: float, semantic: SemanticClass) -> Mesh:
    vertices, faces = trimesh.creation.triangulate_polygon(polygon, engine="earcut")
    return Mesh.of(np.column_stack([vertices, np.full(len(vertices), z)]), faces, semantic)


def _box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=(x1 - x0, y1 - y0, z1 - z0))
    box.apply_translation(((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2))
    return box


def _ribbon(points: np.ndarray, half_width_m: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    """A flat strip ``2 half_width_m`` wide along the polyline ``[n, 2]`` -> vertices ``[2n, 3]``, faces."""
    seg = np.diff(points, axis=0)
    seg /= np.maximum(np.linalg.norm(seg, axis=1, keepdims=True), 1e-9)
    tangent = np.vstack([seg[:1], seg[:-1] + seg[1:], seg[-1:]])
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    left = np.column_stack([-tangent[:, 1], tangent[:, 0]])
    n = len(points)
    verts = np.vstack([points + half_width_m * left, points - half_width_m * left])
    i = np.arange(n - 1)
    faces = np.vstack([np.column_stack([i, i + n, i + 1]), np.column_stack([i + 1, i + n, i + n + 1])])
    return np.column_stack([verts, np.full(2 * n, z)]), faces


def _offset(points: np.ndarray, distance_m: float) -> np.ndarray:
    """Polyline ``[n, 2]`` shifted ``distance_m`` to its left (negative: right)."""
    line = shapely.LineString(points).offset_curve(distance_m, join_style="mitre", mitre_limit=3.0)
    parts = [np.asarray(p.coords) for p in shapely.get_parts(line) if len(p.coords) >= 2]
    return max(parts, key=len) if parts else points


def _dashes(points: np.ndarray, on_m: float, off_m: float) -> list[np.ndarray]:
    """The pieces ``[on_m, on_m + off_m, ...]`` of a polyline, as polylines."""
    line = shapely.LineString(points)
    starts = np.arange(0.0, line.length, on_m + off_m)
    pieces = [substring(line, s, min(s + on_m, line.length)) for s in starts]
    return [np.asarray(p.coords) for p in pieces if isinstance(p, shapely.LineString) and p.length > 0.1]


# --- the static street ------------------------------------------------------------------------------

@dataclass(frozen=True)
class StaticScene:
    """Everything that does not move, built once per map (``tracer_for`` caches it with its BVH)."""

    mesh: Mesh  # local frame
    origin_xy: np.ndarray  # [2] float64 world position of the local frame's origin, m
    street_lamps: np.ndarray  # [N, 3] float32 lamp positions, local frame, m
    head_of_slot: np.ndarray  # [G] int32 signal head of each RoadMap light slot
    num_heads: int


def build_static_scene(roadmap: RoadMap, seed: int = 0) -> StaticScene:
    """The numbered steps of the module docstring; ``seed`` draws the procedural buildings."""
    bounds = roadmap.bounds.double().numpy()
    origin = np.round((bounds[:2] + bounds[2:]) / 2)
    rng = np.random.default_rng(seed)
    lane_xy = [xy[v].astype(np.float64) - origin for xy, v in
               zip(roadmap.lane_xy.numpy(), roadmap.lane_point_valid.numpy())]
    kind, width = roadmap.lane_kind.numpy(), roadmap.lane_width_m.numpy().astype(np.float64)
    road = _road_area(roadmap, origin)
    walk = _walk_area(lane_xy, kind, width, road)
    parts = [
        *(_flat_polygon(p, ROAD_Z_M, SemanticClass.ROAD) for p in polygon_parts(road)),
        _lane_markings(roadmap, lane_xy, width),
        *(_crosswalk(p) for p in _rings(roadmap.crosswalk_xy, roadmap.crosswalk_valid, origin)),
        *(_sidewalk(p) for p in polygon_parts(walk)),
        _terrain(bounds - np.tile(origin, 2)),
    ]
    instances = iter(range(STATIC_INSTANCE_BASE, 2**31 - 1))
    parts += _buildings(road, walk, bounds - np.tile(origin, 2), rng, instances)
    furniture, lamps = _street_furniture(lane_xy, kind, width, road, rng, instances)
    heads, head_of_slot = _signal_heads(roadmap, lane_xy, origin, instances)
    mesh = Mesh.concat([*parts, *furniture, *heads])
    return StaticScene(mesh.without_slivers(), origin, lamps, head_of_slot, int(head_of_slot.max(initial=-1)) + 1)


def _rings(xy, valid, origin: np.ndarray) -> list[shapely.Polygon]:
    return [shapely.make_valid(shapely.Polygon(p[v].astype(np.float64) - origin))
            for p, v in zip(xy.numpy(), valid.numpy()) if v.sum() >= 4]


def _road_area(roadmap: RoadMap, origin: np.ndarray):
    """Even-odd union of the road-edge rings (outer rings and islands)."""
    area = shapely.Polygon()
    for ring in _rings(roadmap.road_edge_xy, roadmap.road_edge_valid, origin):
        area = shapely.symmetric_difference(area, ring)
    return area


def _walk_area(lane_xy: list[np.ndarray], kind: np.ndarray, width: np.ndarray, road):
    sidewalks = np.flatnonzero(kind == LaneKind.SIDEWALK)
    areas = [shapely.make_valid(shapely.Polygon(lane_xy[i])) for i in np.flatnonzero(kind == LaneKind.WALKINGAREA)
             if len(lane_xy[i]) >= 3]
    strips = lane_polygons([lane_xy[i] for i in sidewalks], width[sidewalks]) if len(sidewalks) else []
    return shapely.difference(shapely.union_all([*strips, *areas]), road).buffer(0)


def _lane_markings(roadmap: RoadMap, lane_xy: list[np.ndarray], width: np.ndarray) -> Mesh:
    kind, junction = roadmap.lane_kind.numpy(), roadmap.lane_is_junction.numpy()
    left_n, right_n = roadmap.lane_neighbors.numpy().T
    white, yellow = CLASSES[SemanticClass.LANE_MARKING].albedo, (0.8, 0.6, 0.1)
    parts = []
    for i in np.flatnonzero((kind == LaneKind.DRIVING) & ~junction):
        if len(lane_xy[i]) < 2:
            continue
        left = _offset(lane_xy[i], width[i] / 2)
        lines = [(p, white) for p in _dashes(left, DASH_ON_M, DASH_OFF_M)] if left_n[i] >= 0 else [(left, yellow)]
        if right_n[i] < 0:
            lines.append((_offset(lane_xy[i], -width[i] / 2 + MARKING_WIDTH_M), white))
        for points, colour in lines:
            parts.append(Mesh.of(*_ribbon(points, MARKING_WIDTH_M / 2, MARKING_Z_M), SemanticClass.LANE_MARKING,
                                 albedo=colour))
    return Mesh.concat(parts)


def _crosswalk(polygon) -> Mesh:
    """Stripes across ``polygon``, alternating along its longest side."""
    polygon = max(polygon_parts(polygon), key=lambda p: p.area, default=None)
    if polygon is None:
        return Mesh.empty()
    ring = np.asarray(polygon.exterior.coords)
    edges = np.diff(ring, axis=0)
    walk = edges[np.argmax(np.linalg.norm(edges, axis=1))]
    walk /= np.linalg.norm(walk)
    across = np.array([-walk[1], walk[0]])
    along, side = ring @ walk, ring @ across
    stripes = [shapely.Polygon([s * walk + a * across for s, a in
                                ((s0, side.min()), (s0 + CROSSWALK_STRIPE_M, side.min()),
                                 (s0 + CROSSWALK_STRIPE_M, side.max()), (s0, side.max()))])
               for s0 in np.arange(along.min(), along.max(), 2 * CROSSWALK_STRIPE_M)]
    clipped = shapely.intersection(np.array(stripes, dtype=object), polygon)
    return Mesh.concat([_flat_polygon(p, MARKING_Z_M, SemanticClass.CROSSWALK)
                        for g in clipped for p in polygon_parts(g) if p.area > 0.01])


def _sidewalk(polygon: shapely.Polygon) -> Mesh:
    """Extruded to the curb height; faces facing sideways are curb, the rest sidewalk."""
    solid = trimesh.creation.extrude_polygon(polygon, SIDEWALK_Z_M - ROAD_Z_M, engine="earcut")
    keep = solid.face_normals[:, 2] > -0.5  # drop the bottom
    part = Mesh.of(solid.vertices, solid.faces[keep], SemanticClass.SIDEWALK)
    side = np.abs(solid.face_normals[keep, 2]) < 0.5
    semantic = np.where(side, SemanticClass.CURB, SemanticClass.SIDEWALK).astype(np.uint8)
    albedo = np.asarray([CLASSES[SemanticClass(c)].albedo for c in semantic], np.float32).reshape(-1, 3)
    return Mesh(part.vertices, part.faces, semantic, part.instance, albedo, part.emitter, part.head)


def _terrain(local_bounds: np.ndarray) -> Mesh:
    x0, y0, x1, y1 = local_bounds + np.array([-1, -1, 1, 1]) * TERRAIN_MARGIN_M
    vertices = [(x0, y0, TERRAIN_Z_M), (x1, y0, TERRAIN_Z_M), (x1, y1, TERRAIN_Z_M), (x0, y1, TERRAIN_Z_M)]
    return Mesh.of(vertices, [(0, 1, 2), (0, 2, 3)], SemanticClass.TERRAIN)


def _buildings(road, walk, local_bounds: np.ndarray, rng: np.random.Generator, instances) -> list[Mesh]:
    """Step 5: rectangles along every ring of every lot (the lot lies left of its rings once oriented)."""
    x0, y0, x1, y1 = local_bounds + np.array([-1, -1, 1, 1]) * 60.0
    built = shapely.union_all([road, walk]).buffer(LOT_SETBACK_M)
    lots = [orient(p, 1.0) for p in polygon_parts(shapely.box(x0, y0, x1, y1).difference(built)) if p.area > 150]
    palette = np.array([(0.55, 0.5, 0.45), (0.6, 0.58, 0.55), (0.45, 0.3, 0.25), (0.7, 0.68, 0.62),
                        (0.35, 0.37, 0.4), (0.62, 0.52, 0.4)])
    meshes = []
    for lot in lots:
        shapely.prepare(lot)
        placed: list[shapely.Polygon] = []
        for ring in (lot.exterior, *lot.interiors):
            points = np.asarray(ring.simplify(1.0).coords)
            for a, b in itertools.pairwise(points):
                length = float(np.linalg.norm(b - a))
                forward = (b - a) / max(length, 1e-9)
                inward = np.array([-forward[1], forward[0]])
                s = rng.uniform(0, 4)
                while s < length - 8:
                    frontage, depth = rng.uniform(10, 28), rng.uniform(10, 22)
                    e = min(s + frontage, length)
                    corners = [a + s * forward, a + e * forward, a + e * forward + depth * inward,
                               a + s * forward + depth * inward]
                    footprint = shapely.Polygon(corners)
                    if lot.contains(footprint) and not any(footprint.intersects(p) for p in placed[-40:]):
                        placed.append(footprint)
                        height = float(rng.choice([rng.uniform(6, 14), rng.uniform(14, 35)], p=[0.6, 0.4]))
                        colour = tuple(palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.1))
                        solid = trimesh.creation.extrude_polygon(footprint, height, engine="earcut")
                        keep = solid.face_normals[:, 2] > -0.5
                        meshes.append(Mesh.of(solid.vertices, solid.faces[keep], SemanticClass.BUILDING,
                                              next(instances), albedo=colour))
                    s = e + rng.uniform(0.5, 4)
    return meshes


def _street_furniture(lane_xy, kind, width, road, rng, instances) -> tuple[list[Mesh], np.ndarray]:
    """Step 6: street lights and trees every FURNITURE_SPACING_M along sidewalk lanes, on the curb side."""
    shapely.prepare(road)
    meshes, lamps = [], []
    count = 0
    for i in np.flatnonzero(kind == LaneKind.SIDEWALK):
        line = shapely.LineString(lane_xy[i]) if len(lane_xy[i]) >= 2 else None
        if line is None or line.length < FURNITURE_SPACING_M:
            continue
        for s in np.arange(FURNITURE_SPACING_M / 2, line.length, FURNITURE_SPACING_M):
            p = np.asarray(line.interpolate(s).coords[0])
            q = np.asarray(line.interpolate(min(s + 0.5, line.length)).coords[0]) - p
            left = np.array([-q[1], q[0]]) / max(float(np.linalg.norm(q)), 1e-9)
            probe = width[i] / 2 + 1.5
            road_side = 1.0 if road.contains(shapely.Point(p + probe * left)) else -1.0
            if road_side < 0 and not road.contains(shapely.Point(p - probe * left)):
                continue  # no road next to this stretch
            base = p + road_side * left * (width[i] / 2 - 0.5)
            towards_road = road_side * left
            count += 1
            if count % 2:
                mesh, lamp = _street_light(base, towards_road, next(instances))
                lamps.append(lamp)
            else:
                mesh = _tree(base, rng, next(instances))
            meshes.append(mesh)
    return meshes, np.asarray(lamps, np.float32).reshape(-1, 3)


def _placed(mesh: trimesh.Trimesh, xy: np.ndarray, yaw: float = 0.0) -> trimesh.Trimesh:
    transform = np.eye(4)
    transform[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    transform[:2, 3] = xy
    return mesh.copy().apply_transform(transform)


def _street_light(base: np.ndarray, towards_road: np.ndarray, instance: int) -> tuple[Mesh, np.ndarray]:
    yaw = math.atan2(towards_road[1], towards_road[0])
    pole = trimesh.creation.cylinder(radius=0.1, height=7.0, sections=8).apply_translation((0, 0, 3.5))
    arm = _box(0.0, 1.6, -0.05, 0.05, 6.85, 6.95)
    lamp = _box(1.2, 1.8, -0.15, 0.15, 6.75, 6.85)
    parts = [_trimesh_part(_placed(m, base, yaw), SemanticClass.POLE, instance=instance) for m in (pole, arm)]
    parts.append(_trimesh_part(_placed(lamp, base, yaw), SemanticClass.POLE, instance=instance,
                               albedo=(0.9, 0.85, 0.7), emitter=Emitter.STREET_LAMP))
    return Mesh.concat(parts), np.array([*(base + 1.5 * towards_road), 6.7])


def _tree(base: np.ndarray, rng: np.random.Generator, instance: int) -> Mesh:
    height = rng.uniform(5.0, 8.0)
    crown_r = rng.uniform(1.5, 2.5)
    trunk = trimesh.creation.cylinder(radius=0.15, height=height - crown_r, sections=6)
    trunk.apply_translation((0, 0, (height - crown_r) / 2))
    crown = trimesh.creation.icosphere(subdivisions=2, radius=crown_r).apply_translation((0, 0, height - crown_r))
    return Mesh.concat([_trimesh_part(_placed(trunk, base), SemanticClass.VEGETATION, instance=instance,
                                      albedo=(0.25, 0.17, 0.1)),
                        _trimesh_part(_placed(crown, base), SemanticClass.VEGETATION, instance=instance,
                                      albedo=tuple(np.array((0.12, 0.3, 0.08)) * rng.uniform(0.8, 1.2)))])


def _signal_heads(roadmap: RoadMap, lane_xy, origin: np.ndarray, instances) -> tuple[list[Mesh], np.ndarray]:
    """Step 7: one head per distinct stop point; ``head_of_slot [G]``."""
    stops = roadmap.signal_stop_xy.double().numpy() - origin
    if not len(stops):
        return [], np.zeros(0, np.int32)
    _, first, head_of_slot = np.unique(np.round(stops, 1), axis=0, return_index=True, return_inverse=True)
    meshes = []
    for h, g in enumerate(first):
        lane = lane_xy[int(roadmap.signal_lane[g])]
        d = lane[-1] - lane[-2] if len(lane) >= 2 else np.array([1.0, 0.0])
        yaw = math.atan2(d[1], d[0])  # the approaching traffic drives along +x of the head's frame
        instance = next(instances)
        z0 = SIGNAL_HEAD_Z_M
        parts = [_trimesh_part(_placed(_box(-0.15, 0.15, -0.2, 0.2, z0, z0 + 1.0), stops[g], yaw),
                               SemanticClass.TRAFFIC_LIGHT, instance=instance)]
        for k, emitter in enumerate((Emitter.SIGNAL_STOP, Emitter.SIGNAL_CAUTION, Emitter.SIGNAL_GO)):
            zc = z0 + 0.83 - 0.33 * k  # red on top; a lamp is dark glass, its colour is its emission
            lamp = _box(-0.17, -0.15, -0.12, 0.12, zc - 0.12, zc + 0.12)
            parts.append(_trimesh_part(_placed(lamp, stops[g], yaw), SemanticClass.TRAFFIC_LIGHT,
                                       instance=instance, albedo=(0.04, 0.04, 0.04), emitter=emitter, head=h))
        meshes.append(Mesh.concat(parts))
    return meshes, head_of_slot.reshape(-1).astype(np.int32)


def map_fingerprint(roadmap: RoadMap) -> str:
    """A content hash of the map's geometry (lanes, edges, crosswalks, signals)."""
    digest = hashlib.sha256(roadmap.name.encode())
    for field in ("lane_xy", "lane_width_m", "lane_kind", "road_edge_xy", "crosswalk_xy", "signal_stop_xy"):
        digest.update(np.ascontiguousarray(getattr(roadmap, field).numpy()).tobytes())
    return digest.hexdigest()[:16]


# --- agents -------------------------------------------------------------------------------------------

def _unit_part(mesh: trimesh.Trimesh, semantic: SemanticClass, paint: bool, emitter: Emitter = Emitter.NONE,
               albedo: tuple[float, float, float] = (0.05, 0.05, 0.06)) -> tuple[Mesh, np.ndarray]:
    part = _trimesh_part(mesh, semantic, albedo=albedo, emitter=emitter)
    return part, np.full(len(part.faces), paint)


def _wheel(x: float, y: float, radius: float, thickness: float, semantic: SemanticClass) -> tuple[Mesh, np.ndarray]:
    wheel = trimesh.creation.cylinder(radius=1.0, height=1.0, sections=10)
    wheel.apply_transform(np.diag([radius, radius, thickness, 1.0]))
    wheel.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (1, 0, 0)))
    return _unit_part(wheel.apply_translation((x, y, radius)), semantic, paint=False)


def _lights(semantic: SemanticClass, z: float, y: float = 0.33) -> list[tuple[Mesh, np.ndarray]]:
    """Two headlights on the front (x up to 0.5) and two tail lights on the back of a unit box whose body
    ends at x = +-0.49, so the lights stay inside the agent's box."""
    out = []
    for side in (-y, y):
        out.append(_unit_part(_box(0.49, 0.5, side - 0.08, side + 0.08, z - 0.05, z + 0.05), semantic, False,
                              Emitter.HEADLIGHT, albedo=(0.9, 0.9, 0.85)))
        out.append(_unit_part(_box(-0.5, -0.49, side - 0.08, side + 0.08, z - 0.05, z + 0.05), semantic, False,
                              Emitter.TAILLIGHT, albedo=(0.6, 0.05, 0.05)))
    return out


def _template(parts: list[tuple[Mesh, np.ndarray]]) -> tuple[Mesh, np.ndarray]:
    return Mesh.concat([m for m, _ in parts]), np.concatenate([p for _, p in parts])


def _agent_templates() -> dict[str, tuple[Mesh, np.ndarray]]:
    """Meshes in a unit box (x forward and y left in [-0.5, 0.5], z up in [0, 1]) plus a per-face
    ``paint`` flag: painted faces take the agent's colour, the rest keep their own albedo."""
    glass = (0.05, 0.07, 0.1)
    car, truck = SemanticClass.CAR, SemanticClass.TRUCK
    ped, cyc = SemanticClass.PEDESTRIAN, SemanticClass.CYCLIST
    head = trimesh.creation.icosphere(subdivisions=1, radius=1.0)
    return {
        "car": _template([
            _unit_part(_box(-0.49, 0.49, -0.5, 0.5, 0.15, 0.58), car, True),
            _unit_part(_box(-0.32, 0.18, -0.44, 0.44, 0.58, 1.0), car, False, albedo=glass),
            *(_wheel(x, y, 0.18, 0.12, car) for x in (-0.3, 0.3) for y in (-0.42, 0.42)),
            *_lights(car, 0.42),
        ]),
        "truck": _template([
            _unit_part(_box(0.3, 0.49, -0.5, 0.5, 0.12, 0.85), truck, True),
            _unit_part(_box(0.49, 0.5, -0.42, 0.42, 0.55, 0.8), truck, False, albedo=glass),
            _unit_part(_box(-0.49, 0.28, -0.5, 0.5, 0.12, 1.0), truck, False, albedo=(0.75, 0.75, 0.72)),
            *(_wheel(x, y, 0.1, 0.1, truck) for x in (-0.4, -0.28, 0.38) for y in (-0.45, 0.45)),
            *_lights(truck, 0.3),
        ]),
        "pedestrian": _template([
            _unit_part(_box(-0.15, 0.15, -0.3, 0.3, 0.0, 0.48), ped, False, albedo=(0.1, 0.1, 0.18)),
            _unit_part(_box(-0.25, 0.25, -0.45, 0.45, 0.48, 0.82), ped, True),
            _unit_part(head.copy().apply_transform(np.diag([0.22, 0.25, 0.09, 1.0])).apply_translation(
                (0, 0, 0.9)), ped, False, albedo=(0.55, 0.4, 0.3)),
        ]),
        "cyclist": _template([
            *(_wheel(x, 0.0, 0.2, 0.08, cyc) for x in (-0.3, 0.3)),
            _unit_part(_box(-0.3, 0.3, -0.03, 0.03, 0.3, 0.45), cyc, False, albedo=(0.3, 0.3, 0.32)),
            _unit_part(_box(-0.15, 0.1, -0.25, 0.25, 0.5, 0.85), cyc, True),
            _unit_part(head.copy().apply_transform(np.diag([0.12, 0.2, 0.07, 1.0])).apply_translation(
                (-0.02, 0, 0.92)), cyc, False, albedo=(0.55, 0.4, 0.3)),
        ]),
        "other": _template([_unit_part(_box(-0.5, 0.5, -0.5, 0.5, 0.0, 1.0), SemanticClass.OTHER_AGENT, True)]),
    }


_TEMPLATES: dict[str, tuple[Mesh, np.ndarray]] = {}
PAINTS = np.array([(0.6, 0.05, 0.05), (0.05, 0.15, 0.5), (0.8, 0.8, 0.8), (0.08, 0.08, 0.08), (0.5, 0.5, 0.52),
                   (0.7, 0.55, 0.1), (0.15, 0.35, 0.2), (0.9, 0.9, 0.88)], dtype=np.float32)


def agent_template_name(agent_type: int, length_m: float) -> str:
    if agent_type == AgentType.VEHICLE:
        return "truck" if length_m >= TRUCK_LENGTH_M else "car"
    return {AgentType.PEDESTRIAN: "pedestrian", AgentType.CYCLIST: "cyclist"}.get(agent_type, "other")


def _agent_slots(state: SceneState, step: int, include_av: bool) -> np.ndarray:
    valid = state.traj.valid[:, step].numpy().copy()
    if not include_av:
        valid[state.av_index] = False
    return np.flatnonzero(valid)


def _picker(state: SceneState, slots: np.ndarray, step: int):
    """``pick(field)`` -> float64 ``[len(slots)]`` values of a trajectory field at ``step``."""
    return lambda field: getattr(state.traj, field)[slots, step].double().numpy()


def agent_boxes(state: SceneState, step: int, origin_xy: np.ndarray, include_av: bool = False) -> np.ndarray:
    """``[K, 7]`` (x, y, z bottom, z top, heading, length, width) local frame, m and rad: the box of each
    rendered agent (its mesh fits inside)."""
    slots = _agent_slots(state, step, include_av)
    pick = _picker(state, slots, step)
    return np.stack([pick("x") - origin_xy[0], pick("y") - origin_xy[1], pick("z"), pick("z") + pick("height"),
                     pick("heading"), pick("length"), pick("width")], -1).reshape(-1, 7)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """``[K, 7]`` boxes (``agent_boxes``) -> ``[K, 8, 3]`` corners: the bottom four (front-left first, then
    clockwise seen from above), then the top four."""
    x, y, z0, z1, heading, length, width = (boxes[:, i:i + 1] for i in range(7))
    c, s = np.cos(heading), np.sin(heading)
    along = length / 2 * np.array([1.0, 1.0, -1.0, -1.0] * 2)
    across = width / 2 * np.array([1.0, -1.0, -1.0, 1.0] * 2)
    z = np.where(np.arange(8) < 4, z0, z1)
    return np.stack([x + c * along - s * across, y + s * along + c * across, z], -1)


def agent_mesh(state: SceneState, step: int, origin_xy: np.ndarray, include_av: bool = False) -> Mesh:
    """Every valid agent at ``step`` (all agents of a template at once), local frame; instance ``1 + slot``."""
    if not _TEMPLATES:
        _TEMPLATES.update(_agent_templates())
    slots = _agent_slots(state, step, include_av)
    if not len(slots):
        return Mesh.empty()
    pick = _picker(state, slots, step)
    x, y, z, heading = pick("x") - origin_xy[0], pick("y") - origin_xy[1], pick("z"), pick("heading")
    size = np.stack([pick("length"), pick("width"), pick("height")], -1)  # [N, 3]
    agent_type = state.meta.agent_type.numpy()[slots]
    names = np.array([agent_template_name(int(a), float(length)) for a, length in zip(agent_type, size[:, 0])])
    meshes = []
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        template, paint = _TEMPLATES[name]
        c, s = np.cos(heading[rows]), np.sin(heading[rows])
        local = template.vertices[None].astype(np.float64) * size[rows, None, :]  # [n, V, 3]
        world = np.stack([c[:, None] * local[..., 0] - s[:, None] * local[..., 1] + x[rows, None],
                          s[:, None] * local[..., 0] + c[:, None] * local[..., 1] + y[rows, None],
                          local[..., 2] + z[rows, None]], -1)
        n, nv, nf = len(rows), len(template.vertices), len(template.faces)
        faces = (template.faces[None] + (np.arange(n) * nv)[:, None, None]).reshape(-1, 3)
        colours = PAINTS[slots[rows] % len(PAINTS)]  # [n, 3]
        albedo = np.where(paint[None, :, None], colours[:, None, :], template.albedo[None])
        meshes.append(Mesh(world.reshape(-1, 3).astype(np.float32), faces.astype(np.int32),
                           np.tile(template.semantic, n),
                           np.repeat(AGENT_INSTANCE_BASE + slots[rows], nf).astype(np.int32),
                           albedo.reshape(-1, 3).astype(np.float32), np.tile(template.emitter, n),
                           np.tile(template.head, n)))
    return Mesh.concat(meshes)


# --- ray casting --------------------------------------------------------------------------------------

def _embree(mesh: Mesh):
    scene = rtcore_scene.EmbreeScene()
    if len(mesh.faces):
        TriangleMesh(scene, np.ascontiguousarray(mesh.vertices, np.float32),
                     np.ascontiguousarray(mesh.faces, np.int32))
    return scene


@dataclass(frozen=True)
class Hits:
    """Nearest hits of N rays. ``face`` indexes the static mesh where ``dynamic`` is False, else the
    frame's agent mesh; misses have ``face = -1`` and ``t = t_max``."""

    t: np.ndarray  # [N] float32 ray parameter (metres for unit directions)
    face: np.ndarray  # [N] int32
    dynamic: np.ndarray  # [N] bool

    @property
    def hit(self) -> np.ndarray:
        return self.face >= 0


class Tracer:
    """The static BVH of one map (built once); ``frame(state, step)`` adds the agents of one step."""

    def __init__(self, static: StaticScene):
        self.static = static
        self.bvh = _embree(static.mesh)
        self.normals = static.mesh.face_normals()

    def frame(self, state: SceneState, step: int) -> Frame:
        return Frame(self, state, step)


class Frame:
    """One time step: the static street plus the agents' mesh and BVH, and the signal heads' states."""

    def __init__(self, tracer: Tracer, state: SceneState, step: int):
        static = tracer.static
        self.tracer = tracer
        self.origin_xy = static.origin_xy
        self.agents = agent_mesh(state, step, static.origin_xy)
        self.agent_boxes = agent_boxes(state, step, static.origin_xy)  # [K, 7] local frame
        self.agent_bvh = _embree(self.agents) if len(self.agents.faces) else None
        self.agent_normals = self.agents.face_normals()
        self.head_state = np.zeros(static.num_heads, np.int8)  # LightState per head (0: unknown, dark)
        lights = state.lights
        valid = lights.valid[:, step].numpy()
        if valid.any() and len(static.head_of_slot):
            slot = lights.signal_id[:, step].numpy()[valid]
            ok = (slot >= 0) & (slot < len(static.head_of_slot))
            np.maximum.at(self.head_state, static.head_of_slot[slot[ok]], lights.state[:, step].numpy()[valid][ok])

    def to_local(self, points_world: np.ndarray) -> np.ndarray:
        out = np.array(points_world, dtype=np.float64)
        out[..., :2] -= self.origin_xy
        return out

    def cast(self, origins_local: np.ndarray, directions: np.ndarray, t_max: np.ndarray | float,
             agent_near_t: np.ndarray | None = None) -> Hits:
        """Nearest hit of each ray ``origins_local [N, 3]`` + t ``directions [N, 3]`` with t in (0, t_max].

        ``agent_near_t [N]`` (optional): no agent lies nearer than this along each ray (inf: no agent at all).
        Rays whose street hit comes first skip the agents' pass; by default every ray takes it."""
        origins = np.ascontiguousarray(origins_local, np.float32)
        dirs = np.ascontiguousarray(directions, np.float32)
        t = np.empty(len(origins), np.float32)
        t[:] = t_max
        face = self.tracer.bvh.run(origins, dirs, dists=t, output=1)["primID"]  # t is updated in place
        dynamic = np.zeros(len(origins), bool)
        if self.agent_bvh is not None:
            rays = np.arange(len(origins)) if agent_near_t is None else np.flatnonzero(agent_near_t < t)
            t_agents = t[rays]  # far limit: the street's hit, so only nearer agent hits count
            agent_face = self.agent_bvh.run(origins[rays], dirs[rays], dists=t_agents, output=1)["primID"]
            closer = agent_face >= 0
            hit_rays = rays[closer]
            t[hit_rays], face[hit_rays], dynamic[hit_rays] = t_agents[closer], agent_face[closer], True
        return Hits(t, face.astype(np.int32), dynamic)

    def occluded(self, origins_local: np.ndarray, directions: np.ndarray, t_max: np.ndarray | float) -> np.ndarray:
        """bool ``[N]``: something lies on the ray within (0, t_max] (shadow rays)."""
        origins = np.ascontiguousarray(origins_local, np.float32)
        dirs = np.ascontiguousarray(directions, np.float32)
        t = np.empty(len(origins), np.float32)
        t[:] = t_max
        blocked = self.tracer.bvh.run(origins, dirs, dists=t.copy(), query="OCCLUDED") >= 0
        if self.agent_bvh is not None and (~blocked).any():
            free = np.flatnonzero(~blocked)
            blocked[free] = self.agent_bvh.run(origins[free], dirs[free], dists=t[free], query="OCCLUDED") >= 0
        return blocked

    def face_values(self, hits: Hits, static_values: np.ndarray, agent_values: np.ndarray,
                    miss_value=0) -> np.ndarray:
        """Per-ray attribute of the hit face (``static_values[face]`` or ``agent_values[face]``)."""
        out = static_values.take(np.maximum(hits.face, 0), axis=0)  # one gather; fix agents and misses after
        if hits.dynamic.any():
            out[hits.dynamic] = agent_values[hits.face[hits.dynamic]]
        out[hits.face < 0] = miss_value
        return out

    def attribute(self, hits: Hits, name: str, miss_value=0) -> np.ndarray:
        """``name`` is a ``Mesh`` per-face field (semantic, instance, albedo, emitter, head) or ``normal``."""
        if name == "normal":
            return self.face_values(hits, self.tracer.normals, self.agent_normals, miss_value)
        return self.face_values(hits, getattr(self.tracer.static.mesh, name), getattr(self.agents, name), miss_value)


_TRACERS: OrderedDict[str, Tracer] = OrderedDict()


def tracer_for(roadmap: RoadMap, seed: int = 0, static: StaticScene | None = None) -> Tracer:
    """A ``Tracer`` for the map, cached per process (the two most recent maps) with its static scene.

    ``static`` skips the build when the caller already has the map's ``build_static_scene`` (a worker
    process gets it from the parent, which built it once)."""
    key = f"{map_fingerprint(roadmap)}-{seed}"
    if key not in _TRACERS:
        _TRACERS[key] = Tracer(static if static is not None else build_static_scene(roadmap, seed))
        while len(_TRACERS) > 2:
            _TRACERS.popitem(last=False)
    _TRACERS.move_to_end(key)
    return _TRACERS[key]
