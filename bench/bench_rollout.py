"""Wall-time breakdown of `simgen rollout`: map, SUMO reference trip, loading the policies (checkpoints,
schedulers), closed-loop simulation, BEV rendering.

Runs one scenario per world in this process and prints seconds per stage, agent-steps/s of the closed
loop, the ratio of simulation to rendering time, and the number of agents in the scene per step (mean, min-max
over the closed loop, the AV excluded) with a check that every valid pose is finite, all measured side by side.
``sumo`` is the reference the others' agent counts should stay near.

    python bench/bench_rollout.py scenarios/city.yaml --worlds sumo,idm,constant_velocity,log_replay
    python bench/bench_rollout.py scenarios/city.yaml --worlds sumo,world_model --set duration_s=600   # 10 minutes
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from simgen import scenario as scenario_mod
from simgen.renderers.bev import render_bev_video
from simgen.sim.rollout import run_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--worlds", default="sumo,idm,constant_velocity,log_replay")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    table = Table(title=f"simgen rollout breakdown: {args.config}")
    for column in ("world", "steps", "agent-steps", "map s", "SUMO reference s", "load s", "simulate s", "render s",
                   "agent-steps/s", "ms/step", "agents/step (min-max)", "all finite", "simulate/render"):
        table.add_column(column, justify="right")
    for world in args.worlds.split(","):
        scenario = scenario_mod.load(args.config, [*args.overrides, f"world={world}"])
        with tempfile.TemporaryDirectory() as work:
            rollout, source, info = run_scenario(scenario, Path(work), progress=False)
            tic = time.perf_counter()
            render_bev_video(source.roadmap, rollout.state, Path(work) / "bev.mp4", route_lanes=rollout.route_lanes,
                             size=scenario.outputs.video_size, view_radius_m=scenario.outputs.view_radius_m)
            render_s = time.perf_counter() - tic
        t = info["timings"]
        state = rollout.state
        traj = state.traj
        counts = traj.valid[~state.meta.is_av, rollout.history_steps:].sum(0).float()
        finite = bool(torch.isfinite(torch.stack([traj.x, traj.y, traj.heading]))[:, traj.valid].all())
        table.add_row(world, str(info["steps"]), str(info["agent_steps"]), f"{t['map_s']:.2f}",
                      f"{t['reference_s']:.2f}", f"{t['load_s']:.2f}", f"{t['simulate_s']:.2f}", f"{render_s:.2f}",
                      f"{info['agent_steps'] / t['simulate_s']:.0f}", f"{1000 * t['simulate_s'] / info['steps']:.1f}",
                      f"{counts.mean():.1f} ({counts.min():.0f}-{counts.max():.0f})", str(finite),
                      f"{t['simulate_s'] / render_s:.2f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
