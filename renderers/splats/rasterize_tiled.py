"""Fast torch splat rasterizer (tiled). Placeholder until the tiled path lands: delegates to the dense twin."""

from __future__ import annotations

from simgen.renderers.splats.rasterize_reference import rasterize_dense as rasterize_tiled

__all__ = ["rasterize_tiled"]
