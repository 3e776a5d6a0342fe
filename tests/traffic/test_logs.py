"""``generate_logs`` with two worker processes writes a LOG_DIR that simgen.io reads back."""

import json

import libsumo
import numpy as np
import pytest
import torch

from simgen.io import load_logs, read_npz
from simgen.traffic import generate_logs, load_branch
from simgen.traffic.sumo import close_run
from simgen.types import AgentType
from tests.traffic.conftest import DEMAND
from tests.traffic.test_reference import sumo_centre

RADIUS_M = 60.0


@pytest.fixture(scope="module")
def logs(small_map, tmp_path_factory):
    out = tmp_path_factory.mktemp("logs") / "grid"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIMGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
        generate_logs(str(small_map.net_file), out, scenes=5, seed=4, workers=2, trip_seconds=3.0,
                      radius_m=RADIUS_M, max_agents=128, demand=DEMAND, warmup_s=30.0, progress=False)
    return load_logs(out)


def test_layout_and_index(logs):
    index = logs.index
    assert len(logs) == 5 and len(logs.trip_entries) == 2  # one trip per worker
    assert {e["worker_seed"] for e in logs.scene_entries} == {w["worker_seed"] for w in index["workers_info"]}
    assert [e["id"] for e in logs.scene_entries] == list(range(5))
    for entry in logs.scene_entries + logs.trip_entries:
        assert (logs.root / entry["file"]).is_file() and (logs.root / entry["state_file"]).is_file()
    assert (logs.root / "net.net.xml").is_file() and not (logs.root / "work").exists()
    assert logs.roadmap().num_signals > 0
    assert json.loads((logs.root / "logs.json").read_text())["history_steps"] == 11


def test_windows(logs):
    roadmap = logs.roadmap()
    for i, entry in enumerate(logs.scene_entries):
        scene = logs.scene(i)
        traj, t = scene.traj, scene.step
        assert scene.num_steps == 91 and t == 10 and scene.num_agents == 128
        assert scene.av_index == 0 and traj.valid[0].all() and scene.meta.agent_type[0] == AgentType.VEHICLE
        sumo_id = read_npz(logs.root / entry["file"])["agent/sumo_id"]
        assert sumo_id[0] == entry["av_sumo_id"] and sumo_id.shape == (128,)
        used = scene.meta.object_id >= 0
        assert int(used.sum()) == entry["num_agents"] and (sumo_id[~used.numpy()] == "").all()
        distance = torch.hypot(traj.x[:, t] - traj.x[0, t], traj.y[:, t] - traj.y[0, t])[used]
        assert traj.valid[used, t].all() and (distance <= RADIUS_M + 1e-3).all()
        assert (distance[1:].diff() >= -1e-3).all()  # nearest first
        stop = roadmap.signal_stop_xy[scene.lights.signal_id[:, 0].long()]
        near = torch.hypot(*(stop - torch.stack([traj.x[0, t], traj.y[0, t]])).T) <= RADIUS_M + 1e-3
        assert near.all() and int(near.sum()) == int(
            (torch.hypot(*(roadmap.signal_stop_xy - torch.stack([traj.x[0, t], traj.y[0, t]])).T) <= RADIUS_M).sum())
        assert scene.start_step == entry["start_step"]


def test_trips(logs):
    for i, entry in enumerate(logs.trip_entries):
        trip = logs.trip(i)
        assert trip.num_steps == 11 + 30 and trip.traj.valid[0].all() and entry["av_sumo_id"] == "av"


def test_window_state_branches_from_the_last_history_step(logs):
    entry = logs.scene_entries[-1]
    scene = logs.scene(len(logs) - 1)
    sumo_id = read_npz(logs.root / entry["file"])["agent/sumo_id"]
    load_branch(logs.root / "net.net.xml", logs.root / entry["state_file"], 1, entry["start_step"] + scene.step)
    try:
        on_map = set(libsumo.vehicle.getIDList())
        rows = [r for r, s in enumerate(sumo_id) if s in on_map]
        assert 0 in rows
        for r in rows:
            logged = [scene.traj.x[r, scene.step].item(), scene.traj.y[r, scene.step].item()]
            np.testing.assert_allclose(sumo_centre(sumo_id[r]), logged, atol=1e-3)
        for _ in range(10):  # without route files the state still holds SUMO's read-ahead demand
            libsumo.simulationStep()
        assert libsumo.vehicle.getIDCount() > 0
    finally:
        close_run()


def test_same_seed_same_logs(logs, small_map, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMGEN_CACHE", str(tmp_path / "cache"))
    again = load_logs(generate_logs(str(small_map.net_file), tmp_path / "again", scenes=5, seed=4, workers=2,
                                    trip_seconds=3.0, radius_m=RADIUS_M, max_agents=128, demand=DEMAND,
                                    warmup_s=30.0, progress=False))
    assert again.scene_entries == logs.scene_entries and again.trip_entries == logs.trip_entries
    for entry in again.scene_entries + again.trip_entries:
        assert (again.root / entry["file"]).read_bytes() == (logs.root / entry["file"]).read_bytes()


def test_object_ids_are_unique_across_workers(logs):
    owner = {}  # object id -> (worker seed, SUMO id)
    for entry in logs.scene_entries + logs.trip_entries:
        arrays = read_npz(logs.root / entry["file"])
        for object_id, sumo_id in zip(arrays["agent/object_id"], arrays["agent/sumo_id"]):
            if object_id >= 0:
                assert owner.setdefault(int(object_id), (entry["worker_seed"], sumo_id)) == (entry["worker_seed"],
                                                                                           sumo_id)
    assert len({seed for seed, _ in owner.values()}) == 2
