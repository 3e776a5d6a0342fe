"""Gaussian-splat rasterization: ``render(gaussians, cameras, mode)`` with gsplat's semantics, on any torch device.

The API follows ``gsplat.rasterization`` (1.5.3, ``rasterize_mode="classic"``, pinhole cameras) so that a scene
model written against it runs unchanged on a GPU with gsplat and on this CPU-only machine with our torch path.

Backends (``backend=``):

| name | what | use |
|---|---|---|
| ``"torch"`` | ``rasterize_tiled.rasterize_tiled``: EWA projection, binning into 8 px blocks (within gsplat's \
16 px tile support), per-block depth order, front-to-back compositing in depth chunks with early stop; \
differentiable by autograd | CPU training and rendering |
| ``"dense"`` | ``rasterize_reference.rasterize_dense``: every pixel against every Gaussian, one at a time in depth \
order; slow and obvious | test oracle (the slow twin) |
| ``"gsplat"`` | ``gsplat.rasterization`` with the same arguments | CUDA |
| ``"auto"`` | ``"gsplat"`` when the tensors live on a CUDA device and gsplat imports, else ``"torch"`` | default |

Notation (one camera; all backends compute the same thing):

| symbol | meaning |
|---|---|
| μ, q, s, o, f | a Gaussian's world mean m, quaternion wxyz (normalized here), scales m, opacity, features [D] |
| Σ = R(q) diag(s)² R(q)ᵀ | world covariance, m² |
| W, t | rotation and translation of ``viewmat`` (world -> camera, OpenCV: x right, y down, z forward) |
| (x, y, z) = W μ + t | camera-frame mean; z is the Gaussian's depth |
| fx, fy, cx, cy | pinhole intrinsics ``K``, px |
| J | Jacobian of (fx x/z + cx, fy y/z + cy) at the mean, x/z and y/z clamped to 1.3x the image's half-FOV |
| Σ₂ = J W Σ Wᵀ Jᵀ + ε I | screen covariance, px², with the low-pass ε = ``EPS2D`` = 0.3 px² |
| m = (fx x/z + cx, fy y/z + cy) | screen mean, px; pixel (row i, column j) has its centre at (j + 0.5, i + 0.5) |
| σ(p) = ½ (p - m)ᵀ Σ₂⁻¹ (p - m) | Mahalanobis term at pixel centre p |
| α = min(``MAX_ALPHA``, o exp(-σ)) | a Gaussian's alpha at a pixel |

Steps:
    1. Project: Σ₂, m, z as above. A Gaussian is culled (radius 0) when z < ``near`` or z > ``far``, det Σ₂ <= 0,
       o < ``ALPHA_MIN``, or its screen box lies off the image.
    2. Screen box: half-sizes r = ceil(e sqrt(diag Σ₂)) px per axis, with the opacity-aware extent
       e = min(``EXTENT_SIGMA``, sqrt(2 ln(o / ``ALPHA_MIN``))) (gsplat >= 1.5: beyond e, α < ``ALPHA_MIN``).
    3. Tiles: the Gaussian reaches every pixel of every ``TILE_SIZE`` x ``TILE_SIZE`` tile with column index in
       [floor(mx / 16 - rx / 16), ceil(mx / 16 + rx / 16)) (clamped to the image's tiles), rows likewise, and no
       other pixel. This tile-granular support is part of the contract: the dense twin applies it too.
    4. Composite each pixel front to back in increasing z (ties: lower Gaussian index first), with T = 1:
       skip a Gaussian where σ < 0 or α < ``ALPHA_MIN``; stop before the first Gaussian whose
       T (1 - α) <= ``T_MIN`` (it does not contribute); otherwise add f α T and set T <- T (1 - α).
       alpha = 1 - T.
    5. Modes: ``"RGB"``: f = colors, X = D channels; ``"D"``: f = z, X = 1 (the accumulated depth Σ z α T);
       ``"ED"``: D / max(alpha, 1e-10) (expected depth); ``"RGB+D"``, ``"RGB+ED"``: both, depth last, X = D + 1.
    6. Background b (colour channels only; the depth channel's is 0): colors + (1 - alpha) b.

Checked against gsplat 1.5.3's source (``RasterizeToPixels3DGSFwd.cu``, ``ProjectionEWA3DGSFused.cu``,
``IntersectTile.cu``, ``rendering.py``): its kernel clamps α at 0.999 (``MAX_ALPHA``; the original 3DGS and later
gsplat use 0.99), skips α < 1/255, stops before T <= 1e-4, and bounds the screen box by the opacity-aware extent.
Not supported: spherical-harmonics colours (``sh_degree``; ``colors`` are activated features [N, D]),
``rasterize_mode="antialiased"``, packed outputs, other camera models.

Gradients reach means, quats, scales, opacities, colors and viewmats (``Ks`` too) by autograd in the torch and
dense backends; gsplat's own backward gives the first five (and viewmats) on CUDA. ``meta["means2d"]`` is the
screen-mean tensor the image was computed from, so ``meta["means2d"].retain_grad()`` before ``backward()`` gives
the screen-space gradients densification uses.
"""

from __future__ import annotations

import importlib
import numbers
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

Mode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
Backend = Literal["auto", "torch", "dense", "gsplat"]

EPS2D = 0.3  # px², low-pass added to the screen covariance's diagonal (gsplat eps2d)
ALPHA_MIN = 1.0 / 255.0  # a Gaussian with α below this is skipped at that pixel
MAX_ALPHA = 0.999  # α is clamped here (gsplat 1.5.3's kernel)
T_MIN = 1e-4  # compositing stops before a Gaussian that would take T to this or below
EXTENT_SIGMA = 3.33  # the screen box's half-size in standard deviations, at most
TILE_SIZE = 16  # px
ED_ALPHA_FLOOR = 1e-10  # "ED" divides the accumulated depth by max(alpha, this)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class Gaussians:
    """N 3D Gaussians, activated values in the world frame (what ``gsplat.rasterization`` takes)."""

    means: Tensor  # [N, 3] world frame, m
    quats: Tensor  # [N, 4] rotation as a quaternion w, x, y, z; any norm > 0 (normalized when rendering)
    scales: Tensor  # [N, 3] standard deviations along the rotated axes, m, > 0 (already exp'ed)
    opacities: Tensor  # [N] in (0, 1) (already sigmoid'ed)
    colors: Tensor  # [N, D] features composited per pixel; RGB in [0, 1] for images (D = 3)

    def __post_init__(self) -> None:
        for name in ("means", "quats", "scales", "opacities", "colors"):
            _check(isinstance(getattr(self, name), Tensor), f"Gaussians.{name} must be a torch.Tensor")
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,)}
        for name, shape in expected.items():
            value = getattr(self, name)
            _check(tuple(value.shape) == shape,
                   f"Gaussians.{name} has shape {tuple(value.shape)}; expected {shape} (N = means.shape[0]); "
                   f"opacities is [N], not [N, 1]: squeeze it")
        _check(self.colors.ndim == 2 and self.colors.shape[0] == n and self.colors.shape[1] >= 1,
               f"Gaussians.colors has shape {tuple(self.colors.shape)}; expected [N, D] with N = {n} "
               f"(spherical harmonics are not supported: evaluate them to RGB first)")
        dtype, device = self.means.dtype, self.means.device
        _check(dtype in (torch.float32, torch.float64), f"Gaussians.means has dtype {dtype}; use float32")
        for name in ("quats", "scales", "opacities", "colors"):
            value = getattr(self, name)
            _check(value.dtype == dtype and value.device == device,
                   f"Gaussians.{name} is {value.dtype} on {value.device}; every field must match means "
                   f"({dtype} on {device})")

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]


@dataclass(frozen=True)
class Cameras:
    """C pinhole cameras sharing one image size."""

    viewmats: Tensor  # [C, 4, 4] world -> camera (camera_from_world), OpenCV: x right, y down, z forward
    Ks: Tensor  # [C, 3, 3] pinhole intrinsics, px: [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    width: int  # px
    height: int  # px

    def __post_init__(self) -> None:
        _check(isinstance(self.viewmats, Tensor) and self.viewmats.ndim == 3 and self.viewmats.shape[1:] == (4, 4),
               f"Cameras.viewmats must be a [C, 4, 4] tensor (world -> camera); got "
               f"{tuple(getattr(self.viewmats, 'shape', ()))}")
        c = self.viewmats.shape[0]
        _check(isinstance(self.Ks, Tensor) and tuple(self.Ks.shape) == (c, 3, 3),
               f"Cameras.Ks must be a [C, 3, 3] tensor with C = {c} (one per viewmat); got "
               f"{tuple(getattr(self.Ks, 'shape', ()))}")
        _check(self.Ks.dtype == self.viewmats.dtype and self.Ks.device == self.viewmats.device,
               "Cameras.Ks and Cameras.viewmats must share dtype and device")
        for name in ("width", "height"):
            value = getattr(self, name)
            _check(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0,
                   f"Cameras.{name} must be a positive int (px); got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers become plain ints

    @property
    def num_cameras(self) -> int:
        return self.viewmats.shape[0]


def gsplat_available() -> bool:
    """True when ``gsplat`` imports (it needs CUDA to run)."""
    try:
        importlib.import_module("gsplat")
    except Exception:  # ImportError, or a broken CUDA extension build
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ``render`` uses for ``backend`` with tensors on ``device``."""
    _check(backend in get_args(Backend),
           f"unknown backend {backend!r}; use one of {', '.join(repr(b) for b in get_args(Backend))}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    return backend


def render(gaussians: Gaussians, cameras: Cameras, mode: Mode = "RGB", *, backend: Backend = "auto",
           near: float = 0.01, far: float = 1e10, background: Tensor | None = None) -> tuple[Tensor, Tensor, dict]:
    """Rasterize ``gaussians`` into every camera (steps in the module docstring).

    Returns ``colors`` [C, H, W, X] (X = D, 1 or D + 1 by ``mode``), ``alphas`` [C, H, W, 1] and ``meta``:
    ``backend`` (the one used), ``radii`` [C, N, 2] int32 (0 = culled), ``means2d`` [C, N, 2] px,
    ``depths`` [C, N] m, ``conics`` [C, N, 3] (Σ₂⁻¹ as xx, xy, yy), plus the backend's own counters.
    ``background``: [D] or [C, D] colour behind the Gaussians (ignored by the depth channel), default none (0).
    """
    _check(isinstance(gaussians, Gaussians), "gaussians must be a simgen.renderers.splats.rasterize.Gaussians")
    _check(isinstance(cameras, Cameras), "cameras must be a simgen.renderers.splats.rasterize.Cameras")
    _check(mode in get_args(Mode), f"unknown mode {mode!r}; use one of {', '.join(repr(m) for m in get_args(Mode))}")
    _check(cameras.viewmats.dtype == gaussians.means.dtype and cameras.viewmats.device == gaussians.means.device,
           f"cameras are {cameras.viewmats.dtype} on {cameras.viewmats.device} but gaussians are "
           f"{gaussians.means.dtype} on {gaussians.means.device}; move them to the same dtype and device")
    _check(0.0 < near < far, f"need 0 < near < far; got near={near}, far={far}")
    num_colors = gaussians.colors.shape[1]
    c = cameras.num_cameras
    if background is not None:
        _check(isinstance(background, Tensor) and tuple(background.shape) in ((num_colors,), (c, num_colors)),
               f"background must be a [D] or [C, D] tensor with D = {num_colors}, C = {c}; got "
               f"{tuple(getattr(background, 'shape', ()))}")
        background = background.to(gaussians.means).expand(c, num_colors)
    chosen = resolve_backend(backend, gaussians.means.device)
    if chosen == "gsplat":
        return _render_gsplat(gaussians, cameras, mode, near, far, background)

    with_colors, with_depth = mode.startswith("RGB"), mode.endswith("D")
    if chosen == "dense":
        from simgen.renderers.splats.rasterize_reference import rasterize_dense as rasterize
    else:
        from simgen.renderers.splats.rasterize_tiled import rasterize_tiled as rasterize
    image, alphas, meta = rasterize(gaussians, cameras, with_colors=with_colors, with_depth=with_depth,
                                    near=near, far=far)
    if background is not None and with_colors:
        fill = background[:, None, None, :] * (1.0 - alphas)
        image = torch.cat([image[..., :num_colors] + fill, image[..., num_colors:]], dim=-1)
    if mode.endswith("ED"):
        image = torch.cat([image[..., :-1], image[..., -1:] / alphas.clamp(min=ED_ALPHA_FLOOR)], dim=-1)
    meta["backend"] = chosen
    return image, alphas, meta


def _render_gsplat(gaussians: Gaussians, cameras: Cameras, mode: str, near: float, far: float,
                   background: Tensor | None) -> tuple[Tensor, Tensor, dict]:
    try:
        gsplat = importlib.import_module("gsplat")
    except Exception as error:
        raise ValueError(f"backend 'gsplat' needs the gsplat package: pip install gsplat; needs CUDA ({error}); "
                         "or use backend='torch'") from error
    _check(gaussians.means.device.type == "cuda",
           f"backend 'gsplat' needs CUDA tensors; the Gaussians are on {gaussians.means.device}: move them and the "
           "cameras with .to('cuda'), or use backend='torch'")
    image, alphas, meta = gsplat.rasterization(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors,
        cameras.viewmats, cameras.Ks, cameras.width, cameras.height, near_plane=near, far_plane=far,
        eps2d=EPS2D, packed=False, tile_size=TILE_SIZE, backgrounds=background, render_mode=mode,
        rasterize_mode="classic", camera_model="pinhole")
    meta = dict(meta)
    meta["backend"] = "gsplat"
    return image, alphas, meta
