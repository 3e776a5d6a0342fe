"""Data model contracts: validation names the field, files round-trip byte for byte."""

import numpy as np
import pytest
import torch

from simgen import io
from simgen.types import AgentMeta, AgentTrajectory, LightState, SceneState, TrafficLights, light_states_from_sumo


def make_scene(num_agents=3, num_steps=5, num_slots=2) -> SceneState:
    g = torch.Generator().manual_seed(0)
    traj = AgentTrajectory.zeros(num_agents, num_steps)
    traj = traj.replace(x=torch.randn(num_agents, num_steps, generator=g), length=torch.full((num_agents, num_steps), 4.5),
                        valid=torch.ones(num_agents, num_steps, dtype=torch.bool))
    meta = AgentMeta(object_id=torch.arange(num_agents), agent_type=torch.ones(num_agents, dtype=torch.int8),
                     is_av=torch.arange(num_agents) == 0)
    shape = (num_slots, num_steps)
    lights = TrafficLights(signal_id=torch.zeros(shape, dtype=torch.int32), lane_id=torch.zeros(shape, dtype=torch.int32),
                           stop_x=torch.zeros(shape), stop_y=torch.zeros(shape),
                           state=torch.full(shape, int(LightState.GO), dtype=torch.int8),
                           valid=torch.ones(shape, dtype=torch.bool))
    return SceneState(traj=traj, meta=meta, lights=lights, step=2, start_step=100, map_name="unit").validate()


def test_validate_names_field_and_axis():
    traj = AgentTrajectory.zeros(3, 5)
    with pytest.raises(ValueError, match=r"AgentTrajectory.y: axis T has size 4"):
        traj.replace(y=torch.zeros(3, 4)).validate()
    with pytest.raises(ValueError, match=r"AgentTrajectory.valid: expected a bool tensor"):
        traj.replace(valid=torch.zeros(3, 5)).validate()
    with pytest.raises(ValueError, match=r"AgentTrajectory.x: contains NaN"):
        traj.replace(x=torch.full((3, 5), float("nan"))).validate()


def test_two_avs_rejected():
    meta = AgentMeta(object_id=torch.arange(2), agent_type=torch.ones(2, dtype=torch.int8),
                     is_av=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="more than one AV"):
        meta.validate()


def test_sumo_light_characters():
    assert light_states_from_sumo("rRyYugGsoO") == [1, 1, 2, 2, 2, 3, 3, 3, 0, 0]


def test_scene_round_trip_is_byte_identical(tmp_path):
    scene = make_scene()
    io.save_scene(scene, tmp_path / "a.npz")
    back = io.load_scene(tmp_path / "a.npz")
    for name in AgentTrajectory.tensor_fields():
        assert torch.equal(getattr(back.traj, name), getattr(scene.traj, name)), name
    assert back.step == 2 and back.start_step == 100 and back.map_name == "unit"
    io.save_scene(back, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    # readable without simgen: plain numpy, documented keys
    with np.load(tmp_path / "a.npz") as data:
        assert data["agent/x"].shape == (3, 5) and data["agent/x"].dtype == np.float32
        assert data["av_pose"].shape == (5, 4)


def test_load_scene_reports_missing_key_and_version(tmp_path):
    arrays = io.scene_arrays(make_scene())
    del arrays["agent/heading"]
    io.write_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(io.FormatError, match=r"bad.npz: missing arrays \['agent/heading'\]"):
        io.load_scene(tmp_path / "bad.npz")
    arrays = io.scene_arrays(make_scene())
    arrays["format_version"] = np.int64(99)
    io.write_npz(tmp_path / "new.npz", arrays)
    with pytest.raises(io.FormatError, match="format_version 99"):
        io.load_scene(tmp_path / "new.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(io.FormatError, match="junk.npz: not a readable"):
        io.load_scene(tmp_path / "junk.npz")


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
