"""``simgen render ROLLOUT --backend splats --scene RECON``: re-render a rollout through a reconstructed splat scene.

    render_rollout_splats("outputs/city", "outputs/city-splats", SplatRenderOptions(scene="outputs/city-recon"))

The output has the layout of ``simgen render`` (docs/FORMATS.md), so downstream code reads it unchanged.

Steps:
    1. Load the rollout, the splat scene (``model.load_scene``) and the sensor rig; pick the frames (steps where
       the AV is valid, ``render.frame_steps``).
    2. Cast the rollout's agents (``cast_actors``): an agent whose ``object_id`` and type match a reconstructed
       actor takes that actor's Gaussians; any other agent takes the Gaussians of the library actor (every
       reconstructed actor) of its type with the nearest box size (any type when none has its type), stretched
       to its box (``model.resize_actor``); the AV carries the sensors and gets none. Reconstructed actors
       that no agent takes are not rendered: removing an agent removes its Gaussians, and the background the
       scene saw behind it shows.
    3. Per frame: every cast agent valid at the step is posed by its rollout box (``model.frame_gaussians``).
       Sensors sit on the AV's pose moved ``shift_lateral_m`` to its left (a shifted lane; negative: right).
       Cameras render RGB + expected depth over the sky; lidars render expected range along their beams
       (``lidar.render_lidar``), into the same range-image layout.
    4. Write ``frames/NNNNN/`` (camera PNGs, ``cameras.npz``, ``lidar_<name>.npz``, ``actors.npz``,
       ``contact_sheet.png``), ``sensors.mp4`` and ``summary.json``.

Splat renders carry no labels: ``semantic`` and ``instance`` are 0 everywhere; lidar intensity is the splats'
grey level (``render_lidar``; not a reflectance) and elongation 0. ``depth_m`` is the expected depth where the
splats' alpha exceeds 0.5, else 0 (sky).
Novel viewpoints: ``shift_lateral_m`` and any rig, e.g. the bundled ``dashcam`` rig (one camera behind the
windscreen).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image

from simgen import FORMAT_VERSION, io
from simgen.progress import progress_bar
from simgen.renderers.lidar import LidarSweep
from simgen.renderers.camera import CameraImages
from simgen.renderers.render import RenderError, actor_arrays, frame_steps, write_frame
from simgen.renderers.rig import load_rig
from simgen.renderers.splats.model import (
    SplatParams,
    SplatScene,
    frame_gaussians,
    load_scene,
    resize_actor,
    sky_colors,
)
from simgen.renderers.splats.rasterize import Cameras, render
from simgen.types import SceneState
from simgen.types.sensors import CameraSpec, SensorRig, world_from_sensor

NEAR_M = 0.3
SENSORS = ("lidar", "cameras")


@dataclass(frozen=True)
class SplatRenderOptions:
    scene: str  # a `simgen reconstruct` folder
    sensors: tuple[str, ...] = SENSORS
    frames: str = ":"
    rig: str = "default"
    shift_lateral_m: float = 0.0  # sensors moved this far to the AV's left (negative: right), m
    fps: int = 10
    threads: int = 1


@dataclass(frozen=True)
class Cast:
    """Which reconstructed actor plays each rollout agent: ``source[a]`` (-1: none) and the stretch
    ``ratio[a]`` [3] (agent box size / actor size); ``kind[a]`` is "same", "library" or "none"."""

    source: np.ndarray  # [A] int
    ratio: np.ndarray  # [A, 3]
    kind: tuple[str, ...]


def cast_actors(scene: SplatScene, state: SceneState) -> Cast:
    """Step 2."""
    traj, meta = state.traj, state.meta
    sizes = np.array([a.size_m for a in scene.actors], np.float64).reshape(-1, 3)
    types = np.array([a.agent_type for a in scene.actors], np.int64)
    by_id = {a.actor_id: k for k, a in enumerate(scene.actors)}
    num = traj.valid.shape[0]
    source, ratio, kind = np.full(num, -1), np.ones((num, 3)), []
    valid = traj.valid.numpy()
    for a in range(num):
        if bool(meta.is_av[a]) or not valid[a].any() or not len(sizes):
            kind.append("none")
            continue
        steps = np.flatnonzero(valid[a])
        size = np.array([float(np.median(getattr(traj, k)[a, steps].numpy())) for k in ("length", "width", "height")])
        agent_type = int(meta.agent_type[a])
        k = by_id.get(int(meta.object_id[a]), -1)
        if k >= 0 and types[k] == agent_type:
            kind.append("same")
        else:
            pool = np.flatnonzero(types == agent_type)
            pool = pool if len(pool) else np.arange(len(sizes))
            k = int(pool[np.argmin(np.abs(np.log(sizes[pool] / size)).sum(1))])
            kind.append("library")
        source[a], ratio[a] = k, size / sizes[k]
    return Cast(source, ratio, tuple(kind))


def cast_params(scene: SplatScene, cast: Cast) -> SplatParams:
    """Background plus one copy of the source actor's Gaussians per cast agent, owner = the agent's row."""
    p = scene.params
    parts = [p.select(p.owner < 0)]
    for a in np.flatnonzero(cast.source >= 0):
        copy = p.select(p.owner == int(cast.source[a]))
        copy = SplatParams(**copy.raw(), owner=torch.full_like(copy.owner, int(a)))
        parts.append(resize_actor(copy, int(a), torch.from_numpy(cast.ratio[a]).float()))
    return SplatParams.concat(parts)


def shifted_pose(av_pose: np.ndarray, shift_lateral_m: float) -> np.ndarray:
    """The AV pose [4] moved ``shift_lateral_m`` to its left."""
    out = np.asarray(av_pose, np.float64).copy()
    out[0] -= shift_lateral_m * math.sin(out[3])
    out[1] += shift_lateral_m * math.cos(out[3])
    return out


@torch.no_grad()
def render_camera(gaussians, sky: torch.Tensor, spec: CameraSpec, world_from_camera: np.ndarray) -> CameraImages:
    """One camera: splats over the sky, and expected depth where alpha > 0.5 (no semantic or instance labels: 0)."""
    k = torch.from_numpy(spec.intrinsics).float()
    cams = Cameras(viewmats=torch.from_numpy(np.linalg.inv(world_from_camera)).float()[None], Ks=k[None],
                   width=spec.width, height=spec.height)
    image, alphas, _ = render(gaussians, cams, mode="RGB+ED", backend="auto", near=NEAR_M)
    dirs = torch.from_numpy(spec.directions() @ world_from_camera[:3, :3].T).float()
    rgb = image[0, ..., :3] + (1 - alphas[0]) * sky_colors(sky, torch.nn.functional.normalize(dirs, dim=-1))
    depth = torch.where(alphas[0, ..., 0] > 0.5, image[0, ..., 3], torch.zeros(()))
    depth = depth.numpy().astype(np.float32)
    return CameraImages(rgb=(rgb.clamp(0, 1) * 255).round().byte().numpy(), depth_m=depth,
                        semantic=np.zeros(depth.shape, np.uint8), instance=np.zeros(depth.shape, np.int32),
                        intrinsics=spec.intrinsics, world_from_camera=world_from_camera)


@torch.no_grad()
def render_lidar_sweep(gaussians, spec, world_from_lidar: np.ndarray) -> LidarSweep:
    """One lidar sweep from the splats (``lidar.render_lidar``) in the ``LidarSweep`` layout, without labels;
    returns below the lidar's ``min_range_m`` are dropped."""
    from simgen.renderers.splats.lidar import render_lidar

    image = render_lidar(gaussians, torch.from_numpy(world_from_lidar).float(),
                         torch.tensor(np.radians(spec.inclinations_deg)).float(), columns=spec.columns,
                         max_range=spec.max_range_m)
    image = image.numpy().astype(np.float32)
    valid = (image[..., 3] > 0) & (image[..., 0] >= spec.min_range_m)
    image[~valid] = (-1.0, -1.0, -1.0, 0.0)
    rows, cols = np.nonzero(valid)
    xyz = (spec.directions()[rows, cols] * image[rows, cols, 0:1]).astype(np.float32)
    return LidarSweep(range_image=image, world_from_lidar=world_from_lidar, xyz=xyz, intensity=image[rows, cols, 1],
                      elongation=image[rows, cols, 2], semantic=np.zeros(len(rows), np.uint8),
                      instance=np.zeros(len(rows), np.int32), row=rows.astype(np.int16), col=cols.astype(np.int16))


def render_frame(params: SplatParams, sky: torch.Tensor, state: SceneState, step: int, rig: SensorRig,
                 options: SplatRenderOptions, folder: Path) -> dict[str, float]:
    """Steps 3-4 for one step; returns stage timings (s)."""
    tic = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    traj = state.traj
    boxes = torch.stack([getattr(traj, k)[:, step] for k in ("x", "y", "z", "length", "width", "height",
                                                             "heading")], -1).float()
    gaussians = frame_gaussians(params, boxes, traj.valid[:, step])
    av_pose = shifted_pose(state.av_pose()[step].double().numpy(), options.shift_lateral_m)
    timings = {"pose_s": time.perf_counter() - tic}
    views, sweeps = {}, {}
    if "cameras" in options.sensors:
        tic = time.perf_counter()
        views = {spec.name: render_camera(gaussians, sky, spec, world_from_sensor(av_pose, spec.av_from_camera()))
                 for spec in rig.cameras}
        timings["cameras_s"] = time.perf_counter() - tic
    if "lidar" in options.sensors:
        tic = time.perf_counter()
        sweeps = {spec.name: render_lidar_sweep(gaussians, spec, world_from_sensor(av_pose,
                                                                                   spec.mount.av_from_mount()))
                  for spec in rig.lidars}
        timings["lidar_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    actors = actor_arrays(state, step)
    actors["av_pose"] = av_pose
    write_frame(folder, sweeps, views, actors, rig)
    timings["write_s"] = time.perf_counter() - tic
    return timings


def render_rollout_splats(rollout_dir: str | Path, out: str | Path, options: SplatRenderOptions, *,
                          progress: bool = False) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the summary (also ``out/summary.json``)."""
    unknown = sorted(set(options.sensors) - set(SENSORS))
    if unknown or not options.sensors:
        raise RenderError(f"--sensors {','.join(options.sensors)}: choose one or more of {', '.join(SENSORS)}")
    tic = time.perf_counter()
    torch.set_num_threads(options.threads)
    rollout, _, _ = io.load_rollout(rollout_dir)
    state = rollout.state
    scene = load_scene(options.scene)
    rig = load_rig(options.rig)
    steps = frame_steps(options.frames, state)
    cast = cast_actors(scene, state)
    params = cast_params(scene, cast)
    totals: dict[str, float] = {}
    with io.atomic_dir(out) as tmp:
        writer = imageio.get_writer(tmp / "sensors.mp4", fps=options.fps, codec="libx264", quality=None,
                                    macro_block_size=8, ffmpeg_log_level="error",
                                    output_params=["-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"])
        render_tic = time.perf_counter()
        with writer, progress_bar(f"splats {Path(out).name}", total=len(steps), enabled=progress) as advance:
            for step in steps:
                folder = tmp / "frames" / f"{step:05d}"
                for key, value in render_frame(params, scene.sky, state, step, rig, options, folder).items():
                    totals[key] = totals.get(key, 0.0) + value
                writer.append_data(np.asarray(Image.open(folder / "contact_sheet.png")))
                advance()
        render_s = time.perf_counter() - render_tic
        kinds = {k: int(sum(1 for c in cast.kind if c == k)) for k in ("same", "library")}
        summary = {
            "format_version": FORMAT_VERSION, "backend": "splats", "sensors": list(options.sensors),
            "options": asdict(options), "rig": {"name": rig.name, "lidars": [asdict(s) for s in rig.lidars],
                                                "cameras": [asdict(c) for c in rig.cameras]},
            "steps": steps, "num_frames": len(steps), "scene": str(options.scene), "source": str(rollout_dir),
            "cast": {"reconstructed": kinds["same"], "from_library": kinds["library"],
                     "removed": int(scene.num_actors - len({int(s) for s, k in zip(cast.source, cast.kind)
                                                            if k == "same"})),
                     "agents": [{"slot": int(a), "object_id": int(state.meta.object_id[a]), "kind": cast.kind[a],
                                 "actor_id": scene.actors[int(cast.source[a])].actor_id}
                                for a in np.flatnonzero(cast.source >= 0)]},
            "num_gaussians": params.num_gaussians, "labels": "none: semantic and instance are 0 in splat renders",
            "timings": {"render_s": render_s, "frames_per_s": len(steps) / render_s,
                        **{f"sum_{k}": v for k, v in sorted(totals.items())}},
            "wall_time_s": time.perf_counter() - tic, "versions": io.version_info(),
        }
        io.write_json(tmp / "summary.json", summary)
    return summary
