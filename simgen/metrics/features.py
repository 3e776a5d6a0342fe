"""WOSAC 2025 per-agent features, vectorized in torch over rollouts, agents and steps.

The definitions follow Waymo's official sim-agent metrics (``waymo_open_dataset``,
``wdl_limited/sim_agents_metrics``, 2025 sim-agents configuration): which objects
each feature covers, the box geometry, the thresholds and what happens at the
ends of the window. Differences made on purpose are listed at the end.

Notation
--------

| symbol | meaning |
|---|---|
| R | rollouts (1 for the log) |
| A | agent rows |
| T | steps of the window: H history + F future |
| H | history steps (11); step H - 1 is the last history step |
| F | future steps (80); features are returned for these |
| S | light slots |
| B | steps per broad-phase block (``BLOCK_STEPS``) |
| N | flattened queries (agent-steps, pairs or points) |
| DT | step, 0.1 s |
| c_i, θ_i | centre (m) and heading (rad) of agent i at a step |
| L_i, W_i | box length and width (m) |

Frames and units: the map's world frame, shifted to a local origin (a whole
metre near the agents) so that float64 keeps sub-micrometre precision; m, rad,
s. Every feature is ``[R, A, F]`` with a bool mask ``<name>_valid``
``[R, A, F]`` that marks where it is defined.

Features
--------

1. **Kinematics** (all agents). Central differences over the whole window,
   then the future slice: ``speed(t) = |p(t+1) - p(t-1)| / (2 DT)`` with
   ``p = (x, y, z)``; linear acceleration is the central difference of speed;
   angular speed is ``wrap(θ(t+1) - θ(t-1), doubled) / 2 / DT`` (wrapping the
   doubled difference picks the acute rotation, as the official code does);
   angular acceleration applies the same to the per-step angular difference,
   ``/ DT²``. Undefined (NaN, mask False) where a neighbour step is missing:
   at the window's last step for speeds, its last two for accelerations, and
   next to invalid steps.
2. **Distance to the nearest object** (all agents, all partners of any type
   valid at that step). Boxes have rounded corners: each box is its rectangular
   core, shrunk by ``s = 0.35 min(L, W)`` on every side (official
   ``CORNER_ROUNDING_FACTOR`` 0.7), inflated by ``s``. The value is the signed
   distance between the two cores through their Minkowski difference (the
   smallest separating-axis overlap, negated, when they overlap; the nearest
   corner-to-box distance when they do not) minus ``s_i + s_j``. +inf without
   a partner.
3. **Collision**: distance to the nearest object < 0.
4. **Time to collision** (vehicles; partners of any type). Sharp boxes. In the
   frame of vehicle i, object j is *followed* when the longitudinal gap from
   i's front to j's rearmost corner is > 0, the unwrapped heading difference
   ``|θ_j - θ_i|`` is <= 75°, and j overlaps i's straight trail laterally
   (by more than 0.5 m unless the heading difference is <= 10°). The nearest
   followed object (smallest gap, lowest row on ties) gives
   ``TTC = gap / (v_i - v_j)`` when ``v_i > v_j``, capped at 5 s; 5 s without
   one. Speeds are central differences in (x, y); an undefined speed gives 5 s.
5. **Distance to the road edge** (all agents): the largest signed distance of
   the four sharp box corners to the road-edge rings, negative inside the
   drivable area. It equals ``RoadMap.signed_distance_to_road_edge``
   (distance to the nearest ring segment, even-odd inside test), computed in
   float64.
6. **Offroad**: distance to the road edge > 0.
7. **Traffic-light violation** (vehicles). At future step t a vehicle valid at
   t - 1 and t violates light slot g when
   1. g is valid and in ``LightState.STOP`` at t;
   2. its centre crosses g's stop line between t - 1 and t: with ``q`` the
      stop point and ``u`` the unit direction of the approach lane's last
      segment, ``(c(t-1) - q)·u < 0 < (c(t) - q)·u``;
   3. its nearest vehicle lane at t (``LaneKind.DRIVING``, true point-to-
      segment distance, lowest lane index on ties) is g's approach lane or
      g's junction (via) lane, which together are the official code's one
      signal-controlled lane.

Speed
-----

Nothing is approximated: every pruning step below keeps whatever can change
a result.

1. Broad phase (``_broad_phase``, float32 bounds with 1 mm slack). Per block
   of B steps, each agent's centres at valid steps have an axis-aligned box
   (AABB). Partner j is kept for agent i if it can be i's nearest object
   (AABB gap minus the half diagonals ``r_i + r_j`` at most the farthest
   AABB distance to some partner valid all block long), or, for a vehicle i,
   if j's centre AABB comes within ``sqrt(2) r_j`` of the AABB of i's forward
   strip (front edge to ``5 s x speed`` ahead): only such j can be followed
   closer than 5 s, and farther leaders give 5 s anyway. The pairs are then
   expanded to the block's steps where both are valid.
2. Nearest object (``_nearest_object_distance``): per step, a pair survives
   if ``|c_i - c_j| - r_i - r_j`` reaches the agent-step's smallest
   ``|c_i - c_j| - s_i - s_j`` (an upper bound); survivors get their
   separating-axis bound in float32; the exact float64 distance is computed
   for the pair with the smallest bound and for any pair whose bound is
   below that distance.
3. Point-to-segment queries (road edges, lanes) use a two-level cell list
   (``_SegmentCells``) whose candidates provably contain each point's
   nearest segment; inside tests count the ring edges crossed from the cell
   centre, whose side is known from a full even-odd test. Signed distance is
   1-Lipschitz, so box corners that provably cannot be a box's farthest out
   (bounds from their cell centre's value) are skipped.
4. Gathers use ``index_select`` (about 3x faster than advanced indexing on
   CPU) and one ``nonzero`` per mask.

Deliberate differences from the official code
---------------------------------------------

- Values at invalid steps are NaN / False and masked, rather than filled with
  extreme numbers; kinematics next to an invalid step are undefined instead of
  being differenced against the filler.
- Light violations: the nearest lane uses the true point-to-segment distance
  (the official helper adds the projection instead of subtracting it); the
  stop line's direction is the approach lane's last segment (official: the
  lane segment nearest the stop point); the vehicle must be valid at t - 1 as
  well as t.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch

from simgen.types import (
    DT_S,
    NUM_HISTORY_STEPS,
    AgentMeta,
    AgentTrajectory,
    AgentType,
    LightState,
    RoadMap,
    TrafficLights,
)
from simgen.types.geometry import inside_even_odd, point_segment_distance, polyline_segments

FLOAT = torch.float64  # features are computed and returned in float64

# Official constants (interaction_features.py).
CORNER_ROUNDING_FACTOR = 0.7
MAX_TIME_TO_COLLISION_S = 5.0
MAX_HEADING_DIFF_RAD = math.radians(75.0)
MAX_HEADING_DIFF_SMALL_OVERLAP_RAD = math.radians(10.0)
SMALL_OVERLAP_THRESHOLD_M = 0.5

FEATURE_NAMES = (
    "linear_speed", "linear_acceleration", "angular_speed", "angular_acceleration",
    "distance_to_nearest_object", "collision_indication", "time_to_collision",
    "distance_to_road_edge", "offroad_indication", "traffic_light_violation",
)

# Speed (module docstring): broad phase, nearest-object search, cell lists.
BLOCK_STEPS = 10  # broad-phase block length, steps
BOUND_SLACK_M = 1e-3  # slack on the float32 broad-phase bounds, m (far above their rounding error)
ROLLOUT_CHUNK = 4  # rollouts per broad-phase chunk (bounds its [chunk, A, A, blocks] temporaries)
SEARCH_FLOAT = torch.float32  # the nearest-object search runs in float32, its winners in FLOAT
SEARCH_TOLERANCE_M = 1e-3  # pairs within this of the float32 minimum are recomputed (float32 error << this)
COARSE_CELL_M = 16.0  # cell lists: coarse and fine cell sizes (coarse is a multiple of fine)
FINE_CELL_M = 1.0
GRID_PHASE_M = 0.318309886  # odd offset of the cell grid, so cell centres rarely sit on map vertices
DENSE_CELL_TABLE = 1 << 24  # number cells with a dense table up to this many cells in their bounding range
CROP_MARGIN_M = 50.0  # first guess of how far beyond the queries segments can matter (checked, grown if short)

# Corner sign patterns (along the box's x axis, along its y axis) in counter-clockwise order.
_CORNER_SIGNS = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=FLOAT)


def scene_features(roadmap: RoadMap, traj: AgentTrajectory, meta: AgentMeta, lights: TrafficLights, *,
                   history_steps: int = NUM_HISTORY_STEPS) -> dict[str, torch.Tensor]:
    """Per-agent, per-step WOSAC features of a batch of rollouts (module docstring, features 1-7).

    ``traj`` fields are ``[R, A, T]`` with T = history_steps + F; ``meta`` is
    ``[A]``; ``lights`` is ``[S, T]`` (shared by all rollouts) or ``[R, S, T]``.
    Returns ``FEATURE_NAMES`` -> ``[R, A, F]`` (float, or bool for the
    indicators) plus ``<name>_valid`` -> bool ``[R, A, F]``.
    """
    H = history_steps
    if not 1 <= H < traj.num_steps:
        raise ValueError(f"history_steps={H}: needs 1 <= history_steps < T={traj.num_steps} (future steps to score)")
    origin = _local_origin(traj, H)
    x = traj.x.to(FLOAT) - origin[0]  # [R, A, T] local frame, m
    y = traj.y.to(FLOAT) - origin[1]
    valid = traj.valid  # [R, A, T]
    speed, accel, ang_speed, ang_accel = kinematic_features(x, y, traj.z.to(FLOAT), traj.heading.to(FLOAT), valid)
    speed_xy = _planar_speed(x, y, valid)  # [R, A, T] m/s, for time to collision

    fut = slice(H, None)
    boxes = _Boxes(x[..., fut], y[..., fut], traj.heading[..., fut].to(FLOAT),
                   traj.length[..., fut].to(FLOAT), traj.width[..., fut].to(FLOAT))
    valid_f = valid[..., fut]  # [R, A, F]
    is_vehicle = meta.agent_type == AgentType.VEHICLE  # [A]
    distance, ttc = interaction_features(boxes, speed_xy[..., fut], valid_f, is_vehicle)
    road_edge = road_edge_distance(roadmap, boxes, valid_f, origin)
    moving = valid_f & valid[..., H - 1:-1]  # valid at t - 1 and t
    violation = light_violations(roadmap, x[..., H - 1:], y[..., H - 1:], moving & is_vehicle[:, None],
                                 lights, H, origin)

    features = {
        "linear_speed": speed[..., fut], "linear_acceleration": accel[..., fut],
        "angular_speed": ang_speed[..., fut], "angular_acceleration": ang_accel[..., fut],
        "distance_to_nearest_object": distance, "collision_indication": distance < 0,
        "time_to_collision": ttc,
        "distance_to_road_edge": road_edge, "offroad_indication": road_edge > 0,
        "traffic_light_violation": violation,
    }
    masks = {name: features[name].isfinite() for name in FEATURE_NAMES[:4]}
    masks.update(distance_to_nearest_object=valid_f, collision_indication=valid_f,
                 time_to_collision=valid_f & is_vehicle[:, None], distance_to_road_edge=valid_f,
                 offroad_indication=valid_f, traffic_light_violation=moving & is_vehicle[:, None])
    return {**features, **{f"{name}_valid": masks[name] for name in FEATURE_NAMES}}


def _local_origin(traj: AgentTrajectory, history_steps: int) -> torch.Tensor:
    """``[2]`` whole-metre origin near the agents: mean of the centres valid at the last history step."""
    valid = traj.valid[..., history_steps - 1]
    if not valid.any():
        valid = traj.valid
        xs, ys = traj.x[valid], traj.y[valid]
    else:
        xs, ys = traj.x[..., history_steps - 1][valid], traj.y[..., history_steps - 1][valid]
    if xs.numel() == 0:
        return torch.zeros(2, dtype=FLOAT)
    return torch.stack([xs.to(FLOAT).mean(), ys.to(FLOAT).mean()]).round()


# --- 1. kinematics -----------------------------------------------------------

def _central_diff(v: torch.Tensor) -> torch.Tensor:
    """``(v[t+1] - v[t-1]) / 2`` along the last axis, NaN at both ends. ``[..., T] -> [..., T]``."""
    nan = torch.full_like(v[..., :1], math.nan)
    return torch.cat([nan, (v[..., 2:] - v[..., :-2]) / 2, nan], dim=-1)


def _both_neighbours(valid: torch.Tensor) -> torch.Tensor:
    """``valid[t-1] & valid[t+1]``, False at both ends. ``[..., T]``."""
    false = torch.zeros_like(valid[..., :1])
    return torch.cat([false, valid[..., 2:] & valid[..., :-2], false], dim=-1)


def _wrap(angle: torch.Tensor) -> torch.Tensor:
    """Wrap to [-π, π) (the official convention)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def kinematic_features(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, heading: torch.Tensor,
                       valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear speed (m/s), linear acceleration (m/s²), angular speed (rad/s), angular acceleration (rad/s²).

    All arguments and results ``[..., T]``; NaN where undefined (feature 1).
    """
    nan = torch.tensor(math.nan, dtype=x.dtype)
    both = _both_neighbours(valid)
    step = torch.stack([_central_diff(x), _central_diff(y), _central_diff(z)], dim=-1)  # [..., T, 3] m per step
    speed = torch.where(both, torch.linalg.vector_norm(step, dim=-1), nan) / DT_S
    accel = _central_diff(speed) / DT_S
    dh_step = torch.where(both, _wrap(2 * _central_diff(heading)) / 2, nan)  # rad per step
    ang_speed = dh_step / DT_S
    ang_accel = _wrap(2 * _central_diff(dh_step)) / 2 / DT_S ** 2
    return speed, accel, ang_speed, ang_accel


def _planar_speed(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Central-difference speed in (x, y), m/s, NaN where undefined. ``[..., T]``."""
    speed = torch.hypot(_central_diff(x), _central_diff(y)) / DT_S
    return torch.where(_both_neighbours(valid), speed, torch.tensor(math.nan, dtype=x.dtype))


# --- box geometry ------------------------------------------------------------

class _Boxes:
    """Oriented boxes ``[..., F]``: centre (m, local frame), heading (rad), half length and width (m)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, length: torch.Tensor,
                 width: torch.Tensor):
        self.x, self.y, self.heading = x, y, heading
        self.cos, self.sin = torch.cos(heading), torch.sin(heading)
        self.half_length, self.half_width = length / 2, width / 2
        self.half_diagonal = torch.hypot(self.half_length, self.half_width)

    def corners(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n, 4, 2]`` corner positions (m) of the boxes at flat indices ``rows`` of ``[..., F]``."""
        x, y, cos, sin, half_length, half_width = (
            v.reshape(-1).index_select(0, rows)[:, None]
            for v in (self.x, self.y, self.cos, self.sin, self.half_length, self.half_width))
        along, across = _CORNER_SIGNS[:, 0] * half_length, _CORNER_SIGNS[:, 1] * half_width  # [n, 4]
        return torch.stack([x + along * cos - across * sin, y + along * sin + across * cos], dim=-1)


@dataclass(frozen=True)
class BoxShape:
    """Orientation and size (m) of boxes as flat rows ``[N]``: what pair geometry needs."""

    cos: torch.Tensor
    sin: torch.Tensor
    half_length: torch.Tensor
    half_width: torch.Tensor
    shrink: torch.Tensor  # official corner rounding: CORNER_ROUNDING_FACTOR x min(L, W) / 2

    def take(self, index: torch.Tensor) -> BoxShape:
        return BoxShape(**{f.name: _take(getattr(self, f.name), index) for f in fields(self)})

    def to(self, dtype: torch.dtype) -> BoxShape:
        return BoxShape(**{f.name: getattr(self, f.name).to(dtype) for f in fields(self)})


@dataclass(frozen=True)
class BoxRows:
    """``_Boxes`` as flat rows ``[R * A * F]``, one per agent-step (m, rad)."""

    x: torch.Tensor
    y: torch.Tensor
    heading: torch.Tensor
    half_diagonal: torch.Tensor
    shape: BoxShape

    @classmethod
    def of(cls, boxes: _Boxes) -> BoxRows:
        half_length, half_width = boxes.half_length.reshape(-1), boxes.half_width.reshape(-1)
        shape = BoxShape(cos=boxes.cos.reshape(-1), sin=boxes.sin.reshape(-1), half_length=half_length,
                         half_width=half_width, shrink=CORNER_ROUNDING_FACTOR * torch.minimum(half_length, half_width))
        return cls(x=boxes.x.reshape(-1), y=boxes.y.reshape(-1), heading=boxes.heading.reshape(-1),
                   half_diagonal=boxes.half_diagonal.reshape(-1), shape=shape)

    def to(self, dtype: torch.dtype) -> BoxRows:
        return BoxRows(x=self.x.to(dtype), y=self.y.to(dtype), heading=self.heading.to(dtype),
                       half_diagonal=self.half_diagonal.to(dtype), shape=self.shape.to(dtype))


def rounded_box_signed_distance(dx: torch.Tensor, dy: torch.Tensor, box_i: BoxShape,
                                box_j: BoxShape) -> torch.Tensor:
    """Signed distance (m) between boxes i and j with rounded corners (feature 2); negative on overlap.

    ``dx, dy`` ``[N]``: centre of j minus centre of i, m; ``box_i``, ``box_j``:
    their rows. Any float dtype.
    """
    pair = _CorePair(dx, dy, box_i, box_j)
    overlap = pair.overlap()
    gap = torch.minimum(_corner_gap(*pair.j_in_i, pair.cos_d, pair.sin_d, pair.core_j, pair.core_i),
                        _corner_gap(*pair.i_in_j, pair.cos_d, -pair.sin_d, pair.core_i, pair.core_j))
    return torch.where(overlap > 0, -overlap, gap) - box_i.shrink - box_j.shrink


def rounded_box_distance_bound(dx: torch.Tensor, dy: torch.Tensor, box_i: BoxShape,
                               box_j: BoxShape) -> torch.Tensor:
    """Lower bound of ``rounded_box_signed_distance`` (same arguments) from the four separating axes alone.

    Exact when the cores overlap; otherwise the largest gap between their
    projections on an edge normal, which the corner-to-box distance exceeds
    only when the nearest features are two corners.
    """
    return -_CorePair(dx, dy, box_i, box_j).overlap() - box_i.shrink - box_j.shrink


class _CorePair:
    """Boxes i and j shrunk to their rectangular cores (half sizes, m), each in the other's frame."""

    def __init__(self, dx: torch.Tensor, dy: torch.Tensor, i: BoxShape, j: BoxShape):
        self.core_i = (i.half_length - i.shrink, i.half_width - i.shrink)
        self.core_j = (j.half_length - j.shrink, j.half_width - j.shrink)
        self.cos_d, self.sin_d = i.cos * j.cos + i.sin * j.sin, i.cos * j.sin - i.sin * j.cos  # of θj - θi
        self.j_in_i = (dx * i.cos + dy * i.sin, -dx * i.sin + dy * i.cos)  # centre of j in i's frame
        self.i_in_j = (-dx * j.cos - dy * j.sin, dx * j.sin - dy * j.cos)

    def overlap(self) -> torch.Tensor:
        """``[N]`` smallest overlap of the cores' projections on the four edge normals (< 0: separated)."""
        return torch.minimum(_axis_overlap(*self.j_in_i, self.cos_d, self.sin_d, self.core_j, self.core_i),
                             _axis_overlap(*self.i_in_j, self.cos_d, -self.sin_d, self.core_i, self.core_j))


def _axis_overlap(cx: torch.Tensor, cy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  half: tuple[torch.Tensor, torch.Tensor], fixed: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Smaller overlap, on the x and y axes, of a box (centre ``cx, cy`` ``[N]``, rotation, half sizes) and
    an axis-aligned box centred at 0 (half sizes ``fixed``). ``[N]``."""
    (hx, hy), (fx, fy) = half, fixed
    abs_cos, abs_sin = cos.abs(), sin.abs()
    return torch.minimum(fx + hx * abs_cos + hy * abs_sin - cx.abs(), fy + hx * abs_sin + hy * abs_cos - cy.abs())


def _corner_gap(cx: torch.Tensor, cy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                half: tuple[torch.Tensor, torch.Tensor], fixed: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Distance from the nearest corner of a box (as in ``_axis_overlap``) to the axis-aligned box. ``[N]``."""
    (hx, hy), (fx, fy) = half, fixed
    # corners: centre ± (a + b) and ± (a - b), with half axes a = hx (cos, sin) and b = hy (-sin, cos)
    px, py = hx * cos - hy * sin, hx * sin + hy * cos
    mx, my = hx * cos + hy * sin, hx * sin - hy * cos
    nearest = None
    for qx, qy in ((cx + px, cy + py), (cx - px, cy - py), (cx + mx, cy + my), (cx - mx, cy - my)):
        ox, oy = (qx.abs() - fx).clamp_min_(0), (qy.abs() - fy).clamp_min_(0)
        squared = ox * ox + oy * oy
        nearest = squared if nearest is None else torch.minimum(nearest, squared)
    return nearest.sqrt()


def time_to_collision_terms(dx: torch.Tensor, dy: torch.Tensor, yaw_diff: torch.Tensor, box_i: BoxShape,
                            box_j: BoxShape) -> tuple[torch.Tensor, torch.Tensor]:
    """Is j followed by i, and the gap (m) from i's front to j's rearmost corner (feature 4). ``[N]`` each.

    Arguments as in ``rounded_box_signed_distance``, plus ``yaw_diff``
    ``|θ_j - θ_i|`` (rad, unwrapped as in the official code); boxes are sharp.
    """
    abs_cos = (box_i.cos * box_j.cos + box_i.sin * box_j.sin).abs()  # |cos(yaw_diff)|
    abs_sin = (box_i.cos * box_j.sin - box_i.sin * box_j.cos).abs()
    long_offset = box_j.half_length * abs_cos + box_j.half_width * abs_sin  # j's centre to its nearest corner
    lat_offset = box_j.half_length * abs_sin + box_j.half_width * abs_cos
    rel_x = dx * box_i.cos + dy * box_i.sin
    rel_y = -dx * box_i.sin + dy * box_i.cos
    gap = rel_x - box_i.half_length - long_offset
    lateral = rel_y.abs() - box_i.half_width - lat_offset  # < 0: j overlaps i's straight trail
    followed = ((gap > 0) & (yaw_diff <= MAX_HEADING_DIFF_RAD) & (lateral < 0)
                & ((lateral < -SMALL_OVERLAP_THRESHOLD_M) | (yaw_diff <= MAX_HEADING_DIFF_SMALL_OVERLAP_RAD)))
    return followed, gap


# --- 2-4. interaction features -------------------------------------------------

def interaction_features(boxes: _Boxes, speed: torch.Tensor, valid: torch.Tensor,
                         is_vehicle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to the nearest object (m, +inf alone) and time to collision (s) ``[R, A, F]``.

    ``boxes`` and ``speed`` (planar, m/s) ``[R, A, F]``; ``valid`` ``[R, A, F]``;
    ``is_vehicle`` ``[A]``. Values at invalid steps are NaN.
    """
    R, A, F = valid.shape
    size = R * A * F
    flat = BoxRows.of(boxes)
    near, follow = _broad_phase(boxes, speed, valid, is_vehicle)

    distance = _nearest_object_distance(flat, *near, size)

    # Time to collision: pairs inside the ego's forward strip that 5 s at its speed can close.
    fi, fj = follow
    speed = speed.reshape(-1)
    shape_i = flat.shape.take(fi)
    dx, dy = _take(flat.x, fj) - _take(flat.x, fi), _take(flat.y, fj) - _take(flat.y, fi)
    rel_x = dx * shape_i.cos + dy * shape_i.sin
    rel_y = -dx * shape_i.sin + dy * shape_i.cos
    reach_j = _take(flat.half_diagonal, fj)
    keep = ((rel_x > shape_i.half_length) & (rel_x < shape_i.half_length + reach_j + MAX_TIME_TO_COLLISION_S
                                                       * _take(speed, fi))
            & (rel_y.abs() < shape_i.half_width + reach_j))
    fi, fj, dx, dy = _where(keep, fi, fj, dx, dy)
    yaw_diff = (_take(flat.heading, fj) - _take(flat.heading, fi)).abs()
    followed, gap = time_to_collision_terms(dx, dy, yaw_diff, flat.shape.take(fi), flat.shape.take(fj))
    fi, fj, gap = _where(followed, fi, fj, gap)
    best_gap = _scatter_min(gap, fi, size)
    fi, fj = _where(gap == _take(best_gap, fi), fi, fj)
    leader = _scatter_min(fj.to(FLOAT), fi, size)  # agent-step of the leader, lowest on ties
    has_leader = leader.isfinite()
    closing = speed - _take(speed, torch.where(has_leader, leader, 0).long())  # m/s, NaN if a speed is undefined
    ttc = torch.where(has_leader & (closing > 0), (best_gap / closing).clamp(max=MAX_TIME_TO_COLLISION_S),
                      MAX_TIME_TO_COLLISION_S)

    nan = torch.tensor(math.nan, dtype=FLOAT)
    distance = torch.where(valid.reshape(-1), distance, nan)
    ttc = torch.where(valid.reshape(-1), ttc, nan)
    return distance.reshape(R, A, F), ttc.reshape(R, A, F)


def _nearest_object_distance(flat: BoxRows, fi: torch.Tensor, fj: torch.Tensor, size: int) -> torch.Tensor:
    """``[size]`` min over the pairs ``(fi, fj)`` of the rounded-box distance, +inf without a pair.

    1. Search (``SEARCH_FLOAT``): keep a pair if its lower bound
       ``|c_i - c_j| - r_i - r_j`` reaches its agent-step's best upper bound
       ``|c_i - c_j| - s_i - s_j``, then bound the kept pairs by their separating axes.
    2. Exact (``FLOAT``): the pair with the smallest bound, then every pair
       whose bound is below that distance (``SEARCH_TOLERANCE_M`` covers the
       search's rounding); the minimum of these.
    """
    low = flat.to(SEARCH_FLOAT)
    dx, dy = _take(low.x, fj) - _take(low.x, fi), _take(low.y, fj) - _take(low.y, fi)
    centre_distance = torch.hypot(dx, dy)
    upper = centre_distance - _take(low.shape.shrink, fi) - _take(low.shape.shrink, fj)
    lower = centre_distance - _take(low.half_diagonal, fi) - _take(low.half_diagonal, fj)
    fi, fj, dx, dy = _where(lower <= _take(_scatter_min(upper, fi, size), fi) + SEARCH_TOLERANCE_M, fi, fj, dx, dy)
    bound = rounded_box_distance_bound(dx, dy, low.shape.take(fi), low.shape.take(fj)).to(FLOAT)
    smallest = _take(_scatter_min(bound, fi, size), fi)
    first_i, first_j = _where(bound == smallest, fi, fj)
    distance = _scatter_min(_exact_distance(flat, first_i, first_j), first_i, size)
    rest_i, rest_j = _where((bound > smallest) & (bound < _take(distance, fi) + SEARCH_TOLERANCE_M), fi, fj)
    return distance.scatter_reduce(0, rest_i, _exact_distance(flat, rest_i, rest_j), reduce="amin")


def _exact_distance(flat: BoxRows, fi: torch.Tensor, fj: torch.Tensor) -> torch.Tensor:
    return rounded_box_signed_distance(_take(flat.x, fj) - _take(flat.x, fi), _take(flat.y, fj) - _take(flat.y, fi),
                                       flat.shape.take(fi), flat.shape.take(fj))


def _scatter_min(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """``out[k] = min(values[index == k])``, +inf where no value lands. ``[size]``, the dtype of ``values``."""
    out = torch.full((size,), math.inf, dtype=values.dtype)
    return out.scatter_reduce(0, index, values, reduce="amin")


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` for a 1-D ``values`` and any-shaped ``index`` (``index_select``: about 3x faster than
    advanced indexing on CPU)."""
    return values.index_select(0, index.reshape(-1)).reshape(index.shape)


def _where(mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``t[mask]`` for each 1-D tensor, with one ``nonzero``."""
    rows = mask.nonzero()[:, 0]
    return tuple(t.index_select(0, rows) for t in tensors)


def _broad_phase(boxes: _Boxes, speed: torch.Tensor, valid: torch.Tensor,
                 is_vehicle: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The (agent-step, partner-step) pairs that can matter for features 2 and 4.

    Per block of ``BLOCK_STEPS`` steps, with axis-aligned boxes (AABB) of the
    centres at valid steps and r the largest half diagonal in the block:

    1. nearest object: j can be i's nearest only if the AABB gap minus
       ``r_i + r_j`` is at most ``min_k`` (largest AABB-to-AABB distance of a
       partner k valid at every step of the block), an upper bound of the
       nearest centre distance at every step;
    2. time to collision (vehicle i): a followed j closer than 5 s x speed has
       its centre within ``sqrt(2) r_j`` of i's forward strip (front edge to
       ``5 s x speed`` ahead, i's width), so the strip's AABB must reach j's
       centre AABB grown by that much.

    Bounds are float32 with ``BOUND_SLACK_M`` of slack. Returns two pairs of
    flat agent-step indices ``(i, j)`` ``[N]`` (``(r * A + agent) * F + t``),
    for the steps where both are valid.
    """
    R, A, F = valid.shape
    nb = -(-F // BLOCK_STEPS)
    centres = torch.stack([boxes.x, boxes.y], dim=-1)[..., None, :]  # [R, A, F, 1, 2]
    box = _block_aabb(centres, valid, nb)  # x_lo, y_lo, x_hi, y_hi [R, A, nb]
    reach = _pad_blocks(torch.where(valid, boxes.half_diagonal, -math.inf), nb, -math.inf).amax(3).float()
    valid_any = _pad_blocks(valid, nb, False).any(3)  # [R, A, nb]
    valid_all = _pad_blocks(valid, nb, True).all(3)
    vehicles = is_vehicle.nonzero()[:, 0]
    forward = torch.where(speed.isfinite(), speed, 0.0)[:, vehicles] * MAX_TIME_TO_COLLISION_S  # [R, V, F] m
    strip = _block_aabb(_strip_corners(boxes, vehicles, forward), valid[:, vehicles], nb)  # [R, V, nb] each
    others = ~torch.eye(A, dtype=torch.bool)[None, :, :, None]  # [1, A, A, 1]

    near, follow = [], []
    for r0 in range(0, R, ROLLOUT_CHUNK):
        rs = slice(r0, r0 + ROLLOUT_CHUNK)
        ego = [v[rs, :, None] for v in box]  # agents i on axis 1, partners j on axis 2: [r, A, A, nb]
        partner = [v[rs, None] for v in box]
        pair = others & valid_any[rs, :, None] & valid_any[rs, None]
        gap = _aabb_gap(ego, partner)
        span = torch.hypot(torch.maximum(partner[2] - ego[0], ego[2] - partner[0]),
                           torch.maximum(partner[3] - ego[1], ego[3] - partner[1]))  # farthest points
        best_span = torch.where(others & valid_all[rs, None], span, math.inf).amin(2, keepdim=True)
        nearest = gap - reach[rs, :, None] - reach[rs, None] <= best_span + BOUND_SLACK_M
        near.append(_offset(r0, (nearest & pair).nonzero()))
        strip_gap = _aabb_gap([v[rs, :, None] for v in strip], partner)  # [r, V, A, nb]
        followable = (strip_gap <= math.sqrt(2) * reach[rs, None] + BOUND_SLACK_M) & pair[:, vehicles]
        index = _offset(r0, followable.nonzero())
        index[:, 1] = vehicles[index[:, 1]]
        follow.append(index)
    return _pair_steps(torch.cat(near), valid), _pair_steps(torch.cat(follow), valid)


def _offset(r0: int, index: torch.Tensor) -> torch.Tensor:
    """Shift the rollout column of ``nonzero()`` rows of a chunk starting at rollout ``r0``."""
    index[:, 0] += r0
    return index


def _aabb_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Distance between axis-aligned boxes given as (x_lo, y_lo, x_hi, y_hi), broadcast (0 if they overlap,
    inf if one is empty)."""
    gap_x = torch.maximum(b[0] - a[2], a[0] - b[2]).clamp_min_(0)
    gap_y = torch.maximum(b[1] - a[3], a[1] - b[3]).clamp_min_(0)
    return torch.hypot(gap_x, gap_y)


def _pair_steps(index: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block pairs ``[n, 4]`` (rollout, i, j, block) -> flat agent-steps ``(i, j)`` where both are valid."""
    _, A, F = valid.shape
    r, i, j, block = index.unbind(-1)
    step = torch.arange(BLOCK_STEPS)
    first = block * BLOCK_STEPS
    fi = (((r * A + i) * F + first)[:, None] + step).reshape(-1)  # [n * B]
    fj = (((r * A + j) * F + first)[:, None] + step).reshape(-1)
    inside = ((first[:, None] + step) < F).reshape(-1)  # the last block may be short
    flat_valid = torch.cat([valid.reshape(-1), torch.zeros(BLOCK_STEPS, dtype=torch.bool)])  # room past the end
    return _where(inside & _take(flat_valid, fi) & _take(flat_valid, fj), fi, fj)


def _pad_blocks(v: torch.Tensor, nb: int, fill) -> torch.Tensor:
    """Pad axis 2 (steps) of ``[R, A, F, ...]`` to ``nb * BLOCK_STEPS`` and split it -> ``[R, A, nb, B, ...]``."""
    R, A, F = v.shape[:3]
    pad = torch.full((R, A, nb * BLOCK_STEPS - F, *v.shape[3:]), fill, dtype=v.dtype)
    return torch.cat([v, pad], dim=2).reshape(R, A, nb, BLOCK_STEPS, *v.shape[3:])


def _block_aabb(points: torch.Tensor, valid: torch.Tensor, nb: int) -> list[torch.Tensor]:
    """AABB per block of ``points`` ``[R, A, F, P, 2]`` at valid steps: float32 x_lo, y_lo, x_hi, y_hi
    ``[R, A, nb]`` (lo +inf and hi -inf where no step is valid)."""
    R, A = valid.shape[:2]
    mask = valid[..., None, None]
    lo = _pad_blocks(torch.where(mask, points, math.inf), nb, math.inf).reshape(R, A, nb, -1, 2).amin(3).float()
    hi = _pad_blocks(torch.where(mask, points, -math.inf), nb, -math.inf).reshape(R, A, nb, -1, 2).amax(3).float()
    return [lo[..., 0], lo[..., 1], hi[..., 0], hi[..., 1]]


def _strip_corners(boxes: _Boxes, rows: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """``[R, V, F, 4, 2]`` corners of the strip of agents ``rows`` from the box front to ``forward`` m ahead."""
    half_length, half_width = boxes.half_length[:, rows], boxes.half_width[:, rows]  # [R, V, F]
    front = half_length[..., None] + torch.stack([torch.zeros_like(forward), forward], dim=-1)  # [R, V, F, 2]
    along = torch.cat([front, front], dim=-1)  # [R, V, F, 4]
    across = half_width[..., None] * torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=FLOAT)
    cos, sin = boxes.cos[:, rows, :, None], boxes.sin[:, rows, :, None]
    return torch.stack([boxes.x[:, rows, :, None] + along * cos - across * sin,
                        boxes.y[:, rows, :, None] + along * sin + across * cos], dim=-1)


# --- 5-6. road edge ------------------------------------------------------------

def road_edge_distance(roadmap: RoadMap, boxes: _Boxes, valid: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """Largest signed distance (m) of the box corners to the road edge, NaN at invalid steps. ``[R, A, F]``.

    Signed distance is 1-Lipschitz, so a corner p in a cell with centre c lies
    within ``|p - c|`` of the centre's value; corners whose upper bound is below
    another corner's lower bound cannot be the largest and are not computed.
    """
    a, b = (s.to(FLOAT) - origin for s in roadmap.road_edge_segments)  # [M, 2]
    if len(a) == 0:
        raise ValueError(f"RoadMap {roadmap.name!r}: no road-edge segments, so no distance to the road edge")
    out = torch.full((valid.numel(),), math.nan, dtype=FLOAT)
    boxes_at = valid.reshape(-1).nonzero()[:, 0]  # [N] valid agent-steps
    if not len(boxes_at):
        return out.reshape(valid.shape)
    corners = boxes.corners(boxes_at).reshape(-1, 2)  # [4N, 2] local frame
    cells = _SegmentCells(corners, a, b, inside=True)
    offset = corners - cells.centre.index_select(0, cells.cell_of_point)
    slack = torch.hypot(offset[:, 0], offset[:, 1]) + SEARCH_TOLERANCE_M
    estimate = cells.centre_signed.index_select(0, cells.cell_of_point)  # [4N]
    highest = (estimate - slack).reshape(-1, 4).amax(-1, keepdim=True)  # [N, 1] a sure lower bound of the max
    rows = ((estimate + slack).reshape(-1, 4) >= highest).reshape(-1).nonzero()[:, 0]
    signed = torch.full((len(corners),), -math.inf, dtype=FLOAT)
    signed.index_copy_(0, rows, cells.signed_distance(corners, rows))
    out.index_copy_(0, boxes_at, signed.reshape(-1, 4).amax(-1))
    return out.reshape(valid.shape)


def signed_distance_to_rings(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance (m) from ``points`` ``[N, 2]`` to the ring segments ``a, b`` ``[M, 2]``, negative inside (even-odd).

    Equals ``RoadMap.signed_distance_to_road_edge`` for the same segments.
    """
    if points.shape[0] == 0:
        return torch.zeros(0, dtype=FLOAT)
    return _SegmentCells(points, a, b, inside=True).signed_distance(points, torch.arange(len(points)))


class Segments:
    """Segments as gatherable columns ``[M]``: start (m), direction = end - start (m), 1 / |direction|² (0 if
    degenerate). A hot-loop form of ``simgen.types.geometry.point_segment_distance`` (same formula)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        d = b - a
        length2 = (d * d).sum(-1)
        self.ax, self.ay = a[:, 0].contiguous(), a[:, 1].contiguous()
        self.dx, self.dy = d[:, 0].contiguous(), d[:, 1].contiguous()
        self.inv_length2 = torch.where(length2 > 0, 1 / length2, 0.0)

    def __len__(self) -> int:
        return len(self.ax)

    def squared_distance(self, px: torch.Tensor, py: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Squared distance (m²) from points ``px, py`` (broadcastable to ``index``) to the segments ``index``."""
        dx, dy = _take(self.dx, index), _take(self.dy, index)
        apx, apy = px - _take(self.ax, index), py - _take(self.ay, index)
        t = ((apx * dx + apy * dy) * _take(self.inv_length2, index)).clamp_(0, 1)
        ex, ey = apx - t * dx, apy - t * dy
        return ex * ex + ey * ey

    def crossings(self, p0: torch.Tensor, p1: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """How many of the segments ``index`` ``[N, K]`` the path ``p0 -> p1`` ``[N, 2]`` crosses. ``[N]``.

        An endpoint exactly on a line counts on its non-positive side, so a path
        through a shared vertex counts once, consistently.
        """
        wx, wy = (p1 - p0)[:, :1], (p1 - p0)[:, 1:]  # path, [N, 1]
        dx, dy = _take(self.dx, index), _take(self.dy, index)
        rax, ray = _take(self.ax, index) - p0[:, :1], _take(self.ay, index) - p0[:, 1:]  # segment start from p0
        start_left = wx * ray - wy * rax > 0
        end_left = wx * (ray + dy) - wy * (rax + dx) > 0
        p0_left = dy * rax - dx * ray > 0
        p1_left = dx * (wy - ray) - dy * (wx - rax) > 0
        return ((start_left != end_left) & (p0_left != p1_left)).sum(-1)


class _SegmentCells:
    """Exact candidate segments for the query points, from a two-level cell list.

    For a cell with centre c and half diagonal h, every point p in it has
    ``min_s d(p, s) <= min_s d(c, s) + h`` and ``d(p, s) >= d(c, s) - h``, so
    the segments with ``d(c, s) <= min_s d(c, s) + 2h`` contain the nearest
    segment of every point of the cell, and every segment crossing the cell
    (``d(c, s) <= h``). Coarse cells take candidates from the segments near
    the queries (a crop checked against the same bound), fine cells from their
    coarse cell's candidates. Candidates stay in segment order, padded with a
    far, degenerate sentinel segment; ``inside`` (optional) holds the even-odd
    side of every fine-cell centre, from its coarse cell's centre (full
    even-odd test) and the edges crossed in between.

    Fields: ``segments`` (the kept segments, sentinel last); ``original``
    ``[M' + 1]`` the caller's index of each; ``centre`` ``[C, 2]``;
    ``candidates`` ``[C, K]`` and ``count`` ``[C]``; ``cell_of_point`` ``[N]``;
    ``inside`` ``[C]`` bool or None.
    """

    def __init__(self, points: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, inside: bool):
        ratio = round(COARSE_CELL_M / FINE_CELL_M)
        grid_origin = points.amin(0) - GRID_PHASE_M
        fine_ij, self.cell_of_point = _number_cells(torch.floor((points - grid_origin) / FINE_CELL_M).long())
        coarse_ij, coarse_of_fine = _number_cells(torch.div(fine_ij, ratio, rounding_mode="floor"))
        coarse_centre = grid_origin + (coarse_ij + 0.5) * COARSE_CELL_M
        self.centre = grid_origin + (fine_ij + 0.5) * FINE_CELL_M
        coarse_half = COARSE_CELL_M / math.sqrt(2)
        fine_half = FINE_CELL_M / math.sqrt(2)

        kept = _crop(a, b, points, coarse_centre, coarse_half)
        sentinel = torch.full((1, 2), 1e9, dtype=FLOAT)
        self.segments = Segments(torch.cat([a[kept], sentinel]), torch.cat([b[kept], sentinel]))
        self.original = torch.cat([kept, torch.tensor([-1])])
        everything = torch.arange(len(kept)).expand(len(coarse_centre), -1)
        coarse, _ = self._refine(coarse_centre, coarse_half, everything)  # [Cc, Kc]
        self.candidates, centre_distance = self._refine(self.centre, fine_half, coarse[coarse_of_fine])  # [C, K]
        self.count = (self.candidates != len(kept)).sum(-1)  # >= 1: the nearest segment
        self.inside = self.centre_signed = None
        if inside:
            coarse_inside = _inside_chunked(coarse_centre, a, b)  # every segment: even-odd needs the whole ring
            crossed = self.segments.crossings(coarse_centre[coarse_of_fine], self.centre, coarse[coarse_of_fine])
            self.inside = coarse_inside[coarse_of_fine] ^ (crossed % 2 == 1)
            self.centre_signed = torch.where(self.inside, -centre_distance, centre_distance)

    def _refine(self, centre: torch.Tensor, half_diagonal: float,
                candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the candidates within ``min + 2 x half_diagonal`` of each cell centre, compacted ``[C, K']``;
        and the centres' distance to their nearest segment ``[C]``."""
        d = self.segments.squared_distance(centre[:, :1], centre[:, 1:], candidates).sqrt()  # [C, K]
        nearest = d.amin(-1)
        keep = d <= nearest[:, None] + 2 * half_diagonal
        width = int(keep.sum(-1).max())
        order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[:, :width]
        return torch.where(keep.gather(1, order), candidates.gather(1, order), len(self.segments) - 1), nearest

    def signed_distance(self, points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Signed distance (m) of the query points ``points[rows]``, negative inside (even-odd). ``[n]``.

        The disc of radius d(p) around a point holds no edge: if it reaches the
        cell centre, both are on the same side; otherwise the edges crossed on
        the way from the centre are counted.
        """
        distance, _ = self.nearest(points, rows)
        xy = points.index_select(0, rows)
        cell = self.cell_of_point.index_select(0, rows)
        centre = self.centre.index_select(0, cell)
        inside = self.inside.index_select(0, cell)
        offset = xy - centre
        far = (torch.hypot(offset[:, 0], offset[:, 1]) >= distance).nonzero()[:, 0]
        for group, candidates in self.candidate_groups(far, cell.index_select(0, far)):
            crossed = self.segments.crossings(centre.index_select(0, group), xy.index_select(0, group), candidates)
            inside.index_copy_(0, group, inside.index_select(0, group) ^ (crossed % 2 == 1))
        return torch.where(inside, -distance, distance)

    def candidate_groups(self, rows: torch.Tensor, cell: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Queries ``rows`` (in cells ``cell``) grouped by candidate count, with their candidates ``[n, width]``.

        Widths are powers of two, so padding costs at most twice the real work.
        """
        count = self.count.index_select(0, cell)
        low, width = 0, 1
        while rows.numel() and low < int(count.max()):
            group_rows, group_cells = _where((count > low) & (count <= width), rows, cell)
            if group_rows.numel():
                yield group_rows, self.candidates[:, :width].index_select(0, group_cells)
            low, width = width, 2 * width

    def nearest(self, points: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance (m) to and index (into the caller's segments) of the nearest segment of ``points[rows]``,
        lowest index on ties. ``[n]`` each."""
        distance = torch.empty(len(rows), dtype=FLOAT)
        segment = torch.empty(len(rows), dtype=torch.long)
        cell = self.cell_of_point.index_select(0, rows)
        for group, candidates in self.candidate_groups(torch.arange(len(rows)), cell):
            xy = points.index_select(0, rows.index_select(0, group))
            squared = self.segments.squared_distance(xy[:, :1], xy[:, 1:], candidates)  # [n, width]
            best, k = squared.min(-1)
            distance.index_copy_(0, group, best.sqrt())
            segment.index_copy_(0, group, candidates.gather(1, k[:, None])[:, 0])
        return distance, self.original.index_select(0, segment)


def _crop(a: torch.Tensor, b: torch.Tensor, points: torch.Tensor, coarse_centre: torch.Tensor,
          coarse_half: float) -> torch.Tensor:
    """Indices of the segments within a margin of the queries' bounding box, grown until provably enough."""
    lo, hi = points.amin(0), points.amax(0)
    seg_lo, seg_hi = torch.minimum(a, b), torch.maximum(a, b)
    margin = CROP_MARGIN_M
    while True:
        kept = ((seg_hi >= lo - margin) & (seg_lo <= hi + margin)).all(-1).nonzero()[:, 0]
        if len(kept) == len(a):
            return kept
        nearest = point_segment_distance(coarse_centre, a[kept], b[kept]).amin(-1) if len(kept) else None
        # A coarse cell's candidates lie within min + 3 x half diagonal of the bounding box.
        needed = math.inf if nearest is None else float((nearest + 3 * coarse_half).max())
        if needed <= margin:
            return kept
        margin = needed


def _inside_chunked(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Even-odd inside test of ``points`` ``[N, 2]`` against all ring segments, in chunks. ``[N]`` bool."""
    return torch.cat([inside_even_odd(points[k:k + chunk], a, b) for k in range(0, len(points), chunk)])


def _number_cells(ij: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct cells of the points' cell indices ``ij`` ``[N, 2]`` (non-negative), in (i, j) order.

    Returns the cells ``[C, 2]`` and each point's cell ``[N]``. A dense table
    over the cells' bounding range numbers them when it is small; else a sort.
    """
    rows = int(ij[:, 1].max()) + 1
    key = ij[:, 0] * rows + ij[:, 1]
    span = (int(ij[:, 0].max()) + 1) * rows
    if span > DENSE_CELL_TABLE:
        keys, cell_of_point = torch.unique(key, return_inverse=True)
    else:
        used = torch.zeros(span, dtype=torch.bool)
        used[key] = True
        cell_of_point = (used.cumsum(0) - 1)[key]
        keys = used.nonzero()[:, 0]
    return torch.stack([torch.div(keys, rows, rounding_mode="floor"), keys % rows], dim=-1), cell_of_point




# --- 7. traffic-light violations ------------------------------------------------

def light_violations(roadmap: RoadMap, x: torch.Tensor, y: torch.Tensor, moving: torch.Tensor,
                     lights: TrafficLights, history_steps: int, origin: torch.Tensor,
                     lanes: torch.Tensor | None = None) -> torch.Tensor:
    """Red-light violations (feature 7) ``[R, A, F]`` bool.

    ``x, y`` ``[R, A, F + 1]`` local centres from the last history step on;
    ``moving`` ``[R, A, F]``: vehicles valid at t - 1 and t; ``lights``
    ``[S, T]`` or ``[R, S, T]``; ``lanes``: the driving lanes that can be
    nearest to the centres (``nearest_vehicle_lane``; all of them by default).
    """
    R, A, F = moving.shape
    out = torch.zeros(R, A, F, dtype=torch.bool)
    fut = slice(history_steps, None)
    shape = (1 if lights.state.ndim == 2 else R, lights.num_slots, F)  # [R', S, F], R' = 1 or R
    stop = (lights.valid[..., fut] & (lights.state[..., fut] == LightState.STOP)).reshape(shape)
    if not stop.any() or not moving.any():
        return out
    signal = lights.signal_id[..., fut].long().reshape(shape)
    approach = lights.lane_id[..., fut].long().reshape(shape)
    via = roadmap.signal_via_lane.long()[signal]
    stop_xy = torch.stack([lights.stop_x[..., fut], lights.stop_y[..., fut]], dim=-1).reshape(*stop.shape, 2)
    stop_xy = stop_xy.to(FLOAT) - origin

    r, a, t = moving.nonzero().unbind(-1)  # candidate vehicle-steps
    now = torch.stack([x[r, a, t + 1], y[r, a, t + 1]], dim=-1)  # [N, 2]
    lane = nearest_vehicle_lane(roadmap, now, origin, lanes)  # [N]
    controlled = torch.zeros(roadmap.num_lanes + 1, dtype=torch.bool)  # index -1 (no via lane) lands last
    controlled[approach[stop]] = True
    controlled[via[stop]] = True
    controlled[-1] = False
    on = controlled[lane]
    r, a, t, now, lane = r[on], a[on], t[on], now[on], lane[on]
    rl = r if stop.shape[0] == R else torch.zeros_like(r)
    on_slot = stop[rl, :, t] & ((approach[rl, :, t] == lane[:, None]) | (via[rl, :, t] == lane[:, None]))  # [n, S]
    k, g = on_slot.nonzero().unbind(-1)  # (vehicle-step, slot) pairs
    r, a, t, rl, now = r[k], a[k], t[k], rl[k], now[k]
    before = torch.stack([x[r, a, t], y[r, a, t]], dim=-1)
    q, u = stop_xy[rl, g, t], roadmap.lane_end_direction[approach[rl, g, t]]  # [m, 2]
    crossed = (((before - q) * u).sum(-1) < 0) & (((now - q) * u).sum(-1) > 0)
    out[r[crossed], a[crossed], t[crossed]] = True
    return out


def nearest_vehicle_lane(roadmap: RoadMap, points: torch.Tensor, origin: torch.Tensor,
                         lanes: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest ``LaneKind.DRIVING`` lane of each point ``[N, 2]`` (local frame), among ``lanes``
    (lane indices; all driving lanes by default). ``[N]``."""
    if lanes is None:
        lanes = roadmap.vehicle_lanes.nonzero()[:, 0]
    xy, point_valid = roadmap.lane_xy[lanes].to(FLOAT) - origin, roadmap.lane_point_valid[lanes]
    a, b = polyline_segments(xy, point_valid)  # [M, 2], lane by lane
    lane_of_segment = lanes[:, None].expand_as(point_valid)[:, :-1][point_valid[:, :-1] & point_valid[:, 1:]]
    if points.shape[0] == 0 or len(a) == 0:
        return torch.full((points.shape[0],), -1, dtype=torch.long)
    _, segment = _SegmentCells(points, a, b, inside=False).nearest(points, torch.arange(len(points)))
    return lane_of_segment[segment]
