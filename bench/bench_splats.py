"""Benchmark of simgen.renderers.splats: the torch tiled rasterizer against its dense twin, and its frame rate on a
street of 100k Gaussians.

Scene (``street_gaussians``): what a reconstruction initialized from lidar looks like. A 64-beam lidar 2 m up
(inclinations -25°..+10°, azimuths within ±50° of the road, jittered) hits the road (z = 0), two facades (y = ±9 m)
and an end wall (x = 90 m); each hit is a flat Gaussian: in-plane scales 0.006 x range x lognormal(0, 0.3) and
0.5-1.5 times that, clamped to 0.05-0.5 m, thickness a tenth of that, oriented with the surface, random spin;
opacities 70% in 0.7-1.0 and 30% in 0.05-0.7; random colours. Camera: 1.6 m up looking down the road, 80° horizontal
field of view, 480 x 320. About 80% of the Gaussians project into the image.

In one process, for each ``--threads`` value (best and median of ``--repeat``):
    twin ratio   ``backend="dense"`` (every pixel x every Gaussian, one Gaussian at a time) against
                 ``backend="torch"`` on a small crop of the problem (``--twin-gaussians`` of the street at 120 x 80),
                 forward only; the two images are also compared;
    forward      ``render(..., "RGB", backend="torch")`` under ``torch.no_grad()`` at full size: frames per second;
    fwd + bwd    ``render(..., "RGB+ED")`` with gradients on all Gaussian parameters, then ``backward()`` of a
                 weighted sum of the image and alpha (what a training step pays for rendering);
    lidar        ``render_lidar`` of the same Gaussians with the Waymo TOP beam table (64 x 2650), forward;
and gsplat's ``rasterization`` on the same scene when CUDA and gsplat are available.

    .venv/bin/python bench/bench_splats.py [--threads 1,2] [--gaussians 100000] [--repeat 5]

On a machine whose cores are shared with other busy processes, run it with ``OMP_WAIT_POLICY=PASSIVE``: with the
default policy torch's OpenMP threads spin while waiting for a descheduled sibling, and 2 threads on 2 busy
cores ran 4-6x slower than 1 thread (with PASSIVE: about the same as 1 thread).
"""

from __future__ import annotations

import argparse
import math
import os

import torch
from timing import timed  # bench/timing.py (the script folder is on sys.path)
from simgen.renderers.rig import load_rig
from simgen.renderers.splats.lidar import render_lidar
from simgen.renderers.splats.rasterize import Cameras, Gaussians, gsplat_available, render

TARGET_FPS = 2.0


def street_gaussians(num: int = 100_000, seed: int = 0) -> Gaussians:
    """``num`` lidar-initialized street Gaussians (module docstring), float32, world frame: x along the road, z up."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    beams, columns = 64, math.ceil(num * 1.05 / 64)
    inclination = (torch.linspace(math.radians(-25), math.radians(10), beams, dtype=torch.float64)[:, None]
                   + 0.002 * torch.randn(beams, columns, generator=g, dtype=torch.float64)).reshape(-1)
    azimuth = ((rand(beams, columns) - 0.5) * math.radians(100)).reshape(-1)
    ray = torch.stack([torch.cos(inclination) * torch.cos(azimuth), torch.cos(inclination) * torch.sin(azimuth),
                       torch.sin(inclination)], -1)
    origin = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    inf = torch.full_like(azimuth, math.inf)
    hits = [  # (range along the ray, surface normal)
        (torch.where(ray[:, 2] < 0, -origin[2] / ray[:, 2], inf), torch.tensor([0.0, 0.0, 1.0])),
        (torch.where(ray[:, 1].abs() > 1e-9, 9.0 / ray[:, 1].abs(), inf), None),
        (torch.where(ray[:, 0] > 0, 90.0 / ray[:, 0], inf), torch.tensor([1.0, 0.0, 0.0])),
    ]
    distance, normal = inf, torch.zeros_like(ray)
    for hit, surface in hits:
        nearer = hit < distance
        distance = torch.where(nearer, hit, distance)
        facing = (torch.stack([torch.zeros_like(hit), -torch.sign(ray[:, 1]), torch.zeros_like(hit)], -1)
                  if surface is None else surface.to(ray).expand_as(ray))
        normal = torch.where(nearer[:, None], facing, normal)
    keep = torch.isfinite(distance).nonzero().squeeze(1)[:num]
    means, normal, distance = (origin + ray * distance[:, None])[keep], normal[keep], distance[keep]
    n = len(means)
    size = (0.006 * distance * torch.exp(0.3 * torch.randn(n, generator=g, dtype=torch.float64))).clamp(0.05, 0.5)
    scales = torch.stack([size, size * (0.5 + rand(n)), 0.1 * size], -1)
    # rotation: local z along the normal, a random spin about it; then to a quaternion (w, x, y, z)
    reference = torch.where(normal[:, 2:].abs() > 0.9, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                            torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    ex = torch.linalg.cross(reference, normal)
    ex = ex / ex.norm(dim=-1, keepdim=True)
    ey = torch.linalg.cross(normal, ex)
    spin = 2 * math.pi * rand(n)[:, None]
    ex, ey = ex * torch.cos(spin) + ey * torch.sin(spin), ey * torch.cos(spin) - ex * torch.sin(spin)
    rot = torch.stack([ex, ey, normal], -1)
    w = torch.sqrt((1 + rot[:, 0, 0] + rot[:, 1, 1] + rot[:, 2, 2]).clamp(min=1e-12)) / 2
    quats = torch.stack([w, (rot[:, 2, 1] - rot[:, 1, 2]) / (4 * w), (rot[:, 0, 2] - rot[:, 2, 0]) / (4 * w),
                         (rot[:, 1, 0] - rot[:, 0, 1]) / (4 * w)], -1)
    opacities = torch.where(rand(n) < 0.7, 0.7 + 0.3 * rand(n), 0.05 + 0.65 * rand(n))
    return Gaussians(*(t.float().contiguous() for t in (means, quats, scales, opacities, rand(n, 3))))


def car_camera(width: int = 480, height: int = 320) -> Cameras:
    """One camera 1.6 m up at the origin looking along +x (80° horizontal field of view)."""
    focal = 0.5 * width / math.tan(math.radians(40))
    ks = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    rotation = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # camera x, y, z in the world
    viewmat = torch.eye(4)
    viewmat[:3, :3] = rotation
    viewmat[:3, 3] = -rotation @ torch.tensor([0.0, 0.0, 1.6])
    return Cameras(viewmat[None], ks[None], width, height)


def subset(gaussians: Gaussians, index: torch.Tensor) -> Gaussians:
    return Gaussians(*(t[index] for t in (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities,
                                          gaussians.colors)))


def with_grad(gaussians: Gaussians) -> Gaussians:
    return Gaussians(*(t.detach().clone().requires_grad_() for t in (
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch.set_num_threads values")
    parser.add_argument("--gaussians", type=int, default=100_000)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--twin-gaussians", type=int, default=2000)
    parser.add_argument("--no-lidar", action="store_true", help="skip the render_lidar row")
    args = parser.parse_args()

    street = street_gaussians(args.gaussians)
    camera = car_camera(args.width, args.height)
    twin_scene = subset(street, torch.randperm(len(street.means), generator=torch.Generator().manual_seed(1))
                        [:args.twin_gaussians])
    twin_camera = car_camera(120, 80)
    top = load_rig("default").lidars[0]
    world_from_lidar = torch.eye(4, dtype=torch.float64)
    world_from_lidar[2, 3] = 2.0
    inclinations = torch.tensor(top.inclinations_deg, dtype=torch.float64).deg2rad()

    with torch.no_grad():
        _, alpha, meta = render(street, camera, backend="torch")
    visible = int((meta["radii"] > 0).all(-1).sum())
    scales = street.scales.max(-1).values
    q = torch.quantile(scales, torch.tensor([0.05, 0.5, 0.95])).tolist()
    print(f"scene: {len(street.means):,} street Gaussians ({visible:,} in view), largest scale p5/p50/p95 "
          f"{q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f} m, opacity mean {street.opacities.mean():.2f}; "
          f"{args.width} x {args.height}: {meta['n_pairs']:,} (8 px block, Gaussian) pairs, "
          f"{(alpha > 0.5).float().mean():.0%} of pixels with alpha > 0.5")
    print(f"twin scene: {args.twin_gaussians:,} of them at 120 x 80; machine: {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start (other processes share the cores: wall times include waiting), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"{'threads':>7s}  {'what':34s}{'best ms':>10s}{'median ms':>11s}{'FPS (best)':>12s}")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        with torch.no_grad():
            dense_best, dense_median, (dense, _, _) = timed(
                lambda: render(twin_scene, twin_camera, backend="dense"), max(1, args.repeat // 2))
            tiled_best, tiled_median, (tiled, _, _) = timed(
                lambda: render(twin_scene, twin_camera, backend="torch"), args.repeat)
            forward_best, forward_median, _ = timed(lambda: render(street, camera, backend="torch"), args.repeat)
            if not args.no_lidar:
                lidar_best, lidar_median, _ = timed(lambda: render_lidar(
                    street, world_from_lidar, inclinations, top.columns, top.max_range_m), max(1, args.repeat // 2))
        trainable = with_grad(street)

        def step():
            image, alpha, _ = render(trainable, camera, "RGB+ED", backend="torch")
            (image[..., :3].sum() + 0.01 * image[..., 3].sum() + alpha.sum()).backward()

        train_best, train_median, _ = timed(step, max(1, args.repeat // 2))
        rows = [("dense twin, 120 x 80", dense_best, dense_median),
                ("torch tiled, 120 x 80", tiled_best, tiled_median),
                (f"torch forward, {args.width} x {args.height}", forward_best, forward_median),
                (f"torch fwd + bwd, {args.width} x {args.height}", train_best, train_median)]
        if not args.no_lidar:
            rows.append((f"render_lidar {len(inclinations)} x {top.columns}", lidar_best, lidar_median))
        for name, best, median in rows:
            print(f"{threads:7d}  {name:34s}{best:10.1f}{median:11.1f}{1e3 / best:12.2f}")
        print(f"{threads:7d}  twin / tiled: {dense_best / tiled_best:.0f}x (best), images differ by at most "
              f"{(dense - tiled).abs().max():.1e}; forward {1e3 / forward_best:.2f} FPS: target >= {TARGET_FPS:.0f} "
              f"{'met' if 1e3 / forward_best >= TARGET_FPS else 'missed'}")

    if torch.cuda.is_available() and gsplat_available():
        street_cuda = Gaussians(*(t.cuda() for t in (street.means, street.quats, street.scales, street.opacities,
                                                     street.colors)))
        camera_cuda = Cameras(camera.viewmats.cuda(), camera.Ks.cuda(), camera.width, camera.height)

        def on_gpu(backend):
            def run():
                with torch.no_grad():
                    out = render(street_cuda, camera_cuda, backend=backend)
                torch.cuda.synchronize()
                return out
            return run

        for backend in ("gsplat", "torch"):
            best, median, _ = timed(on_gpu(backend), args.repeat)
            print(f"{'cuda':>7s}  {backend + ' forward':34s}{best:10.1f}{median:11.1f}{1e3 / best:12.2f}")
    else:
        print("gsplat: skipped (needs CUDA and the gsplat package)")


if __name__ == "__main__":
    main()
