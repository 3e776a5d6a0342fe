"""WOSAC 2025 scoring speed: the vectorized ``score_scene`` against its slow twin, in one run.

Per scene of a `simgen logs` folder: R noisy rollouts of the log (seeded drift and heading noise), scored by
``score_scene`` (best of ``--repeat``) and, on ``--reference-rollouts`` of the same rollouts, by
``score_scene_reference`` once; the twin's time is scaled to R rollouts (its work grows linearly with them).
Prints seconds per scenario of each, their ratio and the meta-metric of both on the shared rollouts.

Without ``--logs`` it records dense scenes once (grid map, 120 m radius, heavy demand, up to 128 agents)
into ``~/.cache/simgen/bench/wosac_dense_grid`` (about 2 minutes).

Timings are best of ``--repeat`` per thread count: other processes on a small machine make single timings noisy
(and make two intra-op threads slower than one while they hold a core). The last line is throughput, the way
``simgen eval`` scores: ``--processes`` worker processes (one thread each, warmed up) score every scene
``--repeat`` times; wall time divided by the scenes scored.

    .venv/bin/python bench/bench_wosac.py [--logs DIR] [--scenes 4] [--rollouts 32] [--threads 1,2] [--processes 2]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from simgen.io import load_logs
from simgen.metrics.wosac import score_scene, score_scene_reference
from simgen.traffic import Demand
from simgen.traffic.logs import generate_logs
from simgen.types import AgentTrajectory, SceneState

DENSE_LOGS = Path.home() / ".cache" / "simgen" / "bench" / "wosac_dense_grid"
DENSE_DEMAND = Demand(vehicles_per_hour_per_km=240.0, pedestrians_per_hour_per_km=900.0,
                      cyclists_per_hour_per_km=80.0)


def noisy_rollouts(log: SceneState, count: int, seed: int) -> AgentTrajectory:
    """``count`` copies of the log whose futures drift sideways (up to ~2 m over 8 s) and wobble in heading."""
    g = torch.Generator().manual_seed(seed)
    traj = log.traj.map_tensors(lambda t, _axes: t[None].expand(count, *t.shape).clone())
    future = (torch.arange(log.num_steps) > log.step).float()
    ramp = future * (torch.arange(log.num_steps) - log.step) / (log.num_steps - log.step - 1)
    drift = torch.randn(count, log.num_agents, 1, generator=g) * 2.0 * ramp  # m
    wobble = torch.randn(count, log.num_agents, log.num_steps, generator=g) * 0.03 * future  # rad
    valid = traj.valid
    heading = torch.remainder(traj.heading + wobble + math.pi, 2 * math.pi) - math.pi
    return traj.replace(x=torch.where(valid, traj.x - drift * torch.sin(traj.heading), 0.0),
                        y=torch.where(valid, traj.y + drift * torch.cos(traj.heading), 0.0),
                        heading=torch.where(valid, heading, 0.0))


_WORKER: dict = {}


def _init_worker(logs_dir: Path, rollouts: int) -> None:
    """Load the logs once per process and score one scene, so timed calls see no first-call costs."""
    torch.set_num_threads(1)
    logs = load_logs(logs_dir)
    _WORKER.update(logs=logs, roadmap=logs.roadmap(), rollouts=rollouts)
    _score(0)


def _score(i: int) -> float:
    log = _WORKER["logs"].scene(i)
    return score_scene(_WORKER["roadmap"], log, noisy_rollouts(log, _WORKER["rollouts"], seed=i)).meta_metric


def pool_seconds_per_scene(logs_dir: Path, scenes: int, rollouts: int, processes: int, repeat: int) -> float:
    """Wall seconds per scored scene with ``processes`` warmed-up worker processes (rollout noise not timed out:
    it is under 1% of a score)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_init_worker,
                             initargs=(logs_dir, rollouts)) as pool:
        list(pool.map(_score, range(processes)))  # every worker has started
        tic = time.perf_counter()
        list(pool.map(_score, [i for _ in range(repeat) for i in range(scenes)]))
        return (time.perf_counter() - tic) / (scenes * repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=Path, help="a `simgen logs` folder (default: dense grid scenes, made once)")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=32)
    parser.add_argument("--reference-rollouts", type=int, default=2, help="rollouts the slow twin scores")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many fast runs")
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts to time the fast path with")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for the throughput line")
    args = parser.parse_args()
    threads = [int(n) for n in args.threads.split(",")]
    if args.logs is None:
        args.logs = DENSE_LOGS
        if not (DENSE_LOGS / "logs.json").exists():
            generate_logs("grid", DENSE_LOGS, scenes=args.scenes, seed=11, radius_m=120.0, demand=DENSE_DEMAND)
    logs = load_logs(args.logs)
    roadmap = logs.roadmap()

    table = Table(title=f"WOSAC 2025 scoring, seconds per scenario, {args.rollouts} rollouts: {args.logs}")
    for column in ("scene", "agents", *(f"fast, {n} thr" for n in threads), f"slow ({args.reference_rollouts} rollouts)",
                   f"slow, scaled to {args.rollouts}", "slow / fast", "meta fast", "meta slow"):
        table.add_column(column, justify="right")
    count = min(args.scenes, len(logs))
    totals = {"slow": 0.0, **{n: 0.0 for n in threads}}
    for i in range(count):
        log = logs.scene(i)
        sim = noisy_rollouts(log, args.rollouts, seed=i)
        fast = {}
        for n in threads:
            torch.set_num_threads(n)
            score_scene(roadmap, log, sim)  # warm-up: first-call allocations
            fast[n] = math.inf
            for _ in range(args.repeat):
                tic = time.perf_counter()
                score = score_scene(roadmap, log, sim)
                fast[n] = min(fast[n], time.perf_counter() - tic)
            totals[n] += fast[n]
        few = sim.map_tensors(lambda t, _axes: t[:args.reference_rollouts])
        tic = time.perf_counter()
        slow_score = score_scene_reference(roadmap, log, few)
        slow_few = time.perf_counter() - tic
        slow = slow_few * args.rollouts / args.reference_rollouts
        totals["slow"] += slow
        table.add_row(str(i), str(score.num_agents), *(f"{fast[n]:.3f}" for n in threads), f"{slow_few:.2f}",
                      f"{slow:.1f}", f"{slow / min(fast.values()):.0f}x",
                      f"{score_scene(roadmap, log, few).meta_metric:.6f}", f"{slow_score.meta_metric:.6f}")
    best = min(totals[n] for n in threads)
    table.add_row("mean", "", *(f"{totals[n] / count:.3f}" for n in threads), "", f"{totals['slow'] / count:.1f}",
                  f"{totals['slow'] / best:.0f}x", "", "")
    console = Console(width=160)
    console.print(table)
    pooled = pool_seconds_per_scene(args.logs, count, args.rollouts, args.processes, args.repeat)
    console.print(f"throughput, {args.processes} processes x 1 thread: {pooled:.3f} s per scenario, "
                  f"{best / count / pooled:.2f}x the best single-process time")


if __name__ == "__main__":
    main()
