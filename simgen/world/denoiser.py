"""The SceneDiffuser++ denoiser: a spatio-temporal transformer over agent and light tokens, map as context.

A plain ``nn.Module``; it never imports a scheduler (``simgen.world.diffusion``
holds the noise schedule, ``simgen.world.sampler`` the loops).

Notation
--------

| symbol | meaning |
|---|---|
| B | scenes; A agent slots; S light slots; E = A + S elements |
| T | frames (context, then future window); M map polylines of P points; Q map queries |
| D | width |
| τ | per-frame noise level ``[B, T]`` in [0, 1]: 0 clean, 1 pure noise |

Forward
-------

1. Tokens. Agents: ``[x_τ, given, given · x_0, is_av, anchor condition]`` -> Linear -> D;
   lights: ``[x_τ, given, given · x_0, condition, valid]`` -> Linear -> D.
   ``x_τ`` is the noisy sample, ``x_0`` the clean value of *given* tokens
   (history, the inpainted AV, user-fixed agents). Both get a sinusoidal
   embedding of the frame's step offset. Concatenated: ``h [B, E, T, D]``.
2. Map context. Per polyline a point MLP and a max over points gives
   ``[B, M, D]``; ``Q`` learned queries cross-attend to them, then attend to
   each other (Perceiver) -> ``[B, Q, D]``.
3. ``layers`` blocks; each has four residual sub-blocks, each modulated by
   AdaLN-Zero from the *frame's* conditioning ``c [B, T, D]`` (noise level
   and offset), so one network serves uniform noise and noise that rises
   along the window:
   1. attention along time within each element;
   2. attention across elements within each frame (agent-agent,
      agent-light, light-light), padded slots masked out;
   3. cross-attention from every token to the map latents;
   4. an MLP.
4. Heads: AdaLN + Linear (zero-initialized) -> the v-prediction per channel,
   agents ``[B, A, T, AGENT_CHANNELS]`` and lights ``[B, S, T, LIGHT_CHANNELS]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from simgen.world.tokenizer import (
    AGENT_CHANNELS,
    AGENT_COND,
    LIGHT_CHANNELS,
    LIGHT_COND,
    MAP_FEATURES,
)


@dataclass(frozen=True)
class DenoiserConfig:
    width: int = 96
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 2
    map_queries: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DenoiserInput:
    """One batch for the denoiser (tokenizer channels; masks are bool)."""

    agents: torch.Tensor  # [B, A, T, AGENT_CHANNELS] noisy sample x_τ
    agent_given: torch.Tensor  # [B, A, T] the token's clean value is known
    agent_clean: torch.Tensor  # [B, A, T, AGENT_CHANNELS] clean values where given (else anything)
    agent_mask: torch.Tensor  # [B, A] slot takes part (occupied or spare); False = padding
    is_av: torch.Tensor  # [B, A]
    agent_cond: torch.Tensor  # [B, A, AGENT_COND] anchor (tokenizer.agent_condition)
    lights: torch.Tensor  # [B, S, T, LIGHT_CHANNELS] noisy sample
    light_given: torch.Tensor  # [B, S, T]
    light_clean: torch.Tensor  # [B, S, T, LIGHT_CHANNELS]
    light_cond: torch.Tensor  # [B, S, LIGHT_COND]
    light_valid: torch.Tensor  # [B, S, T] the slot's state is defined (given by the map and the log)
    light_mask: torch.Tensor  # [B, S]
    map_features: torch.Tensor  # [B, M, P, MAP_FEATURES]
    map_valid: torch.Tensor  # [B, M]
    noise_level: torch.Tensor  # [B, T] in [0, 1]
    frame_offsets: torch.Tensor  # [T] steps relative to the current step

    def to(self, device: torch.device | str) -> DenoiserInput:
        return DenoiserInput(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def sinusoidal(x: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """``[..]`` -> ``[.., dim]`` sin/cos features of ``x`` at geometric frequencies down to ``1 / max_period``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angles = x.float()[..., None] * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention on ``[N, L, D]`` queries and ``[N, K, D]`` keys with an optional key mask ``[N, K]``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length, width = x.shape
        q = self.q(x).reshape(n, length, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).reshape(n, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(n, length, width))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Block(nn.Module):
    """Time attention, element attention, map cross-attention, MLP; each AdaLN-Zero modulated per frame."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        d = cfg.width
        self.norms = nn.ModuleList([nn.LayerNorm(d, elementwise_affine=False, eps=1e-6) for _ in range(4)])
        self.time_attn = Attention(d, cfg.heads)
        self.element_attn = Attention(d, cfg.heads)
        self.map_attn = Attention(d, cfg.heads)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * d, d))
        self.ada = nn.Linear(d, 12 * d)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor, element_mask: torch.Tensor,
                map_latents: torch.Tensor) -> torch.Tensor:
        """``h [B, E, T, D]``, ``cond [B, T, D]``, ``element_mask [B, E]``, ``map_latents [B, Q, D]``."""
        B, E, T, D = h.shape
        mod = self.ada(F.silu(cond))[:, None].chunk(12, dim=-1)  # each [B, 1, T, D]

        x = modulate(self.norms[0](h), mod[0], mod[1]).reshape(B * E, T, D)
        h = h + mod[2] * self.time_attn(x, x).reshape(B, E, T, D)

        x = modulate(self.norms[1](h), mod[3], mod[4]).transpose(1, 2).reshape(B * T, E, D)
        mask = element_mask[:, None].expand(B, T, E).reshape(B * T, E)
        h = h + mod[5] * self.element_attn(x, x, mask).reshape(B, T, E, D).transpose(1, 2)

        x = modulate(self.norms[2](h), mod[6], mod[7]).reshape(B, E * T, D)
        h = h + mod[8] * self.map_attn(x, map_latents).reshape(B, E, T, D)

        return h + mod[11] * self.mlp(modulate(self.norms[3](h), mod[9], mod[10]))


class MapEncoder(nn.Module):
    """Polylines ``[B, M, P, F]`` -> Perceiver latents ``[B, Q, D]``."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        d = cfg.width
        self.point_mlp = nn.Sequential(nn.Linear(MAP_FEATURES, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.line_mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
        self.queries = nn.Parameter(torch.randn(cfg.map_queries, d) * 0.02)
        self.cross = Attention(d, cfg.heads)
        self.self_attn = Attention(d, cfg.heads)
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(3)])
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(approximate="tanh"), nn.Linear(2 * d, d))

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B = features.shape[0]
        lines = self.line_mlp(self.point_mlp(features).amax(2))  # [B, M, D]
        # A scene with no polyline nearby still attends to something: its first (zero) slot.
        mask = valid.clone()
        mask[:, 0] = True
        q = self.queries[None].expand(B, -1, -1)
        q = q + self.cross(self.norms[0](q), lines, mask)
        x = self.norms[1](q)
        q = q + self.self_attn(x, x)
        return q + self.mlp(self.norms[2](q))


class Denoiser(nn.Module):
    """v-prediction for agents and lights (module docstring)."""

    def __init__(self, cfg: DenoiserConfig | None = None):
        super().__init__()
        cfg = cfg or DenoiserConfig()
        self.cfg = cfg
        d = cfg.width
        self.agent_in = nn.Linear(2 * AGENT_CHANNELS + 2 + AGENT_COND, d)
        self.light_in = nn.Linear(2 * LIGHT_CHANNELS + 2 + LIGHT_COND, d)
        self.offset_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.cond_mlp = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, d))
        self.map_encoder = MapEncoder(cfg)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(d, 2 * d)
        self.agent_out = nn.Linear(d, AGENT_CHANNELS)
        self.light_out = nn.Linear(d, LIGHT_CHANNELS)
        for layer in (self.final_ada, self.agent_out, self.light_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, batch: DenoiserInput) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.width
        A = batch.agents.shape[1]
        agent_given = batch.agent_given[..., None].float()
        agents = self.agent_in(torch.cat([
            batch.agents, agent_given, agent_given * batch.agent_clean,
            batch.is_av[:, :, None, None].float().expand(*batch.agent_given.shape, 1),
            batch.agent_cond[:, :, None].expand(-1, -1, batch.agents.shape[2], -1)], dim=-1))
        light_given = batch.light_given[..., None].float()
        T = batch.agents.shape[2]
        lights = self.light_in(torch.cat([
            batch.lights, light_given, light_given * batch.light_clean,
            batch.light_cond[:, :, None].expand(-1, -1, T, -1), batch.light_valid[..., None].float()], dim=-1))
        offset = self.offset_mlp(sinusoidal(batch.frame_offsets, d, 200.0))  # [T, D]
        h = torch.cat([agents, lights], dim=1) + offset
        cond = self.cond_mlp(torch.cat([sinusoidal(batch.noise_level * 1000, d, 10000.0),
                                        offset[None].expand(batch.noise_level.shape[0], -1, -1)], dim=-1))
        element_mask = torch.cat([batch.agent_mask, batch.light_mask], dim=1)
        latents = self.map_encoder(batch.map_features, batch.map_valid)
        for block in self.blocks:
            h = block(h, cond, element_mask, latents)
        shift, scale = self.final_ada(F.silu(cond))[:, None].chunk(2, dim=-1)
        h = modulate(self.final_norm(h), shift, scale)
        return self.agent_out(h[:, :A]), self.light_out(h[:, A:])
