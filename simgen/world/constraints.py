"""Generalized hard constraints: clipping functions applied to the predicted clean sample x̂_0 in every
denoising step (SceneDiffuser), each moving whole trajectories, plus a final check of the executed frame.

All functions take agent channels ``[B, A, F, AGENT_CHANNELS]`` (tokenizer
layout, AV frame of ``pose [B, 3]``, positions relative to the agents'
reference lines ``ref [B, A, F, 2]``) for the F future frames and return new ones.

1. ``soft_clip``: scale every feature by ``clamp(valid + 1, 0, 1)`` (SceneDiffuser++
   soft clipping): tokens predicted invalid fade to zero features, tokens
   predicted valid (``valid >= 0``) keep theirs. Scaling those by the validity
   probability itself would shrink every deviation from the reference line at
   each of the many calls a frame goes through. The positions of rows without
   an anchor (free rows that may spawn an agent) are not scaled: they are
   absolute AV-frame positions, and zero is the AV itself, where no agent
   enters. Scaling them pulled every would-be new agent onto the AV at each
   call, and the model then judged it invalid (measured on Berlin trip 0: no
   agent entered in 60 s; the log has 27).
2. ``inpaint``: replace the tokens of given trajectories (the AV's plan,
   user-fixed agents) by their values, every frame.
3. ``keep_valid``: force validity on rows that must stay in the scene (the
   WOSAC protocol simulates every agent of the window at every step; on
   trips, agents leave only through the window's edge).
4. ``OnRoad.project``: vehicles (and cyclists riding on the road now: a
   cyclist on a bike path may stay there) whose box leaves the drivable area
   (for vehicles, comes within ``ROAD_MARGIN_M`` of its edge; a cyclist first
   seen riding at the kerb, within ``KERB_BAND_M`` of the edge or beyond it,
   may graze it by ``RIDER_SLACK_M``, one first seen inside its lane keeps
   inside the edge)
   at some frame are moved, at that frame, toward the nearest driving-lane
   centreline (bisection on the blend: the smallest move that brings all four
   corners inside, heading blended toward the lane's direction on the side
   the agent faces now); the displacement is spread to the neighbouring
   frames with weights ``exp(-|Δk| / SPREAD_FRAMES)`` so the whole trajectory
   moves. ``OnRoad.outside_boxes`` is the exact executed-frame check
   (``WorldSampler``): where the executed frame (6) would leave the road, the
   plan's own next frame (within the limits) is tried, then the executed frame
   steered toward the agent's lane (``toward_lanes``: the smallest of 64 blends,
   all checked at once, that keeps the road), and an agent still outside holds its
   previous pose (or, if it just appeared, is not spawned), so the constraint
   holds in every executed frame. Without the steering, a car whose plan ran
   straight where the road curves reached the kerb and, heading out, was held
   there for the rest of the rollout (Berlin scene 3: a car logged at 15.7 m/s
   stopped after 2 s in all 3 rollouts; with it, 14-15 m/s). A vehicle already off the
   road (a logged one leaving a driveway) may move as long as it gets no
   farther off.
5. ``push_apart``: boxes that overlap at a frame are pushed apart. Each box
   is covered by ``CIRCLES`` discs along its length; every overlapping pair
   of agents moves apart along the line between their deepest-overlapping
   discs, half each (all of it when the other is given: the AV's plan, fixed
   agents), ``PUSH_ITERATIONS`` times; the displacement is spread to the
   neighbouring frames as in 4. ``overlapping_pairs`` is the exact
   executed-frame check: two boxes collide when they overlap as exact
   rectangles (``simgen.metrics.trip.boxes_overlap``). With WOSAC's rounded
   corners instead, corner overlaps passed, and in 4 Berlin trips x 2
   rollouts 77 % of the colliding agent-steps the trip metric counts were
   such overlaps between model agents (1,031 against 363, all of those now
   with the log-replayed AV, which no world can stop). An agent
   the model moved into a new collision holds its previous pose (or, if it
   just appeared, is not spawned), repeated until no new collision remains,
   so the model never moves an agent into another in an executed frame.
6. ``track`` and ``kinematic_limits``: the executed frame of an agent that
   continues follows the model's plan for the next ``TRACK_FRAMES`` frames
   (its clean estimate x̂_0) like a driver tracks a path: from its current
   velocity and yaw rate, with the constant acceleration and yaw
   acceleration that fit those frames best (least squares). A centimetre
   error in the next frame alone would be an acceleration error of metres
   per second squared at 10 Hz; fitting 0.5 s of plan averages it out. The
   frame is then kept physically feasible: its velocity changes by at most
   the type's acceleration limit (``ACCEL_LIMIT``, the vector change, so
   braking, speeding up and turning share it) and its speed stays under
   ``SPEED_LIMIT``, with its heading turning at most ``YAW_RATE_LIMIT`` per
   second. Both run before the on-road and no-overlap checks. A new agent has
   no measured velocity (one executed frame): it enters at its plan's speed
   along its heading (``plan_velocity``, at most ``ENTRY_SPEED_LIMIT``), and
   the next frame is tracked and limited from that. Taking it as zero
   started every new agent from rest, so on trips most of them fell behind
   the moving window within a few steps and left it.
7. ``RedLights``: a vehicle does not cross a stop line whose light is STOP at
   the step it would cross it, on that light's approach or junction lane (the
   WOSAC violation feature, ``simgen.metrics.features.light_violations``,
   itself). Where its executed frame would, it moves only along the way to
   that frame that stays behind the line (``WorldSampler._stop_at_red``), so it stops at the line
   and drives on when the light changes. The model's plans alone ran some
   reds: on held-out Berlin, vehicles crept over a steady red at 3-4 m/s in
   every rollout of scene 44 (violation likelihood 0.006).
8. New agents (trips): a new agent's box is the ``BOX_SIZES`` entry of its
   type nearest the model's box (``box_size``): the logs hold SUMO's six
   default boxes, while the box the model gives a row it is spawning is
   half-formed. A new vehicle enters only facing along its driving lane
   (``along_lanes``); a proposal facing against it restarts empty. On the
   default city trip (``scenarios/city.yaml``, seed 0) the model spawned a
   0.46 m x 1.12 m vehicle and a 2.2 m x 1.2 m pedestrian, and 3 of its 7 new
   vehicles faced against a one-way street, one of them nose to nose with the
   AV: everyone behind them stood, 65 % of the vehicle-steps, against 20 % in
   SUMO's world of the same trip.
"""

from __future__ import annotations

import math

import torch

from simgen.metrics.features import Segments, light_violations, signed_distance_to_rings
from simgen.metrics.trip import boxes_overlap
from simgen.types import DT_S, AgentType, LightState, RoadMap, TrafficLights
from simgen.world.tokenizer import (
    COS,
    DELTA_SCALE_M,
    POS_SCALE_M,
    SIN,
    SIZE,
    SIZE_MEAN_M,
    SIZE_SCALE_M,
    TYPE,
    VALID,
    X,
    Y,
    local_positions,
    to_world,
)

SPREAD_FRAMES = 3.0
BISECTION_STEPS = 6
ROAD_MARGIN_M = 0.3  # in denoising, vehicle corners are kept this far inside the (rastered) road edge
STOP_LINE_GAP_M = 0.05  # RedLights: a vehicle held at a red light stops this far behind the line
NEAR_STOP_LINE_M = 15.0  # RedLights: vehicles farther than this from every red stop line cannot cross one in a step
NEAREST_LANE_M = 10.0  # RedLights: a vehicle's nearest driving lane is searched within this distance
RIDER_SLACK_M = 0.1  # cyclists riding at the kerb: corners at most this far outside the road's edge (both checks)
KERB_BAND_M = 0.02  # a cyclist first seen within this of the edge (or beyond it) rides at the kerb (module doc, 4)
TILE_M = 64.0  # signed-distance raster tiles (denoising-time projection): 15 ms to build one on Berlin
CELL_M = 0.5
CELLS = round(TILE_M / CELL_M)  # cells along a tile's side
# |raster - exact| <= CELL_M / sqrt(2): the bilinear mean of a 1-Lipschitz function's corner values, whose mean
# distance to the point is largest at the cell's centre. Beyond this (plus the largest threshold a check compares
# with, RIDER_SLACK_M), the raster orders a corner against every threshold as the exact distance does.
RASTER_SURE_M = CELL_M / math.sqrt(2) + RIDER_SLACK_M + 0.01
LOCAL_MARGIN_M = 2.0  # exact_distance: a tile's own segments are those within this distance of it
CIRCLES = 3  # discs per box in push_apart
PUSH_ITERATIONS = 3
PUSH_MARGIN_M = 0.2  # in denoising, discs are pushed this far apart
LANE_MATCH_M = 4.0  # a new vehicle enters only facing along a driving lane this close to it (``along_lanes``)
LANE_TIE_M = 1.0  # ``along_lanes``: lanes this much farther than the nearest count as its lane too (junctions)
LANE_POINT_M = 2.0  # ``along_lanes``: a lane point is beside a pose within this along the lane (points < 3.5 m apart)
LANE_CROP_M = 20.0  # toward_lanes searches the lane points within this box around the poses first
TRACK_FRAMES = 5  # planned frames the executed frame follows (track)
# per AgentType (UNSET, VEHICLE, PEDESTRIAN, CYCLIST): executed-frame kinematic limits
ACCEL_LIMIT = torch.tensor([6.0, 6.0, 3.0, 4.0])  # m/s², magnitude of the velocity change per second
SPEED_LIMIT = torch.tensor([40.0, 40.0, 4.0, 12.0])  # m/s
YAW_RATE_LIMIT = torch.tensor([1.5, 1.5, 6.0, 3.0])  # rad/s
ENTRY_SPEED_LIMIT = torch.tensor([15.0, 15.0, 2.0, 6.0])  # m/s, a new agent's speed (along its heading) at most
# The boxes (length, width, height, m) of the training corpus, per AgentType: SUMO's default vType sizes of the
# demand's classes (``simgen.traffic.demand``: passenger, delivery, truck, bus; pedestrian; bicycle). A new agent
# takes the one nearest the model's box for its type (``box_size``, constraints docstring, 8).
BOX_SIZES = {
    AgentType.VEHICLE: ((5.0, 1.8, 1.5), (6.5, 2.16, 2.86), (7.1, 2.4, 2.4), (12.0, 2.5, 3.4)),
    AgentType.PEDESTRIAN: ((0.215, 0.478, 1.719),),
    AgentType.CYCLIST: ((1.6, 0.65, 1.7),),
}


def soft_clip(x0: torch.Tensor, anchored: torch.Tensor) -> torch.Tensor:
    """``anchored [B, A]`` bool: rows whose positions are relative to a reference line (module docstring, 1)."""
    p = (x0[..., VALID] + 1).clamp(0, 1)[..., None]
    out = torch.cat([x0[..., :1], x0[..., 1:] * p], dim=-1)
    out[..., X:Y + 1] = torch.where(anchored[..., None, None], out[..., X:Y + 1], x0[..., X:Y + 1])
    return out


def inpaint(x0: torch.Tensor, given: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``given [B, A, F]`` bool; ``values`` like ``x0``."""
    return torch.where(given[..., None], values, x0)


def keep_valid(x0: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``rows [B, A]`` bool: validity +1 at every frame (features keep their values)."""
    out = x0.clone()
    out[..., VALID] = torch.where(rows[..., None], 1.0, x0[..., VALID])
    return out


def is_vehicle(x0: torch.Tensor) -> torch.Tensor:
    """``[B, A, F]`` bool: valid tokens whose type channel says vehicle."""
    return (x0[..., VALID] > 0) & (x0[..., TYPE].argmax(-1) == 0)


class OnRoad:
    """Keep vehicles' boxes inside the drivable area (module docstring, 4)."""

    def __init__(self, roadmap: RoadMap):
        a, b = roadmap.road_edge_segments
        self.a, self.b = a.double(), b.double()
        self.index: dict[tuple[int, int], int] = {}  # tile key -> its grid in ``grids`` (the first len(index))
        # The same for the tiles over the map and one more around it, as a table (-1: not built): the hot path's
        # lookup (``_grid_index``), no Python per tile.
        ends = torch.cat([self.a, self.b]) if len(self.a) else torch.zeros(1, 2, dtype=torch.float64)
        self.table_origin = torch.floor(ends.amin(0) / TILE_M).long() - 1
        self.table_size = torch.floor(ends.amax(0) / TILE_M).long() + 2 - self.table_origin
        self.table = torch.full(tuple(self.table_size.tolist()), -1, dtype=torch.long)
        self.grids = torch.empty(0, CELLS + 1, CELLS + 1)
        far = torch.full((1, 2), 1e9, dtype=torch.float64)  # a degenerate segment far off pads the index rows
        self.segments = Segments(torch.cat([self.a, far]), torch.cat([self.b, far]))
        self.local: dict[tuple[int, int], torch.Tensor] = {}

    def _tile(self, key: tuple[int, int]) -> int:
        """The index in ``grids`` of tile ``key``'s signed distances (m) at its cell corners, built once."""
        if key not in self.index:
            ticks = torch.arange(CELLS + 1, dtype=torch.float64) * CELL_M
            gx, gy = torch.meshgrid(key[0] * TILE_M + ticks, key[1] * TILE_M + ticks, indexing="ij")
            points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
            built = len(self.index)
            if built == len(self.grids):  # room doubles, so building T tiles copies O(T) grids
                self.grids = torch.cat([self.grids, torch.empty(max(built, 4), CELLS + 1, CELLS + 1)])
            self.grids[built] = signed_distance_to_rings(points, self.a, self.b).reshape(CELLS + 1, CELLS + 1)
            self.index[key] = built
            at = torch.tensor(key) - self.table_origin
            if ((at >= 0) & (at < self.table_size)).all():
                self.table[at[0], at[1]] = built
        return self.index[key]

    def _grid_index(self, tile: torch.Tensor) -> torch.Tensor:
        """``[N]`` the index in ``grids`` of the tiles ``tile [N, 2]`` (``_tiles``), building those not built yet."""
        at = tile - self.table_origin
        if len(at) and bool(((at >= 0) & (at < self.table_size)).all()):
            grid = self.table[at[:, 0], at[:, 1]]
            if bool((grid >= 0).all()):
                return grid
        keys, inverse = _tile_keys(tile)
        return torch.tensor([self._tile(key) for key in keys], dtype=torch.long)[inverse]

    def _local(self, key: tuple[int, int]) -> torch.Tensor:
        """Indices of the segments of tile ``key`` grown by ``LOCAL_MARGIN_M`` (the rest cannot be nearer its
        points)."""
        if key not in self.local:
            lo = torch.tensor(key, dtype=torch.float64) * TILE_M - LOCAL_MARGIN_M
            hi = lo + TILE_M + 2 * LOCAL_MARGIN_M
            keep = ((torch.minimum(self.a, self.b) <= hi) & (torch.maximum(self.a, self.b) >= lo)).all(-1)
            self.local[key] = keep.nonzero().flatten()
        return self.local[key]

    def exact_distance(self, points: torch.Tensor) -> torch.Tensor:
        """Exact signed distance (m; negative inside) at ``points [N, 2]`` (world frame, float64), as
        ``signed_distance_to_rings`` gives it, from each tile's own segments: the distance to the nearest of them,
        and the side of the nearest raster corner (exact there) flipped by every edge between it and the point.
        Points farther than ``LOCAL_MARGIN_M`` from their tile's segments (or in a tile without any), or whose
        corner is on an edge, take the whole map's computation. All tiles in one pass: each point's row of segment
        indices is its tile's, padded with a far, degenerate segment."""
        tile = _tiles(points)
        keys, inverse = _tile_keys(tile)
        local = [self._local(key) for key in keys]
        width = max(len(rows) for rows in local)
        if not width:
            return signed_distance_to_rings(points, self.a, self.b)
        index = torch.full((len(keys), width), len(self.a))
        for k, rows in enumerate(local):
            index[k, :len(rows)] = rows
        grid = torch.tensor([self._tile(key) if len(rows) else 0 for key, rows in zip(keys, local)])  # may build
        empty = torch.tensor([not len(rows) for rows in local])[inverse]
        index, grid = index[inverse], grid[inverse]
        origin = tile.double() * TILE_M
        corner = ((points - origin) / CELL_M).round().long().clamp(0, CELLS)
        corner_xy = origin + corner.double() * CELL_M
        corner_side = self.grids[grid, corner[:, 0], corner[:, 1]]
        distance = self.segments.squared_distance(points[:, :1], points[:, 1:], index).amin(-1).sqrt()
        inside = (corner_side < 0) ^ (self.segments.crossings(corner_xy, points, index) % 2 == 1)
        out = torch.where(inside, -distance, distance)
        unsure = (distance > LOCAL_MARGIN_M) | (corner_side == 0) | empty
        if unsure.any():
            out[unsure] = signed_distance_to_rings(points[unsure], self.a, self.b)
        return out

    def raster_distance(self, points: torch.Tensor) -> torch.Tensor:
        """Bilinear signed distance (m) from the rastered tiles at ``points [N, 2]`` (world frame, m).
        Within about ``CELL_M / 2`` of the exact value (1-Lipschitz)."""
        tile = _tiles(points)
        grid = self._grid_index(tile)
        local = (points - tile.to(points.dtype) * TILE_M) / CELL_M
        i0 = local.floor().long().clamp(0, CELLS - 1)
        f = (local - i0).float()
        flat = self.grids.reshape(-1)
        at = (grid * (CELLS + 1) + i0[:, 0]) * (CELLS + 1) + i0[:, 1]  # corner (i, j) of each point's cell
        v00, v10, v01, v11 = flat[at], flat[at + CELLS + 1], flat[at + 1], flat[at + CELLS + 2]
        return ((v00 * (1 - f[:, 0]) + v10 * f[:, 0]) * (1 - f[:, 1])
                + (v01 * (1 - f[:, 0]) + v11 * f[:, 0]) * f[:, 1])

    def outside(self, x0: torch.Tensor, pose: torch.Tensor, ref: torch.Tensor, exact: bool = False
                ) -> torch.Tensor:
        """``[B, A, F]`` the largest corner distance outside the road edge (m; <= 0 inside): exact, or from
        the raster (``raster_distance``)."""
        corners = _corners_world(x0, pose, ref).reshape(-1, 2)  # [B * A * F * 4, 2]
        if not exact:
            return self.raster_distance(corners).reshape(*x0.shape[:3], 4).amax(-1)
        return signed_distance_to_rings(corners, self.a, self.b).reshape(*x0.shape[:3], 4).amax(-1)

    def project(self, x0: torch.Tensor, pose: torch.Tensor, ref: torch.Tensor, lane_local: torch.Tensor,
                lane_valid: torch.Tensor, movable: torch.Tensor, rider_slack: torch.Tensor | None = None,
                facing: torch.Tensor | None = None) -> torch.Tensor:
        """Move offroad vehicle tokens of ``movable [B, A]`` rows toward lanes. ``lane_local [B, N, 4]``:
        driving-lane points (AV frame, m / ``POS_SCALE_M``) and their unit direction; ``lane_valid [B, N]``.
        ``rider_slack [B, A]``: rows of other types held on the road too (cyclists riding on it now), the distance
        (m) their corners may reach outside its edge; NaN for the rows it does not hold. ``facing [B, A, 2]``:
        (cos, sin) of the rows' known heading now (AV frame; 0 where unknown), which picks the lane direction."""
        vehicle = is_vehicle(x0)
        margin = torch.full_like(x0[..., VALID], ROAD_MARGIN_M)  # [B, A, F] m inside the edge
        if rider_slack is not None:
            riders = (x0[..., VALID] > 0) & ~rider_slack.isnan()[..., None] & ~vehicle
            margin = torch.where(riders, -rider_slack.nan_to_num(0.0)[..., None], margin)
            vehicle |= riders
        vehicle &= movable[..., None]
        if not vehicle.any() or not lane_valid.any():
            return x0
        # Only held tokens' corners are looked up: a raster tile is built on first use, from the whole map, so
        # looking up every token (invalid ones far off too) made a busy trip's step twice as slow with some weights.
        held = vehicle.nonzero(as_tuple=True)
        outside = self.outside(x0[held][:, None, None], pose[held[0]], ref[held][:, None, None]).flatten()
        off = torch.zeros_like(vehicle)  # [B, A, F]
        off[held] = outside > -margin[held]
        if not off.any():
            return x0
        b, a, f = off.nonzero().unbind(-1)
        tokens = x0[b, a, f][:, None, None]  # [n, 1, 1, C]: only the offroad tokens are searched
        token_ref = ref[b, a, f][:, None, None]  # [n, 1, 1, 2]
        token_margin = margin[b, a, f][:, None, None]
        target = _nearest_lane(x0, ref, lane_local, lane_valid, facing)[b, a, f][:, None, None]  # [n, 1, 1, 4]
        # Bisection for the smallest blend that is inside (monotone enough in practice). Every blend it can try is
        # a multiple of 1 / 2^BISECTION_STEPS, so all of them are looked up in one call and the bisection reads them.
        steps = 2 ** BISECTION_STEPS
        n, tries = len(b), steps - 1
        blends = (torch.arange(1, steps, dtype=x0.dtype) / steps)[None, :, None].expand(n, tries, 1)
        inside = self.outside(_blend(tokens.expand(n, tries, 1, -1), target.expand(n, tries, 1, -1), blends),
                              pose[b], token_ref.expand(n, tries, 1, -1))[..., 0] <= -token_margin[:, :, 0]
        lo, hi = torch.zeros(n, dtype=torch.long), torch.full((n,), steps)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) // 2
            ok = inside.gather(1, mid[:, None] - 1)[:, 0]
            hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
        moved = torch.zeros_like(x0)  # per-frame correction, [B, A, F, C]
        moved[b, a, f] = (_blend(tokens, target, (hi.to(x0.dtype) / steps)[:, None, None]) - tokens)[:, 0, 0]
        return x0 + spread(moved, off, vehicle)

    def outside_boxes(self, x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, length: torch.Tensor,
                      width: torch.Tensor) -> torch.Tensor:
        """Largest corner distance outside the road edge (m) of world-frame boxes ``[N]``: exact wherever the sign
        could differ from a check's (corners within ``RASTER_SURE_M`` of the edge by the raster), the raster's
        elsewhere."""
        if not len(x):
            return torch.zeros(0, dtype=torch.float64)
        corners = box_corners(x.double(), y.double(), heading.double(), length.double() / 2, width.double() / 2)
        corners = corners.reshape(-1, 2)
        distance = self.raster_distance(corners).double()
        unsure = (distance.abs() <= RASTER_SURE_M).nonzero().flatten()  # the rest has the right sign already
        if len(unsure):
            distance[unsure] = self.exact_distance(corners[unsure])
        return distance.reshape(-1, 4).amax(-1)


def _tiles(points: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` the raster tile each of ``points [N, 2]`` (world frame, m) falls in."""
    return torch.floor(points / TILE_M).long()


def _tile_keys(tile: torch.Tensor) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """The distinct keys of the tiles ``tile [N, 2]``, and each one's index among them ``[N]``."""
    code = tile[:, 0] * 1_000_003 + tile[:, 1]  # one int per tile (maps span far fewer tiles)
    codes, inverse = torch.unique(code, return_inverse=True)
    one = torch.zeros(len(codes), dtype=torch.long).scatter_(0, inverse, torch.arange(len(code)))  # a point of each
    return [tuple(k) for k in tile[one].tolist()], inverse


def spread(moved: torch.Tensor, hit: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Whole-trajectory correction from per-frame moves ``moved [B, A, F, C]``: frames that needed a move
    (``hit [B, A, F]``) keep exactly theirs; the other ``tokens`` take a share of their neighbours' decaying as
    ``exp(-|Δk| / SPREAD_FRAMES)``."""
    k = torch.arange(moved.shape[2], dtype=moved.dtype)
    weight = torch.exp(-(k[:, None] - k[None]).abs() / SPREAD_FRAMES)  # [F, F]
    share = torch.einsum("fg,bagc->bafc", weight, moved) / weight.sum(-1)[:, None].clamp_min(1)
    return torch.where(hit[..., None], moved, share * tokens[..., None])


def push_apart(x0: torch.Tensor, ref: torch.Tensor, movable: torch.Tensor, solid: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Push overlapping boxes apart (module docstring, 5). ``movable [B, A]``: rows the model may move;
    ``solid [B, A]``: rows others keep clear of (default all; a row that is not gives way to solid ones only)."""
    valid = x0[..., VALID] > 0  # [B, A, F]
    if valid.sum(1).max() < 2:
        return x0
    size = (x0[..., SIZE].double() * SIZE_SCALE_M.double() + SIZE_MEAN_M.double()).clamp_min(0.2)
    radius = size[..., :2].amin(-1) / 2  # [B, A, F]
    reach = ((size[..., 0] / 2 - radius).clamp_min(0)[..., None]
             * torch.linspace(-1, 1, CIRCLES, dtype=torch.float64))  # [B, A, F, K] offsets along the box
    heading = torch.stack([x0[..., COS], x0[..., SIN]], -1).double()
    heading = heading / heading.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    start = local_positions(x0, ref)  # [B, A, F, 2] m
    position = start.clone()
    bound = size[..., :2].norm(dim=-1) / 2 + PUSH_MARGIN_M  # [B, A, F] bounding-circle radius
    pair = valid[:, :, None] & valid[:, None] & ~torch.eye(x0.shape[1], dtype=torch.bool)[None, :, :, None]
    for _ in range(PUSH_ITERATIONS):
        near = pair & (torch.cdist(position.transpose(1, 2), position.transpose(1, 2)).permute(0, 2, 3, 1)
                       < bound[:, :, None] + bound[:, None])  # [B, i, j, F], broad phase
        b, i, j, f = near.nonzero().unbind(-1)
        if len(b) == 0:
            break
        disc_i = position[b, i, f][:, None] + reach[b, i, f][..., None] * heading[b, i, f][:, None]  # [n, K, 2]
        disc_j = position[b, j, f][:, None] + reach[b, j, f][..., None] * heading[b, j, f][:, None]
        d = disc_i[:, :, None] - disc_j[:, None]  # [n, K, K, 2], from j's discs to i's
        depth = (radius[b, i, f] + radius[b, j, f] + PUSH_MARGIN_M)[:, None, None] - d.norm(dim=-1)
        depth, deepest = depth.flatten(1).max(-1)  # [n]
        direction = d.flatten(1, 2)[torch.arange(len(b)), deepest]
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        share = torch.where(movable[b, j], 0.5, 1.0) * movable[b, i]  # i's part of the push
        if solid is not None:
            share = torch.where(solid[b, i], share, 1.0) * movable[b, i] * solid[b, j]
        push = (depth.clamp_min(0) * share)[:, None] * direction
        if not push.any():
            break
        position = position.index_put((b, i, f), push, accumulate=True)
    moved = torch.zeros_like(x0)
    moved[..., X:Y + 1] = ((position - start) / DELTA_SCALE_M).to(x0.dtype)
    hit = moved[..., X:Y + 1].abs().sum(-1) > 0
    return x0 + spread(moved, hit, valid & movable[..., None])


def track(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, prev_x: torch.Tensor, prev_y: torch.Tensor,
          prev_heading: torch.Tensor, prev_vel: torch.Tensor, prev_yaw_rate: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next poses ``[N]`` of agents at ``prev_*`` (velocity ``prev_vel [N, 2]`` m/s, yaw rate ``[N]`` rad/s) that
    follow their planned poses ``[N, K]`` (the next K frames; module docstring, 6): the constant acceleration (and
    yaw acceleration) that fits the plan best in least squares, taken one step. Exact on such a plan."""
    t = torch.arange(1, x.shape[1] + 1, dtype=torch.float64) * DT_S
    basis = t * t / 2

    def step(plan: torch.Tensor, now: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        rest = plan.double() - now.double()[:, None] - rate.double()[:, None] * t
        accel = (rest * basis).sum(-1) / (basis * basis).sum()
        return now.double() + rate.double() * DT_S + accel * DT_S ** 2 / 2

    turn = torch.remainder(heading.double() - prev_heading.double()[:, None] + math.pi, 2 * math.pi) - math.pi
    next_turn = step(turn, torch.zeros_like(prev_heading), prev_yaw_rate)
    return (step(x, prev_x, prev_vel[:, 0]).to(x.dtype), step(y, prev_y, prev_vel[:, 1]).to(y.dtype),
            (prev_heading.double() + next_turn).to(heading.dtype))


def plan_velocity(x: torch.Tensor, y: torch.Tensor, prev_x: torch.Tensor, prev_y: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` velocity (m/s) that fits the planned positions ``[N, K]`` (the next K frames) best from ``prev_*
    [N]``, in least squares at constant velocity (module docstring, 6)."""
    t = torch.arange(1, x.shape[1] + 1, dtype=torch.float64) * DT_S
    d = torch.stack([x.double() - prev_x.double()[:, None], y.double() - prev_y.double()[:, None]], -1)
    return ((d * t[:, None]).sum(1) / (t * t).sum()).to(x.dtype)


def kinematic_limits(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, prev_x: torch.Tensor,
                     prev_y: torch.Tensor, prev_heading: torch.Tensor, prev_vel: torch.Tensor,
                     agent_type: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next poses ``[N]`` (m, rad) of agents that were at ``prev_*`` with velocity ``prev_vel [N, 2]`` (m/s),
    moved the least so that they respect the limits of their ``agent_type`` (module docstring, 6)."""
    kind = agent_type.long().clamp(0, len(ACCEL_LIMIT) - 1)
    prev = torch.stack([prev_x, prev_y], -1).double()
    velocity = (torch.stack([x, y], -1).double() - prev) / DT_S
    change = velocity - prev_vel.double()
    most = (ACCEL_LIMIT[kind] * DT_S).double()
    change = change * (most / change.norm(dim=-1).clamp_min(1e-9)).clamp(max=1.0)[:, None]
    velocity = prev_vel.double() + change
    velocity = velocity * (SPEED_LIMIT[kind].double() / velocity.norm(dim=-1).clamp_min(1e-9)).clamp(max=1.0)[:, None]
    turn = torch.remainder(heading - prev_heading + math.pi, 2 * math.pi) - math.pi
    turn = turn.clamp(-YAW_RATE_LIMIT[kind] * DT_S, YAW_RATE_LIMIT[kind] * DT_S)
    out = prev + velocity * DT_S
    return out[:, 0].to(x.dtype), out[:, 1].to(y.dtype), prev_heading + turn


class RedLights:
    """``runs`` (module docstring, 7) for one map, with the driving lanes' bounding boxes kept to find, for each
    query, the lanes that can be nearest to it (the whole map's took 130 ms a call on Berlin)."""

    def __init__(self, roadmap: RoadMap):
        self.roadmap = roadmap
        self.lanes = roadmap.vehicle_lanes.nonzero()[:, 0]
        xy, ok = roadmap.lane_xy[self.lanes].double(), roadmap.lane_point_valid[self.lanes, :, None]
        self.low = torch.where(ok, xy, torch.inf).amin(1)  # [L, 2] world frame, m
        self.high = torch.where(ok, xy, -torch.inf).amax(1)

    def runs(self, lights: TrafficLights, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """``[N]`` which vehicles moving from ``before`` to ``after [N, 2]`` (world frame, m) cross a stop line whose
        light is STOP in the second of the two steps of ``lights [S, 2]``."""
        out = torch.zeros(len(before), dtype=torch.bool)
        stop = lights.valid[:, 1] & (lights.state[:, 1] == LightState.STOP)
        if not stop.any() or not len(before):
            return out
        stop_xy = torch.stack([lights.stop_x[stop, 1], lights.stop_y[stop, 1]], -1).double()
        near = torch.cdist(after.double(), stop_xy).amin(-1) < NEAR_STOP_LINE_M  # the exact test only near a line
        if not near.any():
            return out
        points = after[near].double()
        # A lane farther than NEAREST_LANE_M from the points' bounding box is nearest to none of them that has a lane
        # within that distance (one box for all: the red-light stop asks about hundreds of points along a step).
        gap = torch.maximum(self.low - points.amax(0), points.amin(0) - self.high).clamp_min(0)
        lanes = self.lanes[gap.norm(dim=-1) < NEAREST_LANE_M]
        origin = points.mean(0)
        xy = torch.stack([before[near].double(), points], 1) - origin  # [n, 2 steps, 2]
        moving = torch.ones(1, len(points), 1, dtype=torch.bool)
        out[near] = light_violations(self.roadmap, xy[None, ..., 0], xy[None, ..., 1], moving, lights, 1, origin,
                                     lanes)[0, :, 0]
        return out


def along_lanes(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    """``[N]`` whether each world-frame pose ``[N]`` (m, rad) faces along its driving lane: some lane point beside
    it (within ``LANE_POINT_M`` along the lane's direction) whose line is the nearest to it, within ``LANE_TIE_M``
    of the nearest and ``LANE_MATCH_M`` of the pose, points within 90 degrees of its heading. The lane of the
    opposite direction, a lane's width away, does not count. ``lanes [M, 4]``: points (m), unit directions."""
    xy = torch.stack([x, y], -1).double()
    reach = LANE_MATCH_M + LANE_POINT_M  # no lane point farther than this from every pose can count
    lanes = lanes[((lanes[:, :2] >= xy.amin(0) - reach) & (lanes[:, :2] <= xy.amax(0) + reach)).all(-1)]
    if not len(lanes):  # no driving lane near any of them
        return torch.zeros(len(xy), dtype=torch.bool)
    rel = xy[:, None] - lanes[None, :, :2]  # [N, M, 2]
    along = (rel * lanes[None, :, 2:]).sum(-1)
    lateral = (rel[..., 0] * lanes[None, :, 3] - rel[..., 1] * lanes[None, :, 2]).abs()
    lateral = torch.where(along.abs() <= LANE_POINT_M, lateral, math.inf)
    lane = (lateral <= lateral.amin(-1, keepdim=True) + LANE_TIE_M) & (lateral <= LANE_MATCH_M)
    facing = torch.stack([torch.cos(heading), torch.sin(heading)], -1).double() @ lanes[:, 2:].T > 0
    return (lane & facing).any(-1)


def box_size(agent_type: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """``[N, 3]`` the ``BOX_SIZES`` entry of each agent's type ``[N]`` nearest its box ``size [N, 3]`` (length,
    width, height, m; nearest in log length and log width). Types without entries keep their box."""
    out = size.clone()
    for kind, boxes in BOX_SIZES.items():
        rows = (agent_type == kind).nonzero().flatten()
        if not len(rows):
            continue
        table = torch.tensor(boxes, dtype=size.dtype)  # [K, 3]
        gap = (size[rows, None, :2].clamp_min(0.05).log() - table[None, :, :2].log()).square().sum(-1)  # [n, K]
        out[rows] = table[gap.argmin(-1)]
    return out


def overlapping_pairs(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, length: torch.Tensor,
                      width: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` bool: pairs of valid world-frame boxes ``[N]`` that overlap, as exact rectangles (the trip
    metrics' collisions; WOSAC's rounded corners make a subset of these)."""
    n = len(x)
    rows = valid.nonzero().flatten()  # trips hold hundreds of rows, a few dozen of them valid
    i, j = rows[torch.triu_indices(len(rows), len(rows), 1)]
    out = torch.zeros(n, n, dtype=torch.bool)
    if len(i) == 0:
        return out
    boxes = torch.stack([x, y, heading, length, width], -1).double()
    out[i, j] = boxes_overlap(boxes[i], boxes[j])
    return out | out.T


def _corners_world(x0: torch.Tensor, pose: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``[B, A, F, 4, 2]`` box corners (m, world frame, float64) of the tokens."""
    local = local_positions(x0, ref)
    lx, ly = local[..., 0], local[..., 1]
    heading = torch.atan2(x0[..., SIN], x0[..., COS]).double()
    x, y, h = to_world(lx, ly, heading, pose.double())
    size = (x0[..., SIZE].double() * SIZE_SCALE_M.double() + SIZE_MEAN_M.double()).clamp_min(0.2)
    return box_corners(x, y, h, size[..., 0] / 2, size[..., 1] / 2)


def box_corners(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, half_length: torch.Tensor,
                half_width: torch.Tensor) -> torch.Tensor:
    """``[.., 4, 2]`` corners (m) of boxes ``[..]`` (centre, heading, half sizes)."""
    along = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=x.dtype) * half_length[..., None]
    across = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=x.dtype) * half_width[..., None]
    cos, sin = torch.cos(heading)[..., None], torch.sin(heading)[..., None]
    return torch.stack([x[..., None] + along * cos - across * sin, y[..., None] + along * sin + across * cos], -1)


def _nearest_lane(x0: torch.Tensor, ref: torch.Tensor, lanes: torch.Tensor, valid: torch.Tensor,
                  facing: torch.Tensor | None = None) -> torch.Tensor:
    """Per token, the nearest lane point (in the token's units: relative to its reference line) and the lane's
    direction, ``[B, A, F, 4]`` (x, y; sin, cos), turned to the side the row faces: its known heading now
    (``facing [B, A, 2]``, cos and sin; 0 where unknown) or else the token's own. A noisy token's heading early in
    denoising would otherwise turn a vehicle around onto the opposite lane."""
    B, A, F, _ = x0.shape
    pos = (local_positions(x0, ref) / POS_SCALE_M).float().reshape(B, A * F, 2)
    d = torch.cdist(pos, lanes[..., :2])  # [B, AF, N]
    d = torch.where(valid[:, None], d, math.inf)
    index = d.argmin(-1)  # [B, AF]
    picked = torch.gather(lanes, 1, index[..., None].expand(-1, -1, 4)).reshape(B, A, F, 4).clone()
    # the foot of the perpendicular on the lane's line through that point: no move along the lane
    along = ((pos.reshape(B, A, F, 2) - picked[..., :2]) * picked[..., 2:]).sum(-1, keepdim=True)
    picked[..., :2] = picked[..., :2] + along * picked[..., 2:]
    picked[..., :2] = (picked[..., :2] * POS_SCALE_M - ref.float()) / DELTA_SCALE_M
    own = torch.stack([x0[..., COS], x0[..., SIN]], -1)
    if facing is not None:
        known = facing.abs().sum(-1, keepdim=True)[:, :, None] > 0  # [B, A, 1, 1]
        own = torch.where(known, facing[:, :, None].to(own.dtype), own)
    # direction as (cos, sin) in picked[..., 2:]; flip it to the side the row faces
    cos, sin = picked[..., 2], picked[..., 3]
    ahead = cos * own[..., 0] + sin * own[..., 1] >= 0
    cos, sin = torch.where(ahead, cos, -cos), torch.where(ahead, sin, -sin)
    return torch.stack([picked[..., 0], picked[..., 1], sin, cos], dim=-1)


def toward_lanes(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, lanes: torch.Tensor):
    """For world-frame poses ``[N]`` (m, rad), a function of ``weight [N]`` or ``[N, K]`` giving the poses moved that
    fraction of the way to the nearest driving lane on the side they face, as ``OnRoad.project`` moves tokens (the
    foot of the perpendicular, the lane's direction), shaped like ``weight``. ``lanes [M, 4]``: world-frame lane
    points (m) and their unit directions (cos, sin). The nearest lane is found once, for any number of weights."""
    xy = torch.stack([x, y], -1).double()
    crop = lanes[((lanes[:, :2] >= xy.amin(0) - LANE_CROP_M) & (lanes[:, :2] <= xy.amax(0) + LANE_CROP_M)).all(-1)]
    if len(crop) and torch.cdist(xy, crop[:, :2]).amin(-1).max() <= LANE_CROP_M:  # then the nearest is in the crop
        lanes = crop
    tokens = torch.zeros(1, len(x), 1, COS + 1, dtype=torch.float64)  # validity, position, heading
    tokens[0, :, 0, X], tokens[0, :, 0, Y] = x.double() / DELTA_SCALE_M, y.double() / DELTA_SCALE_M
    tokens[0, :, 0, SIN], tokens[0, :, 0, COS] = torch.sin(heading.double()), torch.cos(heading.double())
    scaled = torch.cat([lanes[:, :2] / POS_SCALE_M, lanes[:, 2:]], dim=-1).float()[None]
    target = _nearest_lane(tokens, torch.zeros(1, len(x), 1, 2, dtype=torch.float64), scaled,
                           torch.ones(1, len(lanes), dtype=torch.bool))

    def at(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = weight.double().reshape(len(x), -1)  # [N, K]
        k = w.shape[1]
        moved = _blend(tokens.expand(-1, -1, k, -1), target.expand(-1, -1, k, -1), w[None])[0]  # [N, K, C]
        heading = torch.atan2(moved[..., SIN], moved[..., COS])
        return tuple(v.reshape(weight.shape) for v in (moved[..., X] * DELTA_SCALE_M, moved[..., Y] * DELTA_SCALE_M,
                                                       heading))

    return at


def _blend(x0: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Tokens moved a fraction ``w [B, A, F]`` of the way to ``target`` (position and heading direction)."""
    w = w[..., None]
    out = x0.clone()
    out[..., X:Y + 1] = x0[..., X:Y + 1] + w * (target[..., :2] - x0[..., X:Y + 1])
    sin = x0[..., SIN:SIN + 1] + w * (target[..., 2:3] - x0[..., SIN:SIN + 1])
    cos = x0[..., COS:COS + 1] + w * (target[..., 3:4] - x0[..., COS:COS + 1])
    norm = torch.hypot(sin, cos).clamp_min(1e-6)
    out[..., SIN:SIN + 1], out[..., COS:COS + 1] = sin / norm, cos / norm
    return out
