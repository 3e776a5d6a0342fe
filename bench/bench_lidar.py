"""Benchmark of simgen.renderers.lidar: one 64 x 2650 sweep against the bare Embree ceiling on the same rays.

Scene: ``bench/street.py`` (a generated grid, 40 agents around the AV; ~235k triangles with blocks=4).
In one run, side by side (best of ``--repeat``, plus the median):
    ceiling   embreex ``run(origins, directions)`` on the static BVH alone: the first-hit primitive ids
              of the same 169,600 rays, nothing else (the floor for any sweep of this scene);
    sweep     ``lidar_sweep``: static BVH + the per-frame agents' BVH, nearest hit, attributes,
              intensity, elongation, ray drop, noise, range image and point cloud;
    frame     ``Tracer.frame``: the agents' meshes and their BVH (once per step, shared by all sensors);
and, once, the static scene build and its BVH build (once per map), and the slow twin's rays/s.

    .venv/bin/python bench/bench_lidar.py [--blocks 4] [--agents 40] [--repeat 15] [--twin-rays 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from simgen.renderers.lidar import _directions, lidar_sweep
from simgen.renderers.lidar_reference import reference_returns
from simgen.renderers.rig import load_rig
from simgen.renderers.scene3d import Tracer, build_static_scene
from street import street_scene  # bench/street.py (the script folder is on sys.path)
from timing import timed

from simgen.types.sensors import turn_about_z, world_from_sensor

TARGET_MS = 40.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--twin-rays", type=int, default=200)
    args = parser.parse_args()

    roadmap, state = street_scene(args.blocks, args.agents)
    tic = time.perf_counter()
    static = build_static_scene(roadmap)
    scene_s = time.perf_counter() - tic
    tic = time.perf_counter()
    tracer = Tracer(static)
    bvh_s = time.perf_counter() - tic
    spec = load_rig("default").lidars[0]
    av_pose = state.av_pose()[0].double().numpy()
    frame_best, frame_median, frame = timed(lambda: tracer.frame(state, 0), args.repeat, warmup=False)

    world_from_lidar = world_from_sensor(av_pose, spec.mount.av_from_mount())
    dirs = np.ascontiguousarray(turn_about_z(_directions(spec)[1], float(av_pose[3])), np.float32)
    origins = np.ascontiguousarray(np.broadcast_to(frame.to_local(world_from_lidar[:3, 3]), dirs.shape), np.float32)
    rows = []
    for _ in range(args.repeat):  # interleaved, so both see the same machine load
        rows.append((timed(lambda: tracer.bvh.run(origins, dirs), 1, warmup=False)[0],
                     timed(lambda: lidar_sweep(frame, spec, av_pose), 1, warmup=False)[0]))
    ceiling, sweep = (np.array(r) for r in zip(*rows))
    result = lidar_sweep(frame, spec, av_pose)

    print(f"scene: grid blocks={args.blocks}, {len(static.mesh.faces):,} static triangles, "
          f"{len(frame.agents.faces):,} agent triangles ({state.num_agents - 1} agents), "
          f"{spec.beams} x {spec.columns} = {spec.beams * spec.columns:,} rays, "
          f"{(result.range_image[..., 3] == 1).mean():.1%} valid")
    print(f"once per map: static scene {scene_s:.2f} s, static BVH {bvh_s:.2f} s")
    print(f"{'':28s}{'best ms':>10s}{'median ms':>11s}")
    print(f"{'embreex ceiling (bare run)':28s}{ceiling.min():10.1f}{np.median(ceiling):11.1f}")
    print(f"{'lidar_sweep':28s}{sweep.min():10.1f}{np.median(sweep):11.1f}")
    print(f"{'frame (agents + their BVH)':28s}{frame_best:10.1f}{frame_median:11.1f}")
    print(f"sweep / ceiling: {sweep.min() / ceiling.min():.2f} (best), {np.median(sweep / ceiling):.2f} "
          f"(median of paired runs); target sweep <= {TARGET_MS:.0f} ms: "
          f"{'met' if sweep.min() <= TARGET_MS else 'missed'} (best)")
    if args.twin_rays:
        rng = np.random.default_rng(0)
        r, c = rng.integers(0, spec.beams, args.twin_rays), rng.integers(0, spec.columns, args.twin_rays)
        tic = time.perf_counter()
        reference_returns(frame, spec, result.world_from_lidar, r, c)
        twin_s = time.perf_counter() - tic
        fast_rays_per_s = spec.beams * spec.columns / (sweep.min() / 1e3)
        print(f"slow twin (trimesh native, {args.twin_rays} rays incl. its setup): "
              f"{args.twin_rays / twin_s:,.0f} rays/s"
              f" vs sweep {fast_rays_per_s:,.0f} rays/s ({fast_rays_per_s / (args.twin_rays / twin_s):,.0f}x)")


if __name__ == "__main__":
    main()
