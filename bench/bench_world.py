"""World model sampling cost: ``amortized`` against ``full`` replanning (K = 16, R = 1), same model and scenes.

Per scene window of ``--logs`` (default: held-out berlin windows, recorded once into
``~/.cache/simgen/bench/world_berlin``), both samplers drive every agent (the WOSAC protocol) for ``--steps``
steps from the logged history, with ``--rollouts`` rollouts batched. Prints denoiser calls per simulation step
(the warm-up counted apart) and wall seconds per step of each, and their ratios, measured side by side; with
``--devices cpu,cuda``, once per device where the network runs (``SamplerOptions.device``; the constraints and the
loop stay on the CPU), for the batched GPU figure.

    .venv/bin/python bench/bench_world.py [--checkpoint checkpoints/world/world.pt] [--scenes 3] [--steps 20]
    .venv/bin/python bench/bench_world.py --devices cpu,cuda --rollouts 32 --scenes 2 --steps 10   # on a GPU machine
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from simgen.agents.world_model import DEFAULT_CHECKPOINT
from simgen.io import load_logs
from simgen.sim.env import step as env_step
from simgen.sim.rollout import mask_future
from simgen.traffic.logs import generate_logs
from simgen.world.sampler import SamplerOptions, WorldModel, WorldSampler

BERLIN_LOGS = Path.home() / ".cache" / "simgen" / "bench" / "world_berlin"


def time_sampler(sampler: WorldSampler, start, rollouts: int, steps: int, seed: int) -> tuple[float, float, int]:
    """(warm-up calls, calls per step, seconds per step) for ``steps`` steps after the warm-up."""
    g = torch.Generator().manual_seed(seed)
    scenes = [start] * rollouts
    carry = sampler.start(scenes, g)
    warmup = carry.calls
    tic = time.perf_counter()
    for _ in range(steps):
        actions, carry = sampler.step(scenes, carry, g)
        scenes = [env_step(s, [a]) for s, a in zip(scenes, actions)]
    return warmup, (carry.calls - warmup) / steps, (time.perf_counter() - tic) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--logs", type=Path, help="a `simgen logs` folder (default: berlin windows, made once)")
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rollouts", type=int, default=1)
    parser.add_argument("--full-steps", type=int, default=16, help="K of the full sampler")
    parser.add_argument("--devices", default="cpu", help="comma-separated devices the network runs on: cpu,cuda")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.logs is None:
        args.logs = BERLIN_LOGS
        if not (BERLIN_LOGS / "logs.json").exists():
            generate_logs("berlin", BERLIN_LOGS, scenes=max(args.scenes, 8), seed=11)
    logs = load_logs(args.logs)
    roadmap = logs.roadmap()
    model = WorldModel.load(args.checkpoint)
    table = Table(title=f"world model sampling, {args.rollouts} rollout(s) batched, {args.steps} steps: {args.logs}")
    for column in ("device", "scene", "agents", "amortized calls/step", "full calls/step", "call ratio",
                   "amortized s/step", "full s/step", "time ratio", "amortized agent-steps/s"):
        table.add_column(column, justify="right")
    for device in args.devices.split(","):
        samplers = {kind: WorldSampler(model, roadmap, SamplerOptions(kind=kind, full_steps=args.full_steps,
                                                                      spawn=False, drive_av=True, device=device))
                    for kind in ("amortized", "full")}
        ratios = []
        for i in range(min(args.scenes, len(logs))):
            log = logs.scene(i)
            start = mask_future(log)
            agents = int(log.traj.valid[:, log.step].sum())
            _, calls_a, sec_a = time_sampler(samplers["amortized"], start, args.rollouts, args.steps, seed=i)
            _, calls_f, sec_f = time_sampler(samplers["full"], start, args.rollouts, args.steps, seed=i)
            ratios.append((calls_f / calls_a, sec_f / sec_a))
            table.add_row(device, str(i), str(agents), f"{calls_a:.1f}", f"{calls_f:.1f}", f"{calls_f / calls_a:.1f}x",
                          f"{sec_a:.3f}", f"{sec_f:.3f}", f"{sec_f / sec_a:.1f}x",
                          f"{agents * args.rollouts / sec_a:,.0f}")
        n = len(ratios)
        table.add_row(device, "mean", "", "", "", f"{sum(r[0] for r in ratios) / n:.1f}x", "", "",
                      f"{sum(r[1] for r in ratios) / n:.1f}x", "")
    Console(width=180).print(table)


if __name__ == "__main__":
    main()
