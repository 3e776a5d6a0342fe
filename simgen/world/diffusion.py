"""Noise schedule and the per-frame DDIM update shared by training and both samplers.

The schedule is diffusers' ``DDIMScheduler`` (1000 steps, ``squaredcos_cap_v2``
cosine betas). A *noise level* ``τ`` in [0, 1] names one of its
timesteps: ``τ = (t + 1) / 1000`` for timestep t, and ``τ = 0`` is the clean
signal (``ᾱ = 1``). Levels are per frame, so a window can hold clean context,
slightly noisy near frames and pure-noise far frames at once.

The network predicts a generalized v (EDM preconditioning written for the
variance-preserving schedule) with a per-element data scale σ_d: with
``a = sqrt(ᾱ)``, ``s = sqrt(1 - ᾱ)``,

    x̂_0 = c_skip x_τ - c_out v,   c_skip = a σ_d² / (a² σ_d² + s²),   c_out = s σ_d / sqrt(a² σ_d² + s²).

With σ_d = 1 this is exactly v-prediction (``c_skip = a``, ``c_out = s``,
``v = a ε - s x_0``); most channels use it. Agents' positions relative to
their reference lines are tiny near the present (2 cm RMS 0.1 s ahead, 0.9 m
1.6 s ahead; ``tokenizer.position_scale``), far below the unit scale plain
v-prediction assumes: it then has to recover them from the noise with a gain
of 1 / s (about 160 at the nearest amortized frame), which a small network does
poorly, and every executed frame jitters by centimetres (accelerations of
several m/s²). With their own σ_d the prediction there is a small correction
of a well-scaled guess.

| symbol | meaning |
|---|---|
| ᾱ(τ) | ``alphas_cumprod`` of τ's timestep (1 at τ = 0) |
| x_τ | ``sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε`` |
| v | ``(c_skip x_τ - x_0) / c_out`` (the network's target) |
"""

from __future__ import annotations

from functools import lru_cache

import torch

NUM_TRAIN_TIMESTEPS = 1000
RISE_POWER = 3.0  # amortized staircase: frame k of W sits at τ = (k / W) ** RISE_POWER


def staircase(future: int, phase: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Noise levels of the future frames k = 1..W in amortized sampling: ``((k - 1 + phase) / W) ** RISE_POWER``.

    ``phase`` 1 gives the levels before a denoiser call; one call takes every
    frame to phase 0 (frame 1 clean). The power keeps the frames about to be
    executed nearly clean, so a call only refines them, while far frames stay
    free to change: of 16 frames, frame 1 sits at τ = 0.0002 before a call,
    which the 1000-step grid rounds to clean (the frame a call executes was
    denoised by the call before, then constrained again), frame 2 at 0.002
    (noise std 0.009), frame 5 at 0.03 (0.06), frame 8 at 0.21.

    The power is 3, not 2 (the shipped weights' training, at which frame 1 sat at
    τ = 0.004): with the same weights, held-out Berlin's WOSAC meta-metric rose
    from 0.819 to 0.824 (50 scenes × 32 rollouts; linear speed likelihood 0.393
    to 0.417, acceleration 0.418 to 0.446), while 1.5 lowered it to 0.814, and
    3.5 and 4 (offroad likelihood 0.963 and 0.950) gave no more (50 × 8: 0.822,
    0.819 against 0.823). Training's amortized task draws the same staircase
    (``simgen.world.train``), and its per-frame task any rising levels.
    """
    k = torch.arange(1, future + 1)
    return ((k - 1 + torch.as_tensor(phase)) / future) ** RISE_POWER


def make_scheduler():
    """diffusers' ``DDIMScheduler`` with simgen's settings (imported here: diffusers takes seconds to import)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=True,
                         timestep_spacing="leading")


@lru_cache(maxsize=1)
def _alpha_bar_table() -> torch.Tensor:
    """``[1001]`` ᾱ indexed by ``round(τ * 1000)``: 1 (clean), then the scheduler's ``alphas_cumprod``."""
    return torch.cat([torch.ones(1), make_scheduler().alphas_cumprod.float()])


def level_of_timestep(t: torch.Tensor | int) -> torch.Tensor:
    """Scheduler timestep(s) -> noise level τ."""
    return (torch.as_tensor(t, dtype=torch.float32) + 1) / NUM_TRAIN_TIMESTEPS


def alpha_bar(level: torch.Tensor) -> torch.Tensor:
    """ᾱ at noise levels ``level`` (any shape), snapped to the schedule's grid."""
    index = (level * NUM_TRAIN_TIMESTEPS).round().long().clamp(0, NUM_TRAIN_TIMESTEPS)
    return _alpha_bar_table().to(index.device)[index]


def _coefficients(level: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(ᾱ), sqrt(1 - ᾱ) for frame levels ``[B, T]`` shaped to broadcast with ``like`` ``[B, E, T, C]``."""
    a = alpha_bar(level)[:, None, :, None]
    return a.sqrt(), (1 - a).clamp_min(0).sqrt()


def _preconditioning(level: torch.Tensor, like: torch.Tensor, sigma_data: torch.Tensor | float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """a, s, c_skip, c_out (module docstring) broadcast with ``like`` ``[B, E, T, C]``."""
    a, s = _coefficients(level, like)
    norm = (a.square() * sigma_data ** 2 + s.square()).clamp_min(1e-20)
    return a, s, a * sigma_data ** 2 / norm, s * sigma_data / norm.sqrt()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """x_τ for ``x0, noise`` ``[B, E, T, C]`` at frame levels ``level`` ``[B, T]``."""
    a, s = _coefficients(level, x0)
    return a * x0 + s * noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor,
             sigma_data: torch.Tensor | float = 1.0) -> torch.Tensor:
    """The network's target (module docstring); 0 at clean frames."""
    a, s, c_skip, c_out = _preconditioning(level, x0, sigma_data)
    return (c_skip * (a * x0 + s * noise) - x0) / c_out.clamp_min(1e-12)


def predict_clean(x_t: torch.Tensor, v: torch.Tensor, level: torch.Tensor, sigma_data: torch.Tensor | float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) from the network's v at frame levels ``level`` (ε̂ is 0 at clean frames)."""
    a, s, c_skip, c_out = _preconditioning(level, x_t, sigma_data)
    x0 = c_skip * x_t - c_out * v
    return x0, (x_t - a * x0) / s.clamp_min(1e-12)


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, level_next: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM: the sample at the (lower) frame levels ``level_next`` ``[B, T]``."""
    return add_noise(x0, eps, level_next)
