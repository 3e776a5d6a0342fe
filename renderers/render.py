"""``simgen render``: lidar sweeps and camera images for every frame of a rollout, in the layout of docs/FORMATS.md.

    render_rollout("outputs/city", "outputs/city-sensors", RenderOptions(weather="rain", workers=2))

How a run goes:
    1. Load the rollout, its map and the sensor rig; pick the frames (steps ``A:B`` where the AV is valid).
    2. Build the static street once (``scene3d.build_static_scene``) in this process.
    3. Render frames in ``workers`` processes (Embree calls are single-threaded, so frames run in parallel
       across processes); each worker gets the static street once, builds its BVH once, and for each frame
       adds the agents, sweeps the lidars, renders the cameras and writes the frame's folder itself.
    4. This process streams the frames' contact sheets, in order, into ``sensors.mp4`` and writes
       ``summary.json``. Everything goes to a temporary folder that is renamed to ``OUT`` at the end.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw
from simgen.renderers.camera import Conditions, render_cameras
from simgen.renderers.lidar import bev_image, lidar_sweep
from simgen.renderers.rig import load_rig
from simgen.renderers.scene3d import (
    AGENT_INSTANCE_BASE,
    STATIC_INSTANCE_BASE,
    SemanticClass,
    StaticScene,
    build_static_scene,
    tracer_for,
)

from simgen import FORMAT_VERSION, io
from simgen.progress import progress_bar
from simgen.types import DT_S, RoadMap, SceneState
from simgen.types.sensors import SensorRig

SENSORS = ("lidar", "cameras")
SURROUND = (("front_left", "front", "front_right"), ("side_left", None, "side_right"),
            ("rear_left", "rear", "rear_right"))  # contact-sheet layout of the default rig; None: lidar view


class RenderError(ValueError):
    """Bad render input (sensor names, frame ranges); the message names the option and the fix."""


@dataclass(frozen=True)
class RenderOptions:
    sensors: tuple[str, ...] = SENSORS
    weather: str = "clear"
    time_of_day: str = "12:00"  # HH:MM
    frames: str = ":"  # steps A:B of the rollout (Python slice, end excluded); "" or ":" = all
    workers: int = 1
    rig: str = "default"  # bundled rig name or rig YAML path
    seed: int = 0  # lidar ray drop and noise, rain streaks; procedural buildings use seed 0 always
    fps: int = 10

    def check(self) -> Conditions:
        unknown = sorted(set(self.sensors) - set(SENSORS))
        if unknown or not self.sensors:
            raise RenderError(f"--sensors {','.join(self.sensors)}: choose one or more of {', '.join(SENSORS)}")
        if self.workers < 1:
            raise RenderError(f"--workers {self.workers}: give at least 1")
        try:
            return Conditions(self.weather, self.time_of_day)
        except ValueError as err:
            raise RenderError(f"--weather/--time-of-day: {err}") from None


def options_from_scenario(scenario) -> RenderOptions:
    """A scenario's ``sensors:`` block (``simgen.scenario.Sensors``) -> RenderOptions (seed: the scenario's)."""
    block = scenario.sensors
    sensors = tuple(name for name, on in (("lidar", block.lidar), ("cameras", block.cameras)) if on)
    return RenderOptions(sensors=sensors, weather=block.weather, time_of_day=block.time_of_day, frames=block.frames,
                         workers=block.workers, rig=block.rig, seed=scenario.seed)


def frame_steps(frames: str, state: SceneState) -> list[int]:
    """``"A:B"`` (either end optional) or ``"K"`` -> the steps in that range where the AV is valid."""
    text = frames.strip() or ":"
    try:
        parts = [int(p) if p.strip() else None for p in text.split(":")]
    except ValueError:
        raise RenderError(f"--frames '{frames}': expected A:B, A:, :B or K (step indices)") from None
    if len(parts) == 1 and parts[0] is not None and parts[0] >= 0:
        parts = [parts[0], parts[0] + 1]
    if len(parts) != 2:
        raise RenderError(f"--frames '{frames}': expected A:B, A:, :B or K (step indices)")
    av_valid = state.traj.valid[state.av_index].numpy()
    steps = [k for k in range(state.num_steps)[slice(*parts)] if av_valid[k]]
    if not steps:
        raise RenderError(f"--frames '{frames}': selects no step where the AV is valid (the rollout has "
                          f"{state.num_steps} steps, the AV is valid at {int(av_valid.sum())})")
    return steps


# --- one frame ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    """What every worker needs, sent once per process."""

    roadmap: RoadMap
    static: StaticScene
    state: SceneState
    rig: SensorRig
    options: RenderOptions
    conditions: Conditions
    out: Path


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    import torch

    torch.set_num_threads(1)
    global _JOB
    _JOB = job
    tracer_for(job.roadmap, static=job.static)  # the BVH, once per process


def _render_one(step: int) -> dict[str, Any]:
    return render_frame(_JOB, step)


def render_frame(job: _Job, step: int) -> dict[str, Any]:
    """Render and write ``frames/NNNNN/`` for one step; returns the stage timings (s)."""
    clock = time.perf_counter()
    state, rig, options = job.state, job.rig, job.options
    folder = job.out / "frames" / f"{step:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    frame = tracer_for(job.roadmap, static=job.static).frame(state, step)
    av_pose = state.av_pose()[step].double().numpy()
    timings = {"agents_s": time.perf_counter() - clock}
    sweeps, views = {}, {}
    if "lidar" in options.sensors:
        tic = time.perf_counter()
        sweeps = {spec.name: lidar_sweep(frame, spec, av_pose, seed=options.seed, step=step) for spec in rig.lidars}
        timings["lidar_s"] = time.perf_counter() - tic
    if "cameras" in options.sensors and rig.cameras:
        views = render_cameras(frame, rig.cameras, av_pose, job.conditions, seed=options.seed, step=step,
                               timings=timings)
    tic = time.perf_counter()
    write_frame(folder, sweeps, views, actor_arrays(state, step), rig)
    timings["write_s"] = time.perf_counter() - tic
    return timings


def write_frame(folder: Path, sweeps: dict, views: dict, actors: dict[str, np.ndarray], rig: SensorRig) -> None:
    """One ``frames/NNNNN/`` folder (docs/FORMATS.md) from its lidar sweeps, camera images and actor arrays."""
    version = {"format_version": np.int64(FORMAT_VERSION)}
    for name, sweep in sweeps.items():
        io.write_npz(folder / f"lidar_{name}.npz", {**version, **sweep.arrays()}, compresslevel=1)
    if views:
        arrays = dict(version)
        for name, images in views.items():
            Image.fromarray(images.rgb).save(folder / f"camera_{name}.png", compress_level=1)
            arrays.update({f"{name}/{key}": getattr(images, key) for key in
                           ("depth_m", "semantic", "instance", "intrinsics", "world_from_camera")})
        io.write_npz(folder / "cameras.npz", arrays, compresslevel=1)
    io.write_npz(folder / "actors.npz", {**version, **actors})
    bev = next(iter(sweeps.values()), None)
    Image.fromarray(contact_sheet(views, bev, rig)).save(folder / "contact_sheet.png", compress_level=1)


def actor_arrays(state: SceneState, step: int) -> dict[str, np.ndarray]:
    """The ``actors.npz`` layout: every agent valid at ``step`` (the AV too) with its instance id and box."""
    t = state.traj
    slots = np.flatnonzero(t.valid[:, step].numpy())
    pick = lambda name: getattr(t, name)[slots, step].numpy().astype(np.float32)
    box = np.stack([pick(k) for k in ("x", "y", "z", "length", "width", "height", "heading")], -1)
    return {"instance_id": (AGENT_INSTANCE_BASE + slots).astype(np.int32), "slot": slots.astype(np.int32),
            "object_id": state.meta.object_id.numpy()[slots], "agent_type": state.meta.agent_type.numpy()[slots],
            "is_av": state.meta.is_av.numpy()[slots], "box": box.reshape(-1, 7),
            "av_pose": state.av_pose()[step].numpy().astype(np.float64), "step": np.int64(step),
            "time_s": np.float64(step * DT_S)}


def contact_sheet(views: dict, sweep, rig: SensorRig) -> np.ndarray:
    """All camera RGB images and the lidar's top view in one picture, labelled.

    The default rig's eight cameras sit around the lidar view as they sit around the car (front row on
    top); other rigs fill a grid in rig order with the lidar view last. Tiles take the first camera's size;
    a sensor that was not rendered leaves its place black."""
    width, height = (rig.cameras[0].width, rig.cameras[0].height) if rig.cameras else (480, 320)
    tiles = {name: Image.fromarray(v.rgb).resize((width, height)) for name, v in views.items()}
    if sweep is not None:
        tiles["lidar"] = Image.fromarray(bev_image(sweep, width, height))
    names = [c.name for c in rig.cameras]
    if sorted(names) == sorted(n for row in SURROUND for n in row if n):
        layout = [[n or "lidar" for n in row] for row in SURROUND]
    else:
        order = [*tiles]
        cols = int(np.ceil(np.sqrt(len(order))))
        layout = [order[i:i + cols] for i in range(0, len(order), cols)]
    sheet = Image.new("RGB", (width * max(len(r) for r in layout), height * len(layout)))
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(layout):
        for c, name in enumerate(row):
            if name in tiles:
                sheet.paste(tiles[name], (c * width, r * height))
                draw.text((c * width + 6, r * height + 4), name, fill=(255, 255, 255))
    return np.asarray(sheet)


# --- a whole run --------------------------------------------------------------------------------------------

def _results(job: _Job, steps: list[int], workers: int) -> Iterator[dict[str, Any]]:
    """Frame timings in step order, from ``workers`` processes (or this one)."""
    if workers == 1:
        _init_worker(job)
        yield from (_render_one(step) for step in steps)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                initargs=(job,)) as pool:
        yield from pool.map(_render_one, steps)


def render_state(roadmap: RoadMap, state: SceneState, out: Path, options: RenderOptions = RenderOptions(), *,
                 progress: bool = False) -> dict[str, Any]:
    """Steps 2-4 into the existing folder ``out``; returns the summary (also written to ``summary.json``)."""
    tic = time.perf_counter()
    conditions = options.check()
    rig = load_rig(options.rig)
    steps = frame_steps(options.frames, state)
    static = build_static_scene(roadmap)
    scene_s = time.perf_counter() - tic
    job = _Job(roadmap, static, state, rig, options, conditions, Path(out))
    totals: dict[str, float] = {}
    workers = min(options.workers, len(steps))
    writer = imageio.get_writer(Path(out) / "sensors.mp4", fps=options.fps, codec="libx264", quality=None,
                                macro_block_size=8, ffmpeg_log_level="error",
                                output_params=["-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"])
    render_tic = time.perf_counter()
    with writer, progress_bar(f"sensors {Path(out).name}", total=len(steps), enabled=progress) as advance:
        for step, timings in zip(steps, _results(job, steps, workers)):
            for key, value in timings.items():
                totals[key] = totals.get(key, 0.0) + value
            writer.append_data(np.asarray(Image.open(Path(out) / "frames" / f"{step:05d}" / "contact_sheet.png")))
            advance()
    render_s = time.perf_counter() - render_tic
    summary = {
        "format_version": FORMAT_VERSION, "sensors": list(options.sensors), "options": asdict(options),
        "rig": _rig_summary(rig), "steps": steps, "num_frames": len(steps), "workers": workers,
        "static_triangles": len(static.mesh.faces),
        "semantic_classes": {c.name.lower(): int(c) for c in SemanticClass},
        "instance_ids": {"stuff": 0, "agent": f"{AGENT_INSTANCE_BASE} + slot",
                         "static_object": f">= {STATIC_INSTANCE_BASE}"},
        "timings": {"scene_s": scene_s, "render_s": render_s, "frames_per_s": len(steps) / render_s,
                    **{f"sum_{k}": v for k, v in sorted(totals.items())}},
        "wall_time_s": time.perf_counter() - tic, "versions": io.version_info(),
    }
    io.write_json(Path(out) / "summary.json", summary)
    return summary


def _rig_summary(rig: SensorRig) -> dict[str, Any]:
    return {"name": rig.name, "lidars": [asdict(s) for s in rig.lidars], "cameras": [asdict(c) for c in rig.cameras]}


def render_rollout(rollout_dir: str | Path, out: str | Path, options: RenderOptions = RenderOptions(), *,
                   progress: bool = False) -> dict[str, Any]:
    """A ``simgen rollout`` folder -> a sensor folder ``out`` (docs/FORMATS.md); all steps of the module docstring."""
    options.check()
    rollout, roadmap, _ = io.load_rollout(rollout_dir)
    with io.atomic_dir(out) as tmp:
        summary = render_state(roadmap, rollout.state, tmp, options, progress=progress)
        summary["source"] = str(rollout_dir)
        io.write_json(tmp / "summary.json", summary)
    return summary
