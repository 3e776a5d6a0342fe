"""Ray-traced pinhole cameras: RGB, depth, semantic and instance images of the 3D scene (``scene3d.Frame``).

Geometry and shading are separate stages. Geometry (primary rays: depth, semantic, instance, normals)
depends only on the scene and the camera poses; weather and time of day enter the shading alone, so one
frame renders into exactly paired images under any ``Conditions`` (same depth and semantic arrays).

Notation (per pixel):

| symbol | meaning |
|---|---|
| d, ω | ray direction scaled to camera z = 1 (so the hit parameter t is the depth), ω = d / abs(d) |
| x, n | hit point (local frame) and face normal turned towards the camera |
| a, e | albedo and emitter code of the hit face (``scene3d.Mesh``) |
| l, D | unit vector towards the sun, and daylight D = smoothstep(-0.1, 0.15, l_z) |
| s | 1 if the shadow ray from x towards the sun is free, else 0 |
| S(ω) | sky radiance in direction ω: zenith-to-horizon gradient times D, warm near the sun at dusk, dark blue at night |
| g | wet gloss of the class (``scene3d.CLASSES``), used in rain |

Steps of ``render_cameras`` (all cameras of the rig in one batch of rays):
    1. Primary rays through every pixel centre from each camera's ``world_from_camera`` (AV pose times
       the rig mount): depth t (0 where the ray meets nothing within ``max_depth_m``: sky), semantic,
       instance, n, a, e. Only pixels inside an agent box's projected rectangle, whose street hit lies
       beyond the box's nearest corner, query the agents' BVH (``_agent_near_depth``).
    2. Sun: l from the time of day (latitude 50° N, solar declination +15°, solar time; world +y is
       north). Shadow rays from x + 2 cm n towards l for pixels with n·l > 0 while D > 0.
    3. Radiance L = a ⊙ (E_sun D s max(0, n·l) + S_amb (0.6 + 0.4 n_z)) + night lights + emission:
       - night lights, weighted by (1 - D): street lamps (warm, 1/r² falloff, the 12 nearest to the AV)
         and the AV's headlights (a 35° cone ahead of the AV, 1/r²); no shadow rays for these;
       - emission: signal lamps glow when their head shows their state (day and night), head and tail
         lights and street lamps glow at night.
    4. Weather:
       - rain: overcast (E_sun × 0.25, shadows softened), wet surfaces darken (a × (1 - 0.4 g)) and
         mirror the sky: L += g F S(reflect(ω, n)) with Fresnel F = 0.04 + 0.96 (1 - abs(n·ω))^5;
         haze (visibility 400 m); per camera, reduced contrast (25% towards the image mean) and seeded streaks;
       - fog: L = L f + L_fog (1 - f), f = exp(-r / 60 m) with r the distance along the ray; the sky
         becomes fog.
    5. Exposure 1 - exp(-k L) (k grows at night), sRGB gamma, 8 bit.
Randomness (rain streaks) comes from ``numpy.random.default_rng([seed, step, camera index])``.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from simgen.renderers.scene3d import WET_GLOSS, Emitter, Frame, Hits, box_corners

from simgen.types import LightState
from simgen.types.sensors import CameraSpec, dot_rows, turn_about_z, world_from_sensor

Weather = Literal["clear", "rain", "fog"]
WEATHERS: tuple[str, ...] = ("clear", "rain", "fog")
LATITUDE_RAD, DECLINATION_RAD = math.radians(50.0), math.radians(15.0)
SHADOW_OFFSET_M = 0.02
FOG_VISIBILITY_M, RAIN_VISIBILITY_M = 60.0, 400.0
NEAREST_LAMPS = 12
LAMP_COLOUR = np.array([1.0, 0.75, 0.45], np.float32) * 5.0  # radiant intensity at 1 m, linear RGB
HEADLIGHT_COLOUR = np.array([1.0, 0.95, 0.85], np.float32) * 60.0
HEADLIGHT_COS = math.cos(math.radians(35.0))
EMISSION = {  # linear RGB of glowing faces; signal lamps only while lit
    Emitter.HEADLIGHT: (3.0, 3.0, 2.7), Emitter.TAILLIGHT: (2.0, 0.1, 0.05), Emitter.STREET_LAMP: (4.0, 3.2, 2.0),
    Emitter.SIGNAL_STOP: (5.0, 0.05, 0.02), Emitter.SIGNAL_CAUTION: (5.0, 2.5, 0.02),
    Emitter.SIGNAL_GO: (0.05, 4.0, 1.5),
}
SIGNAL_STATE = {Emitter.SIGNAL_STOP: LightState.STOP, Emitter.SIGNAL_CAUTION: LightState.CAUTION,
                Emitter.SIGNAL_GO: LightState.GO}


@dataclass(frozen=True)
class Conditions:
    """What changes the shading only: weather and local solar time."""

    weather: Weather = "clear"
    time_of_day: str = "12:00"  # HH:MM, 24 h

    def __post_init__(self):
        if self.weather not in WEATHERS:
            raise ValueError(f"weather '{self.weather}': choose one of {', '.join(WEATHERS)}")
        parse_time_of_day(self.time_of_day)

    @property
    def hours(self) -> float:
        return parse_time_of_day(self.time_of_day)


def parse_time_of_day(text: str) -> float:
    """``"HH:MM"`` -> hours in [0, 24); ValueError naming the fix otherwise."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", str(text).strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"time of day '{text}': expected HH:MM on a 24 h clock, e.g. 07:30 or 21:00")
    return int(match[1]) + int(match[2]) / 60


def sun_direction(hours: float) -> np.ndarray:
    """Unit vector towards the sun in the world frame (+x east, +y north, +z up), step 2."""
    hour_angle = math.radians(15.0 * (hours - 12.0))
    phi, delta = LATITUDE_RAD, DECLINATION_RAD
    return np.array([-math.cos(delta) * math.sin(hour_angle),
                     math.sin(delta) * math.cos(phi) - math.cos(delta) * math.sin(phi) * math.cos(hour_angle),
                     math.sin(delta) * math.sin(phi) + math.cos(delta) * math.cos(phi) * math.cos(hour_angle)],
                    np.float32)


def _smoothstep(lo: float, hi: float, x):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass(frozen=True)
class CameraImages:
    rgb: np.ndarray  # [H, W, 3] uint8 sRGB
    depth_m: np.ndarray  # [H, W] float32 camera z of the hit, 0 = sky (nothing within max_depth_m)
    semantic: np.ndarray  # [H, W] uint8 scene3d.SemanticClass
    instance: np.ndarray  # [H, W] int32 scene3d instance ids
    intrinsics: np.ndarray  # [3, 3] K
    world_from_camera: np.ndarray  # [4, 4] float64, OpenCV camera axes (x right, y down, z forward)


@dataclass(frozen=True)
class _Geometry:
    """Step 1 for all cameras' pixels stacked: ``[N]`` per pixel (N = sum of H W)."""

    hits: Hits
    origins: np.ndarray  # [N, 3] local frame
    omega: np.ndarray  # [N, 3] unit ray directions
    distance_m: np.ndarray  # [N] along the ray (0 for sky)
    normal: np.ndarray  # [N, 3] towards the camera
    semantic: np.ndarray  # [N] uint8


@functools.lru_cache(maxsize=32)
def _directions_av(cam: CameraSpec) -> np.ndarray:
    """``[HW, 3]`` float32 pixel rays (camera z = 1) turned into the AV frame."""
    return np.einsum("ij,nj->ni", cam.av_from_camera()[:3, :3], cam.directions().reshape(-1, 3)).astype(np.float32)


def _camera_rays(cameras: tuple[CameraSpec, ...], av_pose: np.ndarray, frame: Frame):
    """Per camera pose, plus stacked origins ``[N, 3]`` (local frame), z-scaled directions and max depths."""
    poses, origins, dirs, t_max = [], [], [], []
    for cam in cameras:
        world_from_camera = world_from_sensor(np.asarray(av_pose, np.float64), cam.av_from_camera())
        d_av = _directions_av(cam)
        poses.append(world_from_camera)
        dirs.append(turn_about_z(d_av, float(av_pose[3])))
        origins.append(np.broadcast_to(frame.to_local(world_from_camera[:3, 3]).astype(np.float32), d_av.shape))
        t_max.append(np.full(len(d_av), cam.max_depth_m, np.float32))
    return poses, np.concatenate(origins), np.concatenate(dirs), np.concatenate(t_max)


def _agent_near_depth(frame: Frame, cameras: tuple[CameraSpec, ...], poses: list[np.ndarray]) -> np.ndarray:
    """``[N]`` per stacked pixel: no agent is nearer than this depth (inf: no agent in that pixel).

    A box in front of a camera covers the pixels inside the bounding rectangle of its projected corners,
    no nearer than its nearest corner's depth (depth is linear, so a convex box's minimum sits at a
    corner). A box that crosses the camera plane may cover any pixel from depth 0 (step 1)."""
    corners = box_corners(frame.agent_boxes)  # [K, 8, 3] local frame
    out = []
    for cam, pose in zip(cameras, poses):
        near = np.full((cam.height, cam.width), np.inf, np.float32)
        points = (corners - frame.to_local(pose[:3, 3])) @ pose[:3, :3]  # camera frame
        depth = points[..., 2]
        ahead = depth.max(1) > 0
        u = cam.fx * points[..., 0] / np.maximum(depth, 1e-6) + cam.cx
        v = cam.fy * points[..., 1] / np.maximum(depth, 1e-6) + cam.cy
        for k in np.flatnonzero(ahead):
            if depth[k].min() <= 1e-3:
                near[:] = 0.0
                continue
            c0, c1 = max(int(np.floor(u[k].min())), 0), min(int(np.ceil(u[k].max())) + 1, cam.width)
            r0, r1 = max(int(np.floor(v[k].min())), 0), min(int(np.ceil(v[k].max())) + 1, cam.height)
            if c0 < c1 and r0 < r1:
                near[r0:r1, c0:c1] = np.minimum(near[r0:r1, c0:c1], depth[k].min())
        out.append(near.reshape(-1))
    return np.concatenate(out)


def sky_radiance(omega: np.ndarray, sun: np.ndarray, daylight: float) -> np.ndarray:
    """``[N, 3]`` linear sky colour S(ω) seen along unit directions ``omega [N, 3]``."""
    up = np.clip(omega[:, 2:3], 0.0, 1.0)
    horizon, zenith = np.array([0.75, 0.82, 0.92], np.float32), np.array([0.25, 0.45, 0.85], np.float32)
    day = (horizon + (zenith - horizon) * np.sqrt(up)) * daylight
    dusk = (1.0 - abs(daylight - 0.5) * 2) * np.clip(dot_rows(omega, sun), 0.0, 1.0)[:, None] ** 4
    night = np.array([0.01, 0.015, 0.035], np.float32) * (1.0 - daylight)
    return (day + dusk * np.array([0.9, 0.45, 0.15], np.float32) + night).astype(np.float32)


def render_cameras(frame: Frame, cameras: tuple[CameraSpec, ...], av_pose: np.ndarray,
                   conditions: Conditions = Conditions(), *, seed: int = 0, step: int = 0,
                   timings: dict[str, float] | None = None) -> dict[str, CameraImages]:
    """Every camera of the rig at ``av_pose [4]`` (x, y, z m, heading rad); the steps of the module docstring.

    ``timings`` (optional) accumulates seconds per stage: ``primary_s``, ``shadow_s``, ``shading_s``."""
    clock = time.perf_counter()
    timings = {} if timings is None else timings
    poses, origins, dirs, t_max = _camera_rays(cameras, av_pose, frame)
    hits = frame.cast(origins, dirs, t_max, _agent_near_depth(frame, cameras, poses))  # 1
    length = np.linalg.norm(dirs, axis=1)
    omega = dirs / length[:, None]
    normal = frame.attribute(hits, "normal")
    normal *= -np.sign(dot_rows(normal, omega))[:, None]
    geometry = _Geometry(hits, origins, omega, np.where(hits.hit, hits.t * length, 0.0), normal,
                         frame.attribute(hits, "semantic"))
    now = time.perf_counter()
    timings["primary_s"] = timings.get("primary_s", 0.0) + now - clock
    sun = sun_direction(conditions.hours)
    daylight = float(_smoothstep(-0.1, 0.15, sun[2]))
    lit = _sun_visibility(frame, geometry, sun, daylight)  # 2
    clock, now = now, time.perf_counter()
    timings["shadow_s"] = timings.get("shadow_s", 0.0) + now - clock
    radiance = _shade(frame, geometry, sun, daylight, lit, conditions, av_pose)  # 3, 4
    out, start = {}, 0
    instance = frame.attribute(hits, "instance")
    for index, (cam, pose) in enumerate(zip(cameras, poses)):
        n, shape = cam.width * cam.height, (cam.height, cam.width)
        pixels = slice(start, start + n)
        colour = radiance[pixels].reshape(*shape, 3)
        if conditions.weather == "rain":  # reduced contrast, then streaks
            colour = _rain_streaks(colour * 0.75 + colour.mean() * 0.25, np.random.default_rng([seed, step, index]))
        out[cam.name] = CameraImages(
            rgb=_expose(colour, daylight),  # 5
            depth_m=np.where(hits.hit[pixels], hits.t[pixels], 0.0).astype(np.float32).reshape(shape),
            semantic=geometry.semantic[pixels].reshape(shape), instance=instance[pixels].reshape(shape),
            intrinsics=cam.intrinsics, world_from_camera=pose)
        start += n
    timings["shading_s"] = timings.get("shading_s", 0.0) + time.perf_counter() - now
    return out


def _sun_visibility(frame: Frame, g: _Geometry, sun: np.ndarray, daylight: float) -> np.ndarray:
    """``[N]`` float32: max(0, n·l) where the shadow ray is free, else 0 (step 2)."""
    cos_sun = np.maximum(dot_rows(g.normal, sun), 0.0).astype(np.float32)
    if daylight <= 0:
        return np.zeros_like(cos_sun)
    todo = np.flatnonzero(g.hits.hit & (cos_sun > 0))
    points = g.origins[todo] + g.omega[todo] * g.distance_m[todo, None] + SHADOW_OFFSET_M * g.normal[todo]
    blocked = frame.occluded(points, np.broadcast_to(sun, points.shape), 1000.0)
    cos_sun[todo[blocked]] = 0.0
    return cos_sun


def _shade(frame: Frame, g: _Geometry, sun: np.ndarray, daylight: float, lit: np.ndarray, conditions: Conditions,
           av_pose: np.ndarray) -> np.ndarray:
    """Steps 3 and 4: ``[N, 3]`` linear radiance."""
    hit = g.hits.hit
    albedo = frame.attribute(g.hits, "albedo")
    rain, fog = conditions.weather == "rain", conditions.weather == "fog"
    gloss = WET_GLOSS[g.semantic][:, None] if rain else None
    if rain:
        albedo *= 1.0 - 0.4 * gloss
        lit = 0.25 * (0.4 + 0.6 * lit)  # overcast: weak, soft sun
    sun_colour = np.array([1.0, 0.92, 0.8], np.float32) * 2.2
    ambient = sky_radiance(np.array([[0.0, 0.0, 1.0]], np.float32), sun, daylight)[0] * (0.6 if rain else 1.0)
    light = sun_colour * (daylight * lit)[:, None] + ambient * (0.6 + 0.4 * g.normal[:, 2:3])
    points = g.origins + g.omega * g.distance_m[:, None]
    if daylight < 1:
        light += (1.0 - daylight) * _night_lights(frame, points, g.normal, hit, av_pose)
    radiance = albedo * light + _emission(frame, g.hits, daylight)
    if rain:
        reflected = g.omega - 2 * dot_rows(g.omega, g.normal)[:, None] * g.normal
        fresnel = 0.04 + 0.96 * (1 - np.abs(dot_rows(g.omega, g.normal)))[:, None] ** 5
        radiance += gloss * fresnel * sky_radiance(reflected.astype(np.float32), sun, daylight)
    radiance[~hit] = sky_radiance(g.omega[~hit], sun, daylight) * (0.7 if rain else 1.0)
    if rain or fog:
        haze_colour = np.float32(0.55 if fog else 0.35) * (0.15 + 0.85 * daylight)
        visibility = FOG_VISIBILITY_M if fog else RAIN_VISIBILITY_M
        keep = np.where(hit, np.exp(-g.distance_m / visibility), 0.0 if fog else 0.6)[:, None]
        radiance = radiance * keep + haze_colour * (1 - keep)
    return radiance.astype(np.float32)


def _night_lights(frame: Frame, points: np.ndarray, normal: np.ndarray, hit: np.ndarray,
                  av_pose: np.ndarray) -> np.ndarray:
    """``[N, 3]`` irradiance from the nearest street lamps and the AV's headlights (step 3)."""
    out = np.zeros_like(points, dtype=np.float32)
    av = frame.to_local(np.asarray(av_pose[:3], np.float64)).astype(np.float32)
    lamps = frame.tracer.static.street_lamps
    if len(lamps):
        nearest = np.argsort(np.linalg.norm(lamps[:, :2] - av[:2], axis=1))[:NEAREST_LAMPS]
        for lamp in lamps[nearest]:
            to_lamp = lamp - points
            r2 = dot_rows(to_lamp, to_lamp) + 1.0
            cos = np.maximum(dot_rows(to_lamp, normal), 0.0) / np.sqrt(r2)
            out += (cos / r2)[:, None] * LAMP_COLOUR
    heading = float(av_pose[3])
    forward = np.array([math.cos(heading), math.sin(heading), -0.05], np.float32)
    lamp = av + np.array([2.3 * math.cos(heading), 2.3 * math.sin(heading), 0.7], np.float32)
    to_point = points - lamp
    r2 = dot_rows(to_point, to_point) + 1.0
    r = np.sqrt(r2)
    cone = _smoothstep(HEADLIGHT_COS, 1.0, dot_rows(to_point, forward) / r) ** 0.3
    cos = np.maximum(-dot_rows(to_point, normal) / r, 0.0)
    out += (cone * cos / r2)[:, None] * HEADLIGHT_COLOUR
    out[~hit] = 0.0
    return out


def _emission(frame: Frame, hits, daylight: float) -> np.ndarray:
    """``[N, 3]``: lit signal lamps always; vehicle lights and street lamps by (1 - daylight)."""
    emitter = frame.attribute(hits, "emitter")
    head = frame.attribute(hits, "head", miss_value=-1)
    out = np.zeros((len(emitter), 3), np.float32)
    for code, colour in EMISSION.items():
        rows = np.flatnonzero(emitter == code)
        if not len(rows):
            continue
        if code in SIGNAL_STATE:
            rows = rows[frame.head_state[head[rows]] == SIGNAL_STATE[code]]
            weight = 1.0
        else:
            weight = 1.0 - daylight
        out[rows] = np.asarray(colour, np.float32) * weight
    return out


def _rain_streaks(colour: np.ndarray, rng: np.random.Generator, count: int = 300) -> np.ndarray:
    """Short bright slanted lines blended over ``colour [H, W, 3]`` (seeded; step 4)."""
    h, w = colour.shape[:2]
    start = rng.random((count, 2)) * (h, w)
    length = rng.uniform(8, 24, count)
    slant = rng.normal(0.15, 0.05, count)
    steps = np.linspace(0.0, 1.0, 16)
    rows = (start[:, :1] + steps * length[:, None]).astype(int).ravel()
    cols = (start[:, 1:] + steps * length[:, None] * slant[:, None]).astype(int).ravel()
    keep = (rows < h) & (cols >= 0) & (cols < w)
    out = colour.copy()
    out[rows[keep], cols[keep]] = out[rows[keep], cols[keep]] * 0.6 + 0.35
    return out


def _expose(radiance: np.ndarray, daylight: float) -> np.ndarray:
    """Step 5: ``[H, W, 3]`` linear -> sRGB uint8."""
    exposure = 1.0 + 0.6 * (1.0 - daylight)
    mapped = 1.0 - np.exp(-exposure * radiance)
    return (np.clip(mapped, 0.0, 1.0) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)

