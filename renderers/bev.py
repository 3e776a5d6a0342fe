"""Top-down (bird's-eye-view) frames and H.264 videos of a scene: north-up, centred on the AV.

Frames and units:
    world frame   m, +x east, +y north (docs/FORMATS.md).
    global pixel  ``(u, v) = (x * s, -y * s)`` with ``s = size / (2 * view_radius_m)`` px/m. Integer
                  ``(u, v)`` is the *centre* of a pixel (PIL's convention); u grows east (columns),
                  v grows south (rows), so +y is up in the picture.
    frame pixel   ``(c, r) = (u - left, v - top)``: the ``size x size`` window whose top-left pixel is
                  global ``(left, top)``, chosen so the camera (the AV, or its last valid pose while it
                  is invalid) sits at frame pixel ``(size // 2, size // 2)``. Arrays index ``[r, c]``.

How it is fast (600 frames of 800 x 800 in well under 30 s on two cores, see bench/bench_bev.py):
    1. The static map (sidewalks, drivable area, crosswalks, centerlines, road edges, the AV's route)
       is rasterized lazily in square tiles of the global pixel grid, kept in a small LRU cache.
       Only tiles the window visits are drawn, so memory stays bounded for a city-sized map.
    2. A frame copies the few tiles under the window, blends the agents' 1 s trails with numpy (all
       agents and steps at once), then draws lights, agent boxes (corners computed for all agents at
       once) and the text overlay with PIL.
    3. Frames stream into ffmpeg (libx264, preset veryfast) as they are drawn, so ffmpeg encodes on
       the second core while Python draws the next frame; no list of frames is kept.

The slow twins in the tests: the even-odd fill of the drivable area against
``RoadMap.is_drivable``, and tiled rasterization against a single large tile.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from simgen.progress import progress_bar
from simgen.types import DT_S, AgentType, LaneKind, LightState, RoadMap, SceneState

RGB = tuple[int, int, int]

COLORS: dict[str, RGB] = {
    "background": (26, 28, 32),
    "sidewalk": (50, 52, 58),
    "bike_lane": (44, 64, 54),
    "road": (70, 72, 78),
    "lane": (150, 152, 158),
    "junction_lane": (104, 106, 112),
    "road_edge": (200, 200, 204),
    "crosswalk": (228, 228, 228),
    "route": (235, 50, 210),
    "av": (235, 50, 210),
    "heading_tick": (250, 250, 250),
    "text": (240, 240, 240),
}
AGENT_COLORS: dict[int, RGB] = {
    AgentType.UNSET: (160, 160, 160),
    AgentType.VEHICLE: (70, 130, 230),
    AgentType.PEDESTRIAN: (245, 150, 40),
    AgentType.CYCLIST: (70, 200, 90),
}
LIGHT_COLORS: dict[int, RGB] = {
    LightState.UNKNOWN: (140, 140, 140),
    LightState.STOP: (230, 40, 40),
    LightState.CAUTION: (245, 180, 30),
    LightState.GO: (40, 220, 90),
}

TRAIL_STEPS = 10  # 1 s of trail at 10 Hz
TRAIL_ALPHA = 0.7  # opacity of the newest trail point; it fades linearly to 0 over TRAIL_STEPS
ROUTE_WIDTH_M = 2.5
ROUTE_ALPHA = 0.35
LIGHT_BAR_DEPTH_M = 1.0  # along the approach lane, ending at the stop point
CROSSWALK_STRIPE_M = 0.6  # width of one white stripe and of one gap
MIN_BOX_PX = 3.0  # smallest drawn box side, so pedestrians stay visible


# --- static map: polylines in world metres, selected per tile by bounding box ---------------------

@dataclass(frozen=True)
class _Polylines:
    """Ragged polylines or polygons, world frame (m), with bounding boxes ``[N, 4]`` (xmin, ymin, xmax, ymax)."""

    points: list[np.ndarray]  # N arrays [n_i, 2], m
    bbox: np.ndarray  # [N, 4], m
    width_m: np.ndarray  # [N] drawn width of a band (lane width), m; zeros for thin lines

    @classmethod
    def from_padded(cls, xy: torch.Tensor, valid: torch.Tensor, keep: np.ndarray | None = None,
                    width_m: torch.Tensor | None = None) -> "_Polylines":
        """``xy [N, P, 2]``, ``valid [N, P]`` -> the rows in ``keep`` (default all) with >= 2 valid points."""
        xy_np, valid_np = xy.detach().cpu().numpy().astype(np.float64), valid.detach().cpu().numpy()
        widths = np.zeros(len(xy_np)) if width_m is None else width_m.detach().cpu().numpy().astype(np.float64)
        rows = np.arange(len(xy_np)) if keep is None else np.flatnonzero(keep)
        rows = rows[valid_np[rows].sum(-1) >= 2]
        points = [xy_np[n][valid_np[n]] for n in rows]
        bbox = (np.array([[*p.min(0), *p.max(0)] for p in points]) if points else np.zeros((0, 4)))
        return cls(points, bbox, widths[rows])

    def near(self, box: tuple[float, float, float, float], margin_m: float = 0.0) -> np.ndarray:
        """Indices whose bounding box, grown by ``margin_m``, overlaps ``box`` (xmin, ymin, xmax, ymax), m."""
        b = self.bbox
        hit = ((b[:, 0] - margin_m <= box[2]) & (b[:, 2] + margin_m >= box[0])
               & (b[:, 1] - margin_m <= box[3]) & (b[:, 3] + margin_m >= box[1]))
        return np.flatnonzero(hit)


def _to_px(points_m: np.ndarray, px_per_m: float, left: float, top: float) -> np.ndarray:
    """World points ``[..., 2]`` (m) -> pixel coordinates ``[..., 2]`` (c, r) of a window at global (left, top)."""
    return np.stack([points_m[..., 0] * px_per_m - left, -points_m[..., 1] * px_per_m - top], axis=-1)


def _flat(points_px: np.ndarray) -> list[float]:
    return points_px.ravel().tolist()


def even_odd_mask(rings_px: Iterable[np.ndarray], width: int, height: int) -> np.ndarray:
    """bool ``[height, width]``: pixels inside an odd number of the closed rings (pixel coordinates ``[n, 2]``).

    Each ring is filled with PIL (pixel centres inside, boundary pixels included) and XOR-ed in, so
    islands (clockwise rings inside an outer ring) come out as holes: the even-odd rule of
    ``RoadMap.is_drivable``.
    """
    inside = np.zeros((height, width), dtype=bool)
    for ring in rings_px:
        ring_mask = Image.new("1", (width, height), 0)
        ImageDraw.Draw(ring_mask).polygon(_flat(ring), fill=1)
        inside ^= np.asarray(ring_mask)
    return inside


def _lane_end_directions(roadmap: RoadMap) -> np.ndarray:
    """``[L, 2]`` unit direction of each lane's last segment (world frame); (1, 0) for degenerate lanes.

    Valid points of a padded polyline form a prefix, so the last segment ends at point ``n_valid - 1``.
    """
    xy = roadmap.lane_xy.detach().cpu().numpy().astype(np.float64)
    n_valid = roadmap.lane_point_valid.detach().cpu().numpy().sum(-1)
    last = np.clip(n_valid - 1, 0, None)
    rows = np.arange(len(xy))
    d = xy[rows, last] - xy[rows, np.clip(last - 1, 0, None)]
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    return np.where(norm > 1e-9, d / np.maximum(norm, 1e-9), np.array([1.0, 0.0]))


# --- dynamic content: numpy copies of a batch-free SceneState ----------------------------------------

@dataclass(frozen=True)
class _SceneArrays:
    """A batch-free SceneState as numpy arrays (world frame m, rad) plus the camera centre per step."""

    x: np.ndarray  # [A, T] m, box centre
    y: np.ndarray
    heading: np.ndarray  # [A, T] rad
    length: np.ndarray  # [A, T] m
    width: np.ndarray
    valid: np.ndarray  # [A, T] bool
    agent_type: np.ndarray  # [A] int
    av_index: int
    light_x: np.ndarray  # [S, T] m, stop point
    light_y: np.ndarray
    light_lane: np.ndarray  # [S, T] int, approach lane
    light_state: np.ndarray  # [S, T] int, LightState
    light_valid: np.ndarray  # [S, T] bool
    camera_xy: np.ndarray  # [T, 2] m: the AV's centre, held at its nearest valid pose while invalid

    @property
    def num_steps(self) -> int:
        return self.x.shape[1]

    @classmethod
    def from_state(cls, state: SceneState) -> "_SceneArrays":
        if state.traj.x.ndim != 2 or state.lights.state.ndim != 2 or state.meta.is_av.ndim != 1:
            raise ValueError(
                f"BEV rendering takes a batch-free SceneState (traj [A, T], lights [S, T]); got traj "
                f"{list(state.traj.x.shape)}, lights {list(state.lights.state.shape)}: index the batch first")
        t, lights = state.traj, state.lights

        def f64(v: torch.Tensor) -> np.ndarray:
            return v.detach().cpu().numpy().astype(np.float64)

        av = state.av_index
        valid = t.valid.detach().cpu().numpy()
        av_valid = valid[av]
        if not av_valid.any():
            raise ValueError("BEV rendering: the AV (meta.is_av) is valid at no step, so there is no camera pose")
        # Hold the camera at the last valid AV pose (before the first one: the first valid pose).
        steps = np.arange(len(av_valid))
        nearest = np.maximum.accumulate(np.where(av_valid, steps, -1))
        nearest[nearest < 0] = int(np.argmax(av_valid))
        av_xy = f64(state.av_pose()[:, :2])
        return cls(
            x=f64(t.x), y=f64(t.y), heading=f64(t.heading), length=f64(t.length), width=f64(t.width),
            valid=valid, agent_type=state.meta.agent_type.detach().cpu().numpy().astype(np.int64), av_index=av,
            light_x=f64(lights.stop_x), light_y=f64(lights.stop_y),
            light_lane=lights.lane_id.detach().cpu().numpy().astype(np.int64),
            light_state=lights.state.detach().cpu().numpy().astype(np.int64),
            light_valid=lights.valid.detach().cpu().numpy(),
            camera_xy=av_xy[nearest],
        )


def _palette(table: dict[int, RGB], codes: np.ndarray, default: int) -> np.ndarray:
    """``[N]`` enum codes -> ``[N, 3]`` uint8 colours (unknown codes take ``table[default]``)."""
    lut = np.array([table.get(k, table[default]) for k in range(max(table) + 1)], dtype=np.uint8)
    return lut[np.where((codes >= 0) & (codes < len(lut)), codes, default)]


# --- the renderer -----------------------------------------------------------------------------------

class BevRenderer:
    """Draws BEV frames of scenes on one map (and one AV route).

    Holds only the cache of static-map tiles, never scene state, so one renderer can draw any
    number of scenes on its map (the Gradio editor keeps one per map).
    """

    def __init__(self, roadmap: RoadMap, *, route_lanes: torch.Tensor | None = None, size: int = 800,
                 view_radius_m: float = 60.0, tile_px: int = 512):
        if roadmap.lane_xy.ndim != 3:
            raise ValueError(f"BEV rendering takes a batch-free RoadMap (lane_xy [L, P, 2]); got "
                             f"{list(roadmap.lane_xy.shape)}")
        if size < 64 or size % 2:
            raise ValueError(f"size={size}: use an even number of pixels >= 64 (H.264 yuv420p needs even sides)")
        if not view_radius_m > 0:
            raise ValueError(f"view_radius_m={view_radius_m}: must be > 0")
        self.size = size
        self.px_per_m = size / (2.0 * view_radius_m)
        self._tile_px = tile_px
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        tiles_per_axis = -(-size // tile_px) + 1
        self._max_tiles = 4 * tiles_per_axis**2
        self._font_px = max(10, size // 56)
        self._font = ImageFont.load_default(size=self._font_px)

        kind = roadmap.lane_kind.detach().cpu().numpy()
        junction = roadmap.lane_is_junction.detach().cpu().numpy()
        lanes = (roadmap.lane_xy, roadmap.lane_point_valid)
        width = roadmap.lane_width_m
        self._sidewalks = _Polylines.from_padded(
            *lanes, np.isin(kind, [LaneKind.SIDEWALK, LaneKind.WALKINGAREA]), width)
        self._bike_lanes = _Polylines.from_padded(*lanes, kind == LaneKind.BIKE, width)
        self._road_rings = _Polylines.from_padded(roadmap.road_edge_xy, roadmap.road_edge_valid)
        # Without road-edge rings, the drivable area is drawn as lane bands plus junction polygons.
        self._driving_bands = _Polylines.from_padded(*lanes, kind == LaneKind.DRIVING, width)
        self._junctions = _Polylines.from_padded(roadmap.junction_xy, roadmap.junction_valid)
        self._crosswalks = _Polylines.from_padded(roadmap.crosswalk_xy, roadmap.crosswalk_valid)
        centerline = np.isin(kind, [LaneKind.DRIVING, LaneKind.BIKE])
        self._junction_lines = _Polylines.from_padded(*lanes, centerline & junction)
        self._lane_lines = _Polylines.from_padded(*lanes, centerline & ~junction)
        self._route = self._route_polylines(roadmap, route_lanes)
        self._lane_end_dir = _lane_end_directions(roadmap)
        self._lane_width_m = width.detach().cpu().numpy().astype(np.float64)

    @staticmethod
    def _route_polylines(roadmap: RoadMap, route_lanes: torch.Tensor | None) -> _Polylines:
        keep = np.zeros(roadmap.num_lanes, dtype=bool)
        if route_lanes is not None:
            idx = torch.as_tensor(route_lanes).reshape(-1).cpu().numpy().astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= roadmap.num_lanes):
                raise ValueError(f"route_lanes: lane index out of range [0, {roadmap.num_lanes})")
            keep[idx] = True
        return _Polylines.from_padded(roadmap.lane_xy, roadmap.lane_point_valid, keep)

    # --- public ---------------------------------------------------------------------------------
    def frame(self, state: SceneState, step: int | None = None) -> np.ndarray:
        """``[size, size, 3]`` uint8 RGB frame of ``state`` at ``step`` (default ``state.step``)."""
        return np.array(next(self.images(state, [state.step if step is None else step])))

    def images(self, state: SceneState, steps: Iterable[int]) -> Iterator[Image.Image]:
        """RGB ``size x size`` PIL images of ``state`` at each of ``steps``, drawn one at a time as iterated.

        The state and the steps are checked now (ValueError), before the first image is drawn.
        """
        scene = _SceneArrays.from_state(state)
        steps = list(steps)
        outside = [k for k in steps if not 0 <= k < scene.num_steps]
        if outside:
            raise ValueError(f"steps {outside[:5]} outside [0, {scene.num_steps})")
        return (self._draw(scene, step) for step in steps)

    # --- static tiles -----------------------------------------------------------------------------
    def _tile(self, i: int, j: int) -> np.ndarray:
        """``[tp, tp, 3]`` static layers of tile (i, j): global pixels u in ``[i*tp, (i+1)*tp)``, v likewise with j."""
        key = (i, j)
        tile = self._tiles.get(key)
        if tile is None:
            tile = self._rasterize_tile(i * self._tile_px, j * self._tile_px)
            self._tiles[key] = tile
            if len(self._tiles) > self._max_tiles:
                self._tiles.popitem(last=False)
        else:
            self._tiles.move_to_end(key)
        return tile

    def _rasterize_tile(self, left: int, top: int) -> np.ndarray:
        tp, s = self._tile_px, self.px_per_m
        img = Image.new("RGB", (tp, tp), COLORS["background"])
        draw = ImageDraw.Draw(img)
        # Tile extent in the world frame, half a pixel wider than the pixel centres it holds.
        box = ((left - 0.5) / s, -(top + tp - 0.5) / s, (left + tp - 0.5) / s, -(top - 0.5) / s)

        def px(points: np.ndarray) -> list[float]:
            return _flat(_to_px(points, s, left, top))

        def bands(layer: _Polylines, color: RGB) -> None:
            margin = float(layer.width_m.max(initial=0.0))
            for n in layer.near(box, margin):
                draw.line(px(layer.points[n]), fill=color, width=max(1, round(layer.width_m[n] * s)), joint="curve")

        bands(self._sidewalks, COLORS["sidewalk"])
        bands(self._bike_lanes, COLORS["bike_lane"])
        if self._road_rings.points:
            rings = [_to_px(self._road_rings.points[n], s, left, top) for n in self._road_rings.near(box)]
            img.paste(COLORS["road"], mask=Image.fromarray(even_odd_mask(rings, tp, tp)))
        else:
            bands(self._driving_bands, COLORS["road"])
            for n in self._junctions.near(box):
                draw.polygon(px(self._junctions.points[n]), fill=COLORS["road"])
        for n in self._crosswalks.near(box):
            self._draw_crosswalk(img, self._crosswalks.points[n], left, top)
        for layer, color in ((self._junction_lines, COLORS["junction_lane"]), (self._lane_lines, COLORS["lane"])):
            for n in layer.near(box):
                draw.line(px(layer.points[n]), fill=color, width=1)
        for n in self._road_rings.near(box):
            draw.line(px(self._road_rings.points[n]), fill=COLORS["road_edge"], width=2)
        route_ids = self._route.near(box, ROUTE_WIDTH_M)
        if route_ids.size:
            # One opacity mask for the whole route, so overlapping segments do not blend twice.
            mask = Image.new("L", (tp, tp), 0)
            route_draw = ImageDraw.Draw(mask)
            for n in route_ids:
                route_draw.line(px(self._route.points[n]), fill=round(255 * ROUTE_ALPHA),
                                width=max(1, round(ROUTE_WIDTH_M * s)), joint="curve")
            img.paste(COLORS["route"], mask=mask)
        return np.asarray(img).copy()

    def _draw_crosswalk(self, img: Image.Image, polygon_m: np.ndarray, left: int, top: int) -> None:
        """Zebra stripes across the polygon's longest edge (the walking direction), CROSSWALK_STRIPE_M wide."""
        s, tp = self.px_per_m, self._tile_px
        poly = _to_px(polygon_m, s, left, top)
        c0, r0 = np.maximum(np.floor(poly.min(0)).astype(int), 0)
        c1, r1 = np.minimum(np.ceil(poly.max(0)).astype(int) + 1, tp)
        if c1 <= c0 or r1 <= r0:
            return
        inside = even_odd_mask([poly - (c0, r0)], c1 - c0, r1 - r0)
        edges = np.diff(polygon_m, axis=0)
        walk = edges[np.argmax(np.linalg.norm(edges, axis=1))]
        walk = walk / max(float(np.linalg.norm(walk)), 1e-9)
        cols, rows = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
        along_m = ((left + cols) / s - polygon_m[0, 0]) * walk[0] + (-(top + rows) / s - polygon_m[0, 1]) * walk[1]
        stripes = inside & (np.floor(along_m / CROSSWALK_STRIPE_M) % 2 == 0)
        img.paste(COLORS["crosswalk"], (int(c0), int(r0)), mask=Image.fromarray(stripes))

    # --- one frame ----------------------------------------------------------------------------------
    def _draw(self, scene: _SceneArrays, step: int) -> Image.Image:
        size, s, tp = self.size, self.px_per_m, self._tile_px
        cam_x, cam_y = scene.camera_xy[step]
        left = math.floor(cam_x * s + 0.5) - size // 2
        top = math.floor(-cam_y * s + 0.5) - size // 2
        frame = np.empty((size, size, 3), dtype=np.uint8)
        for j in range(top // tp, (top + size - 1) // tp + 1):
            for i in range(left // tp, (left + size - 1) // tp + 1):
                tile = self._tile(i, j)
                r0, c0 = max(j * tp, top), max(i * tp, left)
                r1, c1 = min((j + 1) * tp, top + size), min((i + 1) * tp, left + size)
                frame[r0 - top:r1 - top, c0 - left:c1 - left] = tile[r0 - j * tp:r1 - j * tp, c0 - i * tp:c1 - i * tp]
        self._blend_trails(frame, scene, step, left, top)
        img = Image.fromarray(frame)
        draw = ImageDraw.Draw(img)
        self._draw_lights(draw, scene, step, left, top)
        self._draw_agents(draw, scene, step, left, top)
        self._draw_overlay(img, scene, step)
        return img

    def _blend_trails(self, frame: np.ndarray, scene: _SceneArrays, step: int, left: int, top: int) -> None:
        """Alpha-blend every valid agent's last TRAIL_STEPS positions into ``frame``, fading with age."""
        k0 = max(0, step - TRAIL_STEPS)
        if step == k0:
            return
        xy = np.stack([scene.x[:, k0:step + 1], scene.y[:, k0:step + 1]], axis=-1)  # [A, n+1, 2] m
        valid = scene.valid[:, k0:step + 1]
        seg_valid = valid[:, :-1] & valid[:, 1:] & scene.valid[:, step:step + 1]  # [A, n]
        if not seg_valid.any():
            return
        p = _to_px(xy, self.px_per_m, left, top)
        p0, delta = p[:, :-1], p[:, 1:] - p[:, :-1]  # [A, n, 2]
        samples = int(np.clip(np.ceil(np.abs(delta[seg_valid]).max()), 2, 32))
        f = np.arange(samples) / samples  # [F]
        pts = p0[:, :, None] + delta[:, :, None] * f[:, None]  # [A, n, F, 2]
        n = seg_valid.shape[1]
        age_steps = (step - k0) - (np.arange(n)[:, None] + f)  # [n, F], 0 = now
        alpha = np.broadcast_to(TRAIL_ALPHA * (1 - age_steps / TRAIL_STEPS), pts.shape[:3])
        agent_colors = _palette(AGENT_COLORS, scene.agent_type, AgentType.UNSET)
        agent_colors[scene.av_index] = COLORS["av"]
        colors = np.broadcast_to(agent_colors[:, None, None], (*pts.shape[:3], 3))
        keep = np.broadcast_to(seg_valid[:, :, None], pts.shape[:3])
        # 2 x 2 pixel stamps: rows/cols floor(coord) and floor(coord) + 1 around each sample point.
        base = np.floor(pts[keep]).astype(np.int64)
        cols = (base[:, 0:1] + [0, 1, 0, 1]).ravel()
        rows = (base[:, 1:2] + [0, 0, 1, 1]).ravel()
        a = np.repeat(alpha[keep], 4)[:, None]
        c = np.repeat(colors[keep], 4, axis=0)
        inside = (cols >= 0) & (cols < self.size) & (rows >= 0) & (rows < self.size)
        rows, cols, a, c = rows[inside], cols[inside], a[inside], c[inside]
        frame[rows, cols] = (frame[rows, cols] * (1 - a) + c * a + 0.5).astype(np.uint8)

    def _draw_lights(self, draw: ImageDraw.ImageDraw, scene: _SceneArrays, step: int, left: int, top: int) -> None:
        """A bar across the approach lane at each valid light slot's stop point, coloured by LightState.

        Slots sharing a stop point (one per turn) split the bar into equal parts, in slot order.
        """
        stop_px = _to_px(np.stack([scene.light_x[:, step], scene.light_y[:, step]], axis=-1), self.px_per_m, left, top)
        margin = 10 * self.px_per_m  # a bar is at most a lane wide
        in_view = np.all((stop_px > -margin) & (stop_px < self.size + margin), axis=-1)
        slots = np.flatnonzero(scene.light_valid[:, step] & in_view)
        if not slots.size:
            return
        stop = np.stack([scene.light_x[slots, step], scene.light_y[slots, step]], axis=-1)  # [N, 2] m
        lane = scene.light_lane[slots, step]
        known = (lane >= 0) & (lane < len(self._lane_end_dir))
        lane = np.where(known, lane, 0)
        forward = np.where(known[:, None], self._lane_end_dir[lane], [1.0, 0.0])
        left_dir = np.stack([-forward[:, 1], forward[:, 0]], axis=-1)
        bar_m = np.where(known, self._lane_width_m[lane], 3.0) * 0.9
        _, group, count = np.unique(np.round(stop, 1), axis=0, return_inverse=True, return_counts=True)
        group = group.reshape(-1)
        order = np.argsort(group, kind="stable")
        rank = np.empty_like(group)
        rank[order] = np.arange(len(group)) - (np.cumsum(count) - count)[group[order]]
        share = bar_m / count[group]
        lat0 = -bar_m / 2 + rank * share  # [N] lateral start of this slot's part, m
        lat1 = lat0 + share
        depth = max(LIGHT_BAR_DEPTH_M, 3.0 / self.px_per_m)
        corners = np.stack([stop + lat0[:, None] * left_dir, stop + lat1[:, None] * left_dir,
                            stop + lat1[:, None] * left_dir - depth * forward,
                            stop + lat0[:, None] * left_dir - depth * forward], axis=1)  # [N, 4, 2] m
        corners_px = _to_px(corners, self.px_per_m, left, top)
        states = scene.light_state[slots, step]
        for quad, state in zip(corners_px, states):
            color = LIGHT_COLORS.get(int(state), LIGHT_COLORS[LightState.UNKNOWN])
            draw.polygon(_flat(quad), fill=color)

    def _draw_agents(self, draw: ImageDraw.ImageDraw, scene: _SceneArrays, step: int, left: int, top: int) -> None:
        """Oriented boxes of the agents valid at ``step``, in slot order, the AV last (on top)."""
        s, size = self.px_per_m, self.size
        ids = np.flatnonzero(scene.valid[:, step])
        ids = np.concatenate([ids[ids != scene.av_index], ids[ids == scene.av_index]])
        x, y, h = scene.x[ids, step], scene.y[ids, step], scene.heading[ids, step]
        half_l = np.maximum(scene.length[ids, step], MIN_BOX_PX / s) / 2
        half_w = np.maximum(scene.width[ids, step], MIN_BOX_PX / s) / 2
        centre_px = _to_px(np.stack([x, y], axis=-1), s, left, top)
        reach_px = np.hypot(half_l, half_w) * s
        seen = np.all((centre_px > -reach_px[:, None]) & (centre_px < size + reach_px[:, None]), axis=1)
        ids, x, y, h, half_l, half_w = ids[seen], x[seen], y[seen], h[seen], half_l[seen], half_w[seen]
        fwd = np.stack([np.cos(h), np.sin(h)], axis=-1)  # [N, 2]
        side = np.stack([-fwd[:, 1], fwd[:, 0]], axis=-1)
        centre = np.stack([x, y], axis=-1)
        signs = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], dtype=np.float64)  # (forward, left) per corner
        corners = (centre[:, None] + signs[None, :, :1] * (half_l[:, None, None] * fwd[:, None])
                   + signs[None, :, 1:] * (half_w[:, None, None] * side[:, None]))  # [N, 4, 2] m
        corners_px = _to_px(corners, s, left, top)
        tick_px = _to_px(np.stack([centre + 0.5 * half_l[:, None] * fwd, centre + half_l[:, None] * fwd], 1),
                         s, left, top)  # [N, 2, 2]: from half-way to the front bumper
        fills = _palette(AGENT_COLORS, scene.agent_type[ids], AgentType.UNSET)
        fills[ids == scene.av_index] = COLORS["av"]
        outlines = (fills * 0.55).astype(np.uint8)
        for quad, tick, fill, outline, length_px in zip(corners_px, tick_px, fills, outlines, 2 * half_l * s):
            draw.polygon(_flat(quad), fill=tuple(fill.tolist()), outline=tuple(outline.tolist()))
            if length_px >= 8:
                draw.line(_flat(tick), fill=COLORS["heading_tick"], width=2 if length_px >= 20 else 1)

    def _draw_overlay(self, img: Image.Image, scene: _SceneArrays, step: int) -> None:
        """Time, step and counts in the top-left corner; a 0-10-20 m scale bar in the bottom-left."""
        draw = ImageDraw.Draw(img, "RGBA")
        valid = scene.valid[:, step]
        types = scene.agent_type[valid]
        counts = ", ".join(f"{name} {int((types == t).sum())}" for name, t in
                           (("veh", AgentType.VEHICLE), ("ped", AgentType.PEDESTRIAN), ("cyc", AgentType.CYCLIST)))
        lines = (f"t {step * DT_S:6.1f} s    step {step}",
                 f"agents {int(valid.sum())} ({counts})    lights {int(scene.light_valid[:, step].sum())}")
        pad = max(4, self.size // 160)
        line_h = self._font_px + pad
        text_w = max(draw.textlength(line, font=self._font) for line in lines)
        draw.rectangle((0, 0, text_w + 2 * pad, len(lines) * line_h + pad), fill=(0, 0, 0, 150))
        for n, line in enumerate(lines):
            draw.text((pad, pad + n * line_h), line, font=self._font, fill=COLORS["text"])
        ten_m = 10 * self.px_per_m
        x0, y0 = 2 * pad, self.size - 3 * pad - line_h
        bar_h = max(3, pad)
        draw.rectangle((x0 - pad, y0 - line_h - pad, x0 + 2 * ten_m + 3 * pad + self._font_px * 2,
                        y0 + bar_h + pad), fill=(0, 0, 0, 150))
        draw.rectangle((x0, y0, x0 + ten_m, y0 + bar_h), fill=COLORS["text"])
        draw.rectangle((x0 + ten_m, y0, x0 + 2 * ten_m, y0 + bar_h), outline=COLORS["text"])
        for metres in (0, 10, 20):
            label = f"{metres} m" if metres == 20 else str(metres)
            draw.text((x0 + metres * self.px_per_m, y0 - 2), label, font=self._font, fill=COLORS["text"], anchor="lb")


# --- entry points -----------------------------------------------------------------------------------

def render_bev_frame(roadmap: RoadMap, state: SceneState, step: int | None = None, *,
                     route_lanes: torch.Tensor | None = None, size: int = 800,
                     view_radius_m: float = 60.0) -> np.ndarray:
    """One ``[size, size, 3]`` uint8 RGB frame of ``state`` at ``step`` (default ``state.step``).

    North-up, centred on the AV, ``view_radius_m`` from the centre to each side. For many frames
    on one map, keep a ``BevRenderer`` so the static map is rasterized once.
    """
    return BevRenderer(roadmap, route_lanes=route_lanes, size=size, view_radius_m=view_radius_m).frame(state, step)


def render_bev_video(roadmap: RoadMap, state: SceneState, path: Path, *, route_lanes: torch.Tensor | None = None,
                     size: int = 800, view_radius_m: float = 60.0, fps: int = 10, steps: slice | None = None,
                     progress: bool = False) -> dict:
    """Write an H.264 (yuv420p) MP4 of ``state``'s steps (default all, else ``range(T)[steps]``) to ``path``.

    One frame per step, played at ``fps``. The camera follows the AV north-up (see the module
    docstring for the frames). Returns ``{"frames", "seconds", "frames_per_s"}``: the wall time
    end to end, encoding included. A failed render removes the partial file.
    """
    start = time.perf_counter()
    renderer = BevRenderer(roadmap, route_lanes=route_lanes, size=size, view_radius_m=view_radius_m)
    indices = range(state.num_steps)[steps if steps is not None else slice(None)]
    if not indices:
        raise ValueError(f"steps={steps} selects no step of the {state.num_steps} in the state")
    images = renderer.images(state, indices)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path), (size, size), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=None, macro_block_size=2, ffmpeg_log_level="error",
        output_params=["-preset", "veryfast", "-crf", "23", "-movflags", "+faststart"])
    writer.send(None)
    try:
        with progress_bar(f"BEV {path.name}", total=len(indices), enabled=progress) as advance:
            for image in images:
                writer.send(image.tobytes())
                advance()
    except BaseException:
        writer.close()
        path.unlink(missing_ok=True)
        raise
    writer.close()
    seconds = time.perf_counter() - start
    return {"frames": len(indices), "seconds": seconds, "frames_per_s": len(indices) / seconds}
