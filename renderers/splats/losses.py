"""Image losses and quality figures for splat reconstruction: L1, SSIM (and D-SSIM), PSNR.

SSIM follows Wang et al. 2004 as the 3DGS code computes it: an 11 x 11 Gaussian window (sigma 1.5), constants
C1 = 0.01², C2 = 0.03² for images in [0, 1], zero padding, the mean over pixels and channels.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=4)
def _window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of images ``[..., H, W, 3]`` in [0, 1] (batched over the leading axes)."""
    x = a.reshape(-1, *a.shape[-3:]).permute(0, 3, 1, 2)
    y = b.reshape(-1, *b.shape[-3:]).permute(0, 3, 1, 2)
    channels = x.shape[1]
    w = _window().to(x.dtype).expand(channels, 1, 11, 11)
    blur = functools.partial(F.conv2d, weight=w, padding=5, groups=channels)
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    value = (2 * mu_x * mu_y + c1) * (2 * sxy + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return value.mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] over all their pixels."""
    mse = torch.mean((a.clamp(0, 1) - b) ** 2)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def colour_loss(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.2) -> torch.Tensor:
    """3DGS's colour loss: (1 - λ) L1 + λ (1 - SSIM), λ = ``ssim_weight``."""
    return (1 - ssim_weight) * (pred - target).abs().mean() + ssim_weight * (1 - ssim(pred, target))
