"""The pure step: merges actions by row, differentiates velocities, never mutates its input."""

import pytest
import torch

from simgen.sim.env import hold_action, merge_actions, step
from simgen.sim.rollout import mask_future
from simgen.types import DT_S
from tests.test_types_io import make_scene


def test_step_writes_next_column_and_velocity():
    scene = make_scene()
    before = scene.traj.x.clone()
    av_rows = scene.meta.is_av
    av = hold_action(scene, av_rows).replace(x=scene.traj.x[:, 2] + 1.0)
    world = hold_action(scene, ~av_rows)
    nxt = step(scene, [av, world])
    assert nxt.step == 3
    assert torch.equal(scene.traj.x, before), "step must not mutate its input"
    assert nxt.traj.x[0, 3] == pytest.approx(float(scene.traj.x[0, 2]) + 1.0)
    assert nxt.traj.vel_x[0, 3] == pytest.approx(1.0 / DT_S)
    assert nxt.traj.vel_x[1, 3] == 0.0 and nxt.traj.x[1, 3] == scene.traj.x[1, 2]


def test_uncontrolled_rows_become_invalid_and_double_control_fails():
    scene = make_scene()
    av = hold_action(scene, scene.meta.is_av)
    nxt = step(scene, [av])
    assert nxt.traj.valid[:, 3].tolist() == [True, False, False]
    assert nxt.traj.x[1, 3] == 0.0
    with pytest.raises(ValueError, match="more than one actor"):
        merge_actions([av, av])


def test_lights_come_from_the_world_action():
    scene = make_scene()
    world = hold_action(scene, ~scene.meta.is_av).replace(light_state=torch.tensor([1, 2], dtype=torch.int8))
    nxt = step(scene, [hold_action(scene, scene.meta.is_av), world])
    assert nxt.lights.state[:, 3].tolist() == [1, 2]


def test_mask_future_hides_the_log():
    scene = make_scene()
    masked = mask_future(scene)
    assert not masked.traj.valid[:, 3:].any() and (masked.traj.x[:, 3:] == 0).all()
    assert torch.equal(masked.traj.x[:, :3], scene.traj.x[:, :3])
    assert not masked.lights.valid[:, 3:].any()
