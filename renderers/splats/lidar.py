"""Lidar from Gaussian splats: a Waymo-style range image rendered through a ring of pinhole cameras.

``render_lidar`` gives the range image of ``renderers/lidar.py`` (docs/FORMATS.md: rows are beams, top first;
column c looks at azimuth π − 2π (c + 0.5) / W in the lidar frame, +x forward, +y left, +z up; channels range m,
intensity, elongation m, valid; invalid pixels hold -1 in channels 0-2 and 0 in channel 3) for a splat scene,
with the rasterizer of ``rasterize.render`` (any backend), differentiably.

Notation:

| symbol | meaning |
|---|---|
| M | pinhole cameras in the ring (``num_cameras``), camera m looking along azimuth φ_m = 2π m / M |
| d(b, c) | unit ray of beam b (inclination i_b) and column c (azimuth a_c) in the lidar frame |
| f | focal length, px: one pixel per column at the image centre (``pixels_per_column`` = 1) |
| D, α | accumulated depth (camera z, mode "D") and alpha of the splats, sampled bilinearly at the ray's pixel |

Steps:
    1. M cameras at the lidar origin, yawed by φ_m about the lidar's z axis, OpenCV axes (x right = lidar
       (sin φ, -cos φ, 0), y down = -z, z forward = (cos φ, sin φ, 0)). Horizontal half-FOV π/M plus two
       columns; the vertical field covers the beams' inclinations at the image edge (|tan i| / cos(π/M)) plus two
       pixels, so every ray lands inside its camera with a bilinear neighbourhood.
    2. Render "RGB+D"-like features of all M cameras in one ``render`` call: the Gaussians' ``colors`` and z.
    3. Each ray (b, c) goes to the camera nearest its azimuth; its pixel is (cx + f x / z, cy + f y / z) of
       d in that camera's frame. D, α and the colour sum are sampled there bilinearly (``grid_sample``,
       pixel centres at +0.5), so ED = D / α is the alpha-weighted expected depth.
    4. Range along the ray r = ED / d_z (d_z: the ray's camera-z component; the camera z of a point at range r
       on the ray is r d_z). Valid where α > ``min_alpha`` (0.5) and 0 < r < ``max_range``.
    5. Intensity = the alpha-normalized composited mean of the Gaussians' ``colors`` channels (grey level of
       RGB in [0, 1]); a scene model with a learned per-Gaussian lidar intensity passes it as 1-channel
       ``colors`` and gets it back. Elongation = 0 (splats carry no pulse shape).

Accuracy: ED is the alpha-weighted depth of the Gaussians' centres (as in gsplat), so a surface of discs of
size s reads about 1-2 s nearer than the surface (tests: discs of 2% of the range read ~3.5% short on the
ground at 10°-30° grazing), and one pixel spans 1 / ``pixels_per_column`` columns: at grazing incidence that
pixel footprint blurs the range further.

Limits: inclinations within ±60° (a pinhole camera cannot hold a ray near ±90°; short-range lidars looking
straight down need another camera set-up). Cost: M images of about (W / M) x (vertical span) px; for the
Waymo TOP beam table (-17.6°..+2.4°, 2650 columns, M = 8) 8 images of 352 x 170 px.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from simgen.renderers.splats.rasterize import Backend, Cameras, Gaussians, render

MAX_INCLINATION_RAD = math.radians(60.0)
MARGIN_PX = 2.0  # step 1: spare pixels around the rays' footprint in each camera


def _camera_from_lidar(azimuth: float) -> np.ndarray:
    """``[4, 4]`` float64 pose of ring camera looking along ``azimuth`` (step 1): lidar frame -> camera frame."""
    c, s = math.cos(azimuth), math.sin(azimuth)
    pose = np.eye(4)
    pose[:3, :3] = [[s, -c, 0.0], [0.0, 0.0, -1.0], [c, s, 0.0]]  # rows: camera x, y, z in the lidar frame
    return pose


def render_lidar(gaussians: Gaussians, lidar_to_world, inclinations, columns: int = 2650, max_range: float = 75.0,
                 *, num_cameras: int = 8, pixels_per_column: float = 1.0, min_alpha: float = 0.5,
                 backend: Backend = "auto", near: float = 0.01) -> Tensor:
    """``[B, columns, 4]`` range image (range m, intensity, elongation m, valid) of the splats seen by a spinning
    lidar at ``lidar_to_world`` ([4, 4], world_from_lidar) with beams at ``inclinations`` ([B] rad, top beam
    first); steps in the module docstring. Differentiable in the Gaussians where valid (invalid pixels are
    constants). dtype and device of ``gaussians``."""
    dtype, device = gaussians.means.dtype, gaussians.means.device
    incl = torch.as_tensor(np.asarray(inclinations, dtype=np.float64))
    world_from_lidar = np.asarray(torch.as_tensor(lidar_to_world).detach().cpu().double(), dtype=np.float64)
    if world_from_lidar.shape != (4, 4):
        raise ValueError(f"lidar_to_world must be a [4, 4] pose (world_from_lidar); got {world_from_lidar.shape}")
    if incl.ndim != 1 or not len(incl) or float(incl.abs().max()) > MAX_INCLINATION_RAD:
        raise ValueError(f"inclinations must be a non-empty [B] array in radians (not degrees) within ±60°; got "
                         f"shape {tuple(incl.shape)}, values {incl.tolist()[:4]}...")
    if not (isinstance(columns, int) and columns >= num_cameras >= 3):
        raise ValueError(f"need integer columns >= num_cameras >= 3; got columns={columns}, "
                         f"num_cameras={num_cameras}")

    # step 1: the ring of cameras
    focal = pixels_per_column * columns / (2 * math.pi)
    half = math.pi / num_cameras
    half_width = focal * math.tan(half + 2 * math.pi / columns) + MARGIN_PX
    width = 2 * math.ceil(half_width)
    up = focal * max(0.0, math.tan(float(incl.max()))) / math.cos(half) + MARGIN_PX
    down = focal * max(0.0, -math.tan(float(incl.min()))) / math.cos(half) + MARGIN_PX
    cy, height = math.ceil(up), math.ceil(up) + math.ceil(down)
    intrinsics = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, cy], [0.0, 0.0, 1.0]], dtype=dtype)
    azimuths = [2 * math.pi * m / num_cameras for m in range(num_cameras)]
    lidar_from_world = np.linalg.inv(world_from_lidar)
    viewmats = torch.tensor(np.stack([_camera_from_lidar(a) @ lidar_from_world for a in azimuths]), dtype=dtype)
    cameras = Cameras(viewmats.to(device), intrinsics.repeat(num_cameras, 1, 1).to(device), width, height)

    # step 2: colours (for the intensity) and depth, composited; ED comes after sampling
    image, alpha, _ = render(gaussians, cameras, "RGB+D", backend=backend, near=near)

    # step 3: every ray to the camera nearest its azimuth, padded to the same number of columns per camera
    column_azimuth = math.pi - 2 * math.pi * (np.arange(columns) + 0.5) / columns
    camera_of_column = np.round(column_azimuth / (2 * math.pi / num_cameras)).astype(int) % num_cameras
    members = [np.flatnonzero(camera_of_column == m) for m in range(num_cameras)]
    span = max(len(m) for m in members)
    grid_columns = np.stack([np.pad(m, (0, span - len(m)), mode="edge") for m in members])  # [M, span]
    beams = len(incl)
    az = torch.as_tensor(column_azimuth[grid_columns])  # [M, span] float64
    rel = az - torch.tensor(azimuths, dtype=torch.float64)[:, None]
    ci, si = torch.cos(incl)[None, :, None], torch.sin(incl)[None, :, None]
    forward = ci * torch.cos(rel)[:, None, :]  # [M, B, span]: the ray's camera z (d_z)
    right = -ci * torch.sin(rel)[:, None, :]
    down = -si.expand_as(forward)
    u = width / 2 + focal * right / forward
    v = cy + focal * down / forward
    grid = torch.stack([2 * u / width - 1, 2 * v / height - 1], -1).to(dtype=dtype, device=device)
    channels = torch.cat([image, alpha], -1).permute(0, 3, 1, 2)  # [M, X + 2, H, W]
    sampled = F.grid_sample(channels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sampled = sampled.permute(0, 2, 3, 1)  # [M, B, span, X + 2]

    # steps 4-5: range, validity, intensity; back to the columns
    a = sampled[..., -1]
    safe_alpha = a.clamp(min=1e-10)
    ray_range = sampled[..., -2] / safe_alpha / forward.to(dtype=dtype, device=device)
    intensity = sampled[..., :-2].mean(-1) / safe_alpha
    valid = (a > min_alpha) & (ray_range > 0) & (ray_range < max_range)
    invalid = torch.full_like(ray_range, -1.0)
    channels_out = torch.stack([torch.where(valid, ray_range, invalid), torch.where(valid, intensity, invalid),
                                torch.where(valid, torch.zeros_like(invalid), invalid), valid.to(dtype)], -1)
    out = torch.empty(beams, columns, 4, dtype=dtype, device=device)
    index = torch.as_tensor(np.concatenate(members), device=device)
    gathered = torch.cat([channels_out[m, :, :len(members[m])] for m in range(num_cameras)], 1)  # [B, W, 4]
    return out.index_copy(1, index, gathered)
