"""Gaussian splats: rasterizers (``rasterize``: gsplat API, torch tiled path, dense twin) and lidar from splats."""
