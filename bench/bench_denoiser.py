"""The world model's network cost per simulation step, batched: one denoiser call over a busy trip's window for
1 to N rollouts at once, on each device given (CPU and, where present, CUDA), side by side in one process.

Amortized sampling makes one denoiser call per simulation step (``simgen.world.sampler``), so a call's time is the
network's share of a step; constraints and the closed loop add to it (about 35 ms of a 50 ms step on 2 CPU
cores on the busy city trip, ``bench/bench_rollout.py``). The window is the shipped checkpoint's: ``--agents`` agents plus 8
free rows, ``--lights`` lights, 5 context + 16 future frames, 128 map polylines; its values are random (the cost
does not depend on them).

    .venv/bin/python bench/bench_denoiser.py [--devices cpu,cuda] [--rollouts 1,8,32,128] [--agents 18]
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table
from timing import timed

from simgen.agents.world_model import DEFAULT_CHECKPOINT
from simgen.world.denoiser import DenoiserInput
from simgen.world.sampler import SPARE_ROWS, WorldModel
from simgen.world.tokenizer import (
    AGENT_CHANNELS, AGENT_COND, HISTORY_OFFSETS, LIGHT_CHANNELS, LIGHT_COND, MAP_FEATURES, MAX_POLYLINES,
    POINTS_PER_POLYLINE,
)


def window(rollouts: int, agents: int, lights: int, future: int, device: str) -> DenoiserInput:
    """A random input of a trip's shape: every row real, context frames given."""
    g = torch.Generator().manual_seed(0)
    B, A, S, T = rollouts, agents + SPARE_ROWS, lights, len(HISTORY_OFFSETS) + future
    given = (torch.arange(T) < len(HISTORY_OFFSETS)).expand(B, A, T)
    inp = DenoiserInput(
        agents=torch.randn(B, A, T, AGENT_CHANNELS, generator=g), agent_given=given,
        agent_clean=torch.randn(B, A, T, AGENT_CHANNELS, generator=g), agent_mask=torch.ones(B, A, dtype=torch.bool),
        is_av=(torch.arange(A) == 0).expand(B, A), agent_cond=torch.randn(B, A, AGENT_COND, generator=g),
        lights=torch.randn(B, S, T, LIGHT_CHANNELS, generator=g), light_given=given[:, :1].expand(B, S, T),
        light_clean=torch.randn(B, S, T, LIGHT_CHANNELS, generator=g),
        light_cond=torch.randn(B, S, LIGHT_COND, generator=g),
        light_valid=torch.ones(B, S, T, dtype=torch.bool), light_mask=torch.ones(B, S, dtype=torch.bool),
        map_features=torch.randn(B, MAX_POLYLINES, POINTS_PER_POLYLINE, MAP_FEATURES, generator=g),
        map_valid=torch.ones(B, MAX_POLYLINES, dtype=torch.bool), noise_level=torch.rand(B, T, generator=g),
        frame_offsets=torch.tensor([*HISTORY_OFFSETS, *range(1, future + 1)]))
    return DenoiserInput(**{k: v.to(device) for k, v in vars(inp).items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rollouts", default="1,8,32,128", help="batch sizes (rollouts stepped together)")
    parser.add_argument("--agents", type=int, default=18, help="agents in the window (18: the busy city trip)")
    parser.add_argument("--lights", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    model = WorldModel.load(args.checkpoint)
    table = Table(title=f"denoiser call, {args.agents} agents + {SPARE_ROWS} free rows, {args.lights} lights")
    for column in ("device", "rollouts", "best ms", "median ms", "ms per rollout", "agent-steps/s (network)"):
        table.add_column(column, justify="right")
    baseline: dict[int, float] = {}
    for device in args.devices.split(","):
        net = model.denoiser.to(device)
        for rollouts in (int(r) for r in args.rollouts.split(",")):
            inp = window(rollouts, args.agents, args.lights, model.future, device)

            def call():
                with torch.inference_mode():
                    out = net(inp)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                return out

            best, median, _ = timed(call, args.repeat)
            baseline.setdefault(rollouts, best)
            speedup = "" if baseline[rollouts] == best else f" ({baseline[rollouts] / best:.1f}x)"
            table.add_row(device, str(rollouts), f"{best:.2f}{speedup}", f"{median:.2f}", f"{best / rollouts:.3f}",
                          f"{rollouts * args.agents / best * 1e3:,.0f}")
    Console().print(table)
    Console().print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
                    + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))


if __name__ == "__main__":
    main()
