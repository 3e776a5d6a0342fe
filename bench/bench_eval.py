"""Cost of `simgen eval` per world: seconds per scene window for the rollouts and for scoring.

Evaluates each world on the same scenes in this process (one worker, so the
worlds share the machine's state) and prints seconds per scene and per
rollout, the scoring share, and each world's cost as a ratio to
``constant_velocity`` measured in the same run.

    python bench/bench_eval.py logs/grid --scenes 4 --rollouts 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from simgen.metrics.evaluate import FLOOR, evaluate_worlds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", type=Path)
    parser.add_argument("--worlds", default="constant_velocity,idm,sumo_branch,sumo,log_copies")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=32)
    args = parser.parse_args()
    worlds = args.worlds.split(",")
    if FLOOR not in worlds:
        worlds.insert(0, FLOOR)
    table = evaluate_worlds(args.logs, worlds, rollouts=args.rollouts, scenes=args.scenes, workers=1)
    seconds = {}
    for world, report in table["reports"].items():
        scenes = report["per_scene"]
        seconds[world] = {part: sum(s["seconds"][part] for s in scenes) / len(scenes)
                          for part in ("rollouts", "score", "total")}
    out = Table(title=f"simgen eval cost: {args.scenes} scenes x {args.rollouts} rollouts, one process")
    for column in ("world", "meta-metric", "s / scene", "rollouts s", "score s", "ms / rollout",
                   f"x {FLOOR}"):
        out.add_column(column, justify="right")
    for world, s in seconds.items():
        out.add_row(world, f"{table['worlds'][world]['meta_metric']:.3f}", f"{s['total']:.2f}",
                    f"{s['rollouts']:.2f}", f"{s['score']:.3f}", f"{1000 * s['rollouts'] / args.rollouts:.0f}",
                    f"{s['total'] / seconds[FLOOR]['total']:.1f}")
    Console(width=200).print(out)


if __name__ == "__main__":
    main()
