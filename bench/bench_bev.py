"""Benchmark of simgen.renderers.bev: a 600-frame 800 x 800 BEV video against the 30 s target.

Synthetic city (world frame m, +x east, +y north): a grid of square blocks with two lanes each way
on every road (right-hand traffic), straight junction lanes, sidewalks around the blocks, a
crosswalk on every junction arm and a light slot on every approach lane. The AV drives 10 m/s
east, then turns north; ~30 other agents (vehicles, pedestrians, cyclists) travel around it and
are valid while within 80 m of the AV, as in a trip. Every light slot of the map is in the scene.

Prints the wall time end to end (render + H.264 encode) and, measured in the same run, the time
to draw the same frames without encoding.

    .venv/bin/python bench/bench_bev.py [--frames 600] [--size 800] [--out /tmp/bench_bev.mp4]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from simgen.renderers.bev import BevRenderer, render_bev_video
from simgen.types import (AgentMeta, AgentTrajectory, AgentType, LaneKind, LightState, RoadMap, SceneState,
                          TrafficLights)
from simgen.types.geometry import point_segment_distance

TARGET_S = 30.0
BLOCK_M = 150.0  # junction spacing
LANE_W = 3.2
HALF_ROAD = 2 * LANE_W  # two lanes each way
JUNCTION_HALF = HALF_ROAD + 4.0  # lanes stop this far from a junction centre
CYCLE = 600  # signal cycle, steps
AV_ROAD_Y = 4 * BLOCK_M
AV_PATH = np.array([(20.0, AV_ROAD_Y - LANE_W / 2), (3 * BLOCK_M + LANE_W / 2, AV_ROAD_Y - LANE_W / 2),
                    (3 * BLOCK_M + LANE_W / 2, 8 * BLOCK_M)])  # east, then north at the third junction


def _pad(lines: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    points = max(len(line) for line in lines)
    xy = np.zeros((len(lines), points, 2), dtype=np.float32)
    valid = np.zeros((len(lines), points), dtype=bool)
    for n, line in enumerate(lines):
        xy[n, :len(line)], valid[n, :len(line)] = line, True
    return torch.from_numpy(xy), torch.from_numpy(valid)


def _segment(a: tuple[float, float], b: tuple[float, float], points: int = 8) -> np.ndarray:
    return np.linspace(a, b, points)


def _rect(x0: float, y0: float, x1: float, y1: float, clockwise: bool = False) -> np.ndarray:
    ring = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)])
    return ring[::-1].copy() if clockwise else ring


def grid_city(blocks: int = 8) -> RoadMap:
    """A ``blocks x blocks`` grid; junction (i, j) sits at (i * BLOCK_M, j * BLOCK_M), i, j in [0, blocks]."""
    lanes, kinds, junction, widths = [], [], [], []
    signals = []  # (lane index, stop point, north-south?)
    n = blocks + 1

    def add(line: np.ndarray, kind: LaneKind = LaneKind.DRIVING, is_junction: bool = False, width: float = LANE_W):
        lanes.append(line), kinds.append(kind), junction.append(is_junction), widths.append(width)
        return len(lanes) - 1

    for c in range(n):  # c: index of the road, k: index of the block along it
        for k in range(blocks):
            lo, hi = k * BLOCK_M + JUNCTION_HALF, (k + 1) * BLOCK_M - JUNCTION_HALF
            road = c * BLOCK_M
            for offset in (LANE_W / 2, 1.5 * LANE_W):
                # east/westbound on the road y = road; north/southbound on the road x = road
                east = add(_segment((lo, road - offset), (hi, road - offset)))
                west = add(_segment((hi, road + offset), (lo, road + offset)))
                north = add(_segment((road + offset, lo), (road + offset, hi)))
                south = add(_segment((road - offset, hi), (road - offset, lo)))
                for lane, ns in ((east, False), (west, False), (north, True), (south, True)):
                    end = lanes[lane][-1]
                    if JUNCTION_HALF < end[0] < blocks * BLOCK_M and JUNCTION_HALF < end[1] < blocks * BLOCK_M:
                        signals.append((lane, end, ns))
    for i in range(n):  # straight connections through every junction
        for j in range(n):
            cx, cy, h = i * BLOCK_M, j * BLOCK_M, JUNCTION_HALF
            for offset in (LANE_W / 2, 1.5 * LANE_W):
                add(_segment((cx - h, cy - offset), (cx + h, cy - offset), 2), is_junction=True)
                add(_segment((cx + h, cy + offset), (cx - h, cy + offset), 2), is_junction=True)
                add(_segment((cx + offset, cy - h), (cx + offset, cy + h), 2), is_junction=True)
                add(_segment((cx - offset, cy + h), (cx - offset, cy - h), 2), is_junction=True)
    rings = [_rect(-HALF_ROAD, -HALF_ROAD, blocks * BLOCK_M + HALF_ROAD, blocks * BLOCK_M + HALF_ROAD)]
    crosswalks = []
    for i in range(blocks):
        for j in range(blocks):
            x0, y0 = i * BLOCK_M + HALF_ROAD, j * BLOCK_M + HALF_ROAD
            x1, y1 = (i + 1) * BLOCK_M - HALF_ROAD, (j + 1) * BLOCK_M - HALF_ROAD
            rings.append(_rect(x0, y0, x1, y1, clockwise=True))
            add(_rect(x0 + 1.5, y0 + 1.5, x1 - 1.5, y1 - 1.5), LaneKind.SIDEWALK, width=3.0)
    for i in range(n):
        for j in range(n):
            cx, cy, h = i * BLOCK_M, j * BLOCK_M, JUNCTION_HALF
            crosswalks += [_rect(cx + h - 4, cy - HALF_ROAD, cx + h, cy + HALF_ROAD),
                           _rect(cx - h, cy - HALF_ROAD, cx - h + 4, cy + HALF_ROAD),
                           _rect(cx - HALF_ROAD, cy + h - 4, cx + HALF_ROAD, cy + h),
                           _rect(cx - HALF_ROAD, cy - h, cx + HALF_ROAD, cy - h + 4)]
    junctions = [_rect(i * BLOCK_M - JUNCTION_HALF, j * BLOCK_M - JUNCTION_HALF,
                       i * BLOCK_M + JUNCTION_HALF, j * BLOCK_M + JUNCTION_HALF) for i in range(n) for j in range(n)]
    lane_xy, lane_valid = _pad(lanes)
    edge_xy, edge_valid = _pad(rings)
    cw_xy, cw_valid = _pad(crosswalks)
    j_xy, j_valid = _pad(junctions)
    phase = np.arange(CYCLE)
    ew = np.where(phase < 260, LightState.GO, np.where(phase < 300, LightState.CAUTION, LightState.STOP))
    ns = np.roll(ew, CYCLE // 2)
    g = len(signals)
    num_lanes = len(lanes)
    return RoadMap(
        lane_xy=lane_xy, lane_point_valid=lane_valid, lane_width_m=torch.tensor(widths),
        lane_speed_limit_mps=torch.full((num_lanes,), 13.9),
        lane_length_m=torch.tensor([float(np.linalg.norm(np.diff(line, axis=0), axis=1).sum()) for line in lanes]),
        lane_kind=torch.tensor(kinds, dtype=torch.int8), lane_is_junction=torch.tensor(junction),
        lane_neighbors=torch.full((num_lanes, 2), -1, dtype=torch.int32),
        lane_succ=torch.zeros((0, 2), dtype=torch.int32),
        road_edge_xy=edge_xy, road_edge_valid=edge_valid, crosswalk_xy=cw_xy, crosswalk_valid=cw_valid,
        junction_xy=j_xy, junction_valid=j_valid,
        signal_lane=torch.tensor([s[0] for s in signals], dtype=torch.int32),
        signal_via_lane=torch.full((g,), -1, dtype=torch.int32),
        signal_to_lane=torch.tensor([s[0] for s in signals], dtype=torch.int32),
        signal_stop_xy=torch.tensor(np.array([s[1] for s in signals]), dtype=torch.float32),
        signal_tls=torch.arange(g, dtype=torch.int32), signal_link=torch.zeros(g, dtype=torch.int32),
        signal_cycle=torch.from_numpy(np.stack([ns if s[2] else ew for s in signals]).astype(np.int8)),
        signal_cycle_len=torch.full((g,), CYCLE, dtype=torch.int32),
        name=f"grid{blocks}", lane_ids=tuple(f"lane{k}" for k in range(num_lanes)),
        tls_ids=tuple(f"tls{k}" for k in range(g)),
    ).validate()


def _along(path: np.ndarray, s_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points ``[..., 2]`` and headings ``[...]`` at arc lengths ``s_m`` along the polyline ``path [P, 2]``."""
    seg = np.diff(path, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    k = np.clip(np.searchsorted(cum, s_m, side="right") - 1, 0, len(seg) - 1)
    f = ((s_m - cum[k]) / seg_len[k])[..., None]
    return path[k] + f * seg[k], np.arctan2(seg[k, 1], seg[k, 0])


def _offset(path: np.ndarray, left_m: float) -> np.ndarray:
    """The polyline ``path [P, 2]`` shifted ``left_m`` to its left (mitred corners)."""
    seg = np.diff(path, axis=0)
    normal = np.stack([-seg[:, 1], seg[:, 0]], axis=1) / np.linalg.norm(seg, axis=1, keepdims=True)
    before, after = np.vstack([normal[:1], normal]), np.vstack([normal, normal[-1:]])
    miter = (before + after) / (1 + (before * after).sum(1, keepdims=True))
    return path + left_m * miter


def city_scene(roadmap: RoadMap, steps: int, num_agents: int = 31, seed: int = 0) -> SceneState:
    """The AV plus ``num_agents - 1`` others travelling around it along AV_PATH, valid within 80 m of it.

    Followers keep near the AV's speed; oncoming vehicles, pedestrians and cyclists pass the AV,
    then re-enter 80 m ahead of it (invalid for the step of the jump).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(steps) * 0.1
    av_s = 90.0 + 10.0 * t  # AV arc length along AV_PATH, m
    xy, heading = np.zeros((num_agents, steps, 2)), np.zeros((num_agents, steps))
    types = np.full(num_agents, AgentType.VEHICLE)
    size = np.tile([4.6, 1.9], (num_agents, 1))
    xy[0], heading[0] = _along(AV_PATH, av_s)
    for a in range(1, num_agents):
        kind = rng.choice(["follow", "oncoming", "pedestrian", "cyclist"], p=[0.45, 0.3, 0.15, 0.1])
        phase = rng.uniform(0, 2 * math.pi)
        # left: lateral offset from AV_PATH (m, + to the left); speed along AV_PATH (m/s, < 0 against it)
        if kind == "follow":  # same direction, either lane, drifting ahead of and behind the AV
            left, speed = rng.choice([0.0, -LANE_W]), 10.0
        elif kind == "oncoming":
            left, speed = rng.choice([LANE_W, 2 * LANE_W]), -10.0
        elif kind == "pedestrian":  # on either sidewalk, either way
            left, speed = rng.choice([-1, 1]) * (HALF_ROAD + 1.5) - LANE_W / 2, rng.choice([-1.4, 1.4])
        else:  # cyclist at the right edge of the road
            left, speed = -HALF_ROAD - LANE_W / 2 + 0.5, 5.0
        if kind == "follow":
            rel = rng.uniform(-60, 60) + 15 * np.sin(0.1 * t + phase)
        else:  # pass the AV, wrap around 80 m ahead
            rel = np.mod(phase * 25 + (speed - 10.0) * t, 160.0) - 80.0
        reverse = speed < 0
        xy[a], heading[a] = _along(_offset(AV_PATH, left), av_s + rel)
        heading[a] = np.angle(np.exp(1j * (heading[a] + (math.pi if reverse else 0.0))))
        if kind in ("pedestrian", "cyclist"):
            types[a] = AgentType.PEDESTRIAN if kind == "pedestrian" else AgentType.CYCLIST
            size[a] = (0.6, 0.6) if kind == "pedestrian" else (1.8, 0.7)
    jumped = np.zeros((num_agents, steps), dtype=bool)
    jumped[:, 1:] = np.linalg.norm(np.diff(xy, axis=1), axis=-1) > 20.0
    valid = (np.linalg.norm(xy - xy[:1], axis=-1) < 80.0) & ~jumped
    f32 = lambda v: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))  # noqa: E731
    vel = np.gradient(xy, 0.1, axis=1)
    traj = AgentTrajectory(
        x=f32(xy[..., 0]), y=f32(xy[..., 1]), z=f32(np.zeros((num_agents, steps))), heading=f32(heading),
        vel_x=f32(vel[..., 0]), vel_y=f32(vel[..., 1]),
        length=f32(np.repeat(size[:, :1], steps, 1)), width=f32(np.repeat(size[:, 1:], steps, 1)),
        height=f32(np.full((num_agents, steps), 1.6)), valid=torch.from_numpy(valid))
    meta = AgentMeta(object_id=torch.arange(num_agents), agent_type=torch.tensor(types, dtype=torch.int8),
                     is_av=torch.arange(num_agents) == 0)
    g = roadmap.num_signals
    states = torch.stack([roadmap.signal_state_at(k) for k in range(steps)], dim=-1)  # [G, T]
    lights = TrafficLights(
        signal_id=torch.arange(g, dtype=torch.int32)[:, None].expand(g, steps).clone(),
        lane_id=roadmap.signal_lane[:, None].expand(g, steps).clone(),
        stop_x=roadmap.signal_stop_xy[:, 0:1].expand(g, steps).clone(),
        stop_y=roadmap.signal_stop_xy[:, 1:2].expand(g, steps).clone(),
        state=states, valid=torch.ones(g, steps, dtype=torch.bool))
    return SceneState(traj=traj, meta=meta, lights=lights, step=steps - 1, map_name=roadmap.name).validate()


def route_lanes(roadmap: RoadMap) -> torch.Tensor:
    """``[K]`` driving lanes lying on AV_PATH (every point within 0.5 m of it)."""
    path = torch.from_numpy(AV_PATH).float()
    dist = point_segment_distance(roadmap.lane_xy, path[:-1], path[1:]).min(-1).values  # [L, P]
    on_path = torch.where(roadmap.lane_point_valid, dist, torch.zeros_like(dist)).amax(-1) < 0.5
    return torch.nonzero(on_path & (roadmap.lane_kind == LaneKind.DRIVING)).flatten().to(torch.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--agents", type=int, default=31, help="agent slots, the AV included")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_bev.mp4"))
    args = parser.parse_args()

    roadmap = grid_city()
    state = city_scene(roadmap, args.frames, args.agents)
    route = route_lanes(roadmap)
    valid_now = state.traj.valid.sum(0).float()
    print(f"map: {roadmap.num_lanes} lanes, {roadmap.road_edge_xy.shape[0]} road-edge rings, "
          f"{roadmap.crosswalk_xy.shape[0]} crosswalks, {roadmap.num_signals} light slots; "
          f"scene: {state.num_agents} agent slots ({valid_now.mean():.1f} valid per step on average), "
          f"{args.frames} steps; route: {route.numel()} lanes")

    renderer = BevRenderer(roadmap, route_lanes=route, size=args.size)
    start = time.perf_counter()
    for image in renderer.images(state, range(args.frames)):
        image.tobytes()
    draw_s = time.perf_counter() - start

    info = render_bev_video(roadmap, state, args.out, route_lanes=route, size=args.size)
    print(f"draw only (no encoding): {draw_s:6.2f} s  {args.frames / draw_s:6.1f} frames/s")
    print(f"video end to end:        {info['seconds']:6.2f} s  {info['frames_per_s']:6.1f} frames/s  "
          f"-> {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    print(f"ratio to the {TARGET_S:.0f} s target: {info['seconds'] / TARGET_S:.2f} "
          f"({TARGET_S / info['seconds']:.1f}x faster than needed)")


if __name__ == "__main__":
    main()
