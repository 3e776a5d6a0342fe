"""Slow twin of ``renderers.lidar``: trimesh's native (pure numpy + rtree) ray tracer on a subset of rays.

The test oracle for the Embree path. It shares nothing with it but the triangles: the ray directions
are recomputed here from the beam table and the column formula of ``LidarSpec``, and the nearest hit
is the smallest distance among *all* hits trimesh reports along each ray, over the static street and
the frame's agents in one mesh. It returns noise-free ranges (the fast path's ``range_noise_std_m`` and
``ray_drop_probability`` must be 0 for an exact comparison). About 1000 rays/s on a street scene.
"""

from __future__ import annotations

import math

import numpy as np
import trimesh
from simgen.renderers.scene3d import Frame, Mesh
from trimesh.ray.ray_triangle import RayMeshIntersector

from simgen.types.sensors import LidarSpec


def reference_returns(frame: Frame, spec: LidarSpec, world_from_lidar: np.ndarray, rows: np.ndarray,
                      cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Range (m, -1 for no return), semantic class and instance id of the pixels ``(rows[i], cols[i])``."""
    both = Mesh.concat([frame.tracer.static.mesh, frame.agents])
    mesh = trimesh.Trimesh(both.vertices.astype(np.float64), both.faces, process=False)
    inclination = np.radians(np.asarray(spec.inclinations_deg, np.float64))[rows]
    azimuth = math.pi - 2.0 * math.pi * (cols + 0.5) / spec.columns
    dirs_lidar = np.column_stack([np.cos(inclination) * np.cos(azimuth), np.cos(inclination) * np.sin(azimuth),
                                  np.sin(inclination)])
    dirs = dirs_lidar @ world_from_lidar[:3, :3].T
    origin = frame.to_local(world_from_lidar[:3, 3])
    origins = np.tile(origin, (len(dirs), 1))
    with np.errstate(divide="ignore", invalid="ignore"):  # slivers: trimesh drops their NaN barycentrics
        tri, ray, where = RayMeshIntersector(mesh).intersects_id(origins, dirs, multiple_hits=True,
                                                                 return_locations=True)
    distance = np.einsum("ij,ij->i", where - origins[ray], dirs[ray])
    range_m = np.full(len(dirs), np.inf)
    np.minimum.at(range_m, ray, distance)
    nearest = np.full(len(dirs), -1)
    is_min = distance == range_m[ray]
    nearest[ray[is_min]] = tri[is_min]
    ok = (range_m >= spec.min_range_m) & (range_m <= spec.max_range_m)
    semantic = np.where(ok, both.semantic[nearest], 0).astype(np.uint8)
    instance = np.where(ok, both.instance[nearest], 0).astype(np.int32)
    return np.where(ok, range_m, -1.0), semantic, instance
