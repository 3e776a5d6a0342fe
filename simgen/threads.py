"""CPU threads: where simgen uses more than one.

Rule-based code (constraints, policies, metrics) works on tensors of tens of agents, where handing work between
threads costs more than it saves (13x slower with 2 threads on a busy 2-core machine), so the closed loop and
scoring run with one. The world model's network is the exception: its matrices are large enough to split
(``simgen.world.sampler``, ``SamplerOptions.threads``).
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` intra-op threads, then restore the count it had."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)
