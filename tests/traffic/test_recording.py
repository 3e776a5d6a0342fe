"""What the recorder reads from SUMO looks like driving: on the road, continuous, plausible, lights cycling."""

import numpy as np
import torch

from simgen.traffic.sumo import (centre_from_front, front_from_centre, heading_from_sumo_angle,
                                 sumo_angle_from_heading, wrap_angle)
from simgen.types import AgentType, LightState
from tests.traffic.conftest import per_agent_steps


def vehicle_mask(run, object_id):
    return run.registry.agent_type[object_id] == AgentType.VEHICLE


def test_vehicles_stay_on_the_drivable_area(recorded_run, small_map):
    xy = np.concatenate([f.xy[vehicle_mask(recorded_run, f.object_id)] for f in recorded_run.frames])
    offroad = (~small_map.roadmap.is_drivable(torch.from_numpy(xy))).float().mean().item()
    print(f"offroad fraction of {len(xy)} vehicle-steps: {offroad:.5f}")
    assert len(xy) > 10_000
    assert offroad < 0.005


def test_lateral_motion_is_continuous(recorded_run):
    """No lane-change jumps: the front bumper (the point SUMO moves along its lanes) never steps more than 1 m
    sideways, and the heading never turns more than 0.35 rad in a step (20 degrees; a bus in a tight turn of
    the grid's junctions reaches ~0.25)."""
    ids, before, after = per_agent_steps(recorded_run.frames)
    keep = vehicle_mask(recorded_run, ids)
    length = recorded_run.registry.size[ids[keep], 0]
    front_before = front_from_centre(before[keep, :2], before[keep, 3], length)
    front_after = front_from_centre(after[keep, :2], after[keep, 3], length)
    step_xy = front_after - front_before
    heading = before[keep, 3]
    sideways = np.abs(-np.sin(heading) * step_xy[:, 0] + np.cos(heading) * step_xy[:, 1])
    assert sideways.max() < 1.0, f"largest sideways step {sideways.max():.2f} m in 0.1 s"
    turn = np.abs(wrap_angle(after[keep, 3] - heading))
    assert turn.max() < 0.35, f"largest heading change {turn.max():.2f} rad in 0.1 s"


def test_speeds_and_accelerations_are_plausible(recorded_run):
    speed = np.concatenate([f.speed_mps for f in recorded_run.frames])
    assert speed.min() >= 0 and speed.max() < 35
    ids, before, after = per_agent_steps(recorded_run.frames)
    keep = vehicle_mask(recorded_run, ids)
    accel = (np.hypot(*after[keep, 4:6].T) - np.hypot(*before[keep, 4:6].T)) / 0.1
    inside = ((accel >= -10) & (accel <= 5)).mean()
    assert inside > 0.999, f"only {inside:.4f} of accelerations within [-10, 5] m/s^2"
    assert (np.hypot(*(after - before)[:, :2].T) < 3.6).all()  # 36 m/s, faster than any lane allows


def test_lights_cycle_and_follow_the_static_program(recorded_run, small_map):
    roadmap = small_map.roadmap
    states = np.stack([f.light_state for f in recorded_run.frames])  # [T, G]
    assert states.shape[1] == roadmap.num_signals > 0
    assert ((states == LightState.STOP).any(0) & (states == LightState.GO).any(0)).all()
    static = np.stack([roadmap.signal_state_at(f.step).numpy() for f in recorded_run.frames])
    assert (states == static).mean() > 0.99  # fixed-time programs: SUMO runs exactly the net's tlLogic


def test_all_agent_types_present(recorded_run):
    counts = np.bincount(recorded_run.registry.agent_type, minlength=4)
    assert counts[AgentType.VEHICLE] > 20 and counts[AgentType.PEDESTRIAN] > 5 and counts[AgentType.CYCLIST] > 0
    sizes = recorded_run.registry.size
    is_ped = recorded_run.registry.agent_type == AgentType.PEDESTRIAN
    assert (sizes[~is_ped, 0] >= 1.6).all() and (sizes[is_ped, 0] < 0.5).all()
    assert recorded_run.stats.teleports == 0


def test_front_bumper_converted_to_box_centre(recorded_run):
    last = recorded_run.frames[-1]
    registry = recorded_run.registry
    checked = 0
    for oid, pose in zip(last.object_id, last.pose):
        view = recorded_run.sumo_view[registry.sumo_ids[oid]]
        length = registry.size[oid, 0]
        assert length == view["length"]
        # the formula: front = centre + length / 2 along the heading
        front = pose[:2] + length / 2 * np.array([np.cos(pose[3]), np.sin(pose[3])])
        np.testing.assert_allclose(front, view["front"], atol=1e-6)
        if view["lane_centre"] is not None:
            np.testing.assert_allclose(pose[:2], view["lane_centre"], atol=1e-3)
            checked += 1
    assert checked >= 5


def test_angle_conventions_round_trip():
    angles = np.array([0.0, 90.0, 180.0, 270.0, 359.0, 45.0])
    heading = heading_from_sumo_angle(angles)
    np.testing.assert_allclose(heading[:4], [np.pi / 2, 0.0, -np.pi / 2, np.pi], atol=1e-12)
    assert ((heading > -np.pi) & (heading <= np.pi)).all()
    np.testing.assert_allclose([sumo_angle_from_heading(h) for h in heading], angles, atol=1e-9)
    centre = centre_from_front(np.array([[10.0, 0.0]]), np.array([0.0]), np.array([4.0]))
    np.testing.assert_allclose(centre, [[8.0, 0.0]])
