"""Lane-graph paths for rule-based drivers: routing, path polylines, projection.

A *path* is a list of RoadMap lane indices where each next lane is either a
successor (``lane_succ``) or a same-road neighbour (a lane change). Its
polyline is the lanes' centerlines joined end to end; a lane change blends
from one centerline to the other over ``LANE_CHANGE_M`` metres. Paths of many
agents are stacked into padded tensors ``[N, P, 2]`` so that projection and
interpolation are vectorized over agents.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from simgen.types import RoadMap

LANE_CHANGE_M = 25.0  # length over which a lane change blends centerlines, m
RESAMPLE_M = 1.0  # spacing used when blending lane changes, m
PATH_SPACING_M = 2.0  # stacked paths are resampled to this spacing, so speed limits and curvature are dense
LANE_CHANGE_COST_M = 30.0  # routing penalty of one lane change, m


def lane_edge_id(lane_id: str) -> str:
    """SUMO edge id of a SUMO lane id (``edge_index``)."""
    return lane_id.rsplit("_", 1)[0]


def lane_polyline(roadmap: RoadMap, lane: int) -> torch.Tensor:
    return roadmap.lane_xy[lane][roadmap.lane_point_valid[lane]].to(torch.float64)


def _length(xy: torch.Tensor) -> float:
    return float(torch.linalg.norm(xy[1:] - xy[:-1], dim=-1).sum())


def _resample(xy: torch.Tensor, n: int) -> torch.Tensor:
    """Resample a polyline to ``n`` points equally spaced in arc length."""
    seg = torch.linalg.norm(xy[1:] - xy[:-1], dim=-1)
    s = torch.cat([torch.zeros(1, dtype=xy.dtype), seg.cumsum(0)])
    target = torch.linspace(0, float(s[-1]), n, dtype=xy.dtype)
    return interpolate(xy.unsqueeze(0), s.unsqueeze(0), target.unsqueeze(0))[0]


def interpolate(xy: torch.Tensor, s: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Points at arc lengths ``query [N, Q]`` along polylines ``xy [N, P, 2]`` with cumulative ``s [N, P]``."""
    idx = torch.searchsorted(s.contiguous(), query.contiguous()).clamp(1, s.shape[1] - 1)
    s0, s1 = s.gather(1, idx - 1), s.gather(1, idx)
    w = ((query - s0) / (s1 - s0).clamp_min(1e-9)).clamp(0, 1).unsqueeze(-1)
    p0 = xy.gather(1, (idx - 1).unsqueeze(-1).expand(-1, -1, 2))
    p1 = xy.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))
    return p0 + w * (p1 - p0)


def path_polyline(roadmap: RoadMap, lanes: list[int], entry_s: float = 0.0) -> tuple[torch.Tensor, list[float]]:
    """Polyline ``[P, 2]`` (float64) of a lane path and the arc length at which each lane *ends*.

    ``entry_s`` is where a lane change on the first lane may begin (the agent's
    current position along it), so the blend starts in front of the agent.
    """
    points: list[torch.Tensor] = []
    lane_end_s: list[float] = []
    i = 0
    while i < len(lanes):
        run = [lanes[i]]  # a lane followed by neighbour changes on the same road
        while i + 1 < len(lanes) and _is_neighbor(roadmap, run[-1], lanes[i + 1]):
            i += 1
            run.append(lanes[i])
        xy = lane_polyline(roadmap, run[0])
        if len(run) > 1:
            xy = _blend_run(roadmap, run, entry_s if not points else 0.0)
        if points:
            xy = xy[1:] if torch.linalg.norm(xy[0] - points[-1][-1]) < 1e-3 else xy
        points.append(xy)
        total = torch.cat(points)
        seg = torch.linalg.norm(total[1:] - total[:-1], dim=-1).sum()
        lane_end_s.extend([float(seg)] * len(run))
        i += 1
    return torch.cat(points), lane_end_s


def _is_neighbor(roadmap: RoadMap, a: int, b: int) -> bool:
    return bool((roadmap.lane_neighbors[a] == b).any())


def _blend_run(roadmap: RoadMap, run: list[int], entry_s: float) -> torch.Tensor:
    """Blend centerlines of parallel lanes ``run`` (a chain of lane changes) over LANE_CHANGE_M each."""
    length = float(roadmap.lane_length_m[run[0]])
    n = max(int(length / RESAMPLE_M) + 1, 3)
    lines = [_resample(lane_polyline(roadmap, lane), n) for lane in run]
    u = torch.linspace(0, length, n, dtype=torch.float64)
    start = min(max(entry_s, 0.0), max(length - 2.0, 0.0))
    window = min(LANE_CHANGE_M, max((length - start - 1.0) / (len(run) - 1), 1.0))
    out = lines[0]
    for k in range(1, len(run)):
        a = start + (k - 1) * window
        w = ((u - a) / window).clamp(0, 1)
        w = (w * w * (3 - 2 * w)).unsqueeze(-1)  # smoothstep
        out = (1 - w) * out + w * lines[k]
    return out


@dataclass(frozen=True)
class PathBatch:
    """Padded paths of N agents. Arc lengths in m along each path."""

    xy: torch.Tensor  # [N, P, 2] float64
    s: torch.Tensor  # [N, P] cumulative arc length (padding repeats the last value + 1e-6 steps)
    length: torch.Tensor  # [N]

    @staticmethod
    def stack(polylines: list[torch.Tensor]) -> "PathBatch":
        if not polylines:
            return PathBatch(torch.zeros(0, 2, 2, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.float64),
                             torch.zeros(0, dtype=torch.float64))
        polylines = [_resample(p, max(int(_length(p) / PATH_SPACING_M) + 2, 2)) for p in polylines]
        P = max(p.shape[0] for p in polylines)
        xy = torch.zeros(len(polylines), P, 2, dtype=torch.float64)
        s = torch.zeros(len(polylines), P, dtype=torch.float64)
        for n, p in enumerate(polylines):
            seg = torch.linalg.norm(p[1:] - p[:-1], dim=-1)
            cum = torch.cat([torch.zeros(1, dtype=torch.float64), seg.cumsum(0)])
            k = p.shape[0]
            xy[n, :k], xy[n, k:] = p, p[-1]
            s[n, :k] = cum
            s[n, k:] = cum[-1] + 1e-6 * torch.arange(1, P - k + 1, dtype=torch.float64)
        length = torch.tensor([_length(p) for p in polylines], dtype=torch.float64)
        return PathBatch(xy, s, length)

    def pose_at(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions ``[N, (Q,) 2]`` and tangent headings ``[N, (Q)]`` at arc lengths ``s [N]`` or ``[N, Q]``."""
        q = s.clamp(min=0).reshape(s.shape[0], -1)
        p = interpolate(self.xy, self.s, q)
        d = interpolate(self.xy, self.s, q + 0.5) - interpolate(self.xy, self.s, q - 0.5)
        heading = torch.atan2(d[..., 1], d[..., 0])
        return p.reshape(*s.shape, 2), heading.reshape(s.shape)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project points ``[M, 2]`` onto every path -> arc length ``[N, M]`` and unsigned offset ``[N, M]``."""
        a, b = self.xy[:, :-1], self.xy[:, 1:]  # [N, P-1, 2]
        ab = b - a
        p = points.to(torch.float64)[None, :, None, :]  # [1, M, 1, 2]
        denom = (ab * ab).sum(-1).clamp_min(1e-12)[:, None]  # [N, 1, P-1]
        t = (((p - a[:, None]) * ab[:, None]).sum(-1) / denom).clamp(0, 1)  # [N, M, P-1]
        closest = a[:, None] + t.unsqueeze(-1) * ab[:, None]
        dist = torch.linalg.norm(p - closest, dim=-1)
        best = dist.argmin(-1)  # [N, M]
        offset = dist.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        seg_len = torch.linalg.norm(ab, dim=-1)  # [N, P-1]
        s0 = self.s[:, :-1]
        s_best = s0.gather(1, best) + t.gather(-1, best.unsqueeze(-1)).squeeze(-1) * seg_len.gather(1, best)
        return s_best, offset


def locate(roadmap: RoadMap, x: float, y: float, heading: float, lanes: torch.Tensor,
           max_offset_m: float = 3.0) -> tuple[int, float, float] | None:
    """Best lane among candidate indices ``lanes`` for a pose -> (lane, arc length, signed offset) or None.

    Scores distance plus a heading mismatch penalty (8 m per radian); None if
    nothing lies within ``max_offset_m`` with a heading mismatch under 60 deg.
    """
    xy = roadmap.lane_xy[lanes].to(torch.float64)
    ok = roadmap.lane_point_valid[lanes]
    a, b = xy[:, :-1], xy[:, 1:]
    seg_ok = ok[:, :-1] & ok[:, 1:]
    ab = b - a
    p = torch.tensor([x, y], dtype=torch.float64)
    t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    closest = a + t.unsqueeze(-1) * ab
    dist = torch.linalg.norm(p - closest, dim=-1).masked_fill(~seg_ok, float("inf"))
    seg_heading = torch.atan2(ab[..., 1], ab[..., 0])
    mismatch = torch.remainder(seg_heading - heading + torch.pi, 2 * torch.pi) - torch.pi
    score = dist + 8.0 * mismatch.abs()
    score = score.masked_fill((dist > max_offset_m) | (mismatch.abs() > 1.05), float("inf"))
    flat = int(score.argmin())
    li, si = divmod(flat, score.shape[1])
    if not torch.isfinite(score[li, si]):
        return None
    seg_len = torch.linalg.norm(ab[li], dim=-1).masked_fill(~seg_ok[li], 0)
    s = float(seg_len[:si].sum() + t[li, si] * seg_len[si])
    cross = ab[li, si, 0] * (p[1] - a[li, si, 1]) - ab[li, si, 1] * (p[0] - a[li, si, 0])
    offset = float(dist[li, si]) * (1.0 if cross >= 0 else -1.0)  # positive = left of the lane
    return int(lanes[li]), s, offset


def plan_route(roadmap: RoadMap, start_lane: int, edges: list[str]) -> list[int]:
    """Cheapest lane path from ``start_lane`` through SUMO ``edges`` (in order) to any lane of the last edge.

    Dijkstra over successors (cost: lane length) and lane changes
    (cost: LANE_CHANGE_COST_M), restricted to lanes of the route's edges and
    the junction lanes between them. Raises ValueError if unreachable.
    """
    allowed_edges = set(edges)
    order = {e: k for k, e in enumerate(edges)}
    lane_ids = roadmap.lane_ids
    succ: dict[int, list[int]] = {}
    for a, b in roadmap.lane_succ.tolist():
        succ.setdefault(a, []).append(b)

    def allowed(lane: int) -> bool:
        return roadmap.lane_is_junction[lane].item() or lane_edge_id(lane_ids[lane]) in allowed_edges

    goal_edge = edges[-1]
    dist = {start_lane: 0.0}
    prev: dict[int, int] = {}
    heap = [(0.0, start_lane)]
    while heap:
        d, lane = heapq.heappop(heap)
        if d > dist.get(lane, float("inf")):
            continue
        if lane_edge_id(lane_ids[lane]) == goal_edge:
            path = [lane]
            while path[-1] in prev:
                path.append(prev[path[-1]])
            return path[::-1]
        here = order.get(lane_edge_id(lane_ids[lane]))
        moves = [(n, float(roadmap.lane_length_m[lane])) for n in succ.get(lane, [])]
        moves += [(int(n), LANE_CHANGE_COST_M) for n in roadmap.lane_neighbors[lane].tolist() if n >= 0]
        for nxt, cost in moves:
            if not allowed(nxt):
                continue
            nxt_edge = order.get(lane_edge_id(lane_ids[nxt]))
            if here is not None and nxt_edge is not None and nxt_edge < here:
                continue  # never go back along the route
            nd = d + cost
            if nd < dist.get(nxt, float("inf")):
                dist[nxt], prev[nxt] = nd, lane
                heapq.heappush(heap, (nd, nxt))
    raise ValueError(f"no lane path from lane {lane_ids[start_lane]} along edges {edges[0]} .. {goal_edge}")
