"""Small vectorized 2-D geometry used by RoadMap queries and metrics.

Polylines are padded tensors ``[N, P, 2]`` with a point mask ``[N, P]``; a
segment exists between consecutive valid points. Rings are closed polylines
(last point == first point).
"""

from __future__ import annotations

import torch


def polyline_segments(xy: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, P, 2]``, ``[N, P]`` -> segment starts and ends ``[M, 2]`` each."""
    seg_valid = valid[:, :-1] & valid[:, 1:]
    return xy[:, :-1][seg_valid], xy[:, 1:][seg_valid]


def point_segment_distance(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from each point ``[..., 2]`` to each segment ``[M, 2]`` -> ``[..., M]``."""
    p = points.unsqueeze(-2)  # [..., 1, 2]
    ab = b - a
    denom = (ab * ab).sum(-1).clamp_min(1e-12)
    t = (((p - a) * ab).sum(-1) / denom).clamp(0.0, 1.0)
    closest = a + t.unsqueeze(-1) * ab
    return torch.linalg.norm(p - closest, dim=-1)


def inside_even_odd(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Even-odd point-in-region test against closed ring segments. ``[..., 2]`` -> bool ``[...]``."""
    px, py = points[..., 0:1], points[..., 1:2]
    ax, ay, bx, by = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
    straddles = (ay > py) != (by > py)
    x_cross = ax + (py - ay) * (bx - ax) / torch.where(by == ay, torch.ones_like(by), by - ay)
    crossings = (straddles & (px < x_cross)).sum(-1)
    return crossings % 2 == 1


def chunked_min_distance(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Min distance from points ``[N, 2]`` to segments, in chunks of ~2e7 pairs to bound memory."""
    chunk = max(1, 20_000_000 // max(1, a.shape[0]))
    out = torch.empty(points.shape[0], dtype=points.dtype)
    for i in range(0, points.shape[0], chunk):
        out[i:i + chunk] = point_segment_distance(points[i:i + chunk], a, b).min(-1).values
    return out
