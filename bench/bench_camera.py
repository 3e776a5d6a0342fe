"""Benchmark of simgen.renderers.camera: 8 surround cameras at 480 x 320 (the default rig), per stage and with
two worker processes, against the 1 frame/s target.

Scene: ``bench/street.py`` (a generated grid, 40 agents around the AV). In one run:
    stages      best and median over ``--repeat`` frames in this process, clear noon: primary rays (cast +
                attributes), shadow rays, shading (sky, lights, weather, exposure) and the agents' BVH
                (``Tracer.frame``, once per step for all sensors);
    conditions  the total per frame for rain, fog and night (shading differs, geometry does not);
    throughput  ``--frames`` frames in 1 process, then in 2 processes (spawned, each with its own static
                BVH; the workers are warmed up with one frame each before the clock starts), frames/s.

    .venv/bin/python bench/bench_camera.py [--blocks 4] [--agents 40] [--repeat 5] [--frames 12]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import time

from simgen.renderers.camera import Conditions, render_cameras
from simgen.renderers.rig import load_rig
from simgen.renderers.scene3d import Tracer, build_static_scene
from street import street_scene  # bench/street.py (the script folder is on sys.path)

TARGET_FRAMES_PER_S = 1.0
_WORKER: dict = {}


def _init(blocks: int, agents: int, static) -> None:
    import torch

    torch.set_num_threads(1)
    _, state = street_scene(blocks, agents)
    _WORKER.update(tracer=Tracer(static), state=state, cameras=load_rig("default").cameras)


def _frame(_: int = 0) -> float:
    tic = time.perf_counter()
    frame = _WORKER["tracer"].frame(_WORKER["state"], 0)
    render_cameras(frame, _WORKER["cameras"], _WORKER["state"].av_pose()[0].double().numpy(), Conditions())
    return time.perf_counter() - tic


def _throughput(workers: int, frames: int, blocks: int, agents: int, static) -> float:
    if workers == 1:
        _frame()
        tic = time.perf_counter()
        for _ in range(frames):
            _frame()
        return frames / (time.perf_counter() - tic)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init,
                                                initargs=(blocks, agents, static)) as pool:
        list(pool.map(_frame, range(workers)))  # warm up: imports, BVH
        tic = time.perf_counter()
        list(pool.map(_frame, range(frames)))
        return frames / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args()

    roadmap, state = street_scene(args.blocks, args.agents)
    static = build_static_scene(roadmap)
    _init(args.blocks, args.agents, static)
    tracer, cameras = _WORKER["tracer"], _WORKER["cameras"]
    av_pose = state.av_pose()[0].double().numpy()
    pixels = sum(c.width * c.height for c in cameras)
    print(f"scene: grid blocks={args.blocks}, {len(static.mesh.faces):,} static triangles, {state.num_agents - 1} "
          f"agents; {len(cameras)} cameras, {pixels:,} primary rays per frame")

    stages: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        tic = time.perf_counter()
        frame = tracer.frame(state, 0)
        timings = {"agents_s": time.perf_counter() - tic}
        render_cameras(frame, cameras, av_pose, Conditions(), timings=timings)
        for key, value in timings.items():
            stages.setdefault(key, []).append(value * 1e3)
    totals = [sum(v[i] for v in stages.values()) for i in range(args.repeat)]
    print(f"{'stage (clear, 12:00)':28s}{'best ms':>10s}{'median ms':>11s}")
    for key in ("agents_s", "primary_s", "shadow_s", "shading_s"):
        print(f"{key[:-2]:28s}{min(stages[key]):10.0f}{statistics.median(stages[key]):11.0f}")
    print(f"{'frame total':28s}{min(totals):10.0f}{statistics.median(totals):11.0f}")
    for conditions in (Conditions("rain", "12:00"), Conditions("fog", "12:00"), Conditions("clear", "22:00")):
        frame = tracer.frame(state, 0)
        best = min(_timed(render_cameras, frame, cameras, av_pose, conditions) for _ in range(2))
        print(f"{conditions.weather + ' ' + conditions.time_of_day:28s}{best * 1e3:10.0f}")

    one = _throughput(1, args.frames, args.blocks, args.agents, static)
    two = _throughput(2, args.frames, args.blocks, args.agents, static)
    print(f"throughput: 1 process {one:.2f} frames/s, 2 processes {two:.2f} frames/s ({two / one:.2f}x); "
          f"target >= {TARGET_FRAMES_PER_S:.0f} frame/s with 2: {'met' if two >= TARGET_FRAMES_PER_S else 'missed'}")


def _timed(fn, *args) -> float:
    tic = time.perf_counter()
    fn(*args)
    return time.perf_counter() - tic


if __name__ == "__main__":
    main()
