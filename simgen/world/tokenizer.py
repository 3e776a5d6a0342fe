"""Scene <-> tensors for the world model: agents x frames, lights x frames, and map polylines, AV-centric.

The world model sees a short clip around the *current* step c: context frames
at ``HISTORY_OFFSETS`` (c - 10 ... c, clean, always given) and a future window
of W frames c + 1 ... c + W that it denoises. Coordinates are in the frame of
the AV at c (x forward, y left) and scaled to about unit size.

Notation
--------

| symbol | meaning |
|---|---|
| B | scenes in a batch |
| A | agent slots; S light slots; M map polylines of P points |
| T | frames: ``len(HISTORY_OFFSETS)`` context frames, then W future frames |
| c | the current step; ``pose`` = AV (x, y, heading) at c, world frame (m, rad) |

Channels
--------

Agents ``[.., A, T, AGENT_CHANNELS]`` (all diffused):

| # | channel | encoding |
|---|---|---|
| 0 | valid | +1 valid, -1 not |
| 1, 2 | x, y | AV frame, relative to the agent's reference line, m / ``DELTA_SCALE_M`` |
| 3, 4 | sin, cos of heading | AV frame |
| 5, 6, 7 | length, width, height | ``(size - SIZE_MEAN_M) / SIZE_SCALE_M`` |
| 8, 9, 10 | vehicle, pedestrian, cyclist | one-hot, +1 / -1 |

Features at invalid frames are 0 (SceneDiffuser++: only validity is defined there).

Positions are relative to each agent's *reference line*: the constant-velocity
extrapolation through its *anchor*, ``ref(k) = anchor + velocity · k · DT_S``
for the clip frame at step offset k. The anchor is the agent's AV-frame
position at the current step (the last context frame) and the velocity its
displacement from the frame before, if it is valid at both (else velocity 0,
and anchor the AV-frame origin if it is not valid now). A parked car's clip
and a car cruising at constant speed are then exactly 0, and the model learns
only the deviations: turning, braking, accelerating. An undertrained model's
outputs shrink toward 0, which now means "keep going" rather than "stop"
(measured on held-out berlin with anchor-relative positions at step 2,000:
agents 1.6 s ahead came out at 86 % of their true displacement, with a
4.3 m final error where constant velocity has 1.4 m). Anchor and velocity are
inputs (``agent_condition``: anchor / ``POS_SCALE_M``, whether the agent has
an anchor, and velocity / ``SPEED_SCALE_MPS``).

Lights ``[.., S, T, LIGHT_CHANNELS]`` (diffused): stop, caution, go, one-hot
+1 / -1; 0 where the state is unknown. Their validity and position are given
(the map fixes the slots): ``light_cond [.., S, 4]`` = stop point x, y
(scaled) and the approach direction's sin, cos, AV frame.

Map polylines ``[.., M, P, MAP_FEATURES]``: per point x, y (scaled, AV frame)
and the unit direction to the next point; per polyline a one-hot of
``POLYLINE_KINDS``, the width and speed limit (scaled). Polylines are the
map's lanes, road-edge rings and crosswalks cut into pieces of at most
``PIECE_M`` and resampled to P points (``MapBank``, built once per map); a
scene takes the ``MAX_POLYLINES`` pieces nearest the AV within ``MAP_RADIUS_M``.

The inverse (``decode_agents``) maps back to world-frame boxes exactly, up to
float rounding (round-trip test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from simgen.types import AgentType, LaneKind, LightState, RoadMap

HISTORY_OFFSETS = (-10, -5, -2, -1, 0)  # context frames, steps relative to the current step
POS_SCALE_M = 40.0  # absolute AV-frame positions (anchors, lights, map)
DELTA_SCALE_M = 5.0  # agents' positions relative to their reference lines
AGENT_COND = 5  # anchor x, y (/ POS_SCALE_M), anchored flag, velocity x, y (/ SPEED_SCALE_MPS)
DT_S = 0.1  # simulation step
RESIDUAL_RMS_M = 0.014  # positions relative to the reference line, 0.1 s from the present (``position_scale``)
RESIDUAL_GROWTH = 1.5
SIZE_MEAN_M = torch.tensor([4.0, 1.6, 1.6])  # length, width, height
SIZE_SCALE_M = torch.tensor([4.0, 0.8, 1.0])
AGENT_TYPES = (AgentType.VEHICLE, AgentType.PEDESTRIAN, AgentType.CYCLIST)
AGENT_CHANNELS = 11
VALID, X, Y, SIN, COS = 0, 1, 2, 3, 4
SIZE = slice(5, 8)
TYPE = slice(8, 11)
LIGHT_STATES = (LightState.STOP, LightState.CAUTION, LightState.GO)
LIGHT_CHANNELS = 3
LIGHT_COND = 4
POLYLINE_KINDS = ("driving", "bike", "sidewalk", "crossing", "walkingarea", "road_edge", "crosswalk")
MAP_FEATURES = 4 + len(POLYLINE_KINDS) + 2
POINTS_PER_POLYLINE = 8
PIECE_M = 24.0
MAP_RADIUS_M = 80.0
MAX_POLYLINES = 128
SPEED_SCALE_MPS = 15.0
WIDTH_SCALE_M = 4.0


# --- frames ---------------------------------------------------------------------

def to_local(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor,
             pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World-frame (x, y, heading) -> frame of ``pose`` ``[.., 3]`` (broadcast over trailing axes of x)."""
    px, py, ph = (pose[..., k].reshape(pose.shape[:-1] + (1,) * (x.ndim - pose.ndim + 1)) for k in range(3))
    cos, sin = torch.cos(ph), torch.sin(ph)
    dx, dy = x - px, y - py
    return dx * cos + dy * sin, -dx * sin + dy * cos, heading - ph


def to_world(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor,
             pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``to_local``."""
    px, py, ph = (pose[..., k].reshape(pose.shape[:-1] + (1,) * (x.ndim - pose.ndim + 1)) for k in range(3))
    cos, sin = torch.cos(ph), torch.sin(ph)
    return px + x * cos - y * sin, py + x * sin + y * cos, heading + ph


def wrap(angle: torch.Tensor) -> torch.Tensor:
    return torch.atan2(torch.sin(angle), torch.cos(angle))


# --- agents ----------------------------------------------------------------------

def agent_anchor(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, pose: torch.Tensor,
                 current: int) -> torch.Tensor:
    """Anchors ``[.., A, 2]`` (AV frame of ``pose``, m): each agent's position at frame ``current`` of
    ``x, y, valid`` ``[.., A, T]`` (world frame), or 0 where it is not valid there."""
    lx, ly, _ = to_local(x[..., current:current + 1], y[..., current:current + 1],
                         torch.zeros_like(x[..., current:current + 1]), pose)
    anchor = torch.cat([lx, ly], dim=-1)
    return torch.where(valid[..., current:current + 1], anchor, 0.0)


def agent_velocity(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, pose: torch.Tensor,
                   current: int, entry: torch.Tensor | None = None) -> torch.Tensor:
    """Velocities ``[.., A, 2]`` (AV frame of ``pose``, m/s): each agent's displacement from frame
    ``current - 1`` to ``current`` of ``x, y, valid`` ``[.., A, T]`` (world frame, consecutive steps there).
    An agent valid at ``current`` only (it just entered) has its ``entry [.., A, 2]`` velocity (world frame, m/s;
    the log's, or the one the sampler entered it with), or 0 where that is NaN or not given."""
    both = valid[..., current - 1:current + 1].all(-1, keepdim=True)
    dx, dy = x[..., current] - x[..., current - 1], y[..., current] - y[..., current - 1]
    cos, sin = torch.cos(pose[..., 2:3]), torch.sin(pose[..., 2:3])
    velocity = torch.stack([dx * cos + dy * sin, -dx * sin + dy * cos], dim=-1) / DT_S
    entered = torch.zeros_like(velocity)
    if entry is not None:
        entry = entry.to(velocity.dtype).nan_to_num(0.0)
        entered = torch.stack([entry[..., 0] * cos + entry[..., 1] * sin,
                               -entry[..., 0] * sin + entry[..., 1] * cos], dim=-1)
    fresh = valid[..., current:current + 1] & ~both
    return torch.where(both, velocity, torch.where(fresh, entered, 0.0))


def reference(anchor: torch.Tensor, velocity: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Reference lines ``[.., A, T, 2]`` (AV frame, m) at step ``offsets [T]`` from anchors and velocities
    ``[.., A, 2]`` (module docstring)."""
    return anchor[..., None, :] + velocity[..., None, :] * (offsets.to(anchor.dtype) * DT_S)[:, None]


def agent_condition(anchor: torch.Tensor, velocity: torch.Tensor, anchored: torch.Tensor) -> torch.Tensor:
    """The denoiser's per-agent condition ``[.., A, AGENT_COND]`` from anchors (m), velocities (m/s) and flags."""
    return torch.cat([anchor / POS_SCALE_M, anchored[..., None].to(anchor.dtype), velocity / SPEED_SCALE_MPS],
                     dim=-1).float()


def position_scale(offsets: torch.Tensor) -> torch.Tensor:
    """``[T]`` typical size (RMS, channel units) of positions relative to the reference line at step
    ``offsets``: ``RESIDUAL_RMS_M · max(|k|, 1) ** RESIDUAL_GROWTH`` (fit to the training corpus: RMS 3.9 cm
    at k = 2, 0.26 m at 8, 0.88 m at 16). The data scale σ_d of those channels (``simgen.world.diffusion``)."""
    return RESIDUAL_RMS_M * offsets.abs().clamp_min(1).double() ** RESIDUAL_GROWTH / DELTA_SCALE_M


def sigma_data(agent_cond: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per-element data scale ``[B, A, T, AGENT_CHANNELS]`` of agent channels: ``position_scale`` for the
    positions of anchored agents, 1 elsewhere (unanchored positions are absolute, in the AV frame)."""
    out = torch.ones(*agent_cond.shape[:-1], len(offsets), AGENT_CHANNELS, device=agent_cond.device)
    anchored = agent_cond[..., 2:3] > 0.5  # [B, A, 1]
    out[..., X:Y + 1] = torch.where(anchored, position_scale(offsets).float(), 1.0)[..., None]
    return out


def condition_reference(agent_cond: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Reference lines ``[.., A, T, 2]`` (m) of a batch's ``agent_condition``s (the inverse of its scaling)."""
    return reference(agent_cond[..., :2] * POS_SCALE_M, agent_cond[..., 3:5] * SPEED_SCALE_MPS, offsets)


def encode_agents(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, size: torch.Tensor,
                  agent_type: torch.Tensor, valid: torch.Tensor, pose: torch.Tensor,
                  ref: torch.Tensor) -> torch.Tensor:
    """Boxes -> agent channels ``[.., A, T, AGENT_CHANNELS]``.

    ``x, y, heading, valid`` ``[.., A, T]`` world frame (m, rad); ``size``
    ``[.., A, T, 3]`` length, width, height (m); ``agent_type`` ``[.., A]``
    ``AgentType``; ``pose`` ``[.., 3]``; ``ref`` ``[.., A, T, 2]`` reference lines (AV frame, m).
    """
    lx, ly, lh = to_local(x, y, heading, pose)
    lx, ly = lx - ref[..., 0], ly - ref[..., 1]
    one_hot = torch.stack([agent_type == t for t in AGENT_TYPES], dim=-1).float() * 2 - 1  # [.., A, 3]
    out = torch.cat([
        lx[..., None] / DELTA_SCALE_M, ly[..., None] / DELTA_SCALE_M, torch.sin(lh)[..., None],
        torch.cos(lh)[..., None],
        (size - SIZE_MEAN_M) / SIZE_SCALE_M, one_hot[..., None, :].expand(*lx.shape, 3)], dim=-1)
    out = torch.where(valid[..., None], out, 0.0)
    return torch.cat([valid[..., None].float() * 2 - 1, out], dim=-1).float()


@dataclass(frozen=True)
class DecodedAgents:
    """Agent channels back in the world frame. Fields ``[.., A, T]`` (``size`` ``[.., A, T, 3]``)."""

    x: torch.Tensor  # m, world frame
    y: torch.Tensor
    heading: torch.Tensor  # rad, wrapped
    size: torch.Tensor  # m: length, width, height (>= 0.2)
    agent_type: torch.Tensor  # int8 AgentType (argmax of the one-hot)
    valid: torch.Tensor  # bool: valid channel > 0


def local_positions(channels: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """AV-frame positions (m) ``[.., A, T, 2]`` of agent channels with reference lines ``ref [.., A, T, 2]``."""
    return channels[..., X:Y + 1].double() * DELTA_SCALE_M + ref.double()


def decode_agents(channels: torch.Tensor, pose: torch.Tensor, ref: torch.Tensor) -> DecodedAgents:
    """Inverse of ``encode_agents`` (types by argmax, validity by sign, sizes at least 0.2 m)."""
    local = local_positions(channels, ref)
    lx, ly = local[..., 0], local[..., 1]
    lh = torch.atan2(channels[..., SIN], channels[..., COS])
    x, y, heading = to_world(lx, ly, lh, pose)
    size = (channels[..., SIZE] * SIZE_SCALE_M + SIZE_MEAN_M).clamp_min(0.2)
    type_index = channels[..., TYPE].argmax(-1)
    agent_type = torch.tensor([int(t) for t in AGENT_TYPES], dtype=torch.int8)[type_index]
    return DecodedAgents(x=x, y=y, heading=wrap(heading), size=size, agent_type=agent_type,
                         valid=channels[..., VALID] > 0)


# --- lights ----------------------------------------------------------------------

def encode_light_states(state: torch.Tensor) -> torch.Tensor:
    """``LightState`` ``[.., S, T]`` -> ``[.., S, T, LIGHT_CHANNELS]`` (+1 / -1 one-hot, 0 where unknown)."""
    one_hot = torch.stack([state == s for s in LIGHT_STATES], dim=-1).float() * 2 - 1
    return torch.where((state != LightState.UNKNOWN)[..., None], one_hot, 0.0)


def decode_light_states(channels: torch.Tensor) -> torch.Tensor:
    """``[.., S, T, LIGHT_CHANNELS]`` -> int8 ``LightState`` by argmax."""
    return torch.tensor([int(s) for s in LIGHT_STATES], dtype=torch.int8)[channels.argmax(-1)]


def light_condition(stop_x: torch.Tensor, stop_y: torch.Tensor, approach_heading: torch.Tensor,
                    pose: torch.Tensor) -> torch.Tensor:
    """Stop points ``[.., S]`` (m) and approach directions (rad) -> ``[.., S, LIGHT_COND]`` in the AV frame."""
    lx, ly, lh = to_local(stop_x, stop_y, approach_heading, pose)
    return torch.stack([lx / POS_SCALE_M, ly / POS_SCALE_M, torch.sin(lh), torch.cos(lh)], dim=-1).float()


def approach_heading(roadmap: RoadMap) -> torch.Tensor:
    """``[G]`` direction (rad) of each light slot's approach lane at its stop point."""
    lanes = roadmap.signal_lane.long()
    xy, valid = roadmap.lane_xy[lanes], roadmap.lane_point_valid[lanes]
    last = valid.sum(-1).long() - 1
    rows = torch.arange(len(lanes))
    d = xy[rows, last] - xy[rows, (last - 1).clamp_min(0)]
    return torch.atan2(d[:, 1], d[:, 0])


# --- map ------------------------------------------------------------------------------

@dataclass(frozen=True)
class MapBank:
    """The map's polylines cut into pieces of P points, world frame: built once per map (``map_bank``)."""

    points: torch.Tensor  # [N, P, 2] m
    kind: torch.Tensor  # [N] int64 index into POLYLINE_KINDS
    width_m: torch.Tensor  # [N]
    speed_mps: torch.Tensor  # [N] 0 where not a lane
    centre: torch.Tensor  # [N, 2] m, mean of the points
    radius_m: torch.Tensor  # [N] farthest point from the centre


_LANE_KIND = {LaneKind.DRIVING: 0, LaneKind.BIKE: 1, LaneKind.SIDEWALK: 2, LaneKind.CROSSING: 3,
              LaneKind.WALKINGAREA: 4}


def _pieces(xy: np.ndarray) -> list[np.ndarray]:
    """A polyline ``[n, 2]`` -> pieces of at most ``PIECE_M``, each resampled to P evenly spaced points."""
    step = np.linalg.norm(np.diff(xy, axis=0), axis=-1)
    s = np.concatenate([[0.0], np.cumsum(step)])
    total = float(s[-1])
    if total <= 0:
        return []
    count = max(1, math.ceil(total / PIECE_M))
    out = []
    for k in range(count):
        q = np.linspace(total * k / count, total * (k + 1) / count, POINTS_PER_POLYLINE)
        out.append(np.stack([np.interp(q, s, xy[:, 0]), np.interp(q, s, xy[:, 1])], axis=-1))
    return out


def map_bank(roadmap: RoadMap) -> MapBank:
    """Cut lanes, road-edge rings and crosswalk outlines into ``MapBank`` pieces (about 1 s for berlin)."""
    points, kind, width, speed = [], [], [], []

    def add(polylines: torch.Tensor, valid: torch.Tensor, kinds, widths, speeds) -> None:
        for xy, v, k, w, sp in zip(polylines.double().numpy(), valid.numpy(), kinds, widths, speeds):
            for piece in _pieces(xy[v]):
                points.append(piece)
                kind.append(k)
                width.append(w)
                speed.append(sp)

    lane_kinds = [_LANE_KIND[LaneKind(int(k))] for k in roadmap.lane_kind]
    add(roadmap.lane_xy, roadmap.lane_point_valid, lane_kinds, roadmap.lane_width_m.tolist(),
        roadmap.lane_speed_limit_mps.tolist())
    edges = len(roadmap.road_edge_xy)
    add(roadmap.road_edge_xy, roadmap.road_edge_valid, [5] * edges, [0.0] * edges, [0.0] * edges)
    crossings = len(roadmap.crosswalk_xy)
    add(roadmap.crosswalk_xy, roadmap.crosswalk_valid, [6] * crossings, [0.0] * crossings, [0.0] * crossings)
    pts = torch.from_numpy(np.stack(points)) if points else torch.zeros(0, POINTS_PER_POLYLINE, 2, dtype=torch.float64)
    centre = pts.mean(1)
    radius = (pts - centre[:, None]).norm(dim=-1).amax(-1)
    return MapBank(points=pts, kind=torch.tensor(kind, dtype=torch.long), width_m=torch.tensor(width).float(),
                   speed_mps=torch.tensor(speed).float(), centre=centre, radius_m=radius)


def map_features(bank: MapBank, pose: torch.Tensor,
                 max_polylines: int = MAX_POLYLINES) -> tuple[torch.Tensor, torch.Tensor]:
    """The pieces nearest each pose ``[B, 3]`` -> features ``[B, M, P, MAP_FEATURES]`` and valid ``[B, M]``.

    M = ``min(max_polylines, N)``; pieces farther than ``MAP_RADIUS_M`` (or
    missing) are invalid and zero.
    """
    pose64 = pose.double()
    gap = (bank.centre[None] - pose64[:, None, :2]).norm(dim=-1) - bank.radius_m[None]  # [B, N]
    m = min(max_polylines, len(bank.centre))
    near, index = torch.topk(gap, m, dim=-1, largest=False)  # [B, M]
    valid = near <= MAP_RADIUS_M
    pts = bank.points[index]  # [B, M, P, 2]
    lx, ly, _ = to_local(pts[..., 0], pts[..., 1], torch.zeros_like(pts[..., 0]), pose64)
    local = torch.stack([lx, ly], dim=-1).float()
    direction = torch.diff(local, dim=-2, append=local[..., -1:, :] + (local[..., -1:, :] - local[..., -2:-1, :]))
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    kind = torch.nn.functional.one_hot(bank.kind[index], len(POLYLINE_KINDS)).float()  # [B, M, K]
    attrs = torch.stack([bank.width_m[index] / WIDTH_SCALE_M, bank.speed_mps[index] / SPEED_SCALE_MPS], dim=-1)
    per_line = torch.cat([kind, attrs], dim=-1)[:, :, None].expand(-1, -1, POINTS_PER_POLYLINE, -1)
    feats = torch.cat([local / POS_SCALE_M, direction, per_line], dim=-1)
    return torch.where(valid[..., None, None], feats, 0.0), valid
