"""Splat rasterizers: the torch tiled path against the dense twin (values and gradients), hand-checked goldens,
occlusion, culling, errors, lidar from splats, and gsplat against the torch path on a GPU."""

from __future__ import annotations

import math

import pytest
import torch
from simgen.renderers.splats import rasterize_tiled
from simgen.renderers.splats.rasterize import (
    EPS2D,
    EXTENT_SIGMA,
    MAX_ALPHA,
    Cameras,
    Gaussians,
    render,
)

MODES = ["RGB", "D", "ED", "RGB+D", "RGB+ED"]


def random_scene(num: int = 300, width: int = 64, height: int = 48, dtype=torch.float32, seed: int = 0,
                 grad: bool = False) -> tuple[Gaussians, Cameras]:
    """``num`` random anisotropic Gaussians 2-8 m in front of two cameras 0.3 m apart (some behind, some
    off-screen), sizes 0.02-0.32 m, opacities 0.01-0.99."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    means = (torch.randn(num, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.5, 1.5], dtype=torch.float64)
             + torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64))
    fields = [means, torch.randn(num, 4, generator=g, dtype=torch.float64), rand(num, 3) * 0.3 + 0.02,
              rand(num) * 0.98 + 0.01, rand(num, 3)]
    gaussians = Gaussians(*(f.to(dtype).requires_grad_(grad) for f in fields))
    ks = torch.tensor([[60.0, 0.0, width / 2], [0.0, 60.0, height / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    viewmats = torch.eye(4, dtype=dtype).repeat(2, 1, 1)
    viewmats[1, 0, 3] = 0.3
    viewmats[1, :3, :3] = torch.tensor([[0.99, 0.0, 0.141], [0.0, 1.0, 0.0], [-0.141, 0.0, 0.99]], dtype=dtype)
    return gaussians, Cameras(viewmats.requires_grad_(grad), ks.repeat(2, 1, 1), width, height)


def one_camera(width: int = 33, height: int = 25, focal: float = 50.0) -> Cameras:
    """Identity pose; the principal point at the centre of pixel (12, 16)."""
    ks = torch.tensor([[[focal, 0.0, 16.5], [0.0, focal, 12.5], [0.0, 0.0, 1.0]]])
    return Cameras(torch.eye(4)[None], ks, width, height)


def isotropic(means, scales, opacities, colors) -> Gaussians:
    means = torch.as_tensor(means, dtype=torch.float32).reshape(-1, 3)
    n = len(means)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1)
    return Gaussians(means, quats, torch.as_tensor(scales, dtype=torch.float32).reshape(n, 1).repeat(1, 3),
                     torch.as_tensor(opacities, dtype=torch.float32).reshape(n),
                     torch.as_tensor(colors, dtype=torch.float32).reshape(n, 3))


@pytest.mark.parametrize("size", [(64, 48), (70, 45)])
def test_tiled_matches_dense_in_every_mode(size):
    gaussians, cameras = random_scene(width=size[0], height=size[1])
    with torch.no_grad():
        for mode in MODES:
            dense, dense_alpha, dense_meta = render(gaussians, cameras, mode, backend="dense")
            tiled, tiled_alpha, tiled_meta = render(gaussians, cameras, mode, backend="torch")
            assert tiled.shape == dense.shape == (2, size[1], size[0], {"RGB": 3, "D": 1, "ED": 1}.get(mode, 4))
            assert tiled_meta["backend"] == "torch" and dense_meta["backend"] == "dense"
            # float32: 1e-5 on colours and alpha; depth channels (~5 m) to 1e-5 relative
            torch.testing.assert_close(tiled_alpha, dense_alpha, atol=1e-5, rtol=0)
            torch.testing.assert_close(tiled, dense, atol=1e-5, rtol=1e-5)
            assert torch.equal(tiled_meta["radii"], dense_meta["radii"])
            torch.testing.assert_close(tiled_meta["means2d"], dense_meta["means2d"], atol=1e-4, rtol=1e-6)
    assert dense_alpha.max() > 0.9 and (dense_alpha == 0).any()  # opaque parts and empty parts
    assert 0 < (tiled_meta["radii"] > 0).all(-1).sum() < 2 * 300  # some Gaussians culled


def test_tiled_gradients_match_dense_float64():
    """Same scene in float64: the two paths differ only by rounding, so gradients agree to ~1e-9 relative."""
    gaussians, cameras = random_scene(num=200, dtype=torch.float64, grad=True)
    inputs = [gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors,
              cameras.viewmats]
    weights = torch.rand(2, 48, 64, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = {}
    for backend in ("dense", "torch"):
        image, alpha, _ = render(gaussians, cameras, "RGB+ED", backend=backend)
        grads[backend] = torch.autograd.grad((image * weights).sum() + alpha.sum(), inputs)
    for name, dense, tiled in zip(["means", "quats", "scales", "opacities", "colors", "viewmats"], grads["dense"],
                                  grads["torch"]):
        assert dense.abs().max() > 0, name
        torch.testing.assert_close(tiled, dense, rtol=1e-7, atol=1e-9 * dense.abs().max().item(), msg=name)


def test_tiled_gradients_match_dense_float32():
    """float32: gradients agree to 1e-4 of each gradient's largest entry."""
    gaussians, cameras = random_scene(num=200, grad=True)
    inputs = [gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors]
    grads = {}
    for backend in ("dense", "torch"):
        image, alpha, _ = render(gaussians, cameras, "RGB+D", backend=backend)
        grads[backend] = torch.autograd.grad(image[..., :3].sum() + 0.1 * image[..., 3].sum() + alpha.sum(), inputs)
    for dense, tiled in zip(grads["dense"], grads["torch"]):
        torch.testing.assert_close(tiled, dense, rtol=0, atol=1e-4 * dense.abs().max().item())


def test_one_isotropic_gaussian_golden():
    """A sphere of radius s at depth z on the optical axis: screen variance (f s / z)² + EPS2D, peak alpha = o
    at the principal point's pixel, ED = z wherever alpha > 0, radius = ceil(min(3.33, sqrt(2 ln(255 o))) σ)."""
    depth, scale, opacity, focal = 4.0, 0.2, 0.8, 50.0
    gaussians = isotropic([0.0, 0.0, depth], [scale], [opacity], [0.2, 0.6, 1.0])
    for backend in ("torch", "dense"):
        image, alpha, meta = render(gaussians, one_camera(focal=focal), "RGB+ED", backend=backend)
        variance = (focal * scale / depth) ** 2 + EPS2D
        assert meta["means2d"][0, 0].tolist() == pytest.approx([16.5, 12.5])
        assert meta["conics"][0, 0].tolist() == pytest.approx([1 / variance, 0.0, 1 / variance], rel=1e-5)
        extent = min(EXTENT_SIGMA, math.sqrt(2 * math.log(255 * opacity)))
        assert meta["radii"][0, 0].tolist() == [math.ceil(extent * math.sqrt(variance))] * 2
        assert alpha[0, 12, 16, 0].item() == pytest.approx(opacity, rel=1e-6)  # the peak
        assert torch.argmax(alpha[0, ..., 0]).item() == 12 * 33 + 16
        assert alpha[0, 12, 17, 0].item() == pytest.approx(opacity * math.exp(-0.5 / variance), rel=1e-5)
        assert alpha[0, 14, 15, 0].item() == pytest.approx(opacity * math.exp(-0.5 * 5 / variance), rel=1e-5)
        assert image[0, 12, 16, :3].tolist() == pytest.approx([0.2 * opacity, 0.6 * opacity, opacity], rel=1e-6)
        seen = alpha[0, ..., 0] > 0
        assert seen.sum() > 50
        torch.testing.assert_close(image[0, ..., 3][seen], torch.full_like(image[0, ..., 3][seen], depth), rtol=1e-5,
                                   atol=0)
        assert (image[0, ..., 3][~seen] == 0).all()


def test_near_gaussian_occludes_far_one():
    red, blue = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    for backend in ("torch", "dense"):
        for near_color, far_color in ((red, blue), (blue, red)):
            gaussians = isotropic([[0.0, 0.0, 3.0], [0.0, 0.0, 6.0]], [0.3, 0.6], [0.95, 0.95],
                                  [near_color, far_color])
            image, alpha, _ = render(gaussians, one_camera(), "RGB", backend=backend)
            centre = image[0, 12, 16]
            # 0.95 of the near colour, then 0.95 of the far one through the remaining 5%
            assert centre.tolist() == pytest.approx([0.95 * a + 0.05 * 0.95 * b for a, b in
                                                     zip(near_color, far_color)], abs=1e-6)
            assert alpha[0, 12, 16, 0].item() == pytest.approx(1 - 0.05 * 0.05, abs=1e-6)


def test_compositing_stops_before_transmittance_reaches_t_min():
    """Five opaque Gaussians at one spot: the second would take T to (1 - 0.999)² = 1e-6 <= T_MIN, so it and all
    behind it are dropped: alpha = MAX_ALPHA and the first Gaussian's colour, as in gsplat."""
    colors = torch.eye(3)[[0, 1, 2, 1, 0]]
    gaussians = isotropic([[0.0, 0.0, 3.0 + k] for k in range(5)], [0.5] * 5, [1.0] * 5, colors)
    for backend in ("torch", "dense"):
        image, alpha, _ = render(gaussians, one_camera(), "RGB+D", backend=backend)
        assert alpha[0, 12, 16, 0].item() == pytest.approx(MAX_ALPHA, abs=1e-6)
        assert image[0, 12, 16].tolist() == pytest.approx([MAX_ALPHA, 0.0, 0.0, 3.0 * MAX_ALPHA], abs=1e-5)


def test_background_fills_what_the_gaussians_leave():
    gaussians, cameras = random_scene(num=100)
    background = torch.tensor([0.2, 0.4, 0.6])
    for backend in ("torch", "dense"):
        plain, alpha, _ = render(gaussians, cameras, "RGB+ED", backend=backend)
        filled, alpha2, _ = render(gaussians, cameras, "RGB+ED", backend=backend, background=background)
        torch.testing.assert_close(filled[..., :3], plain[..., :3] + (1 - alpha) * background)
        torch.testing.assert_close(filled[..., 3], plain[..., 3])  # the depth channel has no background
        torch.testing.assert_close(alpha2, alpha)


def test_gaussians_behind_the_camera_or_before_near_contribute_nothing():
    gaussians = isotropic([[0.0, 0.0, -3.0], [0.0, 0.0, 0.005], [0.5, 0.0, -0.5]], [0.5] * 3, [0.9] * 3,
                          [[1.0, 1.0, 1.0]] * 3)
    gaussians.means.requires_grad_(True)
    for backend in ("torch", "dense"):
        image, alpha, meta = render(gaussians, one_camera(), "RGB+D", backend=backend)
        assert (image == 0).all() and (alpha == 0).all()
        assert (meta["radii"] == 0).all()
        (image.sum() + alpha.sum()).backward()  # still a graph: a camera that sees nothing can be trained on
        assert (gaussians.means.grad == 0).all()
    # the same Gaussian in front is seen; a far plane in front of it hides it again
    front = isotropic([[0.0, 0.0, 3.0]], [0.5], [0.9], [[1.0, 1.0, 1.0]])
    assert render(front, one_camera())[1].max() > 0.8
    assert render(front, one_camera(), far=2.5)[1].max() == 0


def test_quaternions_are_normalized_and_anisotropy_follows_the_rotation():
    """A needle along world x, rotated 90° about z (quaternion given with norm 3), lies along the image's y."""
    c = math.cos(math.pi / 4)
    needle = Gaussians(torch.tensor([[0.0, 0.0, 4.0]]), torch.tensor([[3 * c, 0.0, 0.0, 3 * c]]),
                       torch.tensor([[0.8, 0.05, 0.05]]), torch.tensor([0.9]), torch.tensor([[1.0, 1.0, 1.0]]))
    for backend in ("torch", "dense"):
        _, alpha, meta = render(needle, one_camera(), backend=backend)
        rx, ry = meta["radii"][0, 0].tolist()
        assert ry > 3 * rx
        assert alpha[0, 2, 16, 0] > 0.1 and alpha[0, 12, 10, 0] < 1e-3


def test_meta_means2d_receives_screen_space_gradients():
    gaussians, cameras = random_scene(num=50, grad=True)
    image, alpha, meta = render(gaussians, cameras, backend="torch")
    meta["means2d"].retain_grad()
    image.sum().backward()
    seen = (meta["radii"] > 0).all(-1)
    assert meta["means2d"].grad.shape == (2, 50, 2)
    assert (meta["means2d"].grad[seen].abs().sum(-1) > 0).float().mean() > 0.5
    assert (meta["means2d"].grad[~seen] == 0).all()


def test_bin_culling_keeps_every_contributing_pair():
    """Step 2's per-block culling never drops a pair that contributes: with the margin raised so that nothing is
    culled, the image is the same."""
    gaussians, cameras = random_scene(num=300)
    with torch.no_grad():
        culled = render(gaussians, cameras, "RGB+D", backend="torch")
        margin = rasterize_tiled.CULL_MARGIN
        try:
            rasterize_tiled.CULL_MARGIN = 1e6
            everything = render(gaussians, cameras, "RGB+D", backend="torch")
        finally:
            rasterize_tiled.CULL_MARGIN = margin
    assert culled[2]["n_pairs"] < 0.8 * everything[2]["n_pairs"]
    torch.testing.assert_close(culled[0], everything[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(culled[1], everything[1], atol=1e-6, rtol=0)


def test_errors_name_the_fix():
    gaussians, cameras = random_scene(num=10)
    with pytest.raises(ValueError, match="unknown mode 'RGBD'.*'RGB\\+D'"):
        render(gaussians, cameras, "RGBD")
    with pytest.raises(ValueError, match="unknown backend 'cuda'.*'gsplat'"):
        render(gaussians, cameras, backend="cuda")
    with pytest.raises(ValueError, match="opacities has shape \\(10, 1\\).*squeeze"):
        Gaussians(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities[:, None],
                  gaussians.colors)
    with pytest.raises(ValueError, match="quats has shape"):
        Gaussians(gaussians.means, gaussians.quats[:, :3], gaussians.scales, gaussians.opacities, gaussians.colors)
    with pytest.raises(ValueError, match="Ks must be a \\[C, 3, 3\\]"):
        Cameras(cameras.viewmats, cameras.Ks[:1], 64, 48)
    with pytest.raises(ValueError, match="width must be a positive int"):
        Cameras(cameras.viewmats, cameras.Ks, 64.0, 48)
    with pytest.raises(ValueError, match="same dtype and device"):
        render(gaussians, Cameras(cameras.viewmats.double(), cameras.Ks.double(), 64, 48))
    with pytest.raises(ValueError, match="background must be"):
        render(gaussians, cameras, background=torch.zeros(4))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="gsplat"):
            render(gaussians, cameras, backend="gsplat")
    assert render(gaussians, cameras)[2]["backend"] == ("gsplat" if gaussians.means.is_cuda else "torch")


@pytest.mark.gpu
def test_gsplat_matches_torch_path():
    """On CUDA: gsplat.rasterization against our torch path on the same scene, every mode."""
    pytest.importorskip("gsplat")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gaussians, cameras = random_scene(num=2000, width=160, height=120)
    to_cuda = lambda t: t.detach().cuda()  # noqa: E731
    gaussians = Gaussians(*(to_cuda(t) for t in (gaussians.means, gaussians.quats, gaussians.scales,
                                                 gaussians.opacities, gaussians.colors)))
    cameras = Cameras(to_cuda(cameras.viewmats), to_cuda(cameras.Ks), cameras.width, cameras.height)
    for mode in MODES:
        ours, our_alpha, our_meta = render(gaussians, cameras, mode, backend="torch")
        theirs, their_alpha, their_meta = render(gaussians, cameras, mode, backend="gsplat")
        assert their_meta["backend"] == "gsplat"
        torch.testing.assert_close(our_alpha, their_alpha, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        assert (our_meta["radii"] == their_meta["radii"]).float().mean() > 0.999


def flat_discs(centres: torch.Tensor, radius: torch.Tensor, normal_quat, opacity: float = 0.9,
               grey: float = 0.3) -> Gaussians:
    n = len(centres)
    scales = torch.stack([radius, radius, torch.full_like(radius, 0.005)], -1)
    return Gaussians(centres.float(), torch.tensor([normal_quat], dtype=torch.float32).repeat(n, 1),
                     scales.float(), torch.full((n,), opacity), torch.full((n, 3), grey))


def ground_rings(step: float = 0.02, r_min: float = 0.5, r_max: float = 40.0) -> Gaussians:
    """Flat discs on z = 0 around the origin, on rings r_k = r_min (1 + step)^k, spaced and sized step x r."""
    count = int(2 * math.pi / step)
    radii = r_min * (1 + step) ** torch.arange(int(math.log(r_max / r_min) / math.log(1 + step)))
    theta = torch.arange(count) * 2 * math.pi / count + (torch.arange(len(radii))[:, None] % 2) * math.pi / count
    r = radii[:, None].expand_as(theta)
    centres = torch.stack([r * torch.cos(theta), r * torch.sin(theta), torch.zeros_like(r)], -1).reshape(-1, 3)
    return flat_discs(centres, step * r.reshape(-1), [1.0, 0.0, 0.0, 0.0])


def test_render_lidar_sees_the_ground_at_the_beams_ranges():
    """A lidar 2 m above a plane of discs: a downward beam at inclination i meets it at range 2 / sin(-i); the
    splats' expected depth reads their centres' depth, so discs of size s read ~1.5 s nearer (the ~3.5% here);
    upward beams see nothing. Intensity is the discs' grey level."""
    from simgen.renderers.splats.lidar import render_lidar

    pose = torch.eye(4, dtype=torch.float64)
    pose[2, 3] = 2.0
    inclinations = torch.tensor([5.0, 1.0, -10.0, -15.0, -20.0, -30.0], dtype=torch.float64).deg2rad()
    image = render_lidar(ground_rings(), pose, inclinations, columns=360, max_range=75.0, pixels_per_column=4.0)
    assert image.shape == (6, 360, 4)
    assert (image[:2, :, 3] == 0).all() and (image[:2, :, :3] == -1).all()
    assert (image[2:, :, 3] == 1).all()
    expected = 2 / torch.sin(-inclinations[2:]).float()
    relative = image[2:, :, 0] / expected[:, None] - 1
    assert relative.abs().max() < 0.05 and relative.mean().abs() < 0.04
    torch.testing.assert_close(image[2:, :, 1], torch.full((4, 360), 0.3))
    assert (image[2:, :, 2] == 0).all()


def test_render_lidar_columns_follow_the_range_image_azimuths():
    """A wall 10 m to the left (+y) spanning x in [-5, 5]: returns in the columns of azimuths 63°..117°
    (column c looks at π - 2π (c + 0.5) / W), at range 10 / (cos i sin a); beyond max_range nothing."""
    from simgen.renderers.splats.lidar import render_lidar

    xs, zs = torch.meshgrid(torch.arange(-5.0, 5.01, 0.05), torch.arange(-1.0, 4.0, 0.05), indexing="ij")
    centres = torch.stack([xs.reshape(-1), torch.full((xs.numel(),), 10.0), zs.reshape(-1)], -1)
    c = math.cos(math.pi / 4)
    wall = flat_discs(centres, torch.full((len(centres),), 0.05), [c, c, 0.0, 0.0])  # disc normal along y
    inclinations = torch.tensor([2.0, -5.0], dtype=torch.float64).deg2rad()
    image = render_lidar(wall, torch.eye(4, dtype=torch.float64), inclinations, columns=360)
    azimuth = math.pi - 2 * math.pi * (torch.arange(360) + 0.5) / 360
    inside = (azimuth > math.atan2(10, 5) + 0.02) & (azimuth < math.atan2(10, -5) - 0.02)
    for row, incl in enumerate(inclinations.tolist()):
        valid = image[row, :, 3] == 1
        assert valid[inside].all() and not valid[(azimuth < 1.0) | (azimuth > 2.15)].any()
        expected = 10 / (math.cos(incl) * torch.sin(azimuth[inside]))
        torch.testing.assert_close(image[row, inside, 0], expected.float(), rtol=0.02, atol=0)
    assert (render_lidar(wall, torch.eye(4, dtype=torch.float64), inclinations, columns=360,
                         max_range=9.0)[..., 3] == 0).all()
    with pytest.raises(ValueError, match="radians"):
        render_lidar(wall, torch.eye(4), torch.tensor([2.0, -17.6]), columns=360)
