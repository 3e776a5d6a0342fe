"""``simgen reconstruct``: fit a splat scene (``model.SplatScene``) to a multi-view camera + lidar log.

    reconstruct("outputs/city-sensors", "outputs/city-recon", ReconstructConfig(iterations=1500))

Notation:

| symbol | meaning |
|---|---|
| I, Î | a training image and its render (splats over the sky), [H, W, 3] in [0, 1] |
| D, D̂ | lidar depth map of a view (the frame's points projected into the camera, nearest per pixel; 0 = none) and \
the rendered expected depth ("ED"), camera z, m |
| α | rendered alpha; the sky fills 1 - α |
| o_i | opacity of Gaussian i |
| ∇₂ᵢ | norm of the loss gradient on Gaussian i's screen mean, in NDC units (gsplat's convention) |

Steps:
    1. Load the log (``dataset.load_log``), resample to ``resolution``; split (``dataset.split_views``: every 8th
       frame held out on every camera, optionally one whole camera held out).
    2. Initialize from the training frames' lidar points (``initial_scene``):
       - a point inside an actor's box (grown by ``BOX_MARGIN_M``; above its ground by ``GROUND_CLEARANCE_M``) in
         that frame belongs to the actor and goes into its box frame; the others are static (world frame);
       - each point's colour is the mean of the training pixels it projects to in its own frame where it is not
         occluded (its depth is within ``VISIBLE_SLACK_M`` of the nearest lidar depth at that pixel);
       - points are merged per voxel (``voxel_m`` static, ``ACTOR_VOXEL_M`` actors), at most ``max_init`` static;
       - a shell of ``far_points`` Gaussians at 1.2-3x the lidar's reach stands for buildings beyond it, and
         ``ray_points`` faint ones on the rays of pixels without lidar (tree tops, high facades), at most a tenth
         and a fifth of the lidar Gaussians;
       - scales: the RMS distance to the 3 nearest neighbours (as 3DGS); opacity 0.1; sky a flat blue.
    3. Optimize with Adam, one optimizer per parameter (gsplat's learning rates; the means' decays exponentially
       to 1 % over the run), ``views_per_step`` training views of one random frame per step:
       L = (1 - λ) |Î - I|₁ + λ (1 - SSIM(Î, I)) + λ_D mean_{D > 0} |D̂ - D| / D + λ_o mean_i o_i,
       λ = 0.2, λ_D = ``depth_weight``, λ_o = ``opacity_weight``.
    4. Densify every ``refine_every`` steps in [``refine_start``, ``refine_stop`` · iterations): Gaussians whose
       mean ∇₂ over the views that saw them exceeds ``grow_grad2d`` are cloned (max scale ≤ ``grow_scale`` ·
       scene scale) or split in two (sampled from the Gaussian, scales / 1.6), the largest gradients first while
       the count stays under ``max_gaussians``; then prune o < ``prune_opacity`` and max scale >
       max(``prune_scale`` · scene scale, ``PRUNE_SCALE_MIN_M``). Optimizer moments follow the Gaussians (zero
       for new ones).
    5. Checkpoint every ``checkpoint_every`` steps (``checkpoint.pt``: parameters, optimizer moments, step,
       densification statistics, RNG state); ``resume=True`` continues from it.
    6. Evaluate every held-out view (and the held-out camera's): PSNR, SSIM over the whole image, and depth error
       against lidar (abs rel and L1 in m at the pixels with a lidar return); write ``gaussians.npz``,
       ``scene.json``, ``scene.ply`` (first frame posed), ``comparisons/*.png`` (render | truth | |error|) and
       ``summary.json`` with the protocol.

Measured (this 2-core CPU, one torch thread, the other core busy): a Berlin log from ``simgen rollout
scenarios/city.yaml --steps 40`` rendered by ``simgen render --frames 10:30`` (20 frames x 8 cameras, 480 x 320
resampled to 160 x 106; AV at ~14 m/s); frames 10, 18, 26 held out on every camera:
    - 1500 steps, 8 cameras: held-out PSNR 30.1 dB, SSIM 0.944, lidar depth abs rel 0.044 (L1 0.73 m), 14 min;
    - 1500 steps, side_left held out as a whole: the 7 others 29.6 dB / 0.938 / 0.046; side_left (never
      trained on) 25.4 dB / 0.891; 13.3 min, 1.9 steps/s, 99k Gaussians;
    - 1000 steps, 8 cameras: 28.6 dB / 0.926 / 0.054, 7.1 min.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from simgen import io
from simgen.progress import progress_bar
from simgen.renderers.splats.dataset import LogData, Split, load_log, split_views
from simgen.renderers.splats.losses import colour_loss, psnr, ssim
from simgen.renderers.splats.model import (
    PARAM_NAMES,
    Actor,
    SplatParams,
    SplatScene,
    export_ply,
    frame_gaussians,
    initial_sky,
    quat_to_matrix,
    save_scene,
    sky_colors,
    world_to_box,
)
from simgen.renderers.splats.rasterize import Cameras, render

BOX_MARGIN_M = 0.25
GROUND_CLEARANCE_M = 0.08
ACTOR_VOXEL_M = 0.1
VISIBLE_SLACK_M = 0.5
NEAR_M = 0.3
VOXEL_PX = 3.0
PRUNE_SCALE_MIN_M = 5.0


@dataclass(frozen=True)
class ReconstructConfig:
    iterations: int = 1500
    resolution: tuple[int, int] | None = (160, 106)  # W, H the images are resampled to; None: as stored
    holdout_every: int = 8
    holdout_camera: str | None = None
    views_per_step: int = 1
    seed: int = 0
    # initialization
    voxel_m: float = 0.1  # the smallest voxel; voxels grow with distance to about VOXEL_PX pixels
    max_init: int = 60_000
    far_points: int = 4000
    ray_points: int = 10_000
    init_opacity: float = 0.5
    # losses
    ssim_weight: float = 0.2
    depth_weight: float = 0.1
    opacity_weight: float = 0.002
    # learning rates (gsplat defaults; means' in units of the scene scale)
    lr_means: float = 1.6e-4
    lr_quats: float = 1e-3
    lr_scales: float = 5e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 5e-3
    lr_sky: float = 1e-2
    # densification
    refine_start: int = 100
    refine_every: int = 100
    refine_stop: float = 0.7  # fraction of the iterations
    grow_grad2d: float = 0.0002
    grow_scale: float = 0.01
    prune_opacity: float = 0.005
    prune_scale: float = 1.0  # times the scene scale, at least PRUNE_SCALE_MIN_M
    max_gaussians: int = 100_000
    # bookkeeping
    checkpoint_every: int = 500
    log_every: int = 10
    comparisons: int = 4
    threads: int = 1
    device: str = "cpu"  # "cuda": parameters and renders on the GPU (render's "auto" backend then uses gsplat)


# --- views ------------------------------------------------------------------------------------------------------

def depth_maps(log: LogData) -> torch.Tensor:
    """``[T, C, H, W]`` lidar depth (camera z, m) of every view: each frame's points projected into its cameras,
    the nearest per pixel; 0 where no point falls."""
    out = torch.zeros(log.num_frames, log.num_cameras, log.height, log.width)
    for t in range(log.num_frames):
        pts = log.points[t].double()
        for c in range(log.num_cameras):
            cam_from_world = torch.linalg.inv(log.world_from_camera[t, c])
            p = pts @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
            z = p[:, 2]
            uv = p[:, :2] / z.clamp_min(1e-6)[:, None] @ log.intrinsics[t, c][:2, :2].T + log.intrinsics[t, c][:2, 2]
            col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
            ok = (z > NEAR_M) & (col >= 0) & (col < log.width) & (row >= 0) & (row < log.height)
            flat = torch.full((log.height * log.width,), float("inf"), dtype=torch.float64)
            flat.scatter_reduce_(0, row[ok] * log.width + col[ok], z[ok], reduce="amin")
            flat[torch.isinf(flat)] = 0.0
            out[t, c] = flat.reshape(log.height, log.width).float()
    return out


def ray_directions(log: LogData, frame: int, cameras: list[int]) -> torch.Tensor:
    """``[C, H, W, 3]`` world-frame unit directions through the pixel centres (CPU)."""
    v, u = torch.meshgrid(torch.arange(log.height) + 0.5, torch.arange(log.width) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).double()
    out = []
    for c in cameras:
        d = pix @ torch.linalg.inv(log.intrinsics[frame, c]).T
        d = d @ log.world_from_camera[frame, c][:3, :3].T
        out.append(torch.nn.functional.normalize(d, dim=-1).float())
    return torch.stack(out)


def render_views(params: SplatParams, sky: torch.Tensor, log: LogData, boxes: torch.Tensor, present: torch.Tensor,
                 frame: int, cameras: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict, Any]:
    """Render ``cameras`` of ``frame`` with the actors posed by ``boxes`` [K, 7] / ``present`` [K]: RGB over the
    sky [C, H, W, 3], expected depth [C, H, W], alpha [C, H, W], the rasterizer's meta, and the posed Gaussians."""
    device = params.means.device
    gaussians = frame_gaussians(params, boxes, present)
    cams = Cameras(viewmats=log.viewmats(frame, cameras).to(device),
                   Ks=log.intrinsics[frame, cameras].float().to(device), width=log.width, height=log.height)
    image, alphas, meta = render(gaussians, cams, mode="RGB+ED", backend="auto", near=NEAR_M)
    rgb = image[..., :3] + (1.0 - alphas) * sky_colors(sky, ray_directions(log, frame, cameras).to(device))
    return rgb, image[..., 3], alphas[..., 0], meta, gaussians


# --- initialization ---------------------------------------------------------------------------------------------

def _voxel_mean(points: torch.Tensor, colors: torch.Tensor, voxel: float | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean point and colour per voxel; ``voxel`` is one size or a size per point (sizes that are powers of two
    times one base size keep the voxels of each size apart)."""
    if isinstance(voxel, torch.Tensor):
        level = torch.round(torch.log2(voxel) * 8).long()[:, None]
        keys = torch.cat([torch.floor(points / voxel[:, None]).long(), level], 1)
    else:
        keys = torch.floor(points / voxel).long()
    _, inverse, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    n = counts.shape[0]
    mean_p = torch.zeros(n, 3).index_add_(0, inverse, points) / counts[:, None]
    mean_c = torch.zeros(n, 3).index_add_(0, inverse, colors) / counts[:, None]
    return mean_p, mean_c


def _nn_scales(points: torch.Tensor, floor: torch.Tensor | float = 0.02, k: int = 6) -> torch.Tensor:
    """RMS distance to the ``k`` nearest neighbours (3DGS uses 3; lidar rings need more), at least ``floor``."""
    from scipy.spatial import cKDTree

    if len(points) <= k:
        return torch.full((len(points),), 0.1)
    dist, _ = cKDTree(points.numpy()).query(points.numpy(), k=k + 1)
    scales = torch.from_numpy(np.sqrt((dist[:, 1:] ** 2).mean(1))).float()
    return torch.maximum(scales, torch.as_tensor(floor, dtype=torch.float32)).clamp(0.02, 3.0)


def _point_colors(log: LogData, depth: torch.Tensor, frame: int, pts: torch.Tensor,
                  train_cams: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean training-pixel colour of world points ``pts`` [P, 3] of ``frame`` where seen (not occluded); and a
    mask of the points seen by any training camera."""
    total, hits = torch.zeros(len(pts), 3), torch.zeros(len(pts))
    for c in train_cams:
        cam_from_world = torch.linalg.inv(log.world_from_camera[frame, c]).float()
        p = pts @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
        z = p[:, 2]
        k = log.intrinsics[frame, c].float()
        uv = p[:, :2] / z.clamp_min(1e-6)[:, None] @ k[:2, :2].T + k[:2, 2]
        col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        ok = (z > NEAR_M) & (col >= 0) & (col < log.width) & (row >= 0) & (row < log.height)
        idx = torch.nonzero(ok).squeeze(1)
        nearest = depth[frame, c][row[idx], col[idx]]
        idx = idx[(nearest <= 0) | (z[idx] <= nearest + VISIBLE_SLACK_M)]
        total[idx] += log.images[frame, c][row[idx], col[idx]].float() / 255.0
        hits[idx] += 1
    seen = hits > 0
    colors = torch.full((len(pts), 3), 0.5)
    colors[seen] = total[seen] / hits[seen, None]
    return colors, seen


def _inside_box(points: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    local = world_to_box(points, box)
    half_l, half_w = box[3] / 2 + BOX_MARGIN_M, box[4] / 2 + BOX_MARGIN_M
    return ((local[:, 0].abs() <= half_l) & (local[:, 1].abs() <= half_w) & (local[:, 2] >= GROUND_CLEARANCE_M)
            & (local[:, 2] <= box[5] + BOX_MARGIN_M))


def initial_scene(log: LogData, split: Split, depth: torch.Tensor, config: ReconstructConfig,
                  generator: torch.Generator) -> tuple[SplatScene, float]:
    """Step 2: the initial scene and the scene scale (m)."""
    train_frames = sorted({t for t, _ in split.train})
    cams_of = {t: sorted({c for tt, c in split.train if tt == t}) for t in train_frames}
    static_p, static_c = [], []
    actor_p: list[list[torch.Tensor]] = [[] for _ in log.actor_ids]
    actor_c: list[list[torch.Tensor]] = [[] for _ in log.actor_ids]
    for t in train_frames:
        pts = log.points[t].float()
        colors, _ = _point_colors(log, depth, t, pts, cams_of[t])
        is_actor = torch.zeros(len(pts), dtype=torch.bool)
        for k in range(len(log.actor_ids)):
            if not log.present[k, t]:
                continue
            inside = _inside_box(pts, log.boxes[k, t])
            if inside.any():
                actor_p[k].append(world_to_box(pts[inside], log.boxes[k, t]))
                actor_c[k].append(colors[inside])
            is_actor |= inside
        static_p.append(pts[~is_actor])
        static_c.append(colors[~is_actor])
    points, colors = torch.cat(static_p), torch.cat(static_c)
    points, colors = _voxel_mean(points, colors, _voxel_sizes(log, points, config.voxel_m))
    if len(points) > config.max_init:
        keep = torch.randperm(len(points), generator=generator)[:config.max_init]
        points, colors = points[keep], colors[keep]
    voxels = _voxel_sizes(log, points, config.voxel_m)
    centres = log.world_from_camera[:, :, :3, 3].reshape(-1, 3).float()
    centre = centres.mean(0)
    scene_scale = float(1.1 * (centres - centre).norm(dim=-1).max().clamp_min(1.0))
    reach = float((points - centre).norm(dim=-1).quantile(0.98))
    parts = [SplatParams.from_points(points, colors, _nn_scales(points, voxels / 2), torch.full((len(points),), -1),
                                     opacity=config.init_opacity)]
    far_points, ray_points = min(config.far_points, len(points) // 10), min(config.ray_points, len(points) // 5)
    if far_points:
        parts.append(_far_shell(log, split, centre, reach, far_points, generator))
    if ray_points:
        parts.append(_ray_points(log, split, depth, ray_points, generator))
    sizes = []
    for k in range(len(log.actor_ids)):
        box_sizes = log.boxes[k, log.present[k], 3:6]
        size = box_sizes.median(0).values if len(box_sizes) else torch.ones(3)
        sizes.append(tuple(float(s) for s in size))
        if actor_p[k]:
            p, c = _voxel_mean(torch.cat(actor_p[k]), torch.cat(actor_c[k]), ACTOR_VOXEL_M)
        else:  # never hit by lidar: points on the box's surface, grey
            p = (torch.rand(300, 3, generator=generator) - 0.5) * size
            p[:, 2] += size[2] / 2
            c = torch.full((300, 3), 0.5)
        parts.append(SplatParams.from_points(p, c, _nn_scales(p).clamp_max(0.3), torch.full((len(p),), k),
                                             opacity=config.init_opacity))
    params = SplatParams.concat(parts)
    actors = tuple(Actor(actor_id, agent_type, size) for actor_id, agent_type, size in
                   zip(log.actor_ids, log.actor_types, sizes))
    scene = SplatScene(params=params, sky=initial_sky(), actors=actors, frame_ids=log.frame_ids, boxes=log.boxes,
                       present=log.present, info={"centre_m": centre.tolist(), "scene_scale_m": scene_scale})
    return scene, scene_scale


def _voxel_sizes(log: LogData, points: torch.Tensor, base_m: float) -> torch.Tensor:
    """Per point, a voxel about ``VOXEL_PX`` pixels wide as seen from the nearest camera position: ``base_m`` times
    a power of two, at least ``base_m``, at most 16 ``base_m``."""
    from scipy.spatial import cKDTree

    centres = log.world_from_camera[:, :, :3, 3].reshape(-1, 3).numpy()
    distance, _ = cKDTree(centres).query(points.numpy(), k=1)
    focal = float(log.intrinsics[..., 0, 0].mean())
    wanted = torch.from_numpy(distance).float() * VOXEL_PX / focal
    level = torch.log2(wanted / base_m).round().clamp(0, 4)
    return base_m * 2.0 ** level


def _ray_points(log: LogData, split: Split, depth: torch.Tensor, count: int, generator: torch.Generator
                ) -> SplatParams:
    """``count`` faint Gaussians on the rays of random training pixels without a lidar return (tree tops, high
    facades, anything above the lidar's beams), at depths log-uniform in 2-150 m, coloured by their pixel."""
    views = torch.tensor(split.train)
    pick = views[torch.randint(len(views), (count * 4,), generator=generator)]
    rows = torch.randint(log.height, (count * 4,), generator=generator)
    cols = torch.randint(log.width, (count * 4,), generator=generator)
    free = depth[pick[:, 0], pick[:, 1], rows, cols] <= 0
    pick, rows, cols = pick[free][:count], rows[free][:count], cols[free][:count]
    z = torch.exp(math.log(2.0) + (math.log(150.0) - math.log(2.0)) * torch.rand(len(pick), generator=generator))
    k = log.intrinsics[pick[:, 0], pick[:, 1]].float()
    pose = log.world_from_camera[pick[:, 0], pick[:, 1]].float()
    cam = torch.stack([(cols + 0.5 - k[:, 0, 2]) / k[:, 0, 0] * z, (rows + 0.5 - k[:, 1, 2]) / k[:, 1, 1] * z, z], -1)
    points = torch.einsum("nij,nj->ni", pose[:, :3, :3], cam) + pose[:, :3, 3]
    colors = log.images[pick[:, 0], pick[:, 1], rows, cols].float() / 255.0
    return SplatParams.from_points(points, colors, z * 2.0 / k[:, 0, 0], torch.full((len(points),), -1), opacity=0.05)


def _far_shell(log: LogData, split: Split, centre: torch.Tensor, reach: float, count: int,
               generator: torch.Generator) -> SplatParams:
    """``count`` Gaussians at 1.2-3x ``reach`` around ``centre``, up to 40 m high, coloured by the first training
    view that sees each (no occlusion test: nothing else is out there)."""
    azimuth = torch.rand(count, generator=generator) * 2 * math.pi
    radius = reach * (1.2 + 1.8 * torch.rand(count, generator=generator))
    height = 40.0 * torch.rand(count, generator=generator) ** 2
    points = torch.stack([centre[0] + radius * torch.cos(azimuth), centre[1] + radius * torch.sin(azimuth),
                          centre[2] + height], -1)
    t = split.train[0][0]
    empty = torch.zeros(log.num_frames, log.num_cameras, log.height, log.width)
    colors, _ = _point_colors(log, empty, t, points, sorted({c for tt, c in split.train if tt == t}))
    scales = radius * 2 * math.pi / math.sqrt(count) / 4
    return SplatParams.from_points(points, colors, scales, torch.full((count,), -1))


# --- optimization -----------------------------------------------------------------------------------------------

class _Trainer:
    """Parameters as leaves, one Adam per parameter (densification edits rows of the moments)."""

    def __init__(self, scene: SplatScene, scene_scale: float, config: ReconstructConfig):
        self.config, self.scene_scale = config, scene_scale
        self.device = torch.device(config.device)
        self.owner = scene.params.owner.to(self.device)
        self.params = {k: torch.nn.Parameter(v.to(self.device)) for k, v in scene.params.raw().items()}
        self.sky = torch.nn.Parameter(scene.sky.to(self.device))
        lrs = {"means": config.lr_means * scene_scale, "quats": config.lr_quats, "scales": config.lr_scales,
               "opacities": config.lr_opacities, "sh0": config.lr_sh0}
        self.base_lr = lrs
        self.optimizers = {k: torch.optim.Adam([p], lr=lrs[k], eps=1e-15) for k, p in self.params.items()}
        self.sky_optimizer = torch.optim.Adam([self.sky], lr=config.lr_sky)
        self.reset_stats()

    def reset_stats(self) -> None:
        n = self.owner.shape[0]
        self.grad2d, self.seen = torch.zeros(n, device=self.device), torch.zeros(n, device=self.device)

    def splats(self) -> SplatParams:
        return SplatParams(**self.params, owner=self.owner)

    def set_lr(self, step: int) -> None:
        decay = 0.01 ** (step / max(1, self.config.iterations))
        for group in self.optimizers["means"].param_groups:
            group["lr"] = self.base_lr["means"] * decay

    def step(self) -> None:
        for opt in (*self.optimizers.values(), self.sky_optimizer):
            opt.step()
            opt.zero_grad(set_to_none=True)

    def accumulate(self, meta: dict, kept: torch.Tensor, width: int, height: int) -> None:
        """Add the NDC-scaled screen-mean gradient norms of this step's views to the Gaussians in ``kept``."""
        means2d = meta.get("means2d")
        if means2d is None or means2d.grad is None:
            return
        grad = means2d.grad.clone()  # [C, n, 2] px
        grad[..., 0] *= width / 2
        grad[..., 1] *= height / 2
        visible = (meta["radii"] > 0).all(-1) if meta["radii"].ndim == 3 else meta["radii"] > 0  # [C, n]
        norms = (grad.norm(dim=-1) * visible).sum(0)
        self.grad2d.index_add_(0, kept, norms)
        self.seen.index_add_(0, kept, visible.sum(0).float())

    def _edit(self, keep: torch.Tensor, new: dict[str, torch.Tensor] | None, new_owner: torch.Tensor | None) -> None:
        """Keep rows ``keep`` of every parameter and its Adam moments, then append ``new`` rows (zero moments)."""
        for name, param in self.params.items():
            data = param.data[keep]
            if new is not None:
                data = torch.cat([data, new[name]])
            fresh = torch.nn.Parameter(data)
            opt = self.optimizers[name]
            state = opt.state.pop(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    moment = state[key][keep]
                    if new is not None:
                        moment = torch.cat([moment, torch.zeros_like(new[name])])
                    state[key] = moment
            opt.param_groups[0]["params"] = [fresh]
            if state:
                opt.state[fresh] = state
            self.params[name] = fresh
        self.owner = self.owner[keep] if new_owner is None else torch.cat([self.owner[keep], new_owner])

    def refine(self, generator: torch.Generator) -> dict[str, int]:
        """Step 4: clone / split by screen gradient under the budget, then prune."""
        c = self.config
        with torch.no_grad():
            n = self.owner.shape[0]
            avg = self.grad2d / self.seen.clamp_min(1)
            candidates = torch.nonzero(avg > c.grow_grad2d).squeeze(1)
            room = max(0, c.max_gaussians - n)
            candidates = candidates[torch.argsort(avg[candidates], descending=True)][:room]
            max_scale = torch.exp(self.params["scales"].data).max(-1).values
            small = max_scale[candidates] <= c.grow_scale * self.scene_scale
            clone, split = candidates[small], candidates[~small]
            p = {k: v.data for k, v in self.params.items()}
            new = {k: [p[k][clone]] for k in p}
            owners = [self.owner[clone], self.owner[split], self.owner[split]]
            if len(split):
                scales = torch.exp(p["scales"][split])
                q = torch.nn.functional.normalize(p["quats"][split], dim=-1)
                rot = quat_to_matrix(q)
                for _ in range(2):
                    offset = torch.randn(len(split), 3, generator=generator).to(self.device) * scales
                    new["means"].append(p["means"][split] + torch.einsum("nij,nj->ni", rot, offset))
                    new["scales"].append(torch.log(scales / 1.6))
                    for k in ("quats", "opacities", "sh0"):
                        new[k].append(p[k][split])
            keep = torch.ones(n, dtype=torch.bool, device=self.device)
            keep[split] = False  # split parents are replaced by their two children
            added = {k: torch.cat(v) for k, v in new.items()}
            self._edit(keep, added, torch.cat(owners))
            opacity = torch.sigmoid(self.params["opacities"].data)
            limit = max(c.prune_scale * self.scene_scale, PRUNE_SCALE_MIN_M)
            big = torch.exp(self.params["scales"].data).max(-1).values > limit
            prune = (opacity < c.prune_opacity) | big
            self._edit(~prune, None, None)
            self.reset_stats()
        return {"cloned": len(clone), "split": len(split), "pruned": int(prune.sum())}

    def state(self, step: int, generator: torch.Generator) -> dict:
        return {"step": step, "params": {k: v.data for k, v in self.params.items()}, "owner": self.owner,
                "sky": self.sky.data, "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "sky_optimizer": self.sky_optimizer.state_dict(), "grad2d": self.grad2d, "seen": self.seen,
                "generator": generator.get_state(), "config": asdict(self.config), "scene_scale": self.scene_scale}

    def load(self, state: dict, generator: torch.Generator) -> int:
        self.owner = state["owner"].to(self.device)
        self.params = {k: torch.nn.Parameter(v.to(self.device)) for k, v in state["params"].items()}
        self.sky = torch.nn.Parameter(state["sky"].to(self.device))
        self.optimizers = {k: torch.optim.Adam([p], lr=self.base_lr[k], eps=1e-15) for k, p in self.params.items()}
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        self.sky_optimizer = torch.optim.Adam([self.sky], lr=self.config.lr_sky)
        self.sky_optimizer.load_state_dict(state["sky_optimizer"])
        self.grad2d, self.seen = state["grad2d"].to(self.device), state["seen"].to(self.device)
        generator.set_state(state["generator"])
        return int(state["step"])


def train_step(trainer: _Trainer, log: LogData, depth: torch.Tensor, views: list[tuple[int, int]],
               step: int, densify: bool) -> dict[str, float]:
    """One optimizer step on ``views`` (all of one frame): step 3 (and the statistics of step 4)."""
    c = trainer.config
    frame, cameras = views[0][0], [v[1] for v in views]
    params = trainer.splats()
    boxes, present = log.boxes[:, frame], log.present[:, frame]
    trainer.set_lr(step)
    rgb, expected, alphas, meta, _ = render_views(params, trainer.sky, log, boxes, present, frame, cameras)
    if densify and "means2d" in meta and meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()
    target = log.images[frame, cameras].to(rgb.device).float() / 255.0
    loss_rgb = colour_loss(rgb, target, c.ssim_weight)
    lidar = depth[frame, cameras].to(rgb.device)
    mask = lidar > 0
    loss_depth = ((expected[mask] - lidar[mask]).abs() / lidar[mask]).mean() if mask.any() else rgb.new_zeros(())
    loss_opacity = torch.sigmoid(trainer.params["opacities"]).mean()
    loss = loss_rgb + c.depth_weight * loss_depth + c.opacity_weight * loss_opacity
    loss.backward()
    if densify:
        kept = torch.nonzero(_kept_mask(params, present)).squeeze(1)
        trainer.accumulate(meta, kept, log.width, log.height)
    trainer.step()
    return {"loss": float(loss.detach()), "psnr": float(psnr(rgb.detach(), target)),
            "depth": float(loss_depth.detach())}


def _kept_mask(params: SplatParams, present: torch.Tensor) -> torch.Tensor:
    """The Gaussians ``frame_gaussians`` keeps, in its order."""
    owner, present = params.owner, present.to(params.owner.device)
    keep = owner < 0
    if present.shape[0]:
        keep = keep | present[owner.clamp_min(0)] & (owner >= 0)
    return keep


# --- evaluation -------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(params: SplatParams, sky: torch.Tensor, log: LogData, depth: torch.Tensor,
             views: tuple[tuple[int, int], ...]) -> tuple[dict[str, float], list[tuple[int, int, np.ndarray]]]:
    """PSNR, SSIM (mean over views) and lidar depth error (over all lidar pixels) of ``views``; and per view an
    image ``render | truth | 4 x |error|``."""
    if not views:
        return {}, []
    psnrs, ssims, abs_rel, l1, count = [], [], 0.0, 0.0, 0
    pictures = []
    by_frame: dict[int, list[int]] = {}
    for t, c in views:
        by_frame.setdefault(t, []).append(c)
    for t, cams in sorted(by_frame.items()):
        rgb, expected, _, _, _ = render_views(params, sky, log, log.boxes[:, t], log.present[:, t], t, cams)
        rgb, expected = rgb.clamp(0, 1).cpu(), expected.cpu()
        target = log.images[t, cams].float() / 255.0
        for i, c in enumerate(cams):
            psnrs.append(float(psnr(rgb[i], target[i])))
            ssims.append(float(ssim(rgb[i], target[i])))
            err = (rgb[i] - target[i]).abs().mul(4).clamp(0, 1)
            pictures.append((t, c, (torch.cat([rgb[i], target[i], err], 1) * 255).round().byte().numpy()))
        lidar = depth[t, cams]
        mask = lidar > 0
        diff = (expected[mask] - lidar[mask]).abs()
        abs_rel += float((diff / lidar[mask]).sum())
        l1 += float(diff.sum())
        count += int(mask.sum())
    figures = {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)),
               "depth_abs_rel": abs_rel / max(count, 1), "depth_l1_m": l1 / max(count, 1), "views": len(views),
               "lidar_pixels": count}
    return figures, pictures


# --- a whole run ------------------------------------------------------------------------------------------------

def reconstruct(log_dir: str | Path, out: str | Path, config: ReconstructConfig = ReconstructConfig(), *,
                resume: bool = False, progress: bool = False) -> dict[str, Any]:
    """Steps 1-6 of the module docstring; returns the summary (also ``out/summary.json``)."""
    tic = time.perf_counter()
    torch.set_num_threads(config.threads)
    out = Path(out)
    checkpoint = out / "checkpoint.pt"
    if resume and not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint to resume from; run without --resume first")
    generator = torch.Generator().manual_seed(config.seed)
    log = load_log(log_dir, resolution=config.resolution)
    split = split_views(log, config.holdout_every, config.holdout_camera)
    depth = depth_maps(log)
    scene, scene_scale = initial_scene(log, split, depth, config, generator)
    init_gaussians = scene.params.num_gaussians
    initial, _ = evaluate(scene.params, scene.sky, log, depth, split.heldout)  # on the CPU: before training
    trainer = _Trainer(scene, scene_scale, config)
    start = 0
    if resume:
        state = torch.load(checkpoint, weights_only=False)
        start = trainer.load(state, generator)
        scene_scale = trainer.scene_scale = state["scene_scale"]
    out.mkdir(parents=True, exist_ok=True)
    setup_s = time.perf_counter() - tic
    frames = sorted({t for t, _ in split.train})
    cams_of = {t: [c for tt, c in split.train if tt == t] for t in frames}
    history: list[dict[str, float]] = []
    refinements: list[dict[str, int]] = []
    train_tic = time.perf_counter()
    stop = int(config.refine_stop * config.iterations)
    with progress_bar(f"reconstruct {out.name}", total=config.iterations - start, enabled=progress) as advance:
        for step in range(start, config.iterations):
            t = frames[int(torch.randint(len(frames), (1,), generator=generator))]
            cams = cams_of[t]
            pick = torch.randperm(len(cams), generator=generator)[:config.views_per_step].tolist()
            densify = step < stop
            stats = train_step(trainer, log, depth, [(t, cams[i]) for i in sorted(pick)], step, densify)
            if step % config.log_every == 0 or step + 1 == config.iterations:
                history.append({"step": step, **stats, "gaussians": trainer.owner.shape[0]})
            if densify and step >= config.refine_start and (step + 1) % config.refine_every == 0:
                refinements.append({"step": step + 1, **trainer.refine(generator)})
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.iterations:
                torch.save(trainer.state(step + 1, generator), checkpoint)
            advance()
    train_s = time.perf_counter() - train_tic
    params = SplatParams(**{k: trainer.params[k].data for k in PARAM_NAMES}, owner=trainer.owner)
    eval_tic = time.perf_counter()
    heldout, pictures = evaluate(params, trainer.sky.data, log, depth, split.heldout)
    camera_figures, camera_pictures = evaluate(params, trainer.sky.data, log, depth, split.heldout_camera)
    train_figures, _ = evaluate(params, trainer.sky.data, log, depth, split.train[::max(1, len(split.train) // 16)])
    eval_s = time.perf_counter() - eval_tic
    params = SplatParams(**{k: v.cpu() for k, v in params.raw().items()}, owner=params.owner.cpu())
    scene = replace(scene, params=params, sky=trainer.sky.data.cpu().clone(),
                    info={**scene.info, "source": str(log_dir), "protocol": split.protocol})
    save_scene(scene, out)
    export_ply(frame_gaussians(params, *scene.frame_boxes(0)), out / "scene.ply")
    folder = out / "comparisons"
    folder.mkdir(exist_ok=True)
    chosen = pictures[::max(1, len(pictures) // config.comparisons)][:config.comparisons] + camera_pictures[:2]
    names = []
    for t, c, picture in chosen:
        name = f"{log.frame_ids[t]}_{log.camera_names[c]}.png"
        Image.fromarray(picture).save(folder / name)
        names.append(f"comparisons/{name}")
    iterations_run = config.iterations - start
    summary = {
        "psnr_heldout": heldout["psnr"], "ssim_heldout": heldout["ssim"],
        "depth_abs_rel_heldout": heldout["depth_abs_rel"], "depth_l1_m_heldout": heldout["depth_l1_m"],
        "heldout": heldout, "heldout_camera": camera_figures or None, "train_sample": train_figures,
        "initial": initial,
        "protocol": {**split.protocol, "metrics": "PSNR and SSIM over whole images in [0, 1] (sky included), "
                     "mean over views; depth: rendered expected depth against the frame's lidar points projected "
                     "into the camera (nearest per pixel), over all such pixels", "source": str(log_dir),
                     "layout": log.layout},
        "num_gaussians": params.num_gaussians, "num_background": int((params.owner < 0).sum()),
        "num_actors": scene.num_actors, "initial_gaussians": init_gaussians, "scene_scale_m": scene_scale,
        "iterations": config.iterations, "resumed_from": start,
        "iterations_per_s": iterations_run / train_s if iterations_run else None,
        "timings": {"setup_s": setup_s, "train_s": train_s, "eval_s": eval_s},
        "wall_time_s": time.perf_counter() - tic, "threads": config.threads,
        "config": asdict(config), "history": history, "refinements": refinements, "comparisons": names,
        "versions": io.version_info(),
    }
    io.write_json(out / "summary.json", summary)
    return summary
