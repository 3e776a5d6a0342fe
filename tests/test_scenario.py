"""Scenario YAML validation: every mistake names the file, the key and the fix."""

from pathlib import Path

import pytest

from simgen import scenario

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["city.yaml", "grid.yaml"])
def test_shipped_scenarios_validate(name):
    s = scenario.load(ROOT / "scenarios" / name)
    assert s.steps > 0 and s.scene.radius_m > 0


def test_unknown_key_lists_allowed_keys(tmp_path):
    path = write(tmp_path, "map: grid\ntraffic:\n  vehicles_per_hour: 3\n")
    with pytest.raises(scenario.ScenarioError, match=r"s.yaml: unknown key 'traffic.vehicles_per_hour'; allowed here: "
                                                     r"cyclists_per_hour_per_km, pedestrians_per_hour_per_km"):
        scenario.load(path)


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "map: grid\nseed: lots\n")
    with pytest.raises(scenario.ScenarioError, match=r"s.yaml: key 'seed': .*integer.*'lots'"):
        scenario.load(path)


def test_missing_file_missing_key_bad_yaml_unknown_world(tmp_path):
    with pytest.raises(scenario.ScenarioError, match="nope.yaml: no such file"):
        scenario.load(tmp_path / "nope.yaml")
    with pytest.raises(scenario.ScenarioError, match="missing required key 'map'"):
        scenario.load(write(tmp_path, "seed: 1\n"))
    with pytest.raises(scenario.ScenarioError, match="not valid YAML"):
        scenario.load(write(tmp_path, "map: [grid\n"))
    with pytest.raises(scenario.ScenarioError, match="unknown world 'carla'; choose one of"):
        scenario.load(write(tmp_path, "map: grid\nworld: carla\n"))


def test_world_model_device_is_checked_when_the_scenario_is_read(tmp_path):
    """A bad or unavailable device is refused before any SUMO run, naming the key and the fix."""
    import torch

    with pytest.raises(scenario.ScenarioError, match="world_model.device.*should match pattern"):
        scenario.load(write(tmp_path, "map: grid\n"), ["world_model.device=gpu"])
    if not torch.cuda.is_available():
        with pytest.raises(scenario.ScenarioError, match="world_model.device': cuda, .* set it to cpu"):
            scenario.load(write(tmp_path, "map: grid\n"), ["world_model.device=cuda"])
    assert scenario.load(write(tmp_path, "map: grid\nworld: idm\n"), ["world_model.device=cuda:1"]).world == "idm"


def test_overrides(tmp_path):
    s = scenario.load(write(tmp_path, "map: grid\n"), ["world=idm", "scene.radius_m=80", "duration_s=2.5"])
    assert s.world == "idm" and s.scene.radius_m == 80 and s.steps == 25
    with pytest.raises(scenario.ScenarioError, match="--set 'world' must look like"):
        scenario.load(write(tmp_path, "map: grid\n"), ["world"])
