"""The splat scene model: save/load round trip, .ply export, frame posing, and actor editing on a hand-built scene."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simgen.renderers.splats.model import (
    PLY_FIELDS,
    SH_C0,
    Actor,
    SceneFormatError,
    SplatParams,
    SplatScene,
    export_ply,
    frame_gaussians,
    initial_sky,
    load_scene,
    quat_to_matrix,
    read_ply,
    resize_actor,
    save_scene,
    world_to_box,
)
from simgen.renderers.splats.rasterize import Cameras, render


def _random_params(n_background: int = 20, n_actor: tuple[int, ...] = (10, 6), seed: int = 0) -> SplatParams:
    g = torch.Generator().manual_seed(seed)
    owner = torch.cat([torch.full((n_background,), -1)] + [torch.full((n,), k) for k, n in enumerate(n_actor)])
    n = owner.shape[0]
    return SplatParams(means=torch.randn(n, 3, generator=g), quats=torch.randn(n, 4, generator=g),
                       scales=torch.randn(n, 3, generator=g) * 0.3 - 2, opacities=torch.randn(n, generator=g),
                       sh0=torch.randn(n, 3, generator=g), owner=owner)


def _scene(params: SplatParams) -> SplatScene:
    boxes = torch.tensor([[[1.0, 2.0, 0.0, 4.5, 2.0, 1.5, 0.3], [1.5, 2.2, 0.0, 4.5, 2.0, 1.5, 0.35]],
                          [[-3.0, 0.0, 0.1, 0.6, 0.6, 1.8, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]])
    actors = (Actor(3, 1, (4.5, 2.0, 1.5)), Actor(7, 2, (0.6, 0.6, 1.8)))
    return SplatScene(params=params, sky=initial_sky(), actors=actors,
                      frame_ids=("00010", "00011"), boxes=boxes, present=torch.tensor([[True, True], [True, False]]),
                      info={"note": "test"})


def test_save_load_round_trip(tmp_path):
    scene = _scene(_random_params())
    save_scene(scene, tmp_path)
    back = load_scene(tmp_path)
    for name, value in scene.params.raw().items():
        assert torch.equal(getattr(back.params, name), value), name
    assert torch.equal(back.params.owner, scene.params.owner)
    assert torch.equal(back.sky, scene.sky) and torch.equal(back.boxes, scene.boxes)
    assert torch.equal(back.present, scene.present)
    assert back.actors == scene.actors and back.frame_ids == scene.frame_ids and back.info == scene.info


def test_load_names_missing_file(tmp_path):
    with pytest.raises(SceneFormatError, match="scene.json: missing"):
        load_scene(tmp_path)


def test_ply_export_is_standard_3dgs(tmp_path):
    params = _random_params()
    gaussians = frame_gaussians(params, _scene(params).boxes[:, 0], torch.tensor([True, True]))
    export_ply(gaussians, tmp_path / "scene.ply")
    header = (tmp_path / "scene.ply").read_bytes().split(b"end_header\n")[0].decode()
    assert header.startswith("ply\nformat binary_little_endian 1.0\n")
    assert f"element vertex {params.num_gaussians}" in header
    assert [line.split()[2] for line in header.splitlines() if line.startswith("property")] == list(PLY_FIELDS)
    data = read_ply(tmp_path / "scene.ply")
    # standard activations: sigmoid(opacity), exp(scale), 0.5 + C0 f_dc, normalised wxyz rotation
    np.testing.assert_allclose(1 / (1 + np.exp(-data["opacity"])), gaussians.opacities.numpy(), rtol=1e-4, atol=1e-6)
    scales = np.exp(np.stack([data[f"scale_{i}"] for i in range(3)], 1))
    np.testing.assert_allclose(scales, gaussians.scales.numpy(), rtol=1e-5)
    colors = 0.5 + SH_C0 * np.stack([data[f"f_dc_{i}"] for i in range(3)], 1)
    np.testing.assert_allclose(colors, gaussians.colors.numpy(), atol=1e-5)
    rot = np.stack([data[f"rot_{i}"] for i in range(4)], 1)
    np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.stack([data["x"], data["y"], data["z"]], 1), gaussians.means.numpy(), atol=1e-6)


def _rotation(q: torch.Tensor) -> torch.Tensor:
    return quat_to_matrix(torch.nn.functional.normalize(q, dim=-1))


def test_posing_moves_actor_gaussians_exactly_with_the_box():
    params = _random_params()
    box = torch.tensor([10.0, -4.0, 0.2, 4.5, 2.0, 1.5, 2.1])
    boxes = torch.stack([box, torch.zeros(7)])
    posed = frame_gaussians(params, boxes, torch.tensor([True, False]))
    # background untouched, actor 1 absent, actor 0 rigidly moved
    assert posed.num_gaussians == 30
    assert torch.equal(posed.means[:20], params.means[:20])
    c, s = math.cos(2.1), math.sin(2.1)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    expected = params.means[20:30] @ rot.T + box[:3]
    torch.testing.assert_close(posed.means[20:30], expected)
    # box frame round trip
    torch.testing.assert_close(world_to_box(posed.means[20:30], box), params.means[20:30], atol=1e-5, rtol=0)
    # orientations turn with the box: R(q') = Rz(heading) R(q)
    torch.testing.assert_close(_rotation(posed.quats[20:30]), rot @ _rotation(params.quats[20:30]), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(posed.scales, torch.exp(params.scales[:30]))
    # moving the box by (dx, dy) and turning it moves every actor Gaussian by the same rigid motion
    moved = box.clone()
    moved[:2] += torch.tensor([3.0, 1.0])
    again = frame_gaussians(params, torch.stack([moved, torch.zeros(7)]), torch.tensor([True, False]))
    torch.testing.assert_close(again.means[20:30] - posed.means[20:30], torch.tensor([3.0, 1.0, 0.0]).expand(10, 3))


def test_resize_actor_stretches_the_box_frame():
    params = _random_params()
    ratio = torch.tensor([1.2, 1.0, 0.9])
    resized = resize_actor(params, 0, ratio)
    torch.testing.assert_close(resized.means[20:30], params.means[20:30] * ratio)
    assert torch.equal(resized.means[:20], params.means[:20]) and torch.equal(resized.means[30:], params.means[30:])


# --- actor editing on a hand-built scene -----------------------------------------------------------------------

def street_scene() -> tuple[SplatParams, Cameras]:
    """A grey road (5 x 5 m of Gaussians, 0.25 m apart) seen from 6 m above by a downward camera, and one red
    actor (a 1.2 x 0.8 m block of Gaussians, box frame) with its box at the origin."""
    xs = torch.arange(-2.5, 2.51, 0.25)
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")
    road = torch.stack([gx.flatten(), gy.flatten(), torch.zeros(gx.numel())], -1)
    ax, ay = torch.meshgrid(torch.arange(-0.6, 0.61, 0.2), torch.arange(-0.4, 0.41, 0.2), indexing="ij")
    actor = torch.stack([ax.flatten(), ay.flatten(), torch.full((ax.numel(),), 0.5)], -1)
    params = SplatParams.concat([
        SplatParams.from_points(road, torch.full((len(road), 3), 0.4), torch.full((len(road),), 0.15),
                                torch.full((len(road),), -1), opacity=0.95),
        SplatParams.from_points(actor, torch.tensor([[0.9, 0.1, 0.1]]).expand(len(actor), 3),
                                torch.full((len(actor),), 0.12), torch.zeros(len(actor)), opacity=0.95)])
    # camera 6 m above the origin looking straight down: camera x = world x, camera y = -world y, z = down
    viewmat = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 6.0], [0, 0, 0, 1.0]])
    ks = torch.tensor([[[40.0, 0.0, 32.0], [0.0, 40.0, 32.0], [0.0, 0.0, 1.0]]])
    return params, Cameras(viewmat[None], ks, 64, 64)


def _red_mask(image: torch.Tensor) -> torch.Tensor:
    return (image[..., 0] - image[..., 1]) > 0.25


def test_moving_a_box_moves_its_pixels_and_removing_it_shows_the_road():
    params, cams = street_scene()
    box = torch.tensor([[0.0, 0.0, 0.0, 1.2, 0.8, 1.0, 0.0]])
    before, _, _ = render(frame_gaussians(params, box, torch.tensor([True])), cams, "RGB", backend="dense")
    moved_box = box.clone()
    moved_box[0, 0] += 1.0  # 1 m along world +x = camera +x; the actor is at z 0.5, depth 5.5 m: 40 / 5.5 px
    after, _, _ = render(frame_gaussians(params, moved_box, torch.tensor([True])), cams, "RGB", backend="dense")
    red_before, red_after = _red_mask(before[0]), _red_mask(after[0])
    assert red_before.sum() > 40 and abs(int(red_after.sum()) - int(red_before.sum())) <= 6
    cols = torch.arange(64).float()
    shift = (red_after.float() * cols).sum() / red_after.sum() - (red_before.float() * cols).sum() / red_before.sum()
    assert abs(float(shift) - 40.0 / 5.5) < 0.5
    gone, alpha, _ = render(frame_gaussians(params, box, torch.tensor([False])), cams, "RGB", backend="dense")
    where = red_before
    assert not _red_mask(gone[0]).any()
    torch.testing.assert_close(gone[0][where], torch.full_like(gone[0][where], 0.4), atol=0.03, rtol=0)
    assert float(alpha[0][where].min()) > 0.95  # road, not a hole
