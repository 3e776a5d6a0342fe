"""Spinning lidar: one sweep of the 3D scene (``scene3d.Frame``) as a Waymo-style range image and a point cloud.

Notation:

| symbol | meaning |
|---|---|
| B, W | beams (range-image rows, row 0 = top beam) and columns (azimuth steps) of ``LidarSpec`` |
| d[b, c] | unit ray direction of row b, column c in the lidar frame (``LidarSpec.directions``) |
| r | range along the ray, m; R = ``max_range_m`` |
| cos θ | cosine of the incidence angle between the ray and the hit face's normal |
| ρ | reflectivity of the hit face's semantic class (``scene3d.CLASSES``), 0..1 |
| p0, σ, δ | ``ray_drop_probability``, ``range_noise_std_m``, ``beam_divergence_mrad`` / 1000 |

Steps of ``lidar_sweep``:
    1. Cast all B x W rays from the lidar origin (``world_from_lidar``) against the static and the
       agents' BVH (nearest hit, ``Frame.cast``) with t in (0, R].
    2. A hit closer than ``min_range_m`` or farther than R is no return (sky, or too near).
    3. Intensity = ρ cos θ (Lambertian, range-calibrated like Waymo's).
    4. Elongation = min(r δ tan θ, 2) m: the footprint of a beam of divergence δ stretched along a
       surface seen at incidence θ, which lengthens the returned pulse.
    5. Ray drop: a return is lost with probability p0 (1 + 20 (r / R)^2 (1 - intensity)^2), at most 1
       (far, dark, grazing returns are lost up to 21 times as often; p0 = 0 keeps every return);
       then r += N(0, σ²). Both draws come from
       ``numpy.random.default_rng([seed, step])`` over the whole B x W image (a numpy Generator, not
       torch: the ray path is numpy), so a sweep depends only on (scene, pose, seed, step).
    6. Range image ``[B, W, 4]`` float32: (range m, intensity, elongation m, valid 1/0); invalid pixels
       hold -1 in the first three channels and 0 in the fourth. Points: the valid pixels in row-major
       order, xyz = r d in the lidar frame, with their row, column, semantic class and instance id.

Speed (bench/bench_lidar.py): the static street sits in a BVH built once per map, the agents in a
per-frame BVH queried only in front of the street hit, and only by the rays that look at an agent's
box and could reach it before the street (``_agent_near_t``), so a sweep costs one Embree pass
over the street plus a short pass over the agents and ~10 numpy passes over B x W values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from simgen.renderers.scene3d import PALETTE, REFLECTIVITY, Frame, box_corners

from simgen.types.sensors import LidarSpec, dot_rows, turn_about_z, world_from_sensor

MAX_ELONGATION_M = 2.0
DROP_GAIN = np.float32(20.0)  # step 5
ANGLE_SLACK_DEG = 0.01  # step 1, agents' rays


@functools.lru_cache(maxsize=4)
def _directions(spec: LidarSpec) -> tuple[np.ndarray, np.ndarray]:
    """``[BW, 3]`` float32 ray directions in the lidar frame and in the AV frame (turned by the mount)."""
    lidar = spec.directions().reshape(-1, 3)
    return lidar.astype(np.float32), (lidar @ spec.mount.av_from_mount()[:3, :3].T).astype(np.float32)


@dataclass(frozen=True)
class LidarSweep:
    """One sweep. Points are the valid range-image pixels in row-major order."""

    range_image: np.ndarray  # [B, W, 4] float32: range m, intensity, elongation m, valid (see step 6)
    world_from_lidar: np.ndarray  # [4, 4] float64
    xyz: np.ndarray  # [N, 3] float32 lidar frame, m
    intensity: np.ndarray  # [N] float32
    elongation: np.ndarray  # [N] float32, m
    semantic: np.ndarray  # [N] uint8 scene3d.SemanticClass
    instance: np.ndarray  # [N] int32 (scene3d instance ids; 0 = stuff)
    row: np.ndarray  # [N] int16
    col: np.ndarray  # [N] int16

    def xyz_world(self) -> np.ndarray:
        """``[N, 3]`` float64 points in the world frame."""
        return self.xyz @ self.world_from_lidar[:3, :3].T + self.world_from_lidar[:3, 3]

    def arrays(self) -> dict[str, np.ndarray]:
        """The ``lidar_<name>.npz`` layout of docs/FORMATS.md (keys without the file's prefix)."""
        return {"range_image": self.range_image, "world_from_lidar": self.world_from_lidar, "xyz": self.xyz,
                "intensity": self.intensity, "elongation": self.elongation, "semantic": self.semantic,
                "instance": self.instance, "row": self.row, "col": self.col}


def _agent_near_t(frame: Frame, spec: LidarSpec, world_from_lidar: np.ndarray, heading: float) -> np.ndarray | None:
    """``[B W]`` lower bound of the range at which each ray could meet an agent (inf: none); None = unknown.

    An agent's box (``Frame.agent_boxes``), seen from outside at horizontal distance d of its centre
    (radius r of its footprint's circle), spans the azimuths between its extreme corners and the
    elevations between its bottom and top edges seen from d - r or d + r. Rays in those columns (the
    column range rounded outwards) and beams (``ANGLE_SLACK_DEG`` spare for float32 rounding) cannot meet
    it before range d - r; all other rays never meet it (step 1)."""
    boxes = frame.agent_boxes
    if spec.mount.pitch_deg or spec.mount.roll_deg or not len(boxes):
        return None  # a tilted lidar's columns are not vertical planes: test every ray
    origin = frame.to_local(world_from_lidar[:3, 3])
    offset = boxes[:, :2] - origin[:2]
    distance, radius = np.hypot(offset[:, 0], offset[:, 1]), np.hypot(boxes[:, 5], boxes[:, 6]) / 2
    if (distance <= radius).any():
        return None
    centre = np.arctan2(offset[:, 1], offset[:, 0])
    corners = box_corners(boxes)[:, :4, :2] - origin[:2]  # [K, 4, 2]
    corner_azimuth = np.arctan2(corners[..., 1], corners[..., 0])
    spread = np.angle(np.exp(1j * (corner_azimuth - centre[:, None])))  # [K, 4] relative to the centre, rad
    azimuth = centre - heading - np.radians(spec.mount.yaw_deg)
    width = spec.columns
    first = np.floor((np.pi - azimuth - spread.max(1)) * width / (2 * np.pi) - 0.5).astype(int)
    last = np.ceil((np.pi - azimuth - spread.min(1)) * width / (2 * np.pi) - 0.5).astype(int)
    below, above = boxes[:, 2] - origin[2], boxes[:, 3] - origin[2]
    near, far = distance - radius, distance + radius
    lowest = np.degrees(np.arctan2(below, np.where(below < 0, near, far))) - ANGLE_SLACK_DEG
    highest = np.degrees(np.arctan2(above, np.where(above > 0, near, far))) + ANGLE_SLACK_DEG
    inclination = np.asarray(spec.inclinations_deg)
    near_t = np.full((spec.beams, width), np.inf, np.float32)
    for a, b, lo, hi, d in zip(first, last, lowest, highest, near):
        rows = np.flatnonzero((inclination >= lo) & (inclination <= hi))
        if len(rows):
            block = (slice(rows[0], rows[-1] + 1), np.arange(a, b + 1) % width)
            near_t[block] = np.minimum(near_t[block], d)
    return near_t.reshape(-1)


def lidar_sweep(frame: Frame, spec: LidarSpec, av_pose: np.ndarray, *, seed: int = 0, step: int = 0) -> LidarSweep:
    """One sweep from the lidar on the AV at ``av_pose [4]`` (x, y, z m, heading rad; world frame);
    the steps of the module docstring."""
    beams, columns = spec.beams, spec.columns
    world_from_lidar = world_from_sensor(np.asarray(av_pose, np.float64), spec.mount.av_from_mount())
    dirs_lidar, dirs_av = _directions(spec)
    dirs = turn_about_z(dirs_av, float(av_pose[3]))
    origin = frame.to_local(world_from_lidar[:3, 3])
    agent_near_t = _agent_near_t(frame, spec, world_from_lidar, float(av_pose[3]))
    hits = frame.cast(np.broadcast_to(origin, dirs.shape), dirs, spec.max_range_m, agent_near_t)  # 1
    range_m = hits.t
    valid = hits.hit & (range_m >= spec.min_range_m)  # 2
    semantic = frame.attribute(hits, "semantic")
    normal = frame.attribute(hits, "normal")
    cos_incidence = np.abs(dot_rows(normal, dirs))
    intensity = REFLECTIVITY[semantic] * cos_incidence  # 3
    tan_incidence = np.sqrt(np.maximum(1.0 - cos_incidence**2, 0.0)) / np.maximum(cos_incidence, 1e-3)
    elongation = np.minimum(range_m * np.float32(spec.beam_divergence_mrad * 1e-3) * tan_incidence,
                            np.float32(MAX_ELONGATION_M))  # 4
    rng = np.random.default_rng([seed, step])  # 5
    p_drop = np.float32(spec.ray_drop_probability) * (
        1 + DROP_GAIN * (range_m / np.float32(spec.max_range_m)) ** 2 * (1 - intensity) ** 2)
    valid &= rng.random(len(range_m), dtype=np.float32) >= p_drop
    range_m = range_m + rng.standard_normal(len(range_m), dtype=np.float32) * np.float32(spec.range_noise_std_m)
    invalid = np.float32(-1.0)
    image = np.stack([np.where(valid, range_m, invalid), np.where(valid, intensity, invalid),
                      np.where(valid, elongation, invalid), valid.astype(np.float32)], -1)  # 6
    index = np.flatnonzero(valid)
    row, col = np.divmod(index, columns)
    return LidarSweep(
        range_image=image.reshape(beams, columns, 4),
        world_from_lidar=world_from_lidar,
        xyz=dirs_lidar.take(index, axis=0) * range_m.take(index)[:, None],
        intensity=intensity.take(index), elongation=elongation.take(index), semantic=semantic.take(index),
        instance=frame.attribute(hits, "instance").take(index), row=row.astype(np.int16), col=col.astype(np.int16),
    )


def bev_image(sweep: LidarSweep, width: int, height: int, half_height_m: float = 50.0) -> np.ndarray:
    """``[height, width, 3]`` uint8 top view of a sweep in the lidar frame: forward is up, left is left,
    ``half_height_m`` from the centre to the top edge, points coloured by semantic class."""
    px_per_m = height / (2 * half_height_m)
    cols = (width / 2 - sweep.xyz[:, 1] * px_per_m).astype(int)
    rows = (height / 2 - sweep.xyz[:, 0] * px_per_m).astype(int)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    order = np.argsort(sweep.xyz[inside, 2], kind="stable")  # higher points drawn last
    image = np.full((height, width, 3), 20, np.uint8)
    image[rows[inside][order], cols[inside][order]] = PALETTE[sweep.semantic[inside][order]]
    image[height // 2 - 2:height // 2 + 3, width // 2 - 2:width // 2 + 3] = (235, 50, 210)  # the AV
    return image
