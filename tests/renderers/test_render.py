"""`simgen render`: the documented per-frame layout from two worker processes, the video and summary, bad input."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image
from simgen.renderers.render import (
    RenderError,
    RenderOptions,
    frame_steps,
    render_rollout,
)
from typer.testing import CliRunner

from simgen import io
from simgen.cli import app
from simgen.types import Rollout
from tests.renderers.conftest import make_scene
from tests.test_cli import simgen

CAMERAS = ("front", "front_left", "front_right", "side_left", "side_right", "rear_left", "rear_right", "rear")


@pytest.fixture(scope="module")
def rollout_dir(small_grid, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rollout")
    state = make_scene(small_grid, steps=3)
    io.save_rollout_arrays(Rollout(state, torch.zeros(0, dtype=torch.int32), 1), folder / "rollout.npz")
    io.save_map(small_grid, folder / "map.npz")
    io.write_json(folder / "summary.json", {"seed": 0})
    return folder


@pytest.fixture(scope="module")
def rendered(rollout_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "sensors"
    result = simgen("render", str(rollout_dir), "--out", str(out), "--frames", "1:3", "--workers", "2",
                    "--weather", "rain", "--time-of-day", "18:00")
    assert result.returncode == 0, result.stderr
    return out


def test_render_writes_the_documented_layout(rendered):
    summary = json.loads((rendered / "summary.json").read_text())
    assert summary["steps"] == [1, 2] and summary["workers"] == 2
    assert summary["options"]["weather"] == "rain" and summary["semantic_classes"]["car"] == 11
    for step in (1, 2):
        folder = rendered / "frames" / f"{step:05d}"
        for name in CAMERAS:
            assert Image.open(folder / f"camera_{name}.png").size == (480, 320)
        cameras = io.read_npz(folder / "cameras.npz")
        assert cameras["front/depth_m"].shape == (320, 480) and cameras["front/intrinsics"].shape == (3, 3)
        assert cameras["rear/world_from_camera"].shape == (4, 4)
        lidar = io.read_npz(folder / "lidar_top.npz")
        assert lidar["range_image"].shape == (64, 2650, 4)
        assert len(lidar["xyz"]) == int((lidar["range_image"][..., 3] == 1).sum())
        actors = io.read_npz(folder / "actors.npz")
        assert actors["box"].shape == (4, 7) and actors["is_av"].sum() == 1
        # the car ahead: its instance id from actors.npz is what the front camera and the lidar see
        car = int(actors["instance_id"][actors["slot"] == 1][0])
        assert (cameras["front/instance"] == car).sum() > 100 and (lidar["instance"] == car).sum() > 20
        av_pose = actors["av_pose"]
        assert np.allclose(lidar["world_from_lidar"][:2, 3], av_pose[:2])
        assert Image.open(folder / "contact_sheet.png").size == (3 * 480, 3 * 320)
    with imageio.get_reader(rendered / "sensors.mp4", format="ffmpeg") as reader:
        assert sum(1 for _ in reader) == 2


@pytest.mark.parametrize("args, message", [
    (["--sensors", "radar"], "choose one or more of lidar, cameras"),
    (["--frames", "50:60"], "selects no step"),
    (["--frames", "a:b"], "expected A:B"),
    (["--time-of-day", "25:00"], "HH:MM"),
    (["--weather", "snow"], "clear, rain, fog"),
    (["--rig", "missing.yaml"], "missing.yaml: no such file"),
])
def test_bad_render_input_exits_2(rollout_dir, tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["render", str(rollout_dir), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output, result.output
    assert not out.exists()


def test_frame_steps(small_grid):
    state = make_scene(small_grid, steps=3)
    assert frame_steps(":", state) == [0, 1, 2] and frame_steps("1:", state) == [1, 2]
    assert frame_steps("2", state) == [2] and frame_steps(":-1", state) == [0, 1]
    with pytest.raises(RenderError, match="choose one or more"):
        RenderOptions(sensors=()).check()


def test_scenario_sensors_block_renders_with_the_rollout(tmp_path):
    config = tmp_path / "scenario.yaml"
    config.write_text("map: grid\nmap_options: {blocks: 1}\nseed: 1\nduration_s: 0.2\nworld: idm\n"
                      "traffic: {warmup_s: 10}\noutputs: {bev_video: false}\n"
                      "sensors: {cameras: false, frames: '11:12'}\n")
    out = tmp_path / "out"
    result = simgen("rollout", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "sensors" / "summary.json").read_text())
    assert summary["sensors"] == ["lidar"] and summary["steps"] == [11] and summary["options"]["seed"] == 1
    assert (out / "sensors" / "frames" / "00011" / "lidar_top.npz").is_file()
    assert not (out / "sensors" / "frames" / "00011" / "cameras.npz").exists()
    assert "sensors_s" in json.loads((out / "summary.json").read_text())["timings"]


def test_one_worker_in_process_writes_the_same_arrays(rollout_dir, rendered, tmp_path):
    """Determinism: the same options and seed give identical arrays, whether frames ran in two spawned
    workers (the ``rendered`` CLI run) or here in one process."""
    options = RenderOptions(frames="2:3", weather="rain", time_of_day="18:00")
    render_rollout(rollout_dir, tmp_path / "one", options)
    for name in ("cameras.npz", "lidar_top.npz", "actors.npz"):
        a = io.read_npz(rendered / "frames" / "00002" / name)
        b = io.read_npz(tmp_path / "one" / "frames" / "00002" / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    for camera in CAMERAS:
        png = f"frames/00002/camera_{camera}.png"
        assert np.array_equal(np.asarray(Image.open(rendered / png)), np.asarray(Image.open(tmp_path / "one" / png)))
