"""SensorRig: where the lidars and cameras sit on the AV, and what they see.

Frames (all right-handed, metres, radians inside the code, degrees in YAML):

| frame | axes | origin |
|---|---|---|
| world | +x east, +y north, +z up (docs/FORMATS.md) | the map's origin |
| AV | +x forward, +y left, +z up | AV box centre on the ground (``av_pose`` x, y, z) |
| mount | the AV frame turned by ``yaw`` (about z, CCW), then ``pitch`` (about y, positive looks down), then ``roll`` (about x) | ``Mount.xyz_m`` in the AV frame |
| lidar | the mount frame | |
| camera | OpenCV: +x right, +y down, +z along the optical axis (= mount +x) | |

``world_from_av(pose) @ mount.av_from_mount() (@ MOUNT_FROM_CAMERA for a camera)`` places a sensor.
Specs are loaded and checked from YAML by ``simgen.renderers.rig.load_rig``; here they are plain data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# camera (OpenCV) axes in the mount frame: columns are camera x (right), y (down), z (forward)
MOUNT_FROM_CAMERA = np.array([[0.0, 0.0, 1.0, 0.0],
                              [-1.0, 0.0, 0.0, 0.0],
                              [0.0, -1.0, 0.0, 0.0],
                              [0.0, 0.0, 0.0, 1.0]])


def rotation_z(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def world_from_av(av_pose: np.ndarray) -> np.ndarray:
    """``[4]`` AV pose (x, y, z m; heading rad) -> ``[4, 4]`` world_from_av."""
    out = np.eye(4)
    out[:3, :3] = rotation_z(float(av_pose[3]))
    out[:3, 3] = av_pose[:3]
    return out


@dataclass(frozen=True)
class Mount:
    xyz_m: tuple[float, float, float]  # AV frame: forward of the box centre, left, up from the ground
    yaw_deg: float = 0.0  # CCW seen from above, 0 = AV forward
    pitch_deg: float = 0.0  # positive looks down
    roll_deg: float = 0.0

    def av_from_mount(self) -> np.ndarray:
        """``[4, 4]``: rotation Rz(yaw) Ry(pitch) Rx(roll), translation ``xyz_m``."""
        p, r = math.radians(self.pitch_deg), math.radians(self.roll_deg)
        ry = np.array([[math.cos(p), 0.0, math.sin(p)], [0.0, 1.0, 0.0], [-math.sin(p), 0.0, math.cos(p)]])
        rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(r), -math.sin(r)], [0.0, math.sin(r), math.cos(r)]])
        out = np.eye(4)
        out[:3, :3] = rotation_z(math.radians(self.yaw_deg)) @ ry @ rx
        out[:3, 3] = self.xyz_m
        return out


@dataclass(frozen=True)
class LidarSpec:
    """A spinning lidar. Range-image row ``b`` is beam ``b`` (row 0 = top beam), column ``c`` looks at
    azimuth ``pi - 2 pi (c + 0.5) / columns`` in the lidar frame (Waymo's layout: the spin runs clockwise
    seen from above, the middle column looks forward, the first and last look backward)."""

    name: str
    inclinations_deg: tuple[float, ...]  # [B] beam elevation above the lidar's xy plane, top beam first
    columns: int  # W azimuth steps per sweep
    max_range_m: float
    min_range_m: float
    mount: Mount
    ray_drop_probability: float  # base chance that a return is lost (grows with range, falls with reflectivity)
    range_noise_std_m: float  # Gaussian range noise
    beam_divergence_mrad: float  # footprint growth with range; drives the elongation model

    @property
    def beams(self) -> int:
        return len(self.inclinations_deg)

    def azimuth_rad(self) -> np.ndarray:
        """``[W]`` azimuth of each column in the lidar frame, rad, CCW from +x, decreasing with the column."""
        return math.pi - 2.0 * math.pi * (np.arange(self.columns) + 0.5) / self.columns

    def directions(self) -> np.ndarray:
        """``[B, W, 3]`` unit ray directions in the lidar frame."""
        incl = np.radians(np.asarray(self.inclinations_deg))[:, None]
        az = self.azimuth_rad()[None, :]
        return np.stack(np.broadcast_arrays(np.cos(incl) * np.cos(az), np.cos(incl) * np.sin(az), np.sin(incl)), -1)


@dataclass(frozen=True)
class CameraSpec:
    """A pinhole camera: pixel ``(u, v)`` = ``(fx x / z + cx, fy y / z + cy)`` for a camera-frame point.
    Pixel centres sit at integer + 0.5 (the top-left pixel covers u, v in [0, 1))."""

    name: str
    width: int  # px
    height: int  # px
    fx: float  # px
    fy: float
    cx: float
    cy: float
    mount: Mount
    max_depth_m: float  # rays that hit nothing closer see the sky

    @property
    def intrinsics(self) -> np.ndarray:
        """``[3, 3]`` K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def av_from_camera(self) -> np.ndarray:
        return self.mount.av_from_mount() @ MOUNT_FROM_CAMERA

    def directions(self) -> np.ndarray:
        """``[H, W, 3]`` rays through the pixel centres in the camera frame, scaled so that z = 1.

        A hit at ray parameter ``t`` then has depth (camera z) ``t``."""
        u = (np.arange(self.width) + 0.5 - self.cx) / self.fx
        v = (np.arange(self.height) + 0.5 - self.cy) / self.fy
        uu, vv = np.meshgrid(u, v)
        return np.stack([uu, vv, np.ones_like(uu)], -1)


@dataclass(frozen=True)
class SensorRig:
    name: str
    lidars: tuple[LidarSpec, ...]
    cameras: tuple[CameraSpec, ...]


def world_from_sensor(av_pose: np.ndarray, av_from_sensor: np.ndarray) -> np.ndarray:
    """``[4, 4]`` pose of a sensor: ``world_from_av(av_pose) @ av_from_sensor``.

    ``av_from_sensor`` is ``Mount.av_from_mount()`` for a lidar, ``CameraSpec.av_from_camera()`` for a camera."""
    return world_from_av(av_pose) @ av_from_sensor


def turn_about_z(vectors: np.ndarray, angle_rad: float) -> np.ndarray:
    """``[N, 3]`` vectors turned by ``angle_rad`` CCW about +z, in their own dtype.

    Written out elementwise: a BLAS matmul with an inner size of 3 can stall for a whole scheduler
    time slice (~60 ms) when OpenBLAS threads compete with a busy core."""
    c, s = np.asarray(math.cos(angle_rad), vectors.dtype), np.asarray(math.sin(angle_rad), vectors.dtype)
    out = np.empty_like(vectors)
    out[:, 0] = c * vectors[:, 0] - s * vectors[:, 1]
    out[:, 1] = s * vectors[:, 0] + c * vectors[:, 1]
    out[:, 2] = vectors[:, 2]
    return out


def dot_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of ``a [N, 3]`` with ``b [N, 3]`` or ``[3]`` -> ``[N]``.

    Elementwise, for the reason given in ``turn_about_z``."""
    return a[:, 0] * b[..., 0] + a[:, 1] * b[..., 1] + a[:, 2] * b[..., 2]
