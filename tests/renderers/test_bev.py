"""Tests for simgen.renderers.bev on a hand-built straight road (world frame m, +y north).

Map: a two-lane road along x in [-100, 100] (eastbound lane at y = -1.75, westbound at y = +1.75,
3.5 m wide), its road-edge ring, a junction at x in [18, 26] with a crosswalk at x in [20, 24], and
one light slot whose stop point is the end of the eastbound approach lane, (18, -1.75).
Scene (T = 20 steps): the AV drives east at 10 m/s from (-10, -1.75); a vehicle drives west in the
other lane; a vehicle is parked at (25, 12) (north of the road); a pedestrian walks north on the
crosswalk. The light is STOP for steps 0..9 and GO for steps 10..19.
"""

from __future__ import annotations

import math

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from simgen.renderers.bev import (
    AGENT_COLORS,
    COLORS,
    LIGHT_COLORS,
    BevRenderer,
    even_odd_mask,
    render_bev_frame,
    render_bev_video,
)

from simgen.maps.netfile import pad
from simgen.types import (
    AgentMeta,
    AgentTrajectory,
    AgentType,
    LaneKind,
    LightState,
    RoadMap,
    SceneState,
    TrafficLights,
)
from simgen.types.geometry import point_segment_distance

SIZE = 800
RADIUS_M = 60.0
S = SIZE / (2 * RADIUS_M)  # px per m
T = 20
STOP_XY = (18.0, -1.75)
PARKED_XY = (25.0, 12.0)


def make_roadmap() -> RoadMap:
    lanes = [
        [(-100.0, -1.75), (-40.0, -1.75), (18.0, -1.75)],  # 0 eastbound approach (signalised)
        [(100.0, 1.75), (-100.0, 1.75)],  # 1 westbound
        [(18.0, -1.75), (26.0, -1.75)],  # 2 junction lane
        [(26.0, -1.75), (100.0, -1.75)],  # 3 eastbound exit
    ]
    lane_xy, lane_valid = pad(lanes)
    lengths = torch.tensor([sum(math.dist(a, b) for a, b in zip(line, line[1:])) for line in lanes])
    ring = [(-100.0, -3.5), (100.0, -3.5), (100.0, 3.5), (-100.0, 3.5), (-100.0, -3.5)]  # CCW, road on the left
    edge_xy, edge_valid = pad([ring])
    crosswalk = [(20.0, -3.5), (24.0, -3.5), (24.0, 3.5), (20.0, 3.5), (20.0, -3.5)]
    cw_xy, cw_valid = pad([crosswalk])
    junction = [(18.0, -3.5), (26.0, -3.5), (26.0, 3.5), (18.0, 3.5), (18.0, -3.5)]
    j_xy, j_valid = pad([junction])
    cycle = [int(LightState.GO)] * 30 + [int(LightState.CAUTION)] * 5 + [int(LightState.STOP)] * 35
    return RoadMap(
        lane_xy=lane_xy, lane_point_valid=lane_valid,
        lane_width_m=torch.full((4,), 3.5), lane_speed_limit_mps=torch.full((4,), 13.9), lane_length_m=lengths,
        lane_kind=torch.full((4,), int(LaneKind.DRIVING), dtype=torch.int8),
        lane_is_junction=torch.tensor([False, False, True, False]),
        lane_neighbors=torch.full((4, 2), -1, dtype=torch.int32),
        lane_succ=torch.tensor([[0, 2], [2, 3]], dtype=torch.int32),
        road_edge_xy=edge_xy, road_edge_valid=edge_valid,
        crosswalk_xy=cw_xy, crosswalk_valid=cw_valid,
        junction_xy=j_xy, junction_valid=j_valid,
        signal_lane=torch.tensor([0], dtype=torch.int32), signal_via_lane=torch.tensor([2], dtype=torch.int32),
        signal_to_lane=torch.tensor([3], dtype=torch.int32), signal_stop_xy=torch.tensor([STOP_XY]),
        signal_tls=torch.tensor([0], dtype=torch.int32), signal_link=torch.tensor([0], dtype=torch.int32),
        signal_cycle=torch.tensor([cycle], dtype=torch.int8), signal_cycle_len=torch.tensor([70], dtype=torch.int32),
        name="straight", lane_ids=("e0_0", "w0_0", ":j_0_0", "e1_0"), tls_ids=("j",),
    ).validate()


def make_state(with_light: bool = True) -> SceneState:
    k = torch.arange(T, dtype=torch.float32)
    traj = AgentTrajectory.zeros(5, T)  # slot 4 stays empty (never valid)
    rows = [  # x [T], y [T], heading, length, width, height
        (-10.0 + k, torch.full((T,), -1.75), 0.0, 4.5, 2.0, 1.5),  # 0 AV
        (30.0 - k, torch.full((T,), 1.75), math.pi, 4.5, 2.0, 1.5),  # 1 oncoming vehicle
        (torch.full((T,), PARKED_XY[0]), torch.full((T,), PARKED_XY[1]), 0.0, 5.0, 2.2, 1.6),  # 2 parked
        (torch.full((T,), 22.0), -4.5 + 0.14 * k, math.pi / 2, 0.6, 0.6, 1.8),  # 3 pedestrian
    ]
    fields = {f: getattr(traj, f).clone() for f in AgentTrajectory.tensor_fields()}
    for a, (x, y, heading, length, width, height) in enumerate(rows):
        fields["x"][a], fields["y"][a], fields["heading"][a] = x, y, heading
        fields["vel_x"][a] = 10.0 * math.cos(heading) if a < 2 else 0.0
        fields["length"][a], fields["width"][a], fields["height"][a] = length, width, height
        fields["valid"][a] = True
    meta = AgentMeta(
        object_id=torch.tensor([0, 1, 2, 3, -1]),
        agent_type=torch.tensor([1, 1, 1, 2, 0], dtype=torch.int8),
        is_av=torch.tensor([True, False, False, False, False]),
    )
    num_slots = 1 if with_light else 0
    state = torch.where(k < 10, int(LightState.STOP), int(LightState.GO)).to(torch.int8)
    lights = TrafficLights(
        signal_id=torch.zeros(num_slots, T, dtype=torch.int32), lane_id=torch.zeros(num_slots, T, dtype=torch.int32),
        stop_x=torch.full((num_slots, T), STOP_XY[0]), stop_y=torch.full((num_slots, T), STOP_XY[1]),
        state=state.expand(num_slots, T).clone(), valid=torch.ones(num_slots, T, dtype=torch.bool),
    )
    return SceneState(traj=AgentTrajectory(**fields), meta=meta, lights=lights, step=T - 1,
                      map_name="straight").validate()


@pytest.fixture(scope="module")
def roadmap() -> RoadMap:
    return make_roadmap()


@pytest.fixture(scope="module")
def state() -> SceneState:
    return make_state()


def world_to_pixel(x: float, y: float, av_x: float, av_y: float) -> tuple[int, int]:
    """(row, col) of world point (x, y) in a frame centred on the AV at (av_x, av_y), north-up."""
    return round(SIZE // 2 - (y - av_y) * S), round(SIZE // 2 + (x - av_x) * S)


def color_near(frame: np.ndarray, row: int, col: int, color: tuple[int, int, int], radius: int = 10) -> int:
    """Number of pixels of exactly ``color`` within ``radius`` px (a square) of (row, col)."""
    patch = frame[max(0, row - radius):row + radius + 1, max(0, col - radius):col + radius + 1]
    return int(np.all(patch == color, axis=-1).sum())


def test_frame_shape_dtype_and_av_at_centre(roadmap, state):
    frame = render_bev_frame(roadmap, state, 0, size=SIZE, view_radius_m=RADIUS_M)
    assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
    assert tuple(frame[SIZE // 2, SIZE // 2]) == COLORS["av"]
    # The AV box is 4.5 m x 2 m, heading east: AV-coloured 1.5 m east and west of the centre, not 3 m north.
    assert tuple(frame[SIZE // 2, SIZE // 2 - round(1.5 * S)]) == COLORS["av"]
    assert tuple(frame[SIZE // 2 - round(3 * S), SIZE // 2]) != COLORS["av"]


def test_vehicle_box_at_world_position_north_up(roadmap, state):
    step = 0
    av_x, av_y = float(state.traj.x[0, step]), float(state.traj.y[0, step])
    frame = render_bev_frame(roadmap, state, step)
    row, col = world_to_pixel(*PARKED_XY, av_x, av_y)
    assert row < SIZE // 2  # north of the AV is up in the picture
    assert tuple(frame[row, col]) == AGENT_COLORS[AgentType.VEHICLE]
    mirrored_row, _ = world_to_pixel(PARKED_XY[0], 2 * av_y - PARKED_XY[1], av_x, av_y)  # mirror image in y
    assert tuple(frame[mirrored_row, col]) != AGENT_COLORS[AgentType.VEHICLE]


def test_light_colour_follows_state(roadmap, state):
    renderer = BevRenderer(roadmap, size=SIZE, view_radius_m=RADIUS_M)
    red, green = LIGHT_COLORS[LightState.STOP], LIGHT_COLORS[LightState.GO]
    for step, on, off in ((5, red, green), (15, green, red)):
        frame = renderer.frame(state, step)
        row, col = world_to_pixel(*STOP_XY, float(state.traj.x[0, step]), float(state.traj.y[0, step]))
        assert color_near(frame, row, col, on) > 20, f"step {step}: no {on} pixels at the stop point"
        assert color_near(frame, row, col, off) == 0


def test_no_lights_and_agents_outside_view(roadmap):
    state = make_state(with_light=False)
    far = state.traj.replace(x=state.traj.x.clone())
    far.x[1] += 1000.0  # the oncoming vehicle is 1 km east, far outside the view
    frame = BevRenderer(roadmap).frame(state.replace(traj=far), 3)
    assert frame.shape == (SIZE, SIZE, 3)
    assert color_near(frame, SIZE // 2, SIZE // 2, LIGHT_COLORS[LightState.STOP], radius=SIZE) == 0


def test_rejects_batched_state_and_bad_size(roadmap, state):
    batched = state.replace(traj=state.traj.map_tensors(lambda t, axes: t.unsqueeze(0)))
    with pytest.raises(ValueError, match="batch-free"):
        render_bev_frame(roadmap, batched)
    with pytest.raises(ValueError, match="even"):
        BevRenderer(roadmap, size=801)


def test_video_rejects_batched_state_without_writing(roadmap, state, tmp_path):
    batched = state.replace(traj=state.traj.map_tensors(lambda t, axes: t.unsqueeze(0)))
    with pytest.raises(ValueError, match="batch-free"):
        render_bev_video(roadmap, batched, tmp_path / "bad.mp4")
    assert not (tmp_path / "bad.mp4").exists()


def test_camera_holds_last_valid_av_pose(roadmap, state):
    valid = state.traj.valid.clone()
    valid[0, 15:] = False  # the AV leaves the scene after step 14
    gone = state.replace(traj=state.traj.replace(valid=valid))
    frame = BevRenderer(roadmap).frame(gone, 17)
    assert tuple(frame[SIZE // 2, SIZE // 2]) != COLORS["av"]
    row, col = world_to_pixel(*STOP_XY, float(state.traj.x[0, 14]), float(state.traj.y[0, 14]))
    assert color_near(frame, row, col, LIGHT_COLORS[LightState.GO]) > 20


def test_rendering_is_deterministic(roadmap, state):
    a = render_bev_frame(roadmap, state, 7, route_lanes=torch.tensor([0, 2, 3]))
    b = BevRenderer(roadmap, route_lanes=torch.tensor([0, 2, 3])).frame(state, 7)
    assert a.tobytes() == b.tobytes()


def test_tiles_match_one_large_tile(roadmap, state):
    """Slow twin of the tile cache: small tiles give the same pixels as one tile covering the window."""
    route = torch.tensor([0, 2, 3])
    small = BevRenderer(roadmap, route_lanes=route, tile_px=96)
    large = BevRenderer(roadmap, route_lanes=route, tile_px=4096)
    for step in (0, 11, 19):
        assert np.array_equal(small.frame(state, step), large.frame(state, step))


def test_even_odd_fill_matches_is_drivable(roadmap):
    """Slow twin of the drivable-area fill: RoadMap.is_drivable at every pixel centre away from the edges."""
    outer = [(-20.0, -20.0), (20.0, -20.0), (20.0, 20.0), (-20.0, 20.0), (-20.0, -20.0)]  # CCW
    island = [(-5.0, -5.0), (-5.0, 5.0), (7.0, 5.0), (3.0, -5.0), (-5.0, -5.0)]  # CW
    edge_xy, edge_valid = pad([outer, island])
    rings_map = roadmap.replace(road_edge_xy=edge_xy, road_edge_valid=edge_valid)
    px_per_m, left, top, side = 4.0, -100, -100, 200  # pixel centres cover x, y in [-25, 24.75] m
    rings_px = [np.stack([xy[v, 0] * px_per_m - left, -xy[v, 1] * px_per_m - top], -1)
                for xy, v in zip(edge_xy.double().numpy(), edge_valid.numpy())]
    mask = even_odd_mask(rings_px, side, side)
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    centres = torch.from_numpy(np.stack([(left + cols) / px_per_m, -(top + rows) / px_per_m], -1)).reshape(-1, 2)
    expected = rings_map.is_drivable(centres).numpy()
    a, b = rings_map.road_edge_segments
    clear = (point_segment_distance(centres.float(), a, b).min(-1).values > 1.0 / px_per_m).numpy()
    assert clear.sum() > 0.9 * side * side
    assert np.array_equal(mask.reshape(-1)[clear], expected[clear])
    assert mask.reshape(-1)[clear].any() and not mask.reshape(-1)[clear].all()


def test_video_round_trip(roadmap, state, tmp_path):
    path = tmp_path / "out" / "bev.mp4"
    info = render_bev_video(roadmap, state, path, route_lanes=torch.tensor([0, 2, 3]))
    assert info["frames"] == T and info["seconds"] > 0
    assert path.is_file() and path.stat().st_size > 0
    with imageio.get_reader(path, format="ffmpeg") as reader:
        frames = [frame for frame in reader]
    assert len(frames) == T
    assert all(frame.shape == (SIZE, SIZE, 3) for frame in frames)


def test_video_steps_slice(roadmap, state, tmp_path):
    path = tmp_path / "part.mp4"
    info = render_bev_video(roadmap, state, path, size=320, steps=slice(5, 15), progress=True)
    assert info["frames"] == 10
    with imageio.get_reader(path, format="ffmpeg") as reader:
        assert sum(1 for _ in reader) == 10
