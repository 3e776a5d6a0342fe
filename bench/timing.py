"""Wall-clock timing shared by the benchmarks (imported as ``from timing import timed``: the script folder is on
sys.path)."""

from __future__ import annotations

import statistics
import time


def timed(fn, repeat: int, warmup: bool = True) -> tuple[float, float, object]:
    """(best ms, median ms, last result) of ``repeat`` calls of ``fn``, after one untimed call if ``warmup``."""
    result = fn() if warmup else None
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - tic) * 1e3)
    return min(times), statistics.median(times), result
