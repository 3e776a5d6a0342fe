"""The reference trip, its determinism, branching from its saved state, and the live co-simulation."""

import libsumo
import numpy as np
import torch

from simgen.traffic import SumoCoSim, load_branch
from simgen.traffic.sumo import close_run, current_step, front_from_centre
from simgen.types import AgentType
from tests.traffic.conftest import run_reference

STEPS = 60


def test_reference_trip_follows_the_av(reference):
    scene = reference.scene
    assert scene.num_steps == 11 + STEPS and scene.step == 10 and scene.num_agents == 256
    assert reference.sumo_ids[0] == "av" and scene.av_index == 0
    assert scene.meta.agent_type[0] == AgentType.VEHICLE
    traj = scene.traj
    assert traj.valid[0].all() and traj.speed_mps[0, 0] > 1.0
    used = scene.meta.object_id >= 0
    assert used.sum() == reference.info["rows_used"] > 1
    assert not traj.valid[~used].any()
    distance = torch.hypot(traj.x - traj.x[:1], traj.y - traj.y[:1])
    assert (distance[traj.valid] <= 60.0 + 1e-3).all()
    assert len(set(scene.meta.object_id[used].tolist())) == int(used.sum())
    assert reference.state_file.is_file() and reference.route_edges and reference.route_files
    assert reference.info["dropped_agents"] == 0 and not reference.info["arrived_early"]
    assert scene.lights.num_slots > 0 and scene.lights.valid.all()


def test_reference_trip_is_deterministic(reference, small_map, tmp_path):
    again = run_reference(small_map, tmp_path)
    assert again.sumo_ids == reference.sumo_ids and again.route_edges == reference.route_edges
    for part in ("traj", "meta", "lights"):
        first, second = getattr(reference.scene, part), getattr(again.scene, part)
        for field in first.tensor_fields():
            assert torch.equal(getattr(first, field), getattr(second, field)), f"{part}.{field} differs"


def sumo_centre(vehicle: str) -> np.ndarray:
    heading = np.pi / 2 - np.radians(libsumo.vehicle.getAngle(vehicle))
    front = np.array([libsumo.vehicle.getPosition(vehicle)])
    return front[0] - libsumo.vehicle.getLength(vehicle) / 2 * np.array([np.cos(heading), np.sin(heading)])


def test_branch_loads_the_scene_and_continues(reference, small_map):
    scene, t = reference.scene, reference.scene.step
    begin = scene.start_step + t
    load_branch(small_map.net_file, reference.state_file, 11, begin, reference.route_files)
    try:
        assert current_step() == begin
        on_map = set(libsumo.vehicle.getIDList())
        rows = [r for r, s in enumerate(reference.sumo_ids) if s in on_map and scene.traj.valid[r, t]]
        assert 0 in rows
        for r in rows:  # the state holds the scene's last history step, to save-state precision
            logged = [scene.traj.x[r, t].item(), scene.traj.y[r, t].item()]
            np.testing.assert_allclose(sumo_centre(reference.sumo_ids[r]), logged, atol=1e-3)
        previous = sumo_centre("av")
        for k in range(1, 21):  # the branch drives on plausibly and stays near the original continuation
            libsumo.simulationStep()
            now = sumo_centre("av")
            assert np.hypot(*(now - previous)) < 2.0
            previous = now
        logged = np.array([scene.traj.x[0, t + 20].item(), scene.traj.y[0, t + 20].item()])
        assert np.hypot(*(previous - logged)) < 5.0
    finally:
        close_run()


def test_cosim_replaying_the_av_reproduces_the_trip(reference, small_map):
    scene, t = reference.scene, reference.scene.step
    traj = scene.traj
    world = SumoCoSim(reference, small_map, seed=7)
    try:
        errors = []
        for k in range(t, scene.num_steps - 1):
            out = world.step(traj.x[0, k].item(), traj.y[0, k].item(), traj.heading[0, k].item())
            assert out.step == scene.start_step + k + 1
            assert out.x.shape == (scene.num_agents,) and out.light_state.shape == (scene.lights.num_slots,)
            # the AV sits exactly where it was put; SUMO's lights are the trip's (fixed-time programs)
            np.testing.assert_allclose([out.x[0], out.y[0]], [traj.x[0, k], traj.y[0, k]], atol=1e-3)
            assert torch.equal(out.light_state, scene.lights.state[:, k + 1])
            known = scene.meta.object_id >= 0
            assert torch.equal(out.object_id[known], scene.meta.object_id[known])
            distance = torch.hypot(out.x - out.x[0], out.y - out.y[0])
            assert (distance[out.valid] <= 60.0 + 1e-3).all()
            both = out.valid & traj.valid[:, k + 1]
            both[0] = False
            errors.append(torch.hypot(out.x - traj.x[:, k + 1], out.y - traj.y[:, k + 1])[both])
        errors = torch.cat(errors)
        assert len(errors) > 30 and errors.median() < 0.1, f"median deviation from the trip {errors.median():.3f} m"
        assert world.info["dropped_agents"] == 0
    finally:
        world.close()


def test_cosim_follows_a_different_av_path(reference, small_map):
    """An AV that stops dead (instead of driving on) stays where it is put; SUMO's traffic keeps running."""
    scene, t = reference.scene, reference.scene.step
    x, y, h = (scene.traj.x[0, t].item(), scene.traj.y[0, t].item(), scene.traj.heading[0, t].item())
    world = SumoCoSim(reference, small_map, seed=3)
    try:
        for _ in range(20):
            out = world.step(x, y, h)
            assert out.valid[0]
            np.testing.assert_allclose([out.x[0], out.y[0], out.heading[0]], [x, y, h], atol=1e-3)
        assert libsumo.vehicle.getSpeed("av") < 0.1
        front = front_from_centre(np.array([[x, y]]), np.array([h]), np.array([out.length[0].item()]))[0]
        np.testing.assert_allclose(libsumo.vehicle.getPosition("av"), front, atol=1e-3)
    finally:
        world.close()
