"""Benchmark of simgen.renderers.splats.reconstruct: optimizer iterations per second on a real log.

A log is a ``simgen render`` output, e.g. (about a minute in all on 2 cores):

    .venv/bin/simgen rollout scenarios/city.yaml --out /tmp/r6 --steps 40 --no-video
    .venv/bin/simgen render /tmp/r6 --out /tmp/r6-sensors --frames 10:30

In one run, side by side (median of ``--steps`` steps after ``--warmup``, at the initial Gaussians):
    forward   the rasterizer alone, no gradient, one camera of one frame (``render_views`` under no_grad): the
              floor for a training step;
    step      one full training step with ``--views`` cameras: posing, render, losses, backward, Adam;
    refine    one densify-and-prune pass;
and the setup (log load, lidar depth maps, initialization). Prints iterations/s and the step/forward ratio.

    .venv/bin/python bench/bench_reconstruct.py --log /tmp/r6-sensors [--resolution 160x106] [--views 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from simgen.renderers.splats.dataset import load_log, split_views
from simgen.renderers.splats.reconstruct import (
    ReconstructConfig,
    _Trainer,
    depth_maps,
    initial_scene,
    render_views,
    train_step,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True, help="a `simgen render` output folder")
    parser.add_argument("--resolution", default="160x106")
    parser.add_argument("--views", type=int, default=1, help="cameras per training step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.resolution.split("x"))
    config = ReconstructConfig(resolution=(width, height), views_per_step=args.views)

    tic = time.perf_counter()
    log = load_log(args.log, resolution=config.resolution)
    split = split_views(log)
    depth = depth_maps(log)
    scene, scale = initial_scene(log, split, depth, config, torch.Generator().manual_seed(0))
    setup_s = time.perf_counter() - tic
    trainer = _Trainer(scene, scale, config)
    frames = sorted({t for t, _ in split.train})
    generator = torch.Generator().manual_seed(1)

    def views(i: int) -> list[tuple[int, int]]:
        t = frames[i % len(frames)]
        cams = [c for tt, c in split.train if tt == t]
        return [(t, c) for c in cams[:args.views]]

    forward, step = [], []
    for i in range(args.warmup + args.steps):
        (t, c), = views(i)[:1]
        tic = time.perf_counter()
        with torch.no_grad():
            render_views(trainer.splats(), trainer.sky, log, log.boxes[:, t], log.present[:, t], t, [c])
        forward.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        train_step(trainer, log, depth, views(i), i, densify=True)
        step.append(time.perf_counter() - tic)
    forward, step = forward[args.warmup:], step[args.warmup:]
    tic = time.perf_counter()
    stats = trainer.refine(generator)
    refine_s = time.perf_counter() - tic
    fwd, stp = statistics.median(forward), statistics.median(step)
    print(f"log {args.log}: {log.num_frames} frames x {log.num_cameras} cameras at {width}x{height}, "
          f"{scene.params.num_gaussians} Gaussians ({scene.num_actors} actors), threads {args.threads}")
    print(f"setup (load, depth maps, init)  {setup_s:8.2f} s")
    print(f"forward, 1 camera, no grad      {fwd * 1e3:8.1f} ms")
    print(f"training step, {args.views} camera(s)       {stp * 1e3:8.1f} ms   = {stp / fwd:.1f} x forward, "
          f"{1 / stp:.2f} it/s")
    print(f"refine (densify + prune)        {refine_s * 1e3:8.1f} ms   {stats}")


if __name__ == "__main__":
    main()
