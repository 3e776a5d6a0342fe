"""The world model's training corpus: SUMO logs on generated maps and bundled real maps, held-out maps kept apart.

One LOG_DIR (docs/FORMATS.md) per entry of ``TRAIN_MAPS``, each with scene
windows and one trip per SUMO worker (trips carry agents entering and leaving
around a moving AV, which scene windows do not). ``HELD_OUT_MAPS`` never
appear here: evaluation uses them.

    python -m simgen.world.corpus --out data/world-corpus [--workers 2]

takes about 20 minutes on 2 cores and is resumable (finished maps are skipped).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELD_OUT_MAPS = ("berlin", "ingolstadt")


@dataclass(frozen=True)
class CorpusMap:
    map_spec: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        extra = "".join(f"-{k}{v}" for k, v in sorted(self.options.items()))
        return f"{self.map_spec}{extra}-s{self.seed}"


TRAIN_MAPS: tuple[CorpusMap, ...] = (
    CorpusMap("grid", 1, {"blocks": 4, "lanes": 1}),
    CorpusMap("grid", 2, {"blocks": 5, "lanes": 2}),
    CorpusMap("grid", 3, {"blocks": 6, "lanes": 3, "block_length_m": 120.0}),
    CorpusMap("grid", 4, {"blocks": 4, "lanes": 2, "block_length_m": 250.0}),
    CorpusMap("spider", 1, {"arms": 5, "lanes": 1}),
    CorpusMap("spider", 2, {"arms": 6, "lanes": 2}),
    CorpusMap("spider", 3, {"arms": 8, "lanes": 2, "ring_spacing_m": 110.0}),
    CorpusMap("random", 1, {"lanes": 1}),
    CorpusMap("random", 2, {"lanes": 2}),
    CorpusMap("random", 3, {"lanes": 2, "iterations": 150}),
    CorpusMap("braunschweig", 1),
    CorpusMap("braunschweig", 2),
)
SCENES_PER_MAP = 48
TRIP_SECONDS = 240.0


def build_corpus(out: Path, *, workers: int = 2, maps: tuple[CorpusMap, ...] = TRAIN_MAPS) -> list[Path]:
    """Record every map of ``maps`` into ``out/<name>`` (skipping finished ones); returns the LOG_DIRs."""
    from simgen.traffic.logs import generate_logs

    dirs = []
    for entry in maps:
        if entry.map_spec in HELD_OUT_MAPS:
            raise ValueError(f"corpus map {entry.name}: {entry.map_spec} is held out for evaluation")
        log_dir = Path(out) / entry.name
        if not (log_dir / "logs.json").exists():
            generate_logs(entry.map_spec, log_dir, scenes=SCENES_PER_MAP, seed=entry.seed, workers=workers,
                          trip_seconds=TRIP_SECONDS, map_options=entry.options or None)
        dirs.append(log_dir)
    return dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    build_corpus(args.out, workers=args.workers)


if __name__ == "__main__":
    main()
