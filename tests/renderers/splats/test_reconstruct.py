"""Reconstruction on a tiny synthetic log (plain layout): bad input, loss and PSNR, resume, actor editing on the
fitted scene (pixels and lidar returns move with the box; removing the actor shows the road), and replay."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from simgen.renderers.splats.dataset import LogError, load_log, write_plain_frame
from simgen.renderers.splats.model import SplatParams, frame_gaussians, load_scene
from simgen.renderers.splats.rasterize import Cameras, render
from simgen.renderers.splats.reconstruct import ReconstructConfig, reconstruct

SKY = (0.6, 0.7, 0.85)
W, H = 48, 32
K = np.array([[36.0, 0.0, 24.0], [0.0, 36.0, 16.0], [0.0, 0.0, 1.0]])
FRAMES = 9
CAR_SIZE = (1.6, 0.9, 0.8)


def _truth() -> tuple[SplatParams, callable]:
    """A checkered road (12 x 8 m) with a wall behind it (world frame) and a red car (box frame) that drives
    along +x from -3 m to +3 m over the frames."""
    xs, ys = torch.arange(-6.0, 6.01, 0.4), torch.arange(-4.0, 4.01, 0.4)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    road = torch.stack([gx.flatten(), gy.flatten(), torch.zeros(gx.numel())], -1)
    checker = ((road[:, 0].floor() + road[:, 1].floor()) % 2)[:, None]
    road_c = 0.35 + 0.3 * checker * torch.tensor([1.0, 0.9, 0.6])
    wx, wz = torch.meshgrid(xs, torch.arange(0.2, 3.0, 0.4), indexing="ij")
    wall = torch.stack([wx.flatten(), torch.full((wx.numel(),), 4.2), wz.flatten()], -1)
    wall_c = torch.stack([0.2 + 0.05 * wall[:, 0].abs(), 0.3 + 0.1 * wall[:, 2], torch.full((len(wall),), 0.7)], -1)
    cx, cy, cz = torch.meshgrid(torch.arange(-0.8, 0.81, 0.2), torch.arange(-0.45, 0.46, 0.15),
                                torch.arange(0.1, 0.81, 0.15), indexing="ij")
    car = torch.stack([cx.flatten(), cy.flatten(), cz.flatten()], -1)
    car_c = torch.tensor([[0.85, 0.1, 0.1]]).expand(len(car), 3)

    def part(points, colors, scale, owner):
        return SplatParams.from_points(points, colors, torch.full((len(points),), scale),
                                       torch.full((len(points),), owner), opacity=0.9)

    params = SplatParams.concat([part(road, road_c, 0.22, -1), part(wall, wall_c, 0.22, -1), part(car, car_c, 0.12, 0)])
    return params, lambda t: torch.tensor([[-3.0 + 6.0 * t / (FRAMES - 1), 0.0, 0.0, *CAR_SIZE, 0.0]])


def camera_poses(t: int) -> dict[str, np.ndarray]:
    """Two cameras 7 m in front of the road (y = -7), 3 m up, looking at +y and 20 degrees down; the rig slides
    along x a little each frame."""
    poses = {}
    pitch = math.radians(20)
    for name, x in (("left", -1.5), ("right", 1.5)):
        # camera axes in the world: x right = +x, z forward = (0, cos p, -sin p), y down = z × x
        fwd = np.array([0.0, math.cos(pitch), -math.sin(pitch)])
        right = np.array([1.0, 0.0, 0.0])
        down = np.cross(fwd, right)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([right, down, fwd], 1)
        pose[:3, 3] = (x + 0.1 * t, -7.0, 3.0)
        poses[name] = pose
    return poses


def render_truth(params: SplatParams, box: torch.Tensor, pose: np.ndarray, present: bool = True) -> torch.Tensor:
    g = frame_gaussians(params, box, torch.tensor([present]))
    cams = Cameras(torch.from_numpy(np.linalg.inv(pose)).float()[None], torch.from_numpy(K).float()[None], W, H)
    rgb, alpha, _ = render(g, cams, "RGB")
    return (rgb + (1 - alpha) * torch.tensor(SKY))[0].clamp(0, 1)


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-log")
    params, box_at = _truth()
    for t in range(FRAMES):
        poses = camera_poses(t)
        images = {n: (render_truth(params, box_at(t), p) * 255).round().byte().numpy() for n, p in poses.items()}
        points = frame_gaussians(params, box_at(t), torch.tensor([True])).means.numpy()
        actors = [{"id": 42, "type": "vehicle", "box": box_at(t)[0].tolist()}]
        write_plain_frame(root / "frames" / f"{t:05d}", images, {n: K for n in poses}, poses, points, actors)
    return root


CONFIG = ReconstructConfig(iterations=60, resolution=None, views_per_step=2, far_points=0, ray_points=100, voxel_m=0.25,
                           refine_start=20, refine_every=20, checkpoint_every=30, comparisons=1, max_gaussians=3000,
                           lr_sh0=1e-2)


@pytest.fixture(scope="module")
def fitted(tiny_log, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-recon")
    summary = reconstruct(tiny_log, out, CONFIG)
    return out, summary


def test_plain_log_loads(tiny_log):
    log = load_log(tiny_log)
    assert log.layout == "plain" and log.camera_names == ("left", "right") and log.num_frames == FRAMES
    assert log.images.shape == (FRAMES, 2, H, W, 3) and log.actor_ids == (42,) and bool(log.present.all())


def test_tiny_reconstruction_lowers_loss_and_raises_psnr(fitted):
    out, summary = fitted
    history = summary["history"]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert summary["psnr_heldout"] > summary["initial"]["psnr"] + 1.0
    assert summary["psnr_heldout"] > 24.0
    assert summary["depth_abs_rel_heldout"] < 0.1
    assert summary["protocol"]["heldout_frames"] == ["00000", "00008"]
    for name in ("gaussians.npz", "scene.json", "scene.ply", "summary.json", "checkpoint.pt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["psnr_heldout"] == summary["psnr_heldout"]
    assert list((out / "comparisons").glob("*.png"))


def test_resume_continues_from_the_checkpoint(tiny_log, tmp_path):
    first = reconstruct(tiny_log, tmp_path, ReconstructConfig(**{**CONFIG.__dict__, "iterations": 20,
                                                                 "checkpoint_every": 10, "refine_start": 10,
                                                                 "refine_every": 10}))
    again = reconstruct(tiny_log, tmp_path, ReconstructConfig(**{**CONFIG.__dict__, "iterations": 30,
                                                                 "checkpoint_every": 10, "refine_start": 10,
                                                                 "refine_every": 10}), resume=True)
    assert first["resumed_from"] == 0 and again["resumed_from"] == 20


def _red(image: torch.Tensor) -> torch.Tensor:
    return (image[..., 0] - image[..., 1] > 0.3) & (image[..., 0] > 0.5)


def test_editing_the_fitted_actor_moves_its_pixels_and_lidar_returns_and_removal_shows_the_road(fitted):
    out, _ = fitted
    scene = load_scene(out)
    truth, box_at = _truth()
    t = 4
    box = scene.boxes[:, t].clone()
    pose = camera_poses(t)["left"]
    before = render_truth(scene.params, box, pose)
    moved_box = box.clone()
    moved_box[0, 0] += 1.0
    after = render_truth(scene.params, moved_box, pose)
    red_before, red_after = _red(before), _red(after)
    assert red_before.sum() >= 10
    cols = torch.arange(W).float()
    shift = (red_after * cols).sum() / red_after.sum() - (red_before * cols).sum() / red_before.sum()
    # the box centre's projection moves by fx * 1 m / depth
    centre = np.linalg.inv(pose) @ np.array([*box[0, :2].tolist(), 0.4, 1.0])
    assert abs(float(shift) - K[0, 0] / centre[2]) < 1.5
    # removal: where the car was, the road the other frames saw (the truth without the car), not a hole
    gone = render_truth(scene.params, box, pose, present=False)
    road = render_truth(truth, box_at(t), pose, present=False)
    assert not _red(gone).any()
    assert float((gone[red_before] - road[red_before]).abs().mean()) < 0.08
    # lidar: the returns on the actor move with its box
    from simgen.renderers.splats import lidar
    lidar_pose = torch.eye(4)
    lidar_pose[:3, 3] = torch.tensor([0.0, -7.0, 1.0])
    inclinations = torch.tensor(np.radians(np.linspace(2.0, -12.0, 16))).float()

    def returns(boxes, present):
        gaussians = frame_gaussians(scene.params, boxes, torch.tensor([present]))
        image = lidar.render_lidar(gaussians, lidar_pose, inclinations, columns=720, max_range=20.0)
        return image

    with torch.no_grad():
        with_car, moved, without = returns(box, True), returns(moved_box, True), returns(box, False)

    def car_points(image):
        hit = (image[..., 3] > 0) & ((image[..., 0] - without[..., 0]).abs() > 0.5) | (
            (image[..., 3] > 0) & (without[..., 3] <= 0))
        rows, cols = torch.nonzero(hit, as_tuple=True)
        az = math.pi - 2 * math.pi * (cols.float() + 0.5) / 720
        el = inclinations[rows]
        r = image[rows, cols, 0]
        xyz = torch.stack([r * torch.cos(el) * torch.cos(az), r * torch.cos(el) * torch.sin(az), r * torch.sin(el)], -1)
        return xyz + lidar_pose[:3, 3]

    a, b = car_points(with_car), car_points(moved)
    assert len(a) >= 10 and len(b) >= 10
    assert abs(float(b[:, 0].mean() - a[:, 0].mean()) - 1.0) < 0.25
    assert abs(float(b[:, 1].mean() - a[:, 1].mean())) < 0.25


# --- bad input --------------------------------------------------------------------------------------------------

def _copy_log(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_pose_names_file_and_field(tiny_log, tmp_path):
    log = _copy_log(tiny_log, tmp_path / "log")
    path = log / "frames" / "00003" / "frame.json"
    meta = json.loads(path.read_text())
    del meta["cameras"]["right"]["world_from_camera"]
    path.write_text(json.dumps(meta))
    with pytest.raises(LogError, match=r"00003/frame.json: field 'cameras.right.world_from_camera' is missing"):
        load_log(log)


def test_mismatched_image_size_names_file_and_sizes(tiny_log, tmp_path):
    from PIL import Image

    log = _copy_log(tiny_log, tmp_path / "log")
    path = log / "frames" / "00002" / "camera_left.png"
    Image.open(path).resize((40, 30)).save(path)
    with pytest.raises(LogError, match=r"00002/camera_left.png: 40x30 px, but camera 'left' is 48x32 px"):
        load_log(log)


def test_empty_point_cloud_names_file(tiny_log, tmp_path):
    log = _copy_log(tiny_log, tmp_path / "log")
    np.save(log / "frames" / "00005" / "points.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(LogError, match=r"00005/points.npy: empty point cloud"):
        load_log(log)


def test_not_a_log_folder(tmp_path):
    with pytest.raises(LogError, match="no frames/ folder"):
        load_log(tmp_path)


# --- replaying a rollout through the fitted scene ---------------------------------------------------------------

RIG = """
name: tiny
lidars:
  - {name: top, beams: 8, inclinations_deg: [2, 0, -2, -4, -6, -8, -10, -12], columns: 360, max_range_m: 30,
     mount: {x_m: 0, y_m: 0, z_m: 1.0}}
cameras:
  - {name: front, width: 48, height: 32, fx: 36, fy: 36, cx: 24, cy: 16,
     mount: {x_m: 0, y_m: 0, z_m: 3.0, pitch_deg: 20}}
"""


def test_replay_moves_reconstructed_actors_and_casts_new_agents_from_the_library(fitted, small_grid, tmp_path):
    from dataclasses import replace

    from simgen import io
    from simgen.renderers.splats.replay import SplatRenderOptions, render_rollout_splats
    from simgen.types import AgentType, Rollout
    from tests.renderers.conftest import make_scene

    out, _ = fitted
    # the AV 7 m south of the road's centre facing north (+y), as the cameras were; the reconstructed car (id 42)
    # 7 m ahead of it, and a new car (id 500, never reconstructed) 3 m further to the right
    others = ((7.0, 0.0, *CAR_SIZE, AgentType.VEHICLE), (10.0, -3.0, 1.7, 0.9, 0.8, AgentType.VEHICLE))
    state = make_scene(small_grid, others=others, steps=2, av=(np.array([0.0, -7.0]), math.pi / 2))
    state = replace(state, meta=replace(state.meta, object_id=torch.tensor([100, 42, 500])))
    run = tmp_path / "rollout"
    run.mkdir()
    io.save_rollout_arrays(Rollout(state, torch.zeros(0, dtype=torch.int32), 1), run / "rollout.npz")
    io.save_map(small_grid, run / "map.npz")
    (run / "summary.json").write_text("{}")
    (tmp_path / "tiny.yaml").write_text(RIG)
    sensors = ("cameras", "lidar")
    summary = render_rollout_splats(run, tmp_path / "splats", SplatRenderOptions(
        scene=str(out), sensors=sensors, frames="0:1", rig=str(tmp_path / "tiny.yaml")))
    kinds = {a["object_id"]: a["kind"] for a in summary["cast"]["agents"]}
    assert kinds == {42: "same", 500: "library"} and summary["cast"]["removed"] == 0
    frame = tmp_path / "splats" / "frames" / "00000"
    for name in ("camera_front.png", "cameras.npz", "actors.npz", "contact_sheet.png"):
        assert (frame / name).is_file(), name
    cams = np.load(frame / "cameras.npz")
    assert cams["front/depth_m"].shape == (32, 48) and cams["front/world_from_camera"].shape == (4, 4)
    from PIL import Image

    image = torch.from_numpy(np.array(Image.open(frame / "camera_front.png"))).float() / 255
    red = _red(image)
    cols = torch.nonzero(red)[:, 1].float()
    # two red cars: the reconstructed one in the middle, the library one to its right
    assert red.sum() >= 20 and float(cols.min()) < 26 and float(cols.max()) > 30
    lidar = np.load(frame / "lidar_top.npz")
    assert lidar["range_image"].shape == (8, 360, 4) and len(lidar["xyz"]) > 0
    # the output is a `simgen render` layout: the log reader takes it (it could be reconstructed again)
    log = load_log(tmp_path / "splats")
    assert log.layout == "simgen" and log.camera_names == ("front",) and log.actor_ids == (42, 500)


def test_cli_bad_input_exits_2_with_one_message(tmp_path):
    import subprocess
    import sys

    def simgen(*args):
        return subprocess.run([sys.executable, "-c", "from simgen.cli import app; app()", *args],
                              capture_output=True, text=True, timeout=120)

    result = simgen("reconstruct", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "no frames/ folder" in result.stderr and "Traceback" not in result.stderr
    result = simgen("render", str(tmp_path), "--out", str(tmp_path / "out"), "--backend", "splats")
    assert result.returncode == 2 and "--scene" in result.stderr and "Traceback" not in result.stderr
