"""Log generation speed against SUMO's own speed, per worker, measured in one run.

Three SUMO runs on the same map, demand and seed (the recording does not change what SUMO simulates, so all
three simulate the same agent-steps):

1. ceiling: SUMO alone, ``libsumo.simulationStep()`` and nothing else;
2. recording: ``SumoRecorder.step()``: every vehicle, person and light read and converted each 0.1 s step;
3. log generation: one whole ``generate_logs`` worker (demand, warm-up, recording, anchors and saved states,
   windows, npz files), timed end to end, against SUMO alone over the same warm-up + recorded steps.

Agent-steps count the recorded steps only. Prints agent-steps/s of each (runs 1 and 2: best of ``--repeat``,
as other processes on a small machine make single timings noisy) and the ratio to SUMO alone.

    .venv/bin/python bench/bench_logs.py [--map grid] [--scenes 64] [--seed 0] [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import libsumo

from simgen.io import save_map
from simgen.maps import resolve_map
from simgen.traffic import Demand
from simgen.traffic.logs import LogJob, run_log_worker, worker_seed
from simgen.traffic.sumo import SumoRecorder, close_run, open_run, sumo_args


def ceiling_and_recording(source, routes, seed: int, warmup_s: float, steps: int) -> tuple[float, float, float, int]:
    """Seconds of SUMO alone (warm-up, then ``steps`` steps) and of ``steps`` recorded steps; agent-steps recorded."""
    open_run(sumo_args(source.net_file, routes, seed))
    tic = time.perf_counter()
    libsumo.simulationStep(warmup_s)
    warmup = time.perf_counter() - tic
    tic = time.perf_counter()
    for _ in range(steps):
        libsumo.simulationStep()
    ceiling = time.perf_counter() - tic

    open_run(sumo_args(source.net_file, routes, seed))
    recorder = SumoRecorder(source.roadmap)
    recorder.warm_up(warmup_s)
    tic = time.perf_counter()
    for _ in range(steps):
        recorder.step()
    record = time.perf_counter() - tic
    close_run()
    return warmup, ceiling, record, recorder.stats.agent_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", default="grid", help="map spec for simgen.maps.resolve_map")
    parser.add_argument("--scenes", type=int, default=64, help="windows the worker cuts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-s", type=float, default=300.0)
    parser.add_argument("--repeat", type=int, default=2, help="best of this many ceiling / recording runs")
    args = parser.parse_args()

    source = resolve_map(args.map, seed=args.seed)
    seed = worker_seed(args.seed, 0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_map(source.roadmap, tmp / "map.npz")
        job = LogJob(worker=0, seed=seed, scenes=args.scenes, trip_steps=0, net_file=source.net_file,
                   map_file=tmp / "map.npz", workdir=tmp / "work", radius_m=60.0, max_agents=128, demand=Demand(),
                   warmup_s=args.warmup_s)
        tic = time.perf_counter()
        worker = run_log_worker(job, on_item=lambda: None)
        worker_s = time.perf_counter() - tic
        stats = worker["stats"]
        steps, agent_steps = stats["steps"], stats["agent_steps"]
        routes = worker["route_files"]

        timings = [ceiling_and_recording(source, routes, seed, args.warmup_s, steps) for _ in range(args.repeat)]
    warmup_s, ceiling_s, record_s, recorded = (min(t[i] for t in timings) for i in range(4))
    assert recorded == agent_steps, "the runs simulated different traffic"

    print(f"map {source.name}: {steps} recorded steps after {args.warmup_s:.0f} s warm-up, {agent_steps} agent-steps "
          f"({agent_steps / steps:.0f} agents per step), {len(worker['scenes'])} windows, one worker")
    rows = [  # (what, seconds, seconds of the ceiling it compares with)
        ("SUMO alone, recorded steps", ceiling_s, ceiling_s),
        ("recording, recorded steps", record_s, ceiling_s),
        ("SUMO alone, warm-up + recorded", warmup_s + ceiling_s, warmup_s + ceiling_s),
        ("whole worker (demand, warm-up, recording, windows, files)", worker_s, warmup_s + ceiling_s),
    ]
    for name, seconds, ceiling in rows:
        print(f"  {name:58s} {seconds:7.2f} s {agent_steps / seconds:10,.0f} agent-steps/s  "
              f"{ceiling / seconds:5.2f} x SUMO alone")

if __name__ == "__main__":
    main()
