"""RoadMap: the static map as padded tensors (lanes, lane graph, edges, crosswalks, signals).

Notation (axes):
    L lanes, P points per lane polyline, E lane-graph edges, R road-edge rings,
    Q points per ring, C crosswalks, K points per crosswalk polygon,
    J junctions, H points per junction polygon, G light slots (signals),
    Y steps in a signal's 10 Hz cycle.

The drivable area is the union of vehicle lane polygons (centerline +- width/2)
and junction polygons. ``road_edge_*`` holds its boundary as closed rings:
outer rings counter-clockwise, islands clockwise, so the road is on the *left*
of every edge (the convention of Waymo's official metrics). Queries use the
even-odd rule on those rings, so they need no shapely at run time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch

from simgen.types.base import TensorData
from simgen.types.geometry import chunked_min_distance, inside_even_odd, polyline_segments


class LaneKind(enum.IntEnum):
    DRIVING = 0  # vehicles (may also allow bicycles)
    BIKE = 1  # bicycles only
    SIDEWALK = 2  # pedestrians only
    CROSSING = 3  # pedestrian crossing inside a junction
    WALKINGAREA = 4  # pedestrian area at a junction corner


@dataclass(frozen=True)
class RoadMap(TensorData):
    # lanes
    lane_xy: torch.Tensor  # [L, P, 2] centerline, world frame, m
    lane_point_valid: torch.Tensor  # [L, P] bool
    lane_width_m: torch.Tensor  # [L]
    lane_speed_limit_mps: torch.Tensor  # [L]
    lane_length_m: torch.Tensor  # [L] along the centerline
    lane_kind: torch.Tensor  # [L] int8, LaneKind
    lane_is_junction: torch.Tensor  # [L] bool, a connection lane inside a junction (SUMO internal lane)
    lane_neighbors: torch.Tensor  # [L, 2] int32 (left, right) lane index on the same road, -1 if none
    lane_succ: torch.Tensor  # [E, 2] int32 (from lane, to lane) edges of the lane graph
    # boundary of the drivable area
    road_edge_xy: torch.Tensor  # [R, Q, 2] closed rings, road on the left
    road_edge_valid: torch.Tensor  # [R, Q] bool
    # pedestrian crossings and junction areas
    crosswalk_xy: torch.Tensor  # [C, K, 2] closed polygons
    crosswalk_valid: torch.Tensor  # [C, K] bool
    junction_xy: torch.Tensor  # [J, H, 2] closed polygons
    junction_valid: torch.Tensor  # [J, H] bool
    # light slots: one per signalised connection (approach lane -> via lane -> outgoing lane)
    signal_lane: torch.Tensor  # [G] int32 approach lane (the controlled lane)
    signal_via_lane: torch.Tensor  # [G] int32 junction lane, -1 if the net has no internal lanes
    signal_to_lane: torch.Tensor  # [G] int32 outgoing lane
    signal_stop_xy: torch.Tensor  # [G, 2] stop point, end of the approach lane, m
    signal_tls: torch.Tensor  # [G] int32 index into tls_ids
    signal_link: torch.Tensor  # [G] int32 SUMO link index within its tls
    signal_cycle: torch.Tensor  # [G, Y] int8 LightState of the static program at 10 Hz
    signal_cycle_len: torch.Tensor  # [G] int32 cycle length in steps; state(step k) = cycle[k % len]
    # non-tensor metadata
    name: str = ""
    lane_ids: tuple[str, ...] = ()  # SUMO lane id per lane
    tls_ids: tuple[str, ...] = ()  # SUMO traffic-light id per tls index
    net_file: str = ""  # SUMO network this map came from ("" if none)

    _AXES: ClassVar = {
        "lane_xy": ("L", "P", "_"), "lane_point_valid": ("L", "P"), "lane_width_m": ("L",),
        "lane_speed_limit_mps": ("L",), "lane_length_m": ("L",), "lane_kind": ("L",),
        "lane_is_junction": ("L",), "lane_neighbors": ("L", "_"), "lane_succ": ("E", "_"),
        "road_edge_xy": ("R", "Q", "_"), "road_edge_valid": ("R", "Q"),
        "crosswalk_xy": ("C", "K", "_"), "crosswalk_valid": ("C", "K"),
        "junction_xy": ("J", "H", "_"), "junction_valid": ("J", "H"),
        "signal_lane": ("G",), "signal_via_lane": ("G",), "signal_to_lane": ("G",),
        "signal_stop_xy": ("G", "_"), "signal_tls": ("G",), "signal_link": ("G",),
        "signal_cycle": ("G", "Y"), "signal_cycle_len": ("G",),
    }
    _DTYPES: ClassVar = {
        **{f: "float" for f in ("lane_xy", "lane_width_m", "lane_speed_limit_mps", "lane_length_m",
                                "road_edge_xy", "crosswalk_xy", "junction_xy", "signal_stop_xy")},
        **{f: "bool" for f in ("lane_point_valid", "lane_is_junction", "road_edge_valid",
                               "crosswalk_valid", "junction_valid")},
        **{f: "int" for f in ("lane_kind", "lane_neighbors", "lane_succ", "signal_lane", "signal_via_lane",
                              "signal_to_lane", "signal_tls", "signal_link", "signal_cycle",
                              "signal_cycle_len")},
    }

    # --- sizes ---------------------------------------------------------
    @property
    def num_lanes(self) -> int:
        return self.lane_xy.shape[0]

    @property
    def num_signals(self) -> int:
        return self.signal_lane.shape[0]

    def validate(self) -> "RoadMap":
        super().validate()
        L = self.num_lanes
        for field in ("lane_neighbors", "lane_succ", "signal_lane", "signal_via_lane", "signal_to_lane"):
            v = getattr(self, field)
            if v.numel() and (v.min() < -1 or v.max() >= L):
                raise ValueError(f"RoadMap.{field}: lane index out of range [-1, {L})")
        if len(self.lane_ids) != L:
            raise ValueError(f"RoadMap.lane_ids: {len(self.lane_ids)} ids for {L} lanes")
        if self.signal_cycle_len.numel() and (self.signal_cycle_len < 1).any():
            raise ValueError("RoadMap.signal_cycle_len: every cycle needs at least one step")
        return self

    # --- derived geometry (cached; RoadMap is immutable) -----------------
    @cached_property
    def bounds(self) -> torch.Tensor:
        """``[4]`` (xmin, ymin, xmax, ymax) of all lane points, m."""
        pts = self.lane_xy[self.lane_point_valid]
        return torch.cat([pts.min(0).values, pts.max(0).values])

    @cached_property
    def road_edge_segments(self) -> tuple[torch.Tensor, torch.Tensor]:
        return polyline_segments(self.road_edge_xy, self.road_edge_valid)

    @cached_property
    def lane_index(self) -> dict[str, int]:
        return {lane_id: i for i, lane_id in enumerate(self.lane_ids)}

    @cached_property
    def vehicle_lanes(self) -> torch.Tensor:
        """``[L]`` bool: lanes vehicles drive on (roads and junction connections)."""
        return self.lane_kind == LaneKind.DRIVING

    @cached_property
    def lane_end_direction(self) -> torch.Tensor:
        """``[L, 2]`` float64 unit direction of each lane's last centreline segment (the normal of the stop line
        at its end; valid points are a prefix)."""
        last = self.lane_point_valid.sum(-1) - 1  # [L]
        lanes = torch.arange(self.num_lanes)
        d = (self.lane_xy[lanes, last] - self.lane_xy[lanes, (last - 1).clamp_min(0)]).to(torch.float64)
        return d / torch.linalg.norm(d, dim=-1, keepdim=True).clamp_min(1e-9)

    def is_drivable(self, xy: torch.Tensor) -> torch.Tensor:
        """``[..., 2]`` world frame -> bool ``[...]``: inside the drivable area."""
        a, b = self.road_edge_segments
        flat = xy.reshape(-1, 2).to(a.dtype)
        return inside_even_odd(flat, a, b).reshape(xy.shape[:-1])

    def signed_distance_to_road_edge(self, xy: torch.Tensor) -> torch.Tensor:
        """``[..., 2]`` -> ``[...]`` m; negative inside the drivable area (WOSAC sign)."""
        a, b = self.road_edge_segments
        flat = xy.reshape(-1, 2).to(a.dtype)
        dist = chunked_min_distance(flat, a, b)
        inside = inside_even_odd(flat, a, b)
        return torch.where(inside, -dist, dist).reshape(xy.shape[:-1])

    def signal_state_at(self, step: torch.Tensor | int) -> torch.Tensor:
        """State of every light slot's static program at absolute 10 Hz step(s) -> int8 ``[G]``."""
        k = torch.as_tensor(step, dtype=torch.int64) % self.signal_cycle_len.to(torch.int64)
        return self.signal_cycle.gather(-1, k.reshape(-1, 1)).squeeze(-1)

    def successors(self, lane: int) -> torch.Tensor:
        return self.lane_succ[self.lane_succ[:, 0] == lane, 1]
